"""leanvision's direct 3×3 convolution as a layer: :class:`FusedConv3x3` runs
``csrc/conv3x3.cpp`` (``act(conv(x) + residual)`` in one pass over NHWC).

oneDNN's convolution slows down per MAC on the narrow layers a pruned network is left with
(on one AVX-512 core: ~90 GMAC/s for 16 channels at 16×16, ~135 for 64 channels at 8×8), so
"pruned but not as much faster as the MACs say". The kernel runs those layers at about the
rate of the wide ones. :func:`leanvision.deploy.optimize_for_cpu` puts it where it is faster.
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
from leanvision.opcounts import register_op_handler
from leanvision.shapes import check_conv_input

__all__ = ["FusedConv3x3", "check_fused_call", "eligible", "kernel_runs"]


def eligible(conv: nn.Module) -> bool:
    """Whether the kernel computes ``conv``: a plain float32 CPU 3×3 convolution with stride 1
    or 2, padding 1, no dilation or groups, zero padding, and a multiple of 16 output
    channels."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride in ((1, 1), (2, 2))
        and conv.padding in ((1, 1), "same")
        and (conv.padding == (1, 1) or conv.stride == (1, 1))
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and conv.out_channels % 16 == 0
        and conv.weight.dtype == torch.float32
        and conv.weight.device.type == "cpu"
    )


class FusedConv3x3(nn.Module):
    """``act(conv(x) + residual)`` for an :func:`eligible` convolution, inference only.

    Runs ``torch.ops.leanvision.conv3x3_nhwc`` when the kernel is built with its AVX-512 path
    and the call needs no gradient; otherwise (no AVX-512, no compiler, autograd, another
    device or dtype) the same result through ``F.conv2d``, and a recording profiler is told
    (``kernels.fell_back``). Keeps ``weight`` and ``bias`` in the conv's layout (state dicts
    stay readable); the packed copy the kernel reads is derived, not saved, and rebuilt
    whenever ``weight`` changes (a loaded state dict, an in-place edit, a move).

    Raises (forward):
        InputShapeError: ``x`` is not (N, C_in, H, W).
    """

    def __init__(self, conv: nn.Conv2d, relu: bool = False, residual: bool = False) -> None:
        super().__init__()
        if not eligible(conv):
            raise ConfigError(
                f"FusedConv3x3 cannot compute {conv} (see leanvision.layers.conv3x3.eligible)"
            )
        self.relu, self.residual, self.stride = relu, residual, conv.stride[0]
        w = conv.weight.detach().clone()
        b = conv.bias.detach().clone() if conv.bias is not None else w.new_zeros(w.shape[0])
        self.register_buffer("weight", w)
        self.register_buffer("bias", b)
        self._packed: DerivedCache[torch.Tensor] = DerivedCache()

    @property
    def packed(self) -> torch.Tensor:
        """``weight`` as the kernel reads it: (9·C, O) as [ky][kx][ci][co]."""
        return self._packed.get((self.weight,), self._pack)

    def _pack(self) -> torch.Tensor:
        w = self.weight.detach()
        return w.permute(2, 3, 1, 0).reshape(-1, w.shape[0]).contiguous()

    def kernel_call(self) -> tuple[Any, tuple[torch.Tensor, ...], bool, tuple[int, ...]]:
        """The native op, frozen copies of its weight arguments, ``relu`` and the trailing
        scalars (the stride): the kernel's call is ``op(x, *weights, residual, relu,
        *scalars)``. For a runtime that owns the layer and never changes its weights
        (``lv.deploy``'s), which then calls the op with no Python per layer; the copies do not
        follow later edits of this layer."""
        return (
            torch.ops.leanvision.conv3x3_nhwc.default,
            (self.packed.detach().clone(), self.bias.detach().clone()),
            self.relu,
            (self.stride,),
        )

    def extra_repr(self) -> str:
        o, c = self.weight.shape[:2]
        return (
            f"{c}, {o}, kernel_size=3, stride={self.stride}, relu={self.relu}, "
            f"residual={self.residual}"
        )

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        o, c = self.weight.shape[:2]
        reason = check_fused_call(self, f"FusedConv3x3({c}, {o})", x, c, residual)
        if reason is None and kernel_runs():
            return torch.ops.leanvision.conv3x3_nhwc(
                x, self.packed, self.bias, residual, self.relu, self.stride
            )
        kernels.fell_back(self, reason or "disabled")
        y = F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=1)
        if residual is not None:
            y = y + residual
        return F.relu(y) if self.relu else y


def check_fused_call(
    layer: nn.Module,
    name: str,
    x: torch.Tensor,
    in_channels: int,
    residual: torch.Tensor | None,
    *,
    u8_ok: bool = False,
) -> str | None:
    """The checks a fused ``act(op(x) + residual)`` layer of this kernel makes per call: the
    residual given iff the layer was built for one, ``x`` (N, in_channels, H, W); returns why
    the kernel cannot run it (``kernels.why_not``), None when it can. The kernel takes ``x``
    in float32, or also in uint8 with ``u8_ok`` (the int8 layers' quantized maps).

    Raises:
        ConfigError: a residual where none was built for, or none where one was.
        InputShapeError: ``x`` is not (N, in_channels, H, W).
    """
    if layer.residual != (residual is not None):
        raise ConfigError(
            f"{type(layer).__name__} built with residual={layer.residual} was called "
            f"{'without' if residual is None else 'with'} a residual"
        )
    check_conv_input(name, x, in_channels)
    grad = torch.is_grad_enabled() and (
        x.requires_grad or (residual is not None and residual.requires_grad)
    )
    dtype = torch.uint8 if u8_ok and x.dtype == torch.uint8 else torch.float32
    return kernels.why_not("conv3x3", x, dtype=dtype, grad=grad)


def kernel_runs() -> bool:
    """Whether the kernel runs on this machine (built, with its AVX-512 path)."""
    return kernels.why_not("conv3x3") is None


def _conv3x3_flops(x: Any, w: Any, *rest: Any, out_shape: Any = None, **kw: Any) -> int:
    """The profiler's FLOP formula for ``conv3x3_nhwc``: 2 × output elements × 9·C_in."""
    return 2 * math.prod(out_shape) * w[0]


register_op_handler("leanvision::conv3x3_nhwc", _conv3x3_flops)
