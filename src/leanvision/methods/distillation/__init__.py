"""Distillation methods."""

from .kd import KDConfig, KDHook, TeacherHook, kd_loss

__all__ = ["KDConfig", "KDHook", "TeacherHook", "kd_loss"]
