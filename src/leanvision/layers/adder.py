"""AdderNet's adder convolution (Chen et al., CVPR 2020, arXiv 1912.13200).

``Y[n, o, p] = −Σ_{c, k} |X[n, c, p·s + k] − F[o, c, k]|``: the ℓ1 distance between each
input patch and each filter replaces the cross-correlation, so the layer has no
multiplications. Gradients follow the paper: the weight gets the full-precision ``X − F``
(not its sign), the input the HardTanh-clipped ``HT(F − X)``. Every adder layer should be
followed by batch norm (its outputs are all ≤ 0). The adaptive learning rate of the paper
(``η = 0.2``) is :class:`leanvision.methods.lowbit.adder.AdderLRHook`, a trainer hook.

On AVX-512 CPUs the forward and the input gradient run the native kernel
``kernels/csrc/adder.cpp`` (no ``(B, C·k·k, L) × O`` temporary); elsewhere (no AVX-512, GPU,
float64, no compiler) a chunked PyTorch path with a bounded working set computes the same
values, and a recording profiler is told (``kernels.fell_back``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import fx, nn

from leanvision import kernels
from leanvision.derived import DerivedCache
from leanvision.errors import ConfigError, UnsupportedModelError
from leanvision.opcounts import OpCounts, register_module_counter
from leanvision.shapes import check_conv_input
from leanvision.utils import first_conv_name, replace_modules

__all__ = ["AdderConv2d", "QuantAdderConv2d", "adder2d", "adder2d_reference", "adderize"]

log = logging.getLogger(__name__)

# working-set cap of the PyTorch path, in float elements (256 MiB of fp32)
_CHUNK_ELEMENTS = 64 * 2**20


def _native(x: torch.Tensor) -> bool:
    """Whether the fp32 kernel runs on ``x``: CPU float32 and a build with its AVX-512 path."""
    return kernels.why_not("adder", x) is None


def _why_not(x: torch.Tensor, kernel: str) -> str:
    """The reason token for ``kernels.fell_back`` when ``kernel`` did not run on ``x``."""
    dtype = torch.float32 if kernel == "adder" else None  # the int kernel quantizes any float
    return kernels.why_not(kernel, x, dtype=dtype) or "disabled"


def adder2d_reference(x: torch.Tensor, weight: torch.Tensor, stride: int = 1, padding: int = 0):
    """Brute force ``−Σ|X − F|`` by broadcasting, for tests on small shapes."""
    o, c, k, _ = weight.shape
    cols = F.unfold(x, k, padding=padding, stride=stride)  # (N, C·k·k, L)
    diff = (cols.unsqueeze(1) - weight.reshape(1, o, -1, 1)).abs().sum(2)  # (N, O, L)
    h = (x.shape[2] + 2 * padding - k) // stride + 1
    w = (x.shape[3] + 2 * padding - k) // stride + 1
    return -diff.reshape(x.shape[0], o, h, w)


def _out_hw(x: torch.Tensor, k: int, stride: int, padding: int) -> tuple[int, int]:
    return (
        (x.shape[2] + 2 * padding - k) // stride + 1,
        (x.shape[3] + 2 * padding - k) // stride + 1,
    )


def _forward_torch(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    o, c, k, _ = w.shape
    ho, wo = _out_hw(x, k, stride, padding)
    cols = F.unfold(x, k, padding=padding, stride=stride).transpose(1, 2)  # (N, L, C·k·k)
    flat = w.reshape(o, -1)
    per_image = cols.shape[1] * cols.shape[2] * 2
    step = max(1, _CHUNK_ELEMENTS // max(1, per_image))
    out = [
        -torch.cdist(cols[i : i + step], flat.expand(min(step, len(cols) - i), -1, -1), p=1)
        for i in range(0, len(cols), step)
    ]
    return torch.cat(out).transpose(1, 2).reshape(x.shape[0], o, ho, wo)


def _grad_input_torch(
    gy: torch.Tensor, x: torch.Tensor, w: torch.Tensor, stride: int, padding: int
) -> torch.Tensor:
    o, c, k, _ = w.shape
    cols = F.unfold(x, k, padding=padding, stride=stride)  # (N, C·k·k, L)
    g = gy.reshape(gy.shape[0], o, -1)  # (N, O, L)
    flat = w.reshape(o, -1, 1)
    ob = max(1, _CHUNK_ELEMENTS // max(1, cols[0].numel()))
    gcols = torch.zeros_like(cols)
    for n in range(len(cols)):
        for o0 in range(0, o, ob):
            t = (flat[o0 : o0 + ob] - cols[n].unsqueeze(0)).clamp_(-1, 1)  # (ob, Ck², L)
            gcols[n] += (t * g[n, o0 : o0 + ob].unsqueeze(1)).sum(0)
    return F.fold(gcols, x.shape[2:], k, padding=padding, stride=stride)


def _dilated_grad(gy: torch.Tensor, x: torch.Tensor, k: int, stride: int, padding: int):
    """The output gradient spread by the stride and padded so that the input gradient is one
    stride-1 full correlation: ``e[q + k − 1 − j] = gy[(q + padding − j) / stride]``."""
    n, o, ho, wo = gy.shape
    if stride > 1:
        d = gy.new_zeros(n, o, (ho - 1) * stride + 1, (wo - 1) * stride + 1)
        d[:, :, ::stride, ::stride] = gy
    else:
        d = gy
    left = k - 1 - padding
    right_h = x.shape[2] + k - 1 - left - d.shape[2]
    right_w = x.shape[3] + k - 1 - left - d.shape[3]
    return F.pad(d, (left, right_w, left, right_h))


class _Adder2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, stride: int, padding: int):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        o, c, k, _ = weight.shape
        if not _native(x):
            return _forward_torch(x, weight, stride, padding)
        op = -(-o // 16) * 16
        packed = weight.permute(2, 3, 1, 0).reshape(k * k * c, o)
        wsum = weight.sum((1, 2, 3))
        if op != o:
            packed = F.pad(packed, (0, op - o))
            wsum = F.pad(wsum, (0, op - o))
        return torch.ops.leanvision.adder_forward(
            x, packed.contiguous(), wsum.contiguous(), o, k, stride, padding
        )

    @staticmethod
    def backward(ctx, gy):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        s, p = ctx.stride, ctx.padding
        o, c, k, _ = weight.shape
        gx = gw = None
        if ctx.needs_input_grad[1]:  # Σ gy (X − F): a conv weight gradient minus F·Σ gy
            gw = torch.nn.grad.conv2d_weight(x, weight.shape, gy, stride=s, padding=p)
            gw = gw - weight * gy.sum((0, 2, 3)).reshape(o, 1, 1, 1)
        if ctx.needs_input_grad[0]:
            if _native(x):
                cp = -(-c // 16) * 16
                wt = weight.permute(2, 3, 0, 1).reshape(k * k * o, c)
                wt = F.pad(wt, (0, cp - c)) if cp != c else wt
                e = _dilated_grad(gy, x, k, s, p)
                gx = torch.ops.leanvision.adder_backward_input(e, x, wt.contiguous(), k)
                if not x.is_contiguous(memory_format=torch.channels_last):
                    gx = gx.contiguous()
            else:
                gx = _grad_input_torch(gy, x, weight, s, p)
        return gx, gw, None, None


def adder2d(x: torch.Tensor, weight: torch.Tensor, stride: int = 1, padding: int = 0):
    """The adder "convolution" ``−Σ|X − F|`` of ``x`` (N, C, H, W) with ``weight``
    (O, C, k, k), with AdderNet's gradients."""
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[2] != weight.shape[3]:
        raise ConfigError(
            f"adder2d needs x (N, C, H, W) and a square weight (O, C, k, k); got "
            f"{tuple(x.shape)} and {tuple(weight.shape)}"
        )
    if x.shape[1] != weight.shape[1]:
        raise ConfigError(
            f"adder2d: input has {x.shape[1]} channels, weight expects {weight.shape[1]}"
        )
    return _Adder2d.apply(x, weight, int(stride), int(padding))


