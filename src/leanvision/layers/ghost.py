"""The Ghost module as a drop-in replacement for a convolution.

GhostNet: More Features from Cheap Operations, Han et al., CVPR 2020 (arXiv 1911.11907), §3.1:
a primary convolution produces ``m = ceil(n / s)`` intrinsic feature maps, a cheap depthwise
``d×d`` convolution turns each into ``s − 1`` ghost maps, and the concatenation (cut to ``n``)
replaces the ``n`` outputs of the original convolution. Cost ≈ 1/s of the original.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["GhostConv2d"]


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
