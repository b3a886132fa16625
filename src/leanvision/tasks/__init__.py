"""Tasks: what a batch is, the loss, the metrics and the primary metric (see ``base.py``)."""

from .base import Metrics, Task, move_to
from .classification import Classification, logits_of

__all__ = ["Classification", "Metrics", "Task", "logits_of", "move_to"]
