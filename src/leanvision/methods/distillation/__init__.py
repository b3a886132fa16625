"""Distillation methods."""

from .kd import KDConfig, KDHook, TeacherHook, kd_loss
from .manifold import manifold_loss, manifold_terms
from .pairing import block_names, pair_layers

__all__ = [
    "KDConfig",
    "KDHook",
    "TeacherHook",
    "block_names",
    "kd_loss",
    "manifold_loss",
    "manifold_terms",
    "pair_layers",
]
