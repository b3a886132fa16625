"""Self-supervised pre-training (EsViT) and the frozen-backbone evaluation (k-NN, linear
probe). The learner and its ops live in ``models.self_distillation`` and
``layers.self_distillation``."""

from .esvit import ESViTConfig, TeacherMomentum
from .probe import extract_features, knn_accuracy, linear_probe_accuracy

__all__ = [
    "ESViTConfig",
    "TeacherMomentum",
    "extract_features",
    "knn_accuracy",
    "linear_probe_accuracy",
]
