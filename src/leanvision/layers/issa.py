"""Interlaced Sparse Self-Attention (ISSA) and the dense non-local block it replaces.

Interlaced Sparse Self-Attention for Semantic Segmentation, Huang, Yuan, Guo et al., 2019
(arXiv 1907.12273); official code: ``openseg-group/openseg.pytorch``,
``lib/models/modules/isa_block.py``.

Dense self-attention (the non-local block) on an ``H×W`` map builds an ``HW×HW`` affinity
matrix. ISSA factorises it into two sparse attentions. Cut the (zero-padded) map into local
blocks of ``P_h×P_w`` pixels; there are ``Q_h×Q_w`` blocks (``Q = ceil(H / P)``).

1. Long range: the pixels with the same position inside their block, one from each block,
   form a group (``Q_h×Q_w`` pixels ``P_h``/``P_w`` apart: an interlaced, strided sub-sampling
   of the map); self-attention runs inside each of the ``P_h·P_w`` groups.
2. Short range: self-attention runs inside each of the ``Q_h·Q_w`` local blocks.

Every block holds one member of every long-range group, so after both steps each output
pixel depends on every input pixel, while the affinity matrices hold
``HW·(Q_hQ_w + P_hP_w)`` entries instead of ``(HW)²`` (at 128×128 with ``P = 8``: 8.4M vs
268M). ``P`` is the paper's ``P_h, P_w`` and the official ``down_factor``: the block size and
the stride between members of a long-range group.

As in the official code, each step is a full self-attention block with its own projections
(query and key: two 1×1 conv-BN-ReLU layers each; value: one 1×1 conv; output: 1×1
conv-BN-ReLU; affinities scaled by ``key_channels**-0.5``), and the block's output fuses the
input with the context: ``conv1×1-BN-ReLU(cat[x, context])`` followed by ``Dropout2d``. Sizes
not divisible by ``P`` are zero-padded (split evenly between both sides) before the grouping
and cropped back afterwards, as in the official code.

:class:`NonLocal2d` is the dense baseline with the same projections and the same fusion.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from leanvision.errors import ConfigError

__all__ = ["InterlacedSparseAttention", "NonLocal2d", "SelfAttention2d"]


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SelfAttention2d(nn.Module):
    """Dense self-attention over all positions of each map (official ``SelfAttentionBlock2D``).

    Returns the context only (no residual); the caller fuses it with its input.

    Args:
        in_channels: channels of the input map.
        key_channels: width of queries and keys.
        value_channels: width of values.
        out_channels: channels of the output context.
        fused: use ``F.scaled_dot_product_attention`` (a fused kernel that need not hold the
            affinity matrix) instead of the explicit ``softmax(QKᵀ)V`` of the official code.
            Both compute the same function; the explicit form is the default so that memory
            measurements show the cost the paper's comparison is about.
    """

    def __init__(
        self,
        in_channels: int,
        key_channels: int,
        value_channels: int,
        out_channels: int,
        fused: bool = False,
    ) -> None:
        super().__init__()
        self.key_channels, self.value_channels = key_channels, value_channels
        self.fused = fused
        # Two conv-BN-ReLU layers for queries and keys, one linear conv for values (official).
        self.query = nn.Sequential(
            _conv_bn_relu(in_channels, key_channels), _conv_bn_relu(key_channels, key_channels)
        )
        self.key = nn.Sequential(
            _conv_bn_relu(in_channels, key_channels), _conv_bn_relu(key_channels, key_channels)
        )
        self.value = nn.Conv2d(in_channels, value_channels, 1, bias=False)
        self.proj = _conv_bn_relu(value_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, h, w) → (N, out_channels, h, w); each map attends over its h·w."""
        n, _, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (N, hw, key_channels)
        k = self.key(x).flatten(2).transpose(1, 2)
        v = self.value(x).flatten(2).transpose(1, 2)  # (N, hw, value_channels)
        if self.fused:
            ctx = F.scaled_dot_product_attention(q, k, v)  # default scale = key_channels**-0.5
        else:
            attn = (q @ k.transpose(1, 2)) * self.key_channels**-0.5  # (N, hw, hw)
            ctx = attn.softmax(dim=-1) @ v
        ctx = ctx.transpose(1, 2).reshape(n, self.value_channels, h, w)
        return self.proj(ctx)


