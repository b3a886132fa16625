"""Multi-crop views for self-supervised pre-training (DINO, Caron et al., ICCV 2021; EsViT,
Li et al., ICLR 2022): ``global_crops`` large crops and ``local_crops`` small ones of each
image, each flipped, colour-jittered and grey-scaled at random (DINO's augmentation, less its
blur and solarisation, which at 32x32 erase the image).

Ours: every crop is resized to the model's input size, the local ones too (DINO feeds them at
96 px against 224 px; the models here build their position tables for one size), so the
local views cost as much as the global ones and differ from them in what they show: a
``local_scale`` share of the image instead of ``global_scale``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2 as v

from leanvision.errors import ConfigError
from leanvision.tasks import SelfSupervised

__all__ = ["MultiCrop", "multicrop_bundle"]


class MultiCrop(Dataset):
    """``base``'s images (normalised tensors) as (V, C, H, W) stacks of views: the globals
    first, then the locals; the label passes through (never read by the learner)."""

    def __init__(
        self,
        base: Dataset,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        size: int,
        global_crops: int = 2,
        local_crops: int = 4,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
    ) -> None:
        if global_crops < 1 or local_crops < 0:
            raise ConfigError(
                f"multi-crop needs global_crops >= 1 and local_crops >= 0, got {global_crops} "
                f"and {local_crops}"
            )
        self.base, self.global_crops, self.local_crops = base, global_crops, local_crops
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)
        grey = len(mean) == 3
        colour = [v.RandomApply([v.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8)] if grey else []
        if grey:
            colour.append(v.RandomGrayscale(p=0.2))

        def views(scale: tuple[float, float]) -> v.Compose:
            return v.Compose([v.RandomResizedCrop(size, scale=scale, antialias=True),
                              v.RandomHorizontalFlip(), *colour])  # fmt: skip

        self.global_view, self.local_view = views(global_scale), views(local_scale)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[i]
        raw = (image * self.std + self.mean).clamp(0, 1)
        crops = [self.global_view(raw) for _ in range(self.global_crops)]
        crops += [self.local_view(raw) for _ in range(self.local_crops)]
        return (torch.stack(crops) - self.mean) / self.std, label


def multicrop_bundle(bundle: Any, global_crops: int = 2, local_crops: int = 4) -> Any:
    """``bundle`` whose training split yields multi-crop views, with the self-supervised
    task; val and test unchanged (labelled, for the k-NN and linear-probe evaluation)."""
    size = bundle.input_size[-1]
    train = MultiCrop(bundle.train_set, bundle.mean, bundle.std, size, global_crops, local_crops)
    return dataclasses.replace(bundle, train_set=train, task=SelfSupervised())
