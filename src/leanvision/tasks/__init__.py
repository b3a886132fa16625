"""Tasks: what a batch is, the loss, the metrics and the primary metric (see ``base.py``)."""

from .base import Metrics, Task, move_to, task_metrics
from .classification import Classification, logits_of
from .detection import Detection
from .pu import UNLABELLED, PositiveUnlabelled
from .reid import ReID, batch_hard_triplet, reid_metrics
from .self_supervised import SelfSupervised
from .super_resolution import Denoising, SuperResolution, y_channel

__all__ = [
    "Classification",
    "Denoising",
    "Detection",
    "Metrics",
    "PositiveUnlabelled",
    "ReID",
    "SelfSupervised",
    "SuperResolution",
    "Task",
    "UNLABELLED",
    "batch_hard_triplet",
    "logits_of",
    "move_to",
    "reid_metrics",
    "task_metrics",
    "y_channel",
]
