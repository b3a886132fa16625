"""Bring student and teacher features to the same tokens, for feature and relation losses.

A feature is either a CNN map (B, C, H, W) or a transformer's tokens (B, N, C) whose leading
tokens may be extra (class / distillation tokens) before a square grid of patch tokens. To
compare two features token by token:

1. maps become tokens in raster order; extra leading tokens are dropped (their number is given,
   or inferred as ``N − ⌊√N⌋²``, which is right for square grids with fewer than 2√N + 1 extras:
   DeiT's 1 and 2, CaiT's 0);
2. when the grids differ by an integer factor r, the finer one is merged to the coarser by
   space-to-depth (each r × r block of tokens becomes one token with r²·C channels), as the
   official manifold-distillation code's ``merge`` does for teachers with more patches.

Manifold distillation (Hao et al., NeurIPS 2022, arXiv 2107.01378) drops the student's extra
tokens only; here both sides' extras are dropped, which matters only for teachers that carry a
class token through their blocks (a DeiT teacher, not the paper's CaiT).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from leanvision.errors import ConfigError

__all__ = ["align_tokens", "as_tokens", "merge_grid"]

Grid = tuple[int, int]


def as_tokens(
    feature: Any, extra_tokens: int | None = None, *, who: str = "feature"
) -> tuple[torch.Tensor, Grid | None]:
    """``(tokens (B, N, C), grid)`` of a map (B, C, H, W) or token tensor (B, N, C).

    Args:
        feature: the recorded module output (a tensor; a tuple's first item is used).
        extra_tokens: leading non-patch tokens of a (B, N, C) feature; None infers them.
        who: name used in error messages.

    Returns:
        The patch tokens and their (H, W) grid (None when the tokens do not form a square grid).
    """
    if isinstance(feature, (tuple, list)) and feature and isinstance(feature[0], torch.Tensor):
        feature = feature[0]
    if not isinstance(feature, torch.Tensor):
        raise ConfigError(f"{who} is a {type(feature).__name__}, not a tensor; pick another layer")
    if feature.dim() == 4:
        b, c, h, w = feature.shape
        return feature.flatten(2).transpose(1, 2), (h, w)
    if feature.dim() != 3:
        raise ConfigError(
            f"{who} has shape {tuple(feature.shape)}; expected a map (B, C, H, W) or tokens "
            "(B, N, C)"
        )
    n = feature.shape[1]
    if extra_tokens is None:
        side = math.isqrt(n)
        extra_tokens = n - side * side
    if not 0 <= extra_tokens < n:
        raise ConfigError(f"{who}: {extra_tokens} extra tokens of {n} leaves no patch tokens")
    patches = n - extra_tokens
    side = math.isqrt(patches)
    grid = (side, side) if side * side == patches else None
    return feature[:, extra_tokens:], grid


def merge_grid(tokens: torch.Tensor, grid: Grid, factor: int) -> torch.Tensor:
    """Space-to-depth on tokens: (B, H·W, C) on ``grid`` → (B, H·W / r², C·r²)."""
    b, n, c = tokens.shape
    h, w = grid
    x = tokens.transpose(1, 2).reshape(b, c, h, w)
    return F.pixel_unshuffle(x, factor).flatten(2).transpose(1, 2)


def align_tokens(
    student: Any,
    teacher: Any,
    *,
    student_extra_tokens: int | None = None,
    teacher_extra_tokens: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher patch tokens with equal counts (widths may still differ).

    Raises:
        ConfigError: features that are not maps or tokens, or grids that no integer merge
            makes equal (pair layers of compatible resolution instead).
    """
    s, gs = as_tokens(student, student_extra_tokens, who="student feature")
    t, gt = as_tokens(teacher, teacher_extra_tokens, who="teacher feature")
    if s.shape[0] != t.shape[0]:
        raise ConfigError(f"student and teacher batches differ: {s.shape[0]} vs {t.shape[0]}")
    if s.shape[1] == t.shape[1]:
        return s, t
    if gs is not None and gt is not None:
        if gs[0] % gt[0] == 0 and gs[1] % gt[1] == 0 and gs[0] // gt[0] == gs[1] // gt[1]:
            return merge_grid(s, gs, gs[0] // gt[0]), t
        if gt[0] % gs[0] == 0 and gt[1] % gs[1] == 0 and gt[0] // gs[0] == gt[1] // gs[1]:
            return s, merge_grid(t, gt, gt[0] // gs[0])
    raise ConfigError(
        f"cannot align student tokens {tuple(s.shape)} (grid {gs}) with teacher tokens "
        f"{tuple(t.shape)} (grid {gt}): grids must be equal or differ by one integer factor; "
        "pair layers of compatible resolution, or give the extra token counts"
    )
