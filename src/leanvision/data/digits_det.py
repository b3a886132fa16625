"""``digits_det``: a detection set built in code from the embedded MNIST digits (no download).

Each canvas (``canvas_size`` square, grey replicated to RGB, in [0, 1]) holds 1 to
``max_digits`` digits, each scaled to a side in ``[min_scale, max_scale]`` pixels and placed at
random, overlapping earlier ones by at most ``max_iou`` (box IoU), over faint Gaussian noise.
A box is the tight box of the scaled digit's ink (pixels above 30 % of full intensity); its
label is the digit (0-9). Training canvases use the training digits of ``mnist5k``, validation
canvases its validation digits and test canvases its 1,000 held-out test digits, so no digit
image appears in two splits. Generation is deterministic in ``seed`` and cached in the process.

A sample is ``(image (3, S, S) float, {"boxes": (n, 4) float xyxy pixels, "labels": (n,)
int64})``; the :class:`~leanvision.tasks.Detection` task batches them as a stacked image
tensor and a list of target dicts.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from leanvision.errors import ConfigError

__all__ = ["DigitsDetection", "build_digits_det", "make_canvases"]


class DigitsDetection(Dataset):
    """Canvases (N, S, S) uint8 and their targets."""

    def __init__(self, canvases: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> None:
        self.canvases, self.targets = canvases, targets

    def __len__(self) -> int:
        return len(self.canvases)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        img = self.canvases[i].float().div(255.0).expand(3, -1, -1).clone()
        t = self.targets[i]
        return img, {"boxes": t["boxes"].clone(), "labels": t["labels"].clone()}

    def head(self, n: int | None) -> DigitsDetection:
        """The first ``n`` canvases (all if None)."""
        if n is None or n >= len(self):
            return self
        return DigitsDetection(self.canvases[:n], self.targets[:n])


def _iou(box: torch.Tensor, boxes: torch.Tensor) -> float:
    if len(boxes) == 0:
        return 0.0
    lt = torch.maximum(box[:2], boxes[:, :2])
    rb = torch.minimum(box[2:], boxes[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area = (box[2:] - box[:2]).prod()
    areas = (boxes[:, 2:] - boxes[:, :2]).prod(1)
    return float((inter / (area + areas - inter)).max())


def make_canvases(
    digits: torch.Tensor,
    labels: torch.Tensor,
    n: int,
    seed: int,
    canvas_size: int = 64,
    max_digits: int = 4,
    min_scale: int = 12,
    max_scale: int = 32,
    max_iou: float = 0.3,
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """``n`` canvases from ``digits`` (M, 28, 28) uint8 and their ``labels`` (M,)."""
    g = torch.Generator().manual_seed(seed)
    s_max = min(max_scale, canvas_size)
    canvases = torch.zeros(n, canvas_size, canvas_size)
    targets = []
    for c in range(n):
        canvas = canvases[c]
        boxes, labs = torch.zeros(0, 4), []
        k = int(torch.randint(1, max_digits + 1, (), generator=g))
        for _ in range(k):
            for _attempt in range(10):
                i = int(torch.randint(len(digits), (), generator=g))
                s = int(torch.randint(min_scale, s_max + 1, (), generator=g))
                img = F.interpolate(digits[i][None, None].float(), size=(s, s), mode="bilinear",
                                    align_corners=False)[0, 0]  # fmt: skip
                ink = img > 0.3 * 255
                if not ink.any():
                    break
                rows, cols = ink.any(1).nonzero()[:, 0], ink.any(0).nonzero()[:, 0]
                y = int(torch.randint(0, canvas_size - s + 1, (), generator=g))
                x = int(torch.randint(0, canvas_size - s + 1, (), generator=g))
                box = torch.tensor([x + cols[0], y + rows[0], x + cols[-1] + 1, y + rows[-1] + 1],
                                   dtype=torch.float32)  # fmt: skip
                if _iou(box, boxes) > max_iou:
                    continue
                region = canvas[y : y + s, x : x + s]
                torch.maximum(region, img, out=region)
                boxes = torch.cat([boxes, box[None]])
                labs.append(int(labels[i]))
                break
        canvas.add_(torch.randn(canvas.shape, generator=g) * 8.0).clamp_(0, 255)
        targets.append({"boxes": boxes, "labels": torch.tensor(labs, dtype=torch.int64)})
    return canvases.round().to(torch.uint8), targets


@functools.cache
def _splits(seed: int, sizes: tuple[int, int, int], options: tuple) -> tuple:
    from leanvision.data.mnist import build_mnist5k

    parts = build_mnist5k(None, val_fraction=0.1, seed=0, augment=False, image_size=None)
    out = []
    for split, n, offset in zip(("train_set", "val_set", "test_set"), sizes, (0, 1, 2),
                                strict=True):  # fmt: skip
        ds = parts[split]
        digits = ds.images[torch.as_tensor(ds.indices)].view(-1, 28, 28).to(torch.uint8)
        labels = torch.as_tensor(ds.labels)[torch.as_tensor(ds.indices)]
        out.append(make_canvases(digits, labels, n, seed * 10 + offset, **dict(options)))
    return tuple(out)


def build_digits_det(
    root: Any,
    *,
    val_fraction: float,
    seed: int,
    augment: bool,
    image_size: int | None,
    cache_dir: Any = None,
    n_train: int = 2000,
    n_val: int = 200,
    n_test: int = 500,
    canvas_size: int = 64,
    max_digits: int = 4,
) -> dict[str, Any]:
    """The splits of ``load_data("digits_det")`` (see the module docstring); ``root``,
    ``val_fraction``, ``augment`` and ``cache_dir`` do not apply (the digits are embedded)."""
    checks = (("n_train", n_train, 1), ("n_val", n_val, 0), ("n_test", n_test, 1),
              ("canvas_size", canvas_size, 32), ("max_digits", max_digits, 1))  # fmt: skip
    for key, value, lo in checks:
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ConfigError(f"{key} must be an int >= {lo}, got {value!r}")
    if image_size not in (None, canvas_size):
        raise ConfigError(f"image_size={image_size}: digits_det's side is canvas_size")
    from leanvision.tasks import Detection

    options = (("canvas_size", canvas_size), ("max_digits", max_digits))
    train, val, test = _splits(seed, (n_train, n_val, n_test), options)
    return {
        "train_set": DigitsDetection(*train),
        "val_set": DigitsDetection(*val),
        "test_set": DigitsDetection(*test),
        "num_classes": 10,
        "input_size": (3, canvas_size, canvas_size),
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
        "class_names": [str(i) for i in range(10)],
        "task": Detection(10),
    }
