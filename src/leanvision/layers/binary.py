"""Binary (1-bit weight, 1-bit activation) convolution and linear layers for training.

Forward: ``b(t) = +1 if t ≥ 0 else −1`` for weights and activations; weights carry a
per-output-channel scale ``mean|W|`` (XNOR-Net, detached). The backward of ``sign`` is the
choice of the method:

* ``"ste"``: the straight-through estimator, gradient 1 where |t| ≤ 1 (BinaryConnect / XNOR);
* ``"fda"``: FDA (Xu et al., "Learning Frequency Domain Approximation for Binary Neural
  Networks", NeurIPS 2021, arXiv 2103.00841): the derivative of the square wave's truncated
  Fourier series ``(4/π) Σ_{i=0}^{n} sin((2i+1)ωt)/(2i+1)``, i.e.
  ``(4ω/π) Σ_{i=0}^{n} cos((2i+1)ωt)`` (n + 1 terms, as the reference code), zero where
  |t| > 1; ω = 0.1 and n grows 9 → 18 over training (:class:`FDAScheduleHook`
  in ``methods.lowbit.binary``). Its noise adaptation module adds ``α·e(t)``, a small learned
  residual of the approximation error, with α annealed to 0, so inference is pure sign.

Deployment packs the binary weights to 1 bit and runs XNOR-popcount
(:class:`PackedBinaryConv2d`, :class:`PackedBinaryLinear`, kernel ``kernels/csrc/binary.cpp``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import nn

from leanvision import kernels
from leanvision.errors import ConfigError, InputShapeError
from leanvision.opcounts import OpCounts, register_module_counter
from leanvision.shapes import check_conv_input

__all__ = [
    "BinaryConv2d",
    "BinaryLinear",
    "FilterMapper",
    "LNSBinaryConv2d",
    "LNSBinaryLinear",
    "NoiseAdaptation",
    "PackedBinaryConv2d",
    "PackedBinaryLinear",
    "binarize",
    "fda_grad",
    "sign_pm1",
]


def sign_pm1(t: torch.Tensor) -> torch.Tensor:
    """±1 with 0 ↦ +1 (``torch.sign`` would give 0, which a bit cannot hold)."""
    return torch.where(t >= 0, torch.ones_like(t), -torch.ones_like(t))


def fda_grad(
    t: torch.Tensor, terms: int, omega: float = 0.1, inclusive: bool = True
) -> torch.Tensor:
    """FDA's d sign / dt: ``(4ω/π) Σ_{i=0}^{n} cos((2i+1)ωt)`` where |t| ≤ 1, else 0 (n = terms).

    ``inclusive=True`` (default) sums the n + 1 terms i = 0..n, as FDA's reference PyTorch code
    (``FDA_BinaryQuantize.backward``: ``sum(cos((2i+1)·ω·x) for i in range(n + 1))``) and the
    paper's series up to index n; ``inclusive=False`` sums the n terms i < n (this toolkit's
    behaviour before issue 17). The sum has the closed form ``sin(2mx) / (2 sin x)`` (x = ωt,
    m terms; m at x = 0), one sine ratio instead of m cosines per element."""
    m = terms + 1 if inclusive else terms
    x = omega * t
    s = torch.sin(x)
    small = s.abs() < 1e-6
    ratio = torch.sin(2 * m * x) / (2 * torch.where(small, torch.ones_like(s), s))
    series = torch.where(small, torch.full_like(t, float(m)), ratio)
    return torch.where(t.abs() <= 1, series * (4 * omega / math.pi), torch.zeros_like(t))


class _Sign(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx, t, mode: str, terms: int, omega: float, inclusive: bool = True
    ):
        ctx.save_for_backward(t)
        ctx.mode, ctx.terms, ctx.omega, ctx.inclusive = mode, terms, omega, inclusive
        return sign_pm1(t)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        (t,) = ctx.saved_tensors
        if ctx.mode == "fda":
            return g * fda_grad(t, ctx.terms, ctx.omega, ctx.inclusive), None, None, None, None
        return g * (t.abs() <= 1).to(g.dtype), None, None, None, None


def binarize(
    t: torch.Tensor, mode: str = "ste", terms: int = 9, omega: float = 0.1, inclusive: bool = True
):
    """``sign_pm1(t)`` with the ``mode``'s backward ("ste" or "fda"; see :func:`fda_grad` for
    ``terms`` = n and ``inclusive``)."""
    if mode not in ("ste", "fda"):
        raise ConfigError(f"binarize: mode must be 'ste' or 'fda', got {mode!r}")
    return _Sign.apply(t, mode, int(terms), float(omega), bool(inclusive))


class NoiseAdaptation(nn.Module):
    """FDA's noise adaptation module: ``e(t) = FC₂(ReLU(FC₁(t))) + 0.1·sin(t)`` over the last
    dimension ``d`` (bottleneck d/64, or d/4 when d < 64; no biases). FC₂ starts at zero."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = max(1, dim // 64 if dim >= 64 else dim // 4)
        self.fc1 = nn.Linear(dim, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, dim, bias=False)
        nn.init.zeros_(self.fc2.weight)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.fc1(t))) + 0.1 * torch.sin(t)


