"""Reusable layers (no training or method code here)."""

from .ghost import GhostConv2d

__all__ = ["GhostConv2d"]
