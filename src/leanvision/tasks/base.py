"""The task seam: what a batch is, the loss, the metrics and which metric is primary.

The trainer, :func:`leanvision.evaluate`, the report and a search's objective read a
:class:`Task`, so super-resolution, detection or self-supervised training add a task, not a new
loop. Metrics come from torchmetrics (or faster-coco-eval, scikit-image) where they have them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["Metrics", "Task", "move_to", "task_metrics"]


class Metrics(ABC):
    """An accumulator of a task's evaluation metrics over batches."""

    @abstractmethod
    def update(self, outputs: Any, targets: Any) -> None:
        """Add one batch (the model's raw outputs and the batch's targets)."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """The metrics over every batch so far, by name; NaN for each when there were none."""


class Task(ABC):
    """What one kind of training and evaluation needs to know.

    Attributes:
        name: Short name (``"classification"``, ``"super_resolution"``, ...).
        primary: The metric (a key of :meth:`Metrics.compute`) that picks the best checkpoint
            and that a search optimises.
        higher_is_better: Direction of ``primary``.
        train_metric_name: Name of the running metric :meth:`train_metric` reports (the
            trainer's history row holds ``train_<name>``).
    """

    name: str = "task"
    primary: str = "loss"
    higher_is_better: bool = False
    train_metric_name: str = "loss"

    def split_batch(self, batch: Any) -> tuple[Any, Any]:
        """A loader item as ``(inputs, targets)``; default: a 2-sequence ``(x, y)``."""
        inputs, targets = batch
        return inputs, targets

    def model_args(self, inputs: Any, targets: Any, training: bool) -> tuple[Any, ...]:
        """The positional arguments of the model's forward for a batch; default
        ``(inputs,)``. A detector takes its targets too while training (torchvision's)."""
        return (inputs,)

    def collate(self, samples: list[Any]) -> Any:
        """Put a loader batch together from dataset items; default: torch's default collate."""
        from torch.utils.data import default_collate

        return default_collate(samples)

    def batch_size(self, inputs: Any, targets: Any) -> int:
        """Number of samples in a batch (weights the epoch means)."""
        first = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        return int(first.shape[0])

    @abstractmethod
    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        """The task loss of a batch (a scalar, the batch mean) from the model's raw output."""

    @abstractmethod
    def metrics(self) -> Metrics:
        """A fresh accumulator of the evaluation metrics."""

    def train_metric(self, outputs: Any, targets: Any, n: int) -> torch.Tensor:
        """Sum over the batch of ``n`` samples of the running training metric (the trainer
        divides the epoch's sum by its sample count); default: the loss times ``n``."""
        return self.loss(outputs, targets).detach().double() * n

    def better(self, value: float, best: float | None) -> bool:
        """Whether ``value`` of the primary metric is at least as good as ``best``."""
        if best is None or best != best:  # no best yet, or NaN
            return True
        return value >= best if self.higher_is_better else value <= best


def task_metrics(scores: Mapping[str, float]) -> dict[str, float]:
    """What a results row stores under ``metrics`` from :func:`leanvision.evaluate`'s dict:
    every metric but top-1/top-5 (their own columns), the loss and the sample count."""
    return {k: float(v) for k, v in scores.items() if k not in ("top1", "top5", "loss", "n")}


def move_to(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor in it (nested tuples, lists, dicts) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: move_to(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a namedtuple
        return type(obj)(*(move_to(v, device) for v in obj))
    if isinstance(obj, tuple | list):
        return type(obj)(move_to(v, device) for v in obj)
    return obj
