"""Per-sample image transforms.

All randomness comes from torch's global RNG (``torch.randint``/``torch.rand``), so a trainer
that reseeds torch before an epoch gets the same augmented batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "TensorImageTransform", "folder_transform"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TensorImageTransform:
    """uint8 image (C, H, W) -> normalised float image (C, S, S), optionally augmented.

    Args:
        mean: Per-channel mean, in [0, 1] pixel units.
        std: Per-channel standard deviation, in [0, 1] pixel units.
        pad: If > 0, random translation: zero-pad by ``pad`` pixels, then randomly crop back to
            the input size.
        hflip: Random horizontal flip with probability 0.5.
        size: If given and different from the input, resize to (size, size) (bilinear,
            antialiased), after the augmentation.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        pad: int = 0,
        hflip: bool = False,
        size: int | None = None,
    ) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.pad, self.hflip, self.size = pad, hflip, size

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        _, h, w = img.shape
        if self.pad > 0:
            p = self.pad
            top, left = torch.randint(0, 2 * p + 1, (2,)).tolist()
            img = F.pad(img, (p, p, p, p))[:, top : top + h, left : left + w]
        if self.hflip and torch.rand(()) < 0.5:
            img = img.flip(-1)
        x = img.float().div_(255.0)
        if self.size is not None and (h, w) != (self.size, self.size):
            x = F.interpolate(
                x[None],
                size=(self.size, self.size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )[0]
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(pad={self.pad}, hflip={self.hflip}, size={self.size}, "
            f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})"
        )


def folder_transform(
    image_size: int,
    train: bool,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop_pct: float = 0.875,
) -> v2.Compose:
    """ImageNet-style transform for PIL images of any size.

    Train: RandomResizedCrop(image_size) + horizontal flip. Eval: resize the short side to
    ``floor(image_size / crop_pct)``, then center-crop ``image_size``. Both end normalised.
    """
    if train:
        geometry = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        resize = math.floor(image_size / crop_pct)
        geometry = [v2.Resize(resize, antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose(
        [
            v2.ToImage(),
            *geometry,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean), std=list(std)),
        ]
    )
