"""Self-supervised pre-training (EsViT) and the frozen-backbone evaluation (k-NN, linear
probe)."""

from .esvit import DINOHead, ESViTConfig, ESViTLearner, backbone_tokens, esvit_loss
from .probe import extract_features, knn_accuracy, linear_probe_accuracy

__all__ = [
    "DINOHead",
    "ESViTConfig",
    "ESViTLearner",
    "backbone_tokens",
    "esvit_loss",
    "extract_features",
    "knn_accuracy",
    "linear_probe_accuracy",
]
