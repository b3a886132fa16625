"""``sr``: single-image super-resolution pairs from high-resolution images (T91, Set5, ...).

The shared folder (``../shared/data/sr``, see its README) holds HR PNGs only. Each image is
mod-cropped at its top-left to a multiple of ``scale`` and its LR input is made by PIL's bicubic
downscaling (``Image.BICUBIC``), the README's recipe. Published tables use MATLAB's antialiased
``imresize``; PIL's bicubic is close to it but not bit-identical, so PSNRs differ a little from
published ones (say so beside them).

* ``train``: random aligned crops, ``patch_size`` LR pixels square (``patch_size * scale`` HR;
  training images smaller than a crop are left out, with a warning),
  of the training images (T91 by default, less the validation images), with EDSR's
  augmentation (horizontal and vertical flips and transposition; ``augment=False`` for none);
  ``repeat`` crops per image per epoch (EDSR's idea of an epoch as a number of patches).
* ``val``: whole images held out of the training set (``val_fraction``, by image, fixed by
  ``seed``); ``test``: a whole benchmark set (Set5 by default), never used for selection.

A grayscale or palette image is converted to RGB (R = G = B, so its Y is its gray level; Set14's
``bridge`` is one), as BasicSR's loaders read it. A side not divisible by ``scale`` is cropped,
never refused (the mod-crop above).

A sample is ``(lr, hr)``: float tensors in [0, 1], (3, h, w) and (3, h * scale, w * scale).
Whole images differ in size, so the val and test loaders take one image per batch.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from leanvision.errors import ConfigError, DataError

__all__ = ["SR_SETS", "NoisyImages", "NoisyPatches", "SRImages", "SRPatches", "build_denoise",
           "build_sr", "hr_lr_pair"]  # fmt: skip

SR_SETS = ("Set5", "Set14", "BSD100", "T91")
SCALES = (2, 3, 4)


def hr_lr_pair(path: str | os.PathLike[str], scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One image as ``(hr, lr)`` uint8 tensors (3, H, W) and (3, H / scale, W / scale): RGB,
    mod-cropped at the top-left to a multiple of ``scale``, LR by PIL bicubic downscaling."""
    with Image.open(path) as img:
        img = img.convert("RGB")  # Set14/bridge.png is single-channel
        w, h = img.size
        hr = img.crop((0, 0, w - w % scale, h - h % scale))
        lr = hr if scale == 1 else hr.resize((hr.width // scale, hr.height // scale), Image.BICUBIC)
        return _chw(hr), _chw(lr)


def _chw(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


class _Pairs(Dataset):
    """Whole (hr, lr) uint8 pairs of a list of images, and the image names."""

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], names: list[str],
                 scale: int) -> None:  # fmt: skip
        self.pairs, self.names, self.scale = pairs, names, scale

    def head(self, n: int | None) -> _Pairs:
        """The first ``n`` images (all if None)."""
        if n is None or n >= len(self.pairs):
            return self
        out = copy.copy(self)
        out.pairs, out.names = self.pairs[:n], self.names[:n]
        return out


class SRImages(_Pairs):
    """Whole images: ``(lr, hr)`` float in [0, 1]."""

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        hr, lr = self.pairs[i]
        return lr.float() / 255.0, hr.float() / 255.0


class SRPatches(_Pairs):
    """``repeat`` random aligned crops per image and epoch: ``(lr, hr)`` float in [0, 1],
    (3, p, p) and (3, p * scale, p * scale); positions and flips come from torch's global
    generator (seeded by the trainer, and checkpointed with it)."""

    def __init__(self, pairs: list[tuple[torch.Tensor, torch.Tensor]], names: list[str],
                 scale: int, patch_size: int, repeat: int, augment: bool) -> None:  # fmt: skip
        fits = [min(lr.shape[1:]) >= patch_size for _, lr in pairs]
        self.left_out = [n for n, ok in zip(names, fits, strict=True) if not ok]
        if not any(fits):
            raise ConfigError(f"patch_size={patch_size}: every LR training image is smaller")
        if self.left_out:
            warnings.warn(
                f"sr: {len(self.left_out)} training image(s) smaller than the {patch_size}-pixel "
                f"LR crop are left out: {self.left_out[:5]} (a smaller patch_size keeps them)",
                stacklevel=4,
            )
        super().__init__([p for p, ok in zip(pairs, fits, strict=True) if ok],
                         [n for n, ok in zip(names, fits, strict=True) if ok], scale)  # fmt: skip
        self.patch_size, self.repeat, self.augment = patch_size, repeat, augment

    def __len__(self) -> int:
        return len(self.pairs) * self.repeat

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        hr, lr = self.pairs[i % len(self.pairs)]
        p, s = self.patch_size, self.scale
        y = int(torch.randint(0, lr.shape[1] - p + 1, ()))
        x = int(torch.randint(0, lr.shape[2] - p + 1, ()))
        lr = lr[:, y : y + p, x : x + p]
        hr = hr[:, y * s : (y + p) * s, x * s : (x + p) * s]
        if self.augment:
            flips = torch.randint(0, 2, (3,)).tolist()
            if flips[0]:
                lr, hr = lr.flip(-1), hr.flip(-1)
            if flips[1]:
                lr, hr = lr.flip(-2), hr.flip(-2)
            if flips[2]:
                lr, hr = lr.transpose(-1, -2), hr.transpose(-1, -2)
        return lr.float() / 255.0, hr.float() / 255.0


def _read_set(root: Path, name: str, scale: int) -> tuple[list, list[str]]:
    folder = root / name
    paths = sorted(folder.glob("*.png"))
    if not paths:
        raise DataError(
            f"no PNG images in {folder}: the sr data folder holds {', '.join(SR_SETS)} "
            "(see ../shared/data/sr/README.md)"
        )
    return [hr_lr_pair(p, scale) for p in paths], [p.stem for p in paths]


def build_sr(
    root: str | os.PathLike[str] | None,
    *,
    val_fraction: float,
    seed: int,
    augment: bool,
    image_size: int | None,
    cache_dir: Any = None,
    scale: int = 2,
    train_set: str = "T91",
    test_set: str = "Set5",
    patch_size: int = 32,
    repeat: int = 16,
    _scale_one: bool = False,
) -> dict[str, Any]:
    """The splits of ``load_data("sr", root, scale=...)`` (see the module docstring).

    Args:
        scale: 2, 3 or 4.
        train_set, test_set: folders of ``root`` (``SR_SETS``); they must differ.
        patch_size: Side of an LR training crop (the HR crop is ``patch_size * scale``). EDSR
            crops 48 from DIV2K; T91's images are small (78 to 508 pixels), so 32: every T91
            image fits at x2, all but 1 at x3 and 7 at x4. Training images whose LR side is
            smaller are left out, with a warning naming them (``train_set.left_out``).
        repeat: Crops per training image and epoch.
        image_size: Must be None or ``patch_size`` (the LR crop side).
    """
    if root is None:
        raise DataError("load_data('sr') needs root= (e.g. ../shared/data/sr)")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"sr root {root} is not a folder (e.g. ../shared/data/sr)")
    if _scale_one:  # denoising: the HR images themselves, no LR made
        scale = 1
    elif scale not in SCALES:
        raise ConfigError(f"scale={scale!r} is not allowed; allowed: {list(SCALES)}")
    for key, value in (("train_set", train_set), ("test_set", test_set)):
        if value not in SR_SETS:
            raise ConfigError(f"{key}={value!r} is not allowed; allowed: {list(SR_SETS)}")
    if train_set == test_set:
        raise ConfigError(f"train_set and test_set are both {train_set!r}: test images must be "
                          "held out")  # fmt: skip
    for key, value in (("patch_size", patch_size), ("repeat", repeat)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be an int >= 1, got {value!r}")
    if image_size is not None and image_size != patch_size:
        raise ConfigError(f"image_size={image_size} for sr is the LR crop: use patch_size=")
    from leanvision.tasks import SuperResolution

    pairs, names = _read_set(root, train_set, scale)
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = int(round(val_fraction * len(pairs)))
    n_val = min(max(n_val, 1 if val_fraction > 0 else 0), len(pairs) - 1)
    val_idx, train_idx = sorted(order[:n_val]), sorted(order[n_val:])
    test_pairs, test_names = _read_set(root, test_set, scale)
    return {
        "train_set": SRPatches([pairs[i] for i in train_idx], [names[i] for i in train_idx],
                               scale, patch_size, repeat, augment),
        "val_set": SRImages([pairs[i] for i in val_idx], [names[i] for i in val_idx], scale),
        "test_set": SRImages(test_pairs, test_names, scale),
        "num_classes": 0,
        "input_size": (3, patch_size, patch_size),
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
        "class_names": [],
        "task": SuperResolution(scale),
        "eval_batch_size": 1,
    }  # fmt: skip


class NoisyPatches(SRPatches):
    """Random crops of the clean images with fresh Gaussian noise (σ on 0-255, not clipped) on
    each draw: ``(noisy, clean)``; noise, positions and flips from torch's global generator."""

    def __init__(self, pairs: list, names: list[str], sigma: float, patch_size: int,
                 repeat: int, augment: bool) -> None:  # fmt: skip
        super().__init__(pairs, names, 1, patch_size, repeat, augment)
        self.sigma = sigma

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, clean = super().__getitem__(i)
        return clean + torch.randn(clean.shape) * (self.sigma / 255.0), clean


class NoisyImages(SRImages):
    """Whole clean images with Gaussian noise fixed per image (seeded by ``seed`` and the
    image's index): the same noisy test set on every run."""

    def __init__(self, pairs: list, names: list[str], sigma: float, seed: int) -> None:
        super().__init__(pairs, names, 1)
        self.sigma, self.seed = sigma, seed

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, clean = super().__getitem__(i)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        return clean + torch.randn(clean.shape, generator=g) * (self.sigma / 255.0), clean


def build_denoise(
    root: str | os.PathLike[str] | None,
    *,
    val_fraction: float,
    seed: int,
    augment: bool,
    image_size: int | None,
    cache_dir: Any = None,
    sigma: float = 30.0,
    train_set: str = "T91",
    test_set: str = "BSD100",
    patch_size: int = 48,
    repeat: int = 16,
) -> dict[str, Any]:
    """The splits of ``load_data("denoise", root, sigma=...)``: Gaussian colour denoising on the
    sr folder's images (IPT's σ = 30 and 50 tasks). ``train``: crops of ``patch_size`` with fresh
    noise each draw; ``val`` (held-out training images) and ``test`` (``test_set``, BSD100 by
    default, the paper's CBSD68 being its 68-image subset): whole images with noise fixed per
    image. Noise is added to the 8-bit images in [0, 1] and not clipped. Scored on RGB."""
    if isinstance(sigma, bool) or not isinstance(sigma, int | float) or not 0 < sigma <= 255:
        raise ConfigError(f"sigma must be a number in (0, 255] (noise on 0-255), got {sigma!r}")
    parts = build_sr(
        root, val_fraction=val_fraction, seed=seed, augment=augment, image_size=image_size,
        cache_dir=cache_dir, train_set=train_set, test_set=test_set, patch_size=patch_size,
        repeat=1, _scale_one=True,
    )  # fmt: skip
    from leanvision.tasks import Denoising

    train, val, test = parts["train_set"], parts["val_set"], parts["test_set"]
    parts.update(
        train_set=NoisyPatches(
            train.pairs, train.names, float(sigma), patch_size, repeat, augment
        ),  # fmt: skip
        val_set=NoisyImages(val.pairs, val.names, float(sigma), seed),
        test_set=NoisyImages(test.pairs, test.names, float(sigma), seed + 1),
        task=Denoising(float(sigma)),
    )
    return parts
