"""``imagefolder``: any folder of class sub-folders, with torchvision ``ImageFolder`` semantics.

Classes are the sorted sub-folder names of the training folder; images are read as RGB.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from leanvision.data.datasets import FileImageDataset, stratified_split
from leanvision.data.transforms import IMAGENET_MEAN, IMAGENET_STD, folder_transform
from leanvision.errors import ConfigError, DataError

__all__ = ["build_imagefolder"]

LAYOUT = (
    "expected an ImageFolder layout: either root/train/<class>/<image> with root/val/<class>/ "
    "and/or root/test/<class>/ beside it, or class folders directly in root "
    "(root/<class>/<image>), which are split into train/val/test; images: "
    + ", ".join(IMG_EXTENSIONS)
)


def _find_classes(folder: Path) -> tuple[list[str], dict[str, int]]:
    """Sorted class-folder names of ``folder`` and their indices, or a DataError."""
    try:
        return find_classes(folder)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise DataError(f"no class folders in {folder}: {e}; {LAYOUT}") from e


def _scan(
    folder: Path, class_to_idx: dict[str, int], is_train: bool
) -> tuple[list[str], np.ndarray]:
    """Image paths and labels under ``folder``, labelled by the training folder's classes.

    Every training class needs an image; a val/test folder may lack classes but not add any.
    """
    if not is_train:
        unknown = sorted(set(_find_classes(folder)[0]) - set(class_to_idx))
        if unknown:
            raise DataError(
                f"{folder} has classes {unknown} that the training folder lacks; {LAYOUT}"
            )
    try:
        samples = make_dataset(
            folder, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=not is_train
        )
    except (FileNotFoundError, NotADirectoryError) as e:
        raise DataError(f"no usable images in {folder}: {e}; {LAYOUT}") from e
    if not samples:
        raise DataError(f"no images found in {folder}; {LAYOUT}")
    return [p for p, _ in samples], np.array([c for _, c in samples], dtype=np.int64)


def build_imagefolder(
    root: str | os.PathLike | None,
    *,
    val_fraction: float,
    seed: int,
    augment: bool,
    image_size: int | None,
    **_: object,
) -> dict:
    """Train/val/test from an image folder.

    Which folder feeds which split:

    - ``train/`` + ``val/`` + ``test/``: used as they are.
    - ``train/`` + ``val/`` only: ``val/`` is the *test* split (reported, never used for
      selection) and the val split is ``val_fraction`` of ``train/``, stratified.
    - ``train/`` + ``test/`` only: val is ``val_fraction`` of ``train/``.
    - ``train/`` alone, or class folders directly in root: val and test are each
      ``val_fraction`` of the images, stratified from ``seed``.

    Args:
        root: The folder.
        val_fraction: Fraction held out for each carved split.
        seed: Seed of the carved splits.
        augment: RandomResizedCrop + horizontal flip on train (else the eval transform).
        image_size: Side of the square input; default 224.
    """
    if root is None:
        raise DataError(f"dataset 'imagefolder' needs root= (the image folder); {LAYOUT}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"ImageFolder root {root} does not exist or is not a folder; {LAYOUT}")
    train_dir = root / "train" if (root / "train").is_dir() else root
    classes, class_to_idx = _find_classes(train_dir)
    paths, labels = _scan(train_dir, class_to_idx, is_train=True)
    given = {s: root / s for s in ("val", "test") if train_dir != root and (root / s).is_dir()}
    if "val" in given and "test" not in given:
        given = {"test": given["val"]}
    carve = [s for s in ("val", "test") if s not in given]
    if len(carve) * val_fraction >= 1:
        raise ConfigError(
            f"val_fraction={val_fraction} leaves no training images when "
            f"carving {' and '.join(carve)} from {train_dir}; use < {1 / len(carve)}"
        )
    parts = stratified_split(labels, [round(val_fraction * len(labels))] * len(carve), seed)
    size = image_size or 224
    eval_tf = folder_transform(size, train=False)
    train_tf = folder_transform(size, train=True) if augment else eval_tf
    splits = {"train_set": FileImageDataset(paths, labels, parts[-1], train_tf)}
    for split, idx in zip(carve, parts[:-1]):
        splits[f"{split}_set"] = FileImageDataset(paths, labels, idx, eval_tf)
    for split, folder in given.items():
        split_paths, split_labels = _scan(folder, class_to_idx, is_train=False)
        (order,) = stratified_split(split_labels, [], seed=0)  # class-interleaved fixed order
        splits[f"{split}_set"] = FileImageDataset(split_paths, split_labels, order, eval_tf)
    return {
        **splits,
        "num_classes": len(classes),
        "input_size": (3, size, size),
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "class_names": classes,
    }