@register_notrace_module  # a leaf for timm's fx feature extraction: it picks a kernel per input
class AdderConv2d(nn.Module):
    """Drop-in for a square ``nn.Conv2d`` (groups 1, zero padding) computing ``−Σ|X − F|``.

    Weights start N(0, 1) as in the official code; ``bias`` is off by default."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
    ) -> None:
        super().__init__()
        if min(in_channels, out_channels, kernel_size, stride) < 1 or padding < 0:
            raise ConfigError(
                f"AdderConv2d({in_channels}, {out_channels}, {kernel_size}, stride={stride}, "
                f"padding={padding}): sizes and stride must be ≥ 1, padding ≥ 0"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> AdderConv2d:
        """An adder layer of ``conv``'s shape (fresh N(0, 1) weights: a conv's weights mean
        nothing to an ℓ1 layer)."""
        k, s, p = conv.kernel_size, conv.stride, conv.padding
        if (
            conv.groups != 1
            or conv.dilation != (1, 1)
            or k[0] != k[1]
            or s[0] != s[1]
            or isinstance(p, str)
            or p[0] != p[1]
            or conv.padding_mode != "zeros"
        ):
            raise ConfigError(
                f"AdderConv2d cannot replace {conv}: needs a square kernel, equal strides and "
                "paddings, zero padding, no groups or dilation"
            )
        layer = cls(conv.in_channels, conv.out_channels, k[0], s[0], p[0], conv.bias is not None)
        return layer.to(conv.weight.device)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _native(x):
            kernels.fell_back(self, _why_not(x, "adder"))
        y = adder2d(x, self.weight, self.stride, self.padding)
        return y + self.bias.view(1, -1, 1, 1) if self.bias is not None else y


def _convs_with_bn(model: nn.Module) -> set[str] | None:
    """Names of the convolutions whose output goes straight (only) into a BatchNorm2d, or None
    when torch.fx cannot trace the model."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - untraceable: the caller assumes BN follows
        return None
    mods = dict(gm.named_modules())
    out = set()
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(mods.get(node.target), nn.Conv2d):
            users = list(node.users)
            if (
                len(users) == 1
                and users[0].op == "call_module"
                and isinstance(mods.get(users[0].target), nn.BatchNorm2d)
            ):
                out.add(node.target)
    return out


