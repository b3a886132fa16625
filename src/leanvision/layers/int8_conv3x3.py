"""W8A8 forms of the fused 3×3 layers for leanvision's CPU runtime: :class:`Int8Conv3x3` and
:class:`Int8Ghost3x3` run ``conv3x3_u8s8_nhwc`` / ``ghost3x3_u8s8_nhwc``
(``kernels/csrc/conv3x3.cpp``): products of u8 activations and s8 weights summed exactly in
int32 by AVX512-VNNI (four times the multiply-adds of an fp32 FMA per instruction).

Quantization is static post-training, as in Jacob et al. (CVPR 2018, arXiv 1712.05877):
weights per output channel, symmetric (s8 in [-127, 127], ``s_w = max|w| / 127``); the input
per tensor with zero point 0 (u8 = clamp(round(x / s_x), 0, 255)), which is exact only for
the non-negative inputs these layers are given (ReLU outputs: :func:`leanvision.deploy.cpu.
quantize_for_cpu` checks the graph and the calibration); ``s_x`` from calibration images.
The epilogue runs in fp32 (``acc · s_x · s_w + bias``, the residual, ReLU). Its output is fp32,
or, where every reader of the map is an int8 layer (``out_scale``, set by ``quantize_for_cpu``),
u8 on the readers' input grid: the next layer then reads a quarter of the bytes and quantizes
nothing, and a u8 residual (``residual_scale``) is dequantized as it is added.

Without the kernel or VNNI, the same arithmetic runs in PyTorch (the quantized input and
weights as floats through ``F.conv2d``) and a recording profiler is told.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leanvision import kernels
from leanvision.derived import DerivedCache
from leanvision.errors import ConfigError
from leanvision.layers.conv3x3 import FusedConv3x3, check_fused_call
from leanvision.layers.ghost import FusedGhost3x3, ghost_epilogue
from leanvision.opcounts import register_op_handler

__all__ = ["Int8Conv3x3", "Int8Ghost3x3", "has_int8_kernel", "pack_u8s8", "quantize_weight"]


def quantize_weight(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8: (q in [-127, 127] as int8, scale (O,))."""
    scale = w.detach().abs().flatten(1).amax(dim=1).clamp_min(1e-12) / 127.0
    q = torch.round(w.detach() / scale.view(-1, 1, 1, 1)).clamp(-127, 127).to(torch.int8)
    return q, scale.float()


