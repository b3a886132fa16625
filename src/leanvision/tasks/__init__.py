"""Tasks: what a batch is, the loss, the metrics and the primary metric (see ``base.py``)."""

from .base import Metrics, Task, move_to, task_metrics
from .classification import Classification, logits_of
from .detection import Detection
from .pu import UNLABELLED, PositiveUnlabelled
from .self_supervised import SelfSupervised
from .super_resolution import Denoising, SuperResolution, y_channel

__all__ = [
    "Classification",
    "Denoising",
    "Detection",
    "Metrics",
    "PositiveUnlabelled",
    "SelfSupervised",
    "SuperResolution",
    "Task",
    "UNLABELLED",
    "logits_of",
    "move_to",
    "task_metrics",
    "y_channel",
]
