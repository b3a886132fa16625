"""Distillation methods."""

from .kd import KDConfig, KDHook, TeacherHook, kd_loss
from .manifold import manifold_loss, manifold_terms

__all__ = ["KDConfig", "KDHook", "TeacherHook", "kd_loss", "manifold_loss", "manifold_terms"]
