"""Self-supervised pre-training: a batch is ``(views, labels)`` with several augmented views of
each image, (B, V, C, H, W); the labels are never read. The model is a learner that returns its
own loss (a self-distillation learner holds its student, its teacher and their heads: EsViT,
DINO), so the trainer trains it like any other task. Evaluation of what it learnt (k-NN, linear
probe) happens on the backbone afterwards, on labelled splits."""

from __future__ import annotations

from typing import Any

import torch

from leanvision.errors import ConfigError

from .base import Metrics, Task

__all__ = ["SelfSupervised"]


class _LossMetrics(Metrics):
    def __init__(self) -> None:
        self.total, self.n = 0.0, 0

    def update(self, outputs: Any, targets: Any) -> None:
        self.total += float(outputs) * len(targets)
        self.n += len(targets)

    def compute(self) -> dict[str, float]:
        return {"loss": self.total / self.n if self.n else float("nan")}


class SelfSupervised(Task):
    """Batches of ``(views (B, V, C, H, W), labels)``; the model's output is its loss."""

    name = "self_supervised"
    primary = "loss"
    higher_is_better = False
    train_metric_name = "loss"

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        if not isinstance(outputs, torch.Tensor) or outputs.dim() != 0:
            raise ConfigError(
                "a self-supervised task trains a learner whose forward returns its scalar loss; "
                f"got {type(outputs).__name__}"
                + (f" of shape {tuple(outputs.shape)}" if isinstance(outputs, torch.Tensor) else "")
            )
        return outputs

    def metrics(self) -> Metrics:
        return _LossMetrics()
