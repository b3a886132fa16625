"""The engine: one trainer with hooks, checkpoints, distributed set-up, evaluation."""

from .checkpoint import load_checkpoint, save_checkpoint, training_note, training_record
from .evaluate import evaluate, model_device
from .features import FeatureRecorder, resolve_module
from .hooks import Hook, StepContext
from .seed import seed_everything
from .trainer import TrainConfig, Trainer, TrainResult, train

__all__ = [
    "FeatureRecorder",
    "Hook",
    "StepContext",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "evaluate",
    "model_device",
    "load_checkpoint",
    "resolve_module",
    "save_checkpoint",
    "seed_everything",
    "train",
    "training_note",
    "training_record",
]