def _fusion(in_channels: int, out_channels: int, dropout: float) -> nn.Sequential:
    """``cat[x, context]`` → 1×1 conv-BN-ReLU → Dropout2d: the official residual path."""
    return nn.Sequential(
        nn.Conv2d(in_channels + out_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Dropout2d(dropout),
    )


class NonLocal2d(nn.Module):
    """Dense non-local block: one self-attention over all ``H·W`` positions, fused with x.

    The baseline ISSA is compared with: the same projections and fusion as
    :class:`InterlacedSparseAttention`, but one ``HW×HW`` affinity matrix per image.

    Args:
        channels: input channels.
        key_channels: width of queries and keys (default ``channels // 2``).
        value_channels: width of values (default ``channels``).
        out_channels: output channels (default ``channels``).
        dropout: Dropout2d rate after the fusion.
        fused: fused attention kernel (see :class:`SelfAttention2d`).
    """

    def __init__(
        self,
        channels: int,
        key_channels: int | None = None,
        value_channels: int | None = None,
        out_channels: int | None = None,
        dropout: float = 0.0,
        fused: bool = False,
    ) -> None:
        super().__init__()
        key_channels = key_channels or max(1, channels // 2)
        value_channels = value_channels or channels
        self.out_channels = out_channels or channels
        self.attention = SelfAttention2d(
            channels, key_channels, value_channels, self.out_channels, fused
        )
        self.fuse = _fusion(channels, self.out_channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, channels, H, W) → (B, out_channels, H, W)."""
        return self.fuse(torch.cat([x, self.attention(x)], dim=1))


class InterlacedSparseAttention(nn.Module):
    """ISSA block: long-range attention within interlaced groups, then within local blocks.

    Args:
        channels: input channels.
        key_channels: width of queries and keys (default ``channels // 2``, as the official
            ISANet head: 512 → 256).
        value_channels: width of values (default ``channels``).
        down_factors: ``(P_h, P_w)``, the local block size, which is also the stride between
            the members of a long-range group (official ``down_factor``; paper default 8×8).
        out_channels: output channels (default ``channels``).
        dropout: Dropout2d rate after the fusion.
        fused: fused attention kernels (see :class:`SelfAttention2d`).
    """

    def __init__(
        self,
        channels: int,
        key_channels: int | None = None,
        value_channels: int | None = None,
        down_factors: tuple[int, int] = (8, 8),
        out_channels: int | None = None,
        dropout: float = 0.0,
        fused: bool = False,
    ) -> None:
        super().__init__()
        if len(down_factors) != 2 or min(down_factors) < 1:
            raise ConfigError(f"down_factors must be two ints >= 1, got {down_factors!r}")
        self.down_factors = (int(down_factors[0]), int(down_factors[1]))
        key_channels = key_channels or max(1, channels // 2)
        value_channels = value_channels or channels
        self.out_channels = out_channels or channels
        self.long_range = SelfAttention2d(
            channels, key_channels, value_channels, self.out_channels, fused
        )
        self.short_range = SelfAttention2d(
            self.out_channels, key_channels, value_channels, self.out_channels, fused
        )
        self.fuse = _fusion(channels, self.out_channels, dropout)

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Zero-pad H, W up to multiples of P, split evenly; returns the map and top/left pads."""
        h, w = x.shape[-2:]
        ph, pw = self.down_factors
        pad_h, pad_w = -h % ph, -w % pw
        top, left = pad_h // 2, pad_w // 2
        if pad_h or pad_w:  # shapes are static under torch.export, so this branch is too
            x = F.pad(x, (left, pad_w - left, top, pad_h - top))
        return x, top, left

    def _long_range(self, x: torch.Tensor) -> torch.Tensor:
        """Padded (B, C, Qh·Ph, Qw·Pw) → context (B, Ph, Pw, C', Qh, Qw), one map per group."""
        b, c, hh, ww = x.shape
        ph, pw = self.down_factors
        qh, qw = hh // ph, ww // pw
        # pixel (a·Ph + i, b·Pw + j) belongs to group (i, j) at position (a, b) inside it
        groups = x.view(b, c, qh, ph, qw, pw).permute(0, 3, 5, 1, 2, 4)
        ctx = self.long_range(groups.reshape(b * ph * pw, c, qh, qw))
        return ctx.view(b, ph, pw, -1, qh, qw)

    def _short_range(self, ctx: torch.Tensor) -> torch.Tensor:
        """Context (B, Ph, Pw, C', Qh, Qw) → (B, C', Qh·Ph, Qw·Pw) after attention per block."""
        b, ph, pw, c, qh, qw = ctx.shape
        # the same pixels regrouped by local block (a, b), keeping (i, j) as the block's grid
        blocks = ctx.permute(0, 4, 5, 3, 1, 2).reshape(b * qh * qw, c, ph, pw)
        out = self.short_range(blocks).view(b, qh, qw, -1, ph, pw)
        return out.permute(0, 3, 1, 4, 2, 5).reshape(b, -1, qh * ph, qw * pw)

    def _crop(self, y: torch.Tensor, top: int, left: int, h: int, w: int) -> torch.Tensor:
        return y[:, :, top : top + h, left : left + w]

    def forward_long_range(self, x: torch.Tensor) -> torch.Tensor:
        """Context after the long-range step alone, back in image layout (for analysis).

        (B, channels, H, W) → (B, out_channels, H, W). Output pixel (y, x) depends only on
        the input pixels of its interlaced group (same padded coordinates modulo P).
        """
        h, w = x.shape[-2:]
        xp, top, left = self._pad(x)
        ctx = self._long_range(xp)
        b, ph, pw, c, qh, qw = ctx.shape
        ctx = ctx.permute(0, 3, 4, 1, 5, 2).reshape(b, c, qh * ph, qw * pw)
        return self._crop(ctx, top, left, h, w)

    def forward_context(self, x: torch.Tensor) -> torch.Tensor:
        """Context after both steps, before the fusion: (B, C, H, W) → (B, out_channels, H, W)."""
        h, w = x.shape[-2:]
        xp, top, left = self._pad(x)
        # padded positions stay in the computation between the two steps (official code)
        return self._crop(self._short_range(self._long_range(xp)), top, left, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, channels, H, W) → (B, out_channels, H, W)."""
        return self.fuse(torch.cat([x, self.forward_context(x)], dim=1))

    def extra_repr(self) -> str:
        return f"down_factors={self.down_factors}"
