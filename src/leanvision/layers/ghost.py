"""The Ghost module as a drop-in replacement for a convolution.

GhostNet: More Features from Cheap Operations, Han et al., CVPR 2020 (arXiv 1911.11907), §3.1:
a primary convolution produces ``m = ceil(n / s)`` intrinsic feature maps, a cheap depthwise
``d×d`` convolution turns each into ``s − 1`` ghost maps, and the concatenation (cut to ``n``)
replaces the ``n`` outputs of the original convolution. Cost ≈ 1/s of the original.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leanvision import kernels
from leanvision.derived import DerivedCache
from leanvision.errors import ConfigError
from leanvision.layers.conv3x3 import check_fused_call
from leanvision.opcounts import register_op_handler

__all__ = ["FusedGhost3x3", "GhostConv2d", "ghost_eligible"]


class GhostConv2d(nn.Module):
    """Ghost module with the interface of ``nn.Conv2d`` (same input and output shapes).

    Like the official Ghost-ResNet, the module is linear (no inner BN/ReLU) so it replaces a
    convolution inside the host network's own conv-BN-ReLU pattern. ``inner_bn=True`` adds a
    BatchNorm after the primary convolution, as in the GhostNet bottleneck's Ghost module.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, bias: as nn.Conv2d.
        ratio: s, outputs per intrinsic map (s=2 halves the primary convolution).
        dw_size: d, kernel of the cheap depthwise convolution.
        inner_bn: BatchNorm between the primary and the cheap operation.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | str = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = False,
        ratio: int = 2,
        dw_size: int = 3,
        inner_bn: bool = False,
    ) -> None:
        super().__init__()
        if ratio < 1:
            raise ValueError(f"ratio s must be >= 1, got {ratio}")
        if dw_size < 1 or dw_size % 2 == 0:
            raise ValueError(f"dw_size d must be odd and >= 1, got {dw_size}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.ratio, self.dw_size = ratio, dw_size
        self.init_channels = math.ceil(out_channels / ratio)
        self.new_channels = self.init_channels * (ratio - 1)
        self.primary = nn.Conv2d(
            in_channels, self.init_channels, kernel_size, stride, padding, dilation, bias=False
        )
        self.primary_bn = nn.BatchNorm2d(self.init_channels) if inner_bn else nn.Identity()
        self.cheap = (
            nn.Conv2d(
                self.init_channels,
                self.new_channels,
                dw_size,
                1,
                dw_size // 2,
                groups=self.init_channels,
                bias=False,
            )
            if self.new_channels > 0
            else None
        )
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    @classmethod
    def like(
        cls, conv: nn.Conv2d, ratio: int = 2, dw_size: int = 3, inner_bn: bool = False
    ) -> GhostConv2d:
        """A Ghost module with ``conv``'s channels, kernel, stride, padding, dilation and bias.

        The caller checks that ``conv`` is a dense (ungrouped) convolution.
        """
        return cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            bias=conv.bias is not None,
            ratio=ratio,
            dw_size=dw_size,
            inner_bn=inner_bn,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) → (B, out_channels, H', W')."""
        x1 = self.primary_bn(self.primary(x))
        if self.cheap is not None:
            x2 = self.cheap(x1)
            extra = self.out_channels - self.init_channels
            if self.new_channels > extra:  # ceil(n/s)·s > n: drop the surplus ghost maps
                x2 = x2[:, :extra]
            # cat after the cut: the output stays contiguous in the caller's memory format
            x1 = torch.cat([x1, x2], dim=1)
        if self.bias is not None:
            x1 = x1 + self.bias.view(1, -1, 1, 1)
        return x1

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, s={self.ratio}, d={self.dw_size}"


def _plain3x3(conv: nn.Module, groups: int = 1, strides: tuple = ((1, 1),)) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride in strides
        and conv.padding in ((1, 1), "same")
        and conv.dilation == (1, 1)
        and conv.groups == groups
        and conv.padding_mode == "zeros"
        and conv.weight.dtype == torch.float32
        and conv.weight.device.type == "cpu"
    )


def ghost_eligible(primary: nn.Module, cheap: nn.Module, norm: nn.Module) -> bool:
    """Whether :class:`FusedGhost3x3` computes ``norm(cat([primary(x), cheap(primary(x))]))``:
    a 3×3 primary convolution of stride 1 or 2 (padding 1) with a multiple of 4 outputs m, a
    3×3 stride-1 depthwise cheap operation with m outputs (ratio s = 2, d = 3), and an
    eval-mode BatchNorm over the 2m."""
    if not (_plain3x3(primary, strides=((1, 1), (2, 2))) and isinstance(cheap, nn.Conv2d)):
        return False
    m = primary.out_channels
    return (
        m % 4 == 0
        and _plain3x3(cheap, groups=m)
        and cheap.in_channels == m
        and cheap.out_channels == m
        and type(norm) is nn.BatchNorm2d
        and norm.num_features == 2 * m
        and not norm.training
        and norm.track_running_stats
        and norm.running_var is not None
    )


class FusedGhost3x3(nn.Module):
    """A Ghost module (s = 2, d = 3), the host's BatchNorm after it, and the residual add and
    ReLU that follow, as one inference op over NHWC (``ghost3x3_nhwc`` in
    ``kernels/csrc/conv3x3.cpp``): the primary's maps stay in a scratch, both halves are
    written into one output (no concatenation copy), and the BN is folded per half, the
    intrinsic half as a scale and shift after the primary (the cheap operation reads the
    primary's own output), the ghost half into the cheap weights.

    Without the kernel (no AVX-512, autograd, another device or dtype) the same arithmetic
    runs through ``F.conv2d`` and a recording profiler is told (``kernels.fell_back``).
    Buffers keep the convolutions' layouts; the packed copies are derived, rebuilt whenever
    a buffer changes.

    Raises (forward):
        InputShapeError: ``x`` is not (N, C_in, H, W).
    """

    def __init__(
        self,
        primary: nn.Conv2d,
        cheap: nn.Conv2d,
        norm: nn.BatchNorm2d,
        relu: bool = False,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if not ghost_eligible(primary, cheap, norm):
            raise ConfigError(
                "FusedGhost3x3 cannot compute this Ghost module (see "
                "leanvision.layers.ghost.ghost_eligible)"
            )
        self.relu, self.residual = relu, residual
        self.stride = primary.stride[0]
        m = primary.out_channels
        with torch.no_grad():
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            shift = norm.bias - norm.running_mean * scale
            wp = primary.weight.detach().clone()
            bp = primary.bias.detach().clone() if primary.bias is not None else wp.new_zeros(m)
            wc = cheap.weight.detach() * scale[m:].view(-1, 1, 1, 1)
            bc = shift[m:] + (scale[m:] * cheap.bias if cheap.bias is not None else 0.0)
        self.register_buffer("w_primary", wp)
        self.register_buffer("b_primary", bp)
        self.register_buffer("scale1", scale[:m].detach().clone())
        self.register_buffer("bias1", shift[:m].detach().clone())
        self.register_buffer("w_cheap", wc.clone())
        self.register_buffer("bias2", bc.detach().clone())
        self._packed: DerivedCache[tuple[torch.Tensor, torch.Tensor]] = DerivedCache()

    @property
    def packed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(primary (9·C, m) as [ky][kx][ci][co], cheap (9, m) as [ky][kx][c])."""
        return self._packed.get((self.w_primary, self.w_cheap), self._pack)

    def _pack(self) -> tuple[torch.Tensor, torch.Tensor]:
        wp, wc = self.w_primary.detach(), self.w_cheap.detach()
        primary = wp.permute(2, 3, 1, 0).reshape(-1, wp.shape[0]).contiguous()
        return primary, wc.reshape(wc.shape[0], 9).t().contiguous()

    def kernel_call(self) -> tuple[Any, tuple[torch.Tensor, ...], bool, tuple[int, ...]]:
        """The native op, frozen copies of its weight arguments, ``relu`` and the op's trailing
        scalar (the stride), as :meth:`FusedConv3x3.kernel_call
        <leanvision.layers.FusedConv3x3.kernel_call>`."""
        wp, wc = self.packed
        weights = (wp, self.b_primary, self.scale1, self.bias1, wc, self.bias2)
        return (
            torch.ops.leanvision.ghost3x3_nhwc.default,
            tuple(t.detach().clone() for t in weights),
            self.relu,
            (self.stride,),
        )

    def extra_repr(self) -> str:
        m, c = self.w_primary.shape[:2]
        return (
            f"{c}, {2 * m}, s=2, d=3, stride={self.stride}, relu={self.relu}, "
            f"residual={self.residual}"
        )

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """(N, C_in, H, W) → (N, 2m, H, W)."""
        m, c = self.w_primary.shape[:2]
        reason = check_fused_call(self, f"FusedGhost3x3({c}, {2 * m})", x, c, residual)
        if reason is None:
            wp, wc = self.packed
            return torch.ops.leanvision.ghost3x3_nhwc(
                x, wp, self.b_primary, self.scale1, self.bias1, wc, self.bias2, residual,
                self.relu, self.stride,
            )  # fmt: skip
        kernels.fell_back(self, reason)
        p = F.conv2d(x, self.w_primary, self.b_primary, stride=self.stride, padding=1)
        return ghost_epilogue(self, p, residual)


def ghost_epilogue(layer: nn.Module, p: torch.Tensor, residual: torch.Tensor | None) -> Any:
    """The PyTorch form of the fused Ghost layers' epilogue on the primary's output ``p``:
    ``act(cat([scale1 · p + bias1, cheap(p) + bias2]) (+ residual))``, with ``layer``'s
    ``scale1``, ``bias1``, ``w_cheap``, ``bias2`` and ``relu``."""
    y1 = p * layer.scale1.view(1, -1, 1, 1) + layer.bias1.view(1, -1, 1, 1)
    y2 = F.conv2d(p, layer.w_cheap, layer.bias2, padding=1, groups=p.shape[1])
    y = torch.cat([y1, y2], dim=1)
    if residual is not None:
        y = y + residual
    return F.relu(y) if layer.relu else y


def _ghost3x3_flops(x: Any, wp: Any, *rest: Any, out_shape: Any = None, **kw: Any) -> int:
    """The profiler's FLOP formula for ``ghost3x3_nhwc``: 2 × (primary 9·C·m + cheap 9·m)
    MACs per pixel (the per-channel scale of the intrinsic half is not a MAC)."""
    n, two_m, h, w = out_shape
    m = two_m // 2
    return 2 * n * h * w * m * (wp[0] + 9)


register_op_handler("leanvision::ghost3x3_nhwc", _ghost3x3_flops)
