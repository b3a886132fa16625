"""Channel-sliced convolution and batch norm: the weight-sharing ops of a one-shot supernet.

A supernet holds every operator at its largest width; a sampled sub-network uses the first
``c`` channels (single-path one-shot NAS with channel search, Guo et al., ECCV 2020, arXiv
1904.00420; the same weight sharing as slimmable networks). :class:`SlicedConv2d` reads its
active input channels from the input and slices its output channels to ``active_out``;
:class:`SlicedBatchNorm2d` normalises the first ``c`` channels with the matching slice of its
affine parameters and running statistics (which a search recalibrates per sub-network).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from leanvision.errors import ConfigError

__all__ = ["SlicedBatchNorm2d", "SlicedConv2d"]


class SlicedConv2d(nn.Conv2d):
    """A conv at its largest width whose forward uses the first input channels it is given
    and the first ``active_out`` output channels. ``depthwise=True``: one filter per channel
    (groups follow the active width)."""

    def __init__(
        self,
        max_in: int,
        max_out: int,
        kernel_size: int,
        stride: int = 1,
        *,
        depthwise: bool = False,
        bias: bool = False,
    ) -> None:
        if depthwise and max_in != max_out:
            raise ConfigError(f"a depthwise SlicedConv2d needs max_in == max_out, got {max_in}")
        super().__init__(
            max_in, max_out, kernel_size, stride, padding=kernel_size // 2,
            groups=max_in if depthwise else 1, bias=bias,
        )  # fmt: skip
        self.depthwise = depthwise
        self.active_out = max_out

    def set_active_out(self, n: int) -> None:
        if not 1 <= n <= self.out_channels:
            raise ConfigError(f"active output channels {n} not in [1, {self.out_channels}]")
        self.active_out = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if self.depthwise:
            if c > self.out_channels:
                raise ConfigError(f"{c} input channels for a {self.out_channels}-channel layer")
            w = self.weight[:c]
            b = None if self.bias is None else self.bias[:c]
            return F.conv2d(x, w, b, self.stride, self.padding, 1, c)
        if c > self.in_channels:
            raise ConfigError(f"{c} input channels for a {self.in_channels}-channel layer")
        w = self.weight[: self.active_out, :c]
        b = None if self.bias is None else self.bias[: self.active_out]
        return F.conv2d(x, w, b, self.stride, self.padding)


class SlicedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the first ``C`` channels of its largest width (C from the input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c > self.num_features:
            raise ConfigError(f"{c} channels for a {self.num_features}-channel batch norm")
        if c == self.num_features:
            return super().forward(x)
        bn_training = self.training or self.running_mean is None
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average, as nn.BatchNorm2d
                momentum = 1.0 / float(self.num_batches_tracked)
        # slices of the buffers are views: the running statistics update in place
        mean = None if self.running_mean is None else self.running_mean[:c]
        var = None if self.running_var is None else self.running_var[:c]
        weight = self.weight[:c] if self.affine else None
        bias = self.bias[:c] if self.affine else None
        return F.batch_norm(x, mean, var, weight, bias, bn_training, momentum, self.eps)