class _BinaryMixin:
    """Shared state: backward ``mode``, FDA ``terms``/``omega``, noise adaptation weight
    ``alpha`` (0 at inference, set by the schedule hook)."""

    mode: str
    terms: int
    omega: float
    alpha: float

    def _setup_binary(self, mode: str, noise: bool, w_dim: int, a_dim: int) -> None:
        if mode not in ("ste", "fda"):
            raise ConfigError(f"binary layer: mode must be 'ste' or 'fda', got {mode!r}")
        self.mode, self.terms, self.omega, self.alpha = mode, 9, 0.1, 0.0
        self.terms_inclusive = True  # FDA: n + 1 series terms (see fda_grad)
        self.noise_w = NoiseAdaptation(w_dim) if noise else None
        self.noise_a = NoiseAdaptation(a_dim) if noise else None

    def _bin(self, t: torch.Tensor, noise: NoiseAdaptation | None, flat: torch.Tensor):
        b = binarize(t, self.mode, self.terms, self.omega, getattr(self, "terms_inclusive", True))
        if noise is not None and self.training and self.alpha > 0:
            b = b + self.alpha * noise(flat).reshape_as(t)
        return b

    def packable(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(tensor whose signs are the binary weights, per-output scale) for packing."""
        w = self.weight.detach()  # type: ignore[attr-defined]
        return w, w.abs().reshape(w.shape[0], -1).mean(1)

    def binary_weight(self) -> torch.Tensor:
        """``mean|W|`` per output channel × binarized W (what the packed path stores)."""
        w = self.weight  # type: ignore[attr-defined]
        scale = w.detach().abs().reshape(w.shape[0], -1).mean(1)
        b = self._bin(w, self.noise_w, w.reshape(w.shape[0], -1))
        return b * scale.view(-1, *([1] * (w.dim() - 1)))


@register_notrace_module  # a leaf for timm's fx extraction: its sign has a custom gradient
class BinaryConv2d(_BinaryMixin, nn.Conv2d):
    """A conv with binary weights (scaled per output channel) and binary inputs."""

    def __init__(self, *args, mode: str = "ste", noise: bool = False, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        k = self.kernel_size[0] * self.kernel_size[1]
        self._setup_binary(mode, noise, self.in_channels // self.groups * k, self.in_channels)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, mode: str = "ste", noise: bool = False) -> BinaryConv2d:
        """Same shape and weights as ``conv`` (binary training starts from real weights)."""
        new = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
            conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, mode=mode,
            noise=noise,
        )  # fmt: skip
        new.to(conv.weight.device)
        with torch.no_grad():
            new.weight.copy_(conv.weight)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self._act(x), self.binary_weight(), self.bias)

    def _act(self, x: torch.Tensor) -> torch.Tensor:
        """Binary activations; the noise term works per position over channels."""
        b = binarize(x, self.mode, self.terms, self.omega, getattr(self, "terms_inclusive", True))
        if self.noise_a is not None and self.training and self.alpha > 0:
            b = b + self.alpha * self.noise_a(x.movedim(1, -1)).movedim(-1, 1)
        return b

    def extra_repr(self) -> str:
        return super().extra_repr() + f", binary={self.mode}"


@register_notrace_module
class BinaryLinear(_BinaryMixin, nn.Linear):
    """A linear layer with binary weights (scaled per output) and binary inputs."""

    def __init__(self, *args, mode: str = "ste", noise: bool = False, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._setup_binary(mode, noise, self.in_features, self.in_features)

    @classmethod
    def from_linear(cls, lin: nn.Linear, mode: str = "ste", noise: bool = False) -> BinaryLinear:
        new = cls(lin.in_features, lin.out_features, lin.bias is not None, mode=mode, noise=noise)
        new.to(lin.weight.device)
        with torch.no_grad():
            new.weight.copy_(lin.weight)
            if lin.bias is not None:
                new.bias.copy_(lin.bias)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self._bin(x, self.noise_a, x), self.binary_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", binary={self.mode}"


# ------------------------------------------------------------------------ deployment


def _pack_bits(signs_last: torch.Tensor) -> torch.Tensor:
    """Pack the last dim (values ±1, or any: bit = value < 0) into int64 words of 64 bits."""
    *lead, c = signs_last.shape
    cw = -(-c // 64)
    bits = F.pad((signs_last < 0).to(torch.int64), (0, cw * 64 - c)).reshape(*lead, cw, 64)
    dev = signs_last.device
    weights = torch.ones(64, dtype=torch.int64, device=dev) << torch.arange(
        64, dtype=torch.int64, device=dev
    )
    # bit 63 overflows int64 to its two's-complement value: the same 64-bit pattern
    return (bits * weights).sum(-1)


def _unpack_bits(words: torch.Tensor, c: int) -> torch.Tensor:
    """Inverse of :func:`_pack_bits`: ±1 float values of the first ``c`` bits."""
    shifts = torch.arange(64, dtype=torch.int64, device=words.device)
    bits = (words.unsqueeze(-1) >> shifts) & 1
    flat = bits.reshape(*words.shape[:-1], -1)[..., :c]
    return 1.0 - 2.0 * flat.to(torch.float32)


def _binary_kernel(x: torch.Tensor | None = None) -> bool:
    """Whether the packed binary kernel (portable: a scalar path everywhere) runs on ``x``."""
    return kernels.why_not("binary", x) is None


def _run_packed(layer: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``layer`` runs the native kernel on ``x``; says why not to a recording profiler."""
    if _binary_kernel(x):
        return True
    kernels.fell_back(layer, kernels.why_not("binary", x) or "disabled")
    return False


class PackedBinaryConv2d(nn.Module):
    """Inference form of :class:`BinaryConv2d`: weights stored at 1 bit (``weight_bits``,
    int64 words), activations packed per pixel at run time, ``scale_o · Σ_valid taps
    (C − 2·popcount(a XOR w))`` by the native kernel. Equal to the float binary layer in eval
    mode. Without the kernel (no compiler, GPU, float64) the same values come from
    ``F.conv2d`` on the unpacked ±1 weights. The packed form derives nothing from
    ``weight_bits`` between calls, so a loaded state dict takes effect at once.

    Two kernels (see ``kernels.status()``):

    - square kernel, equal strides and paddings, ``groups=1``: ``binary_conv2d``, weights
      (k, k, ⌈C/64⌉, O rounded up to 8), AVX-512 VPOPCNTDQ where the build and the CPU have
      it, else a scalar popcount loop;
    - any other (grouped or depthwise, e.g. BiMLP's 1×7 / 7×1 token FCs, rectangular kernels
      or strides): ``binary_gconv2d``, weights as ``O / groups`` bit-planes (O/groups, kh, kw,
      ⌈C/64⌉) where bit c of plane m is the weight of input channel c for its group's m-th
      output; products counted per input channel in bit-sliced counters (word operations on
      every CPU), then summed over each group.

    Dilation and non-zero padding modes are not packed (``ConfigError``).

    Raises (forward):
        InputShapeError: ``x`` is not (N, in_channels, H, W) or is smaller than the kernel.
    """

    def __init__(self, layer: BinaryConv2d) -> None:
        super().__init__()
        k, s, p = layer.kernel_size, layer.stride, layer.padding
        if layer.dilation != (1, 1) or isinstance(p, str) or layer.padding_mode != "zeros":
            raise ConfigError(
                f"PackedBinaryConv2d cannot pack {layer}: needs zero padding given as numbers "
                "and no dilation"
            )
        self.in_channels, self.out_channels = layer.in_channels, layer.out_channels
        self.groups = layer.groups
        self.grouped = self.groups != 1 or k[0] != k[1] or s[0] != s[1] or p[0] != p[1]
        w, scale = layer.packable()
        if self.grouped:
            self.kernel_size, self.stride, self.padding = tuple(k), tuple(s), tuple(p)
            g, o = self.groups, w.shape[0]
            og, cg = o // g, w.shape[1]
            # plane m, tap (ky, kx), input channel c = gi·cg + j  ←  w[gi·og + m, j, ky, kx]
            planes = w.reshape(g, og, cg, k[0], k[1]).permute(1, 3, 4, 0, 2)
            bits = _pack_bits(planes.reshape(og, k[0], k[1], g * cg))  # (og, kh, kw, CW)
            self.register_buffer("weight_bits", bits.contiguous())
        else:
            self.kernel_size, self.stride, self.padding = k[0], s[0], p[0]
            o = w.shape[0]
            op = -(-o // 8) * 8
            pad = F.pad(w, (0, 0, 0, 0, 0, 0, 0, op - o), value=1.0).permute(2, 3, 0, 1)
            bits = _pack_bits(pad)  # (k, k, Op, CW)
            self.register_buffer("weight_bits", bits.permute(0, 1, 3, 2).contiguous())
        self.register_buffer("scale", scale.float())
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())

    def extra_repr(self) -> str:
        groups = f", groups={self.groups}" if self.groups != 1 else ""
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}{groups}, 1-bit"
        )

    def float_weight(self) -> torch.Tensor:
        """The ±1·scale weights the bits stand for, (O, C / groups, kh, kw)."""
        if self.grouped:
            og, kh, kw, _ = self.weight_bits.shape
            g = self.groups
            signs = _unpack_bits(self.weight_bits, self.in_channels)  # (og, kh, kw, C)
            w = signs.reshape(og, kh, kw, g, -1).permute(3, 0, 4, 1, 2)
            w = w.reshape(self.out_channels, -1, kh, kw)
        else:
            signs = _unpack_bits(self.weight_bits.permute(0, 1, 3, 2), self.in_channels)
            w = signs[:, :, : self.out_channels].permute(2, 3, 0, 1)
        return w * self.scale.view(-1, 1, 1, 1)

    def fold_output_affine(self, a: torch.Tensor, c: torch.Tensor) -> None:
        """Fold a per-output-channel affine ``y → a·y + c`` that follows the layer (an eval
        BatchNorm, a learnable shift) into ``scale`` and ``bias``: the kernel's epilogue then
        computes it (equal up to float rounding)."""
        a = a.detach().reshape(-1).to(self.scale)
        c = c.detach().reshape(-1).to(self.scale)
        if a.numel() != self.out_channels or c.numel() != self.out_channels:
            raise ConfigError(
                f"fold_output_affine: expected {self.out_channels} values, got {a.numel()} "
                f"and {c.numel()}"
            )
        bias = self.bias if self.bias is not None else torch.zeros_like(self.scale)
        self.scale = self.scale * a
        self.bias = a * bias + c

    def _check(self, x: torch.Tensor) -> None:
        check_conv_input(
            f"PackedBinaryConv2d({self.in_channels}, {self.out_channels}, k={self.kernel_size})",
            x, self.in_channels, self.kernel_size, self.padding,
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        if _run_packed(self, x):
            xp = torch.ops.leanvision.binary_pack(x, self.in_channels)
            if self.grouped:
                (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
                return torch.ops.leanvision.binary_gconv2d(
                    xp, self.weight_bits, self.scale, self.bias, self.in_channels,
                    self.out_channels, self.groups, kh, kw, sh, sw, ph, pw,
                )  # fmt: skip
            return torch.ops.leanvision.binary_conv2d(
                xp, self.weight_bits, self.scale, self.bias, self.in_channels,
                self.out_channels, self.kernel_size, self.stride, self.padding,
            )  # fmt: skip
        return F.conv2d(sign_pm1(x), self.float_weight().to(x), self.bias, self.stride,
                        self.padding, 1, self.groups)  # fmt: skip


class PackedBinaryLinear(nn.Module):
    """Inference form of :class:`BinaryLinear` (weights at 1 bit, XNOR-popcount; the same
    kernel and fallback as :class:`PackedBinaryConv2d`).

    Raises (forward):
        InputShapeError: ``x``'s last dimension is not ``in_features``.
    """

    def __init__(self, layer: BinaryLinear) -> None:
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        w, scale = layer.packable()
        o = w.shape[0]
        op = -(-o // 8) * 8
        bits = _pack_bits(F.pad(w, (0, 0, 0, op - o), value=1.0))  # (Op, CW)
        self.register_buffer("weight_bits", bits.t().contiguous())  # (CW, Op)
        self.register_buffer("scale", scale.float())
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, 1-bit"

    def float_weight(self) -> torch.Tensor:
        signs = _unpack_bits(self.weight_bits.t(), self.in_features)[: self.out_features]
        return signs * self.scale.view(-1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise InputShapeError(
                f"PackedBinaryLinear({self.in_features}, {self.out_features}) expects an input "
                f"(..., {self.in_features}), got {tuple(x.shape)}"
            )
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if _run_packed(self, x):
            xp = torch.ops.leanvision.binary_pack(x2, self.in_features)
            y = torch.ops.leanvision.binary_linear(
                xp, self.weight_bits, self.scale, self.bias, self.in_features, self.out_features
            )
        else:
            y = F.linear(sign_pm1(x2), self.float_weight().to(x), self.bias)
        return y.reshape(*lead, self.out_features)


def _count_binary_conv(module: nn.Module, inputs: tuple, output: torch.Tensor):
    """One bit-op per binary multiply-accumulate (XNOR + popcount contribution of one bit)."""
    c = module.in_channels // getattr(module, "groups", 1)
    ks = module.kernel_size
    k2 = ks * ks if isinstance(ks, int) else math.prod(ks)
    return OpCounts.from_bitops(output.numel() * c * k2, op="binary_conv")


def _count_binary_linear(module: nn.Module, inputs: tuple, output: torch.Tensor):
    return OpCounts.from_bitops(output.numel() * module.in_features, op="binary_linear")


register_module_counter(BinaryConv2d, _count_binary_conv)
register_module_counter(PackedBinaryConv2d, _count_binary_conv)
register_module_counter(BinaryLinear, _count_binary_linear)
register_module_counter(PackedBinaryLinear, _count_binary_linear)


class FilterMapper(nn.Module):
    """LNS's mapping from a whole full-precision filter to the logits of its binary weights:
    ``z = w + FC₂(ReLU(FC₁(w)))`` over the filter's d = C·k·k values (hidden d/4, at least 4).
    FC₂ starts at zero, so the mapping starts as sign(w)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = max(4, dim // 4)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + self.fc2(F.relu(self.fc1(w)))


class _LNSMixin:
    """Binary weights ``sign(M(w))`` from a learned filter mapping (LNS); the logits of the last
    forward are kept in ``last_logits`` for the noisy-supervision loss."""

    mapper: FilterMapper
    last_logits: torch.Tensor | None

    def binary_weight(self) -> torch.Tensor:
        w = self.weight  # type: ignore[attr-defined]
        flat = w.reshape(w.shape[0], -1)
        z = self.mapper(flat)
        self.last_logits = z
        scale = flat.detach().abs().mean(1)
        b = binarize(z, "ste").reshape_as(w)
        return b * scale.view(-1, *([1] * (w.dim() - 1)))

    def packable(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.weight.detach()  # type: ignore[attr-defined]
        flat = w.reshape(w.shape[0], -1)
        with torch.no_grad():
            z = self.mapper(flat).reshape_as(w)
        return z, flat.abs().mean(1)


class LNSBinaryConv2d(_LNSMixin, BinaryConv2d):
    """:class:`BinaryConv2d` whose binary weights come from :class:`FilterMapper` (LNS)."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        k = self.kernel_size[0] * self.kernel_size[1]
        self.mapper = FilterMapper(self.in_channels // self.groups * k)
        self.last_logits = None


class LNSBinaryLinear(_LNSMixin, BinaryLinear):
    """:class:`BinaryLinear` whose binary weights come from :class:`FilterMapper` (LNS)."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.mapper = FilterMapper(self.in_features)
        self.last_logits = None
