"""Object detection: torchvision's detector interface, COCO mAP from faster-coco-eval.

A batch is ``(images (B, 3, H, W), [target, ...])`` with each target ``{"boxes": (n, 4) xyxy
pixels, "labels": (n,) int64 in [0, num_classes)}``. While training the model is called as
torchvision's detectors are, ``model(images, targets)``, and returns its losses by name (their
sum is the task loss); in evaluation ``model(images)`` returns one ``{"boxes", "scores",
"labels"}`` per image. The metrics are COCO's mAP@[.5:.95], AP50 and AP75 in percent, computed
by faster-coco-eval (pycocotools' algorithm, not our own matcher) over every image seen.
"""

from __future__ import annotations

from typing import Any

import torch

from leanvision.errors import ConfigError, InputShapeError

from .base import Metrics, Task

__all__ = ["Detection"]


class _DetectionMetrics(Metrics):
    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.images: list[dict[str, Any]] = []
        self.gts: list[dict[str, Any]] = []
        self.dets: list[dict[str, Any]] = []

    def update(self, outputs: Any, targets: Any) -> None:
        if not isinstance(outputs, (list, tuple)) or len(outputs) != len(targets):
            raise InputShapeError(
                "a detector returns one {'boxes', 'scores', 'labels'} per image in eval mode, "
                f"got {type(outputs).__name__} for {len(targets)} images"
            )
        for out, tgt in zip(outputs, targets, strict=True):
            image_id = len(self.images) + 1
            self.images.append({"id": image_id, "width": 1, "height": 1})
            for box, label in zip(tgt["boxes"].tolist(), tgt["labels"].tolist(), strict=True):
                x0, y0, x1, y1 = box
                self.gts.append({
                    "id": len(self.gts) + 1, "image_id": image_id, "category_id": int(label) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                })  # fmt: skip
            for box, score, label in zip(out["boxes"].tolist(), out["scores"].tolist(),
                                         out["labels"].tolist(), strict=True):  # fmt: skip
                x0, y0, x1, y1 = box
                self.dets.append({
                    "image_id": image_id, "category_id": int(label) + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score),
                })  # fmt: skip

    def compute(self) -> dict[str, float]:
        nan = float("nan")
        if not self.images or not self.gts:
            return {"map": nan, "map50": nan, "map75": nan}
        from faster_coco_eval import COCO, COCOeval_faster

        gt = COCO()
        gt.dataset = {
            "images": self.images, "annotations": self.gts,
            "categories": [{"id": c + 1, "name": str(c)} for c in range(self.num_classes)],
        }  # fmt: skip
        gt.createIndex()
        if not self.dets:
            return {"map": 0.0, "map50": 0.0, "map75": 0.0}
        dt = gt.loadRes(self.dets)
        ev = COCOeval_faster(gt, dt, "bbox", print_function=lambda *a, **k: None)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        stats = [max(0.0, float(v)) * 100 for v in ev.stats[:3]]
        return {"map": stats[0], "map50": stats[1], "map75": stats[2]}


class Detection(Task):
    """Detection of ``num_classes`` classes (labels 0 .. num_classes - 1)."""

    name = "detection"
    primary = "map"
    higher_is_better = True
    train_metric_name = "loss"

    def __init__(self, num_classes: int) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"num_classes must be an int >= 1, got {num_classes!r}")
        self.num_classes = num_classes

    def collate(self, samples: list[Any]) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """Images stacked (one size a batch), targets kept as a list."""
        images, targets = zip(*samples, strict=True)
        return torch.stack(images), list(targets)

    def model_args(self, inputs: Any, targets: Any, training: bool) -> tuple[Any, ...]:
        """torchvision's detectors take the targets while training."""
        return (inputs, targets) if training else (inputs,)

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        """The sum of the detector's named losses."""
        if not isinstance(outputs, dict) or not outputs:
            raise InputShapeError(
                "a detector returns its losses by name while training (torchvision's "
                f"interface), got {type(outputs).__name__}"
            )
        return sum(outputs.values())

    def metrics(self) -> Metrics:
        return _DetectionMetrics(self.num_classes)

    def __repr__(self) -> str:
        return f"Detection(num_classes={self.num_classes})"