def adderize(
    model: nn.Module,
    keep_first: bool = True,
    exclude: list[str] | None = None,
    add_bn: list[str] | None = None,
    make_layer: Callable[[nn.Conv2d], nn.Module] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` with its convolutions (all but the stem and ``exclude``) replaced by
    adder layers, each followed by batch norm.

    Args:
        model: a CNN.
        keep_first: keep the stem convolution real.
        exclude: module names to keep real.
        add_bn: names of replaced convolutions that get a new BatchNorm2d after them; by default
            found with torch.fx (those not already feeding a BN; if fx cannot trace the model,
            none).
        make_layer: the adder layer for one convolution (raises ConfigError where it cannot
            stand in); default :meth:`AdderConv2d.from_conv` (the Winograd adder method picks
            its layer per convolution).

    Returns:
        (new model, the architecture record ``{"keep_first", "exclude", "add_bn"}``).

    Raises:
        UnsupportedModelError: a convolution an adder layer cannot stand in for (grouped,
            dilated, non-square, non-zero padding mode), naming it; or nothing to replace.
    """
    factory = make_layer or AdderConv2d.from_conv
    exclude_set = set(exclude or [])
    skip = {first_conv_name(model)} if keep_first else set()
    targets = []
    for name, m in model.named_modules():
        if name in exclude_set or name in skip or not isinstance(m, nn.Conv2d):
            continue
        try:
            factory(m)
        except Exception as exc:
            raise UnsupportedModelError(
                f"adder: layer {name!r} ({m}) cannot become an adder layer ({exc}); pass "
                f"exclude=[{name!r}] to keep it real"
            ) from exc
        targets.append(name)
    if not targets:
        raise UnsupportedModelError(
            f"adder: {type(model).__name__} has no convolution to replace (the stem is kept)"
        )
    if add_bn is None:
        with_bn = _convs_with_bn(model)
        if with_bn is None:
            log.warning("adder: torch.fx cannot trace %s; assuming every conv feeds a BN",
                        type(model).__name__)  # fmt: skip
            add_bn = []
        else:
            add_bn = [n for n in targets if n not in with_bn]

    def make(conv: nn.Module, name: str) -> nn.Module:
        layer = factory(conv).to(dtype=conv.weight.dtype)
        if name in add_bn:
            layer = nn.Sequential(layer, nn.BatchNorm2d(conv.out_channels).to(conv.weight.device))
        return layer

    new = copy.deepcopy(model)
    chosen = set(targets)
    replace_modules(new, make, lambda m, name: name in chosen)
    arch = {"keep_first": keep_first, "exclude": sorted(exclude_set), "add_bn": list(add_bn)}
    return new, arch


def _count_adder(module: AdderConv2d, inputs: tuple, output: torch.Tensor):
    """Each term |x − f| is a subtraction and an accumulation: 2 additions, no multiplication
    (the paper's count; the absolute value is a sign-bit mask)."""
    terms = output.numel() * module.in_channels * module.kernel_size**2
    return OpCounts.from_adds(2 * terms, op="adder2d")


class QuantAdderConv2d(nn.Module):
    """An adder layer run on integers with one scale ``s`` shared by inputs and weights
    (Wang et al., "AdderNet and its Minimalist Hardware Design", 2021):
    ``y = −s·Σ|round(x/s) − round(w/s)|``, values clipped to ±(2^(bits−1) − 1).

    On CPU the sum runs in the integer kernels of ``kernels/csrc/adder_int8.cpp``: ``bits ≤ 8``
    as sums of absolute byte differences, up to 16 bits in int16; AVX-512BW builds use VPSADBW
    (64 byte differences per instruction) and VPMINSW + VPMADDWD, every other build (AVX2, no
    ISA flags, ARM) a portable integer loop with the same results (``kernels.status()`` says
    which). Without the kernel (no compiler, GPU) the same integers go through the float adder
    path (exact for int8; int16 sums above 2^24 are rounded to fp32). The packed weight copies
    the kernel reads are derived from ``weight_q`` and rebuilt whenever it changes.

    Raises (forward):
        InputShapeError: ``x`` is not (N, in_channels, H, W) or is smaller than the kernel.
    """

    def __init__(self, layer: AdderConv2d, scale: float, bits: int = 8) -> None:
        super().__init__()
        if not 2 <= bits <= 16:
            raise ConfigError(f"QuantAdderConv2d: bits must be in 2..16, got {bits}")
        if not scale > 0:
            raise ConfigError(f"QuantAdderConv2d: scale must be > 0, got {scale}")
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self.kernel_size, self.stride, self.padding = (
            layer.kernel_size,
            layer.stride,
            layer.padding,
        )
        self.bits = bits
        self.qmax = 2 ** (bits - 1) - 1
        w = layer.weight.detach()
        dtype = torch.int8 if bits <= 8 else torch.int16
        wq = (w / scale).round().clamp(-self.qmax, self.qmax).to(dtype)
        self.register_buffer("weight_q", wq)
        self.register_buffer("scale", torch.tensor(float(scale)))
        b = layer.bias.detach().clone() if layer.bias is not None else None
        self.register_buffer("bias", b)
        self._packed: DerivedCache[torch.Tensor] = DerivedCache()

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bits={self.bits}, "
            f"scale={self.scale.item():.4g}"
        )

    def _pack(self) -> torch.Tensor:
        """``weight_q`` as the kernel reads it: (O, k·k·C rounded up), [ky][kx][c] order;
        uint8 offset by 128 and padded with 128 (``bits ≤ 8``), or int16 padded with 0."""
        return self._packed.get((self.weight_q,), self._build_packed, self.bits)

    def _build_packed(self) -> torch.Tensor:
        flat = self.weight_q.permute(0, 2, 3, 1).reshape(self.out_channels, -1).to(torch.int16)
        if self.bits <= 8:
            kp = -(-flat.shape[1] // 64) * 64
            flat = F.pad(flat + 128, (0, kp - flat.shape[1]), value=128)
            return flat.to(torch.uint8).contiguous()
        kp = -(-flat.shape[1] // 32) * 32
        return F.pad(flat, (0, kp - flat.shape[1])).contiguous()

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """``round(x / s)`` clipped to the layer's range (float tensor of integers)."""
        return (x / self.scale).round_().clamp_(-self.qmax, self.qmax)

    def _check(self, x: torch.Tensor) -> None:
        check_conv_input(
            f"QuantAdderConv2d({self.in_channels}, {self.out_channels}, k={self.kernel_size}, "
            f"int{self.bits})",
            x, self.in_channels, self.kernel_size, self.padding,
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        xq = self.quantize_input(x)
        s = float(self.scale)
        if _int8_kernel(x):
            bias = None if self.bias is None else self.bias.float()
            args = (bias, s, self.in_channels, self.kernel_size, self.stride, self.padding)
            cl = torch.channels_last
            if self.bits <= 8:
                xu = (xq + 128).to(torch.uint8).contiguous(memory_format=cl)
                y = torch.ops.leanvision.adder_int8_forward(xu, self._pack(), *args)
            else:
                x16 = xq.to(torch.int16).contiguous(memory_format=cl)
                y = torch.ops.leanvision.adder_int16_forward(x16, self._pack(), *args)
            return y if x.dtype == torch.float32 else y.to(x.dtype)
        kernels.fell_back(self, _why_not(x, "adder_int8"))
        y = adder2d(xq, self.weight_q.to(xq.dtype), self.stride, self.padding) * s
        return y + self.bias.view(1, -1, 1, 1) if self.bias is not None else y


def _int8_kernel(x: torch.Tensor | None = None) -> bool:
    """Whether the integer kernel (``adder_int8``: int8 and int16; portable) runs on ``x``."""
    return kernels.why_not("adder_int8", x, dtype=None) is None


def _count_quant_adder(module: QuantAdderConv2d, inputs: tuple, output: torch.Tensor):
    """As :func:`_count_adder`, in integer arithmetic."""
    terms = output.numel() * module.in_channels * module.kernel_size**2
    return OpCounts.from_int_adds(2 * terms, op=f"adder2d_int{module.bits}")


register_module_counter(AdderConv2d, _count_adder)
register_module_counter(QuantAdderConv2d, _count_quant_adder)
