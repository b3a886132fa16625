"""A person re-identification proxy made from COCO128 (no re-id dataset can be had here; this is
not Market-1501 nor any re-id benchmark): every large enough COCO128 person box is one
identity, seen by two synthetic "cameras".

- Identities: the person boxes at least ``min_height`` x ``min_width`` pixels in the 320-pixel
  letterboxed images; those of the train2017 half train, those of the val2017 half are the
  unseen test identities (re-id's protocol: no test identity is trained on).
- Views: ``views`` crops of each identity's box, alternately by camera 0 and camera 1, each crop
  jittered (centre ±``jitter`` of the box size, scale ±``jitter``) and resized to ``size``;
  camera 1 renders every crop darker, warmer and slightly blurred (a fixed camera style).
  Training views are drawn anew each time; query (camera 0) and gallery (camera 1) views of
  the test identities are fixed by their index.
- Part masks: three horizontal stripes of the true box, head (top 20 %), upper body (20-55 %)
  and lower body (55-100 %), mapped into each crop: the "coarse part masks from the box
  geometry" that stand in for a human parser's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from leanvision.errors import DataError

__all__ = ["PARTS", "PersonViews", "coco_person_identities"]

#: The part stripes, as (top, bottom) fractions of the box height.
PARTS = ((0.0, 0.2), (0.2, 0.55), (0.55, 1.0))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Identity:
    """One person box: its (3, S, S) uint8 letterboxed image and its xyxy box."""

    image: torch.Tensor
    box: tuple[float, float, float, float]


def coco_person_identities(bundle: Any, min_height: int = 48, min_width: int = 16
                           ) -> tuple[list[Identity], list[Identity]]:  # fmt: skip
    """The (train, test) identities of a ``load_data("coco128", ...)`` bundle: the person
    boxes of its train and val splits, and of its test split."""
    if "person" not in bundle.class_names:
        raise DataError("the re-id proxy needs COCO128's 'person' class")
    person = bundle.class_names.index("person")

    def boxes(split: Any) -> list[Identity]:
        out = []
        for image, target in zip(split.images, split.targets, strict=True):
            for box, label in zip(target["boxes"].tolist(), target["labels"].tolist(),
                                  strict=True):  # fmt: skip
                w, h = box[2] - box[0], box[3] - box[1]
                if label == person and h >= min_height and w >= min_width:
                    out.append(Identity(image, tuple(box)))
        return out

    train, test = boxes(bundle.train_set) + boxes(bundle.val_set), boxes(bundle.test_set)
    if len(train) < 2 or len(test) < 2:
        raise DataError(f"too few person boxes: {len(train)} train, {len(test)} test identities")
    return train, test


class PersonViews(Dataset):
    """Item i: the ``views`` crops of identity i, (V, 3, H, W) normalised, and its targets:
    ``pid`` (V,), ``cam`` (V,) and part ``masks`` (V, 3, H, W). ``fixed``: each view drawn
    from a generator seeded by (``seed``, i, view), the same every time."""

    def __init__(self, identities: list[Identity], views: int = 4, size: tuple[int, int] = (64, 32),
                 jitter: float = 0.1, fixed: bool = False, seed: int = 0) -> None:  # fmt: skip
        if views < 2:
            raise DataError(
                f"a re-id identity needs at least 2 views (one per camera), got {views}"
            )
        self.identities, self.views, self.size = identities, views, size
        self.jitter, self.fixed, self.seed = jitter, fixed, seed
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.identities)

    def view(self, i: int, v: int, generator: torch.Generator | None = None) -> tuple:
        """View ``v`` of identity ``i``: (image (3, H, W), masks (3, H, W), camera)."""
        ident, cam = self.identities[i], v % 2
        x1, y1, x2, y2 = ident.box
        w, h = x2 - x1, y2 - y1
        r = (torch.rand(3, generator=generator) * 2 - 1) * self.jitter
        cx, cy, s = x1 + w / 2 + r[0].item() * w, y1 + h / 2 + r[1].item() * h, 1 + r[2].item()
        cw, ch = w * s, h * s
        top, left = cy - ch / 2, cx - cw / 2
        out_h, out_w = self.size
        crop = TF.resized_crop(ident.image.float() / 255.0, int(round(top)), int(round(left)),
                               max(1, int(round(ch))), max(1, int(round(cw))), [out_h, out_w],
                               antialias=True)  # fmt: skip
        if cam == 1:  # camera 1's style: darker, warmer, slightly blurred
            crop = crop * torch.tensor([1.0, 0.85, 0.7]).view(3, 1, 1) * 0.8
            crop = TF.gaussian_blur(crop, [3, 3], [0.8, 0.8])
        ys = top + (torch.arange(out_h) + 0.5) * ch / out_h  # source row of each output row
        xs = left + (torch.arange(out_w) + 0.5) * cw / out_w
        inside_x = ((xs >= x1) & (xs <= x2)).float()
        masks = torch.stack([
            (((ys - y1) / h >= a) & ((ys - y1) / h < b)).float()[:, None] * inside_x[None, :]
            for a, b in PARTS
        ])  # fmt: skip
        return (crop.clamp(0, 1) - self.mean) / self.std, masks, cam

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, masks, cams = [], [], []
        for v in range(self.views):
            g = (torch.Generator().manual_seed(self.seed * 1_000_003 + i * 101 + v)
                 if self.fixed else None)  # fmt: skip
            image, mask, cam = self.view(i, v, g)
            images.append(image)
            masks.append(mask)
            cams.append(cam)
        return torch.stack(images), {
            "pid": torch.full((self.views,), i, dtype=torch.long),
            "cam": torch.tensor(cams),
            "masks": torch.stack(masks),
        }