def pack_u8s8(q: torch.Tensor) -> torch.Tensor:
    """(O, C, 3, 3) int8 → (9, C4/4, O, 4) as the kernel reads it, C4 = C rounded up to 4
    (zero weights for the channels past C)."""
    o, c = q.shape[:2]
    c4 = -(-c // 4) * 4
    q = F.pad(q.to(torch.int16), (0, 0, 0, 0, 0, c4 - c)).to(torch.int8)
    return q.permute(2, 3, 1, 0).reshape(9, c4 // 4, 4, o).permute(0, 1, 3, 2).contiguous()


def has_int8_kernel() -> bool:
    """Whether the int8 ops run here: the kernel built with its AVX-512 path and the CPU has
    AVX512-VNNI."""
    return kernels.why_not("conv3x3") is None and bool(torch.ops.leanvision.conv3x3_vnni())


def _check_scale(scale: float, name: str = "input_scale") -> float:
    s = float(scale)
    if not (s > 0 and s < float("inf")):
        raise ConfigError(f"{name} must be finite and > 0, got {scale!r}")
    return s


def _quantized_input(x: torch.Tensor, inv: float) -> torch.Tensor:
    """The u8 grid the kernel puts ``x`` on, as floats: clamp(round(x / s_x), 0, 255); a u8
    ``x`` is on it already."""
    if x.dtype == torch.uint8:
        return x.float()
    return torch.round(x * inv).clamp_(0, 255)


class _U8Maps:
    """What the int8 layers share about u8 maps: ``out_scale`` (None: fp32 output; else the
    step of the u8 grid the output is written on, the next layers' ``s_x``; needs the ReLU)
    and ``residual_scale`` (the step of a u8 residual)."""

    relu: bool
    out_scale: float | None
    residual_scale: float | None

    def set_u8_maps(self, out_scale: float | None, residual_scale: float | None) -> None:
        """Write the output as u8 with step ``out_scale`` (None: fp32) and read a u8 residual
        with step ``residual_scale``.

        Raises:
            ConfigError: a scale that is not finite and > 0, or a u8 output without the ReLU.
        """
        if out_scale is not None:
            if not self.relu:
                raise ConfigError("a u8 output needs the layer's ReLU (the grid has no negatives)")
            out_scale = _check_scale(out_scale, "out_scale")
        if residual_scale is not None:
            residual_scale = _check_scale(residual_scale, "residual_scale")
        self.out_scale, self.residual_scale = out_scale, residual_scale

    def _u8_scalars(self) -> tuple[float, float]:
        """The ops' trailing ``out_inv`` and ``res_scale`` (0: fp32)."""
        return (
            0.0 if self.out_scale is None else 1.0 / self.out_scale,
            self.residual_scale or 0.0,
        )

    def _fallback_finish(self, y: torch.Tensor) -> torch.Tensor:
        """The PyTorch fallback's output on the layer's grid (``y`` after the ReLU)."""
        if self.out_scale is None:
            return y
        q = torch.round(y * (1.0 / self.out_scale)).clamp_(0, 255).to(torch.uint8)
        return q.contiguous(memory_format=torch.channels_last)

    def _fallback_residual(self, residual: torch.Tensor | None) -> torch.Tensor | None:
        if residual is None or residual.dtype != torch.uint8:
            return residual
        if self.residual_scale is None:
            raise ConfigError(f"{type(self).__name__} got a u8 residual but has no residual_scale")
        return residual.float() * self.residual_scale


class Int8Conv3x3(_U8Maps, nn.Module):
    """:class:`~leanvision.layers.FusedConv3x3` with int8 products, for inputs ≥ 0.

    Args:
        layer: The fp32 fused layer (its weight, bias, ReLU and residual flags).
        input_scale: ``s_x``, the step of the input's u8 grid (calibrated max / 255).

    Raises (forward):
        InputShapeError: ``x`` is not (N, C_in, H, W).
    """

    def __init__(self, layer: FusedConv3x3, input_scale: float) -> None:
        super().__init__()
        self.relu, self.residual, self.stride = layer.relu, layer.residual, layer.stride
        self.input_scale = _check_scale(input_scale)
        self.out_scale: float | None = None
        self.residual_scale: float | None = None
        q, s = quantize_weight(layer.weight)
        self.register_buffer("weight_q", q)
        self.register_buffer("weight_scale", s)
        self.register_buffer("bias", layer.bias.detach().clone())
        self._packed: DerivedCache[torch.Tensor] = DerivedCache()

    @property
    def packed(self) -> torch.Tensor:
        return self._packed.get((self.weight_q,), lambda: pack_u8s8(self.weight_q))

    def _scale(self) -> torch.Tensor:
        return (self.weight_scale * self.input_scale).float()

    def kernel_call(self) -> tuple[Any, tuple[torch.Tensor, ...], bool, tuple[float, ...]]:
        """As :meth:`FusedConv3x3.kernel_call`; the trailing scalars are 1 / s_x, the stride,
        ``out_inv`` and ``res_scale``."""
        weights = (self.packed, self._scale(), self.bias)
        return (
            torch.ops.leanvision.conv3x3_u8s8_nhwc.default,
            tuple(t.detach().clone() for t in weights),
            self.relu,
            (1.0 / self.input_scale, self.stride, *self._u8_scalars()),
        )

    def extra_repr(self) -> str:
        o, c = self.weight_q.shape[:2]
        return (
            f"{c}, {o}, kernel_size=3, stride={self.stride}, int8, s_x={self.input_scale:.4g}, "
            f"relu={self.relu}" + _u8_repr(self)
        )

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        o, c = self.weight_q.shape[:2]
        reason = check_fused_call(self, f"Int8Conv3x3({c}, {o})", x, c, residual, u8_ok=True)
        inv = 1.0 / self.input_scale
        if reason is None and has_int8_kernel():
            return torch.ops.leanvision.conv3x3_u8s8_nhwc(
                x, self.packed, self._scale(), self.bias, residual, self.relu, inv, self.stride,
                *self._u8_scalars(),
            )  # fmt: skip
        kernels.fell_back(self, reason or "no AVX512-VNNI")
        acc = F.conv2d(
            _quantized_input(x, inv), self.weight_q.float(), stride=self.stride, padding=1
        )
        y = acc * self._scale().view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        residual = self._fallback_residual(residual)
        if residual is not None:
            y = y + residual
        return self._fallback_finish(F.relu(y) if self.relu else y)


class Int8Ghost3x3(_U8Maps, nn.Module):
    """:class:`~leanvision.layers.FusedGhost3x3` with the primary convolution's products in
    int8 (input ≥ 0); the cheap depthwise operation and the epilogue run in fp32 on the
    primary's dequantized output.

    Args:
        layer: The fp32 fused Ghost layer.
        input_scale: ``s_x`` of the input's u8 grid.

    Raises (forward):
        InputShapeError: ``x`` is not (N, C_in, H, W).
    """

    def __init__(self, layer: FusedGhost3x3, input_scale: float) -> None:
        super().__init__()
        self.relu, self.residual, self.stride = layer.relu, layer.residual, layer.stride
        self.input_scale = _check_scale(input_scale)
        self.out_scale: float | None = None
        self.residual_scale: float | None = None
        q, s = quantize_weight(layer.w_primary)
        self.register_buffer("weight_q", q)
        self.register_buffer("weight_scale", s)
        for name in ("b_primary", "scale1", "bias1", "w_cheap", "bias2"):
            self.register_buffer(name, getattr(layer, name).detach().clone())
        self._packed: DerivedCache[tuple[torch.Tensor, torch.Tensor]] = DerivedCache()

    @property
    def packed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(primary (9, C4/4, m, 4) int8, cheap (9, m) as [ky][kx][c])."""
        return self._packed.get((self.weight_q, self.w_cheap), self._pack)

    def _pack(self) -> tuple[torch.Tensor, torch.Tensor]:
        wc = self.w_cheap.detach()
        return pack_u8s8(self.weight_q), wc.reshape(wc.shape[0], 9).t().contiguous()

    def _scale(self) -> torch.Tensor:
        return (self.weight_scale * self.input_scale).float()

    def kernel_call(self) -> tuple[Any, tuple[torch.Tensor, ...], bool, tuple[float, ...]]:
        """As :meth:`Int8Conv3x3.kernel_call`; the trailing scalars are 1 / s_x, the stride,
        ``out_inv`` and ``res_scale``."""
        wq, wc = self.packed
        weights = (wq, self._scale(), self.b_primary, self.scale1, self.bias1, wc, self.bias2)
        return (
            torch.ops.leanvision.ghost3x3_u8s8_nhwc.default,
            tuple(t.detach().clone() for t in weights),
            self.relu,
            (1.0 / self.input_scale, self.stride, *self._u8_scalars()),
        )

    def extra_repr(self) -> str:
        m, c = self.weight_q.shape[:2]
        return (
            f"{c}, {2 * m}, s=2, d=3, stride={self.stride}, int8, s_x={self.input_scale:.4g}, "
            f"relu={self.relu}" + _u8_repr(self)
        )

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        m, c = self.weight_q.shape[:2]
        reason = check_fused_call(self, f"Int8Ghost3x3({c}, {2 * m})", x, c, residual, u8_ok=True)
        inv = 1.0 / self.input_scale
        if reason is None and has_int8_kernel():
            wq, wc = self.packed
            return torch.ops.leanvision.ghost3x3_u8s8_nhwc(
                x, wq, self._scale(), self.b_primary, self.scale1, self.bias1, wc, self.bias2,
                residual, self.relu, inv, self.stride, *self._u8_scalars(),
            )  # fmt: skip
        kernels.fell_back(self, reason or "no AVX512-VNNI")
        acc = F.conv2d(
            _quantized_input(x, inv), self.weight_q.float(), stride=self.stride, padding=1
        )
        p = acc * self._scale().view(1, -1, 1, 1) + self.b_primary.view(1, -1, 1, 1)
        return self._fallback_finish(ghost_epilogue(self, p, self._fallback_residual(residual)))


def _u8_repr(layer: _U8Maps) -> str:
    out = "" if layer.out_scale is None else f", u8 out s_y={layer.out_scale:.4g}"
    res = "" if layer.residual_scale is None else f", u8 residual s_r={layer.residual_scale:.4g}"
    return out + res


def _u8s8_macs(x: Any, w: Any, *rest: Any, out_shape: Any = None, **kw: Any) -> int:
    """FLOP formula of ``conv3x3_u8s8_nhwc``: 2 × output elements × 9·C_in (the int8
    multiply-adds, counted as the fp32 layer's)."""
    n, o, h, wd = out_shape
    return 2 * n * o * h * wd * 9 * x[1]


def _ghost_u8s8_macs(x: Any, w: Any, *rest: Any, out_shape: Any = None, **kw: Any) -> int:
    """FLOP formula of ``ghost3x3_u8s8_nhwc``: as ``ghost3x3_nhwc``'s."""
    n, two_m, h, wd = out_shape
    m = two_m // 2
    return 2 * n * h * wd * m * (9 * x[1] + 9)


register_op_handler("leanvision::conv3x3_u8s8_nhwc", _u8s8_macs)
register_op_handler("leanvision::ghost3x3_u8s8_nhwc", _ghost_u8s8_macs)
