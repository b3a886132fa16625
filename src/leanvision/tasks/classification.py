"""Image classification: cross-entropy, top-1/top-5 accuracy (torchmetrics), primary top-1."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from leanvision.errors import ConfigError

from .base import Metrics, Task

__all__ = ["Classification", "logits_of"]


def logits_of(outputs: Any) -> torch.Tensor:
    """The logits in a model's raw output: the tensor, or the first item of a tuple (e.g. a
    DeiT's (class, distillation) heads in training)."""
    return outputs if isinstance(outputs, torch.Tensor) else outputs[0]


class _ClassificationMetrics(Metrics):
    """Top-1 and top-5 accuracy in % (torchmetrics, micro averaged: the fraction of samples
    whose label is among the k best logits) and the mean cross-entropy."""

    def __init__(self) -> None:
        self.acc: dict[int, MulticlassAccuracy] = {}
        self.loss_sum, self.n = 0.0, 0

    def update(self, outputs: Any, targets: torch.Tensor) -> None:
        logits = logits_of(outputs).float()
        if not self.acc:  # the class count comes with the first batch
            c = logits.shape[1]
            self.acc = {
                k: MulticlassAccuracy(c, top_k=min(k, c), average="micro", validate_args=False)
                for k in (1, 5)
            }
        for metric in self.acc.values():
            metric.to(logits.device).update(logits, targets)
        self.loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
        self.n += targets.numel()

    def compute(self) -> dict[str, float]:
        if self.n == 0:
            return {"top1": float("nan"), "top5": float("nan"), "loss": float("nan")}
        return {
            "top1": 100.0 * float(self.acc[1].compute().double()),
            "top5": 100.0 * float(self.acc[5].compute().double()),
            "loss": self.loss_sum / self.n,
        }


class Classification(Task):
    """Batches of ``(images, class indices)``; the model returns logits (or a tuple whose
    first item is the logits).

    Args:
        label_smoothing: Of the training cross-entropy (evaluation uses plain CE).
    """

    name = "classification"
    primary = "top1"
    higher_is_better = True
    train_metric_name = "top1"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)

    def __repr__(self) -> str:
        return f"Classification(label_smoothing={self.label_smoothing})"

    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits_of(outputs).float(), targets, label_smoothing=self.label_smoothing
        )

    def metrics(self) -> Metrics:
        return _ClassificationMetrics()

    def train_metric(self, outputs: Any, targets: torch.Tensor, n: int) -> torch.Tensor:
        """Correct top-1 predictions in the batch (×100 / n is the running top-1 %)."""
        hits = logits_of(outputs).detach().argmax(1) == targets
        return 100.0 * hits.sum().double()
