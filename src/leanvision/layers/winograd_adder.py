"""The Winograd AdderNet layer (Li et al., ICML 2021, arXiv 2105.05530): a 3×3, stride-1 adder
layer computed on F(2×2, 3×3) Winograd tiles.

For each 4×4 input tile ``d`` (tiles at stride 2) and each filter ``g``::

    V = Bᵀ d B,   U = G g Gᵀ,   M = −Σ_cin |U − V|^p  (at each of the 16 Winograd positions),
    Y = Aᵀ M A    (the tile's 2×2 outputs)

so the core is 16 independent batched ℓ_p distances: 16 subtract/abs and 16 accumulations per
tile and channel pair, against 36 of each for the direct adder layer (4/9 of the work), plus the
input transform (32 additions per tile and input channel) and the output transform (24 per tile
and output channel).

**The transform matrices are our derivation, not the paper's.** The paper's matrices could not
be read anywhere (``shared/reference/winograd-adder.md``). With the ℓ1 core the standard
transform (Lavin & Gray) gives the four outputs of every tile a fixed pattern of means
(−9μ, 3μ, 3μ, −μ) that BatchNorm cannot remove; a per-slot sign ``c`` (``Aᵀ → Aᵀ·D``,
``G → D·G``, ``D = diag(c)``) keeps the algorithm exact for products but not for the adder, and
exactly two sign choices (up to a global sign) balance the four outputs: ``"balanced_a"``
(c = (1, 1, −1, 1)) and ``"balanced_b"`` (c = (−1, 1, 1, −1)). ``"window_sum"`` (every output a
plain sum of a 3×3 window of M, as the direct adder; not an exact Winograd algorithm) is the
note's non-exact baseline. The names, and which trains best, are ours to measure.

p (``layer.p``) is 1 at inference; training anneals it from 2 (where the layer is exactly
2·conv minus a weight-only and an input-only square term, a form Winograd computes
consistently) down to 1: :class:`leanvision.methods.lowbit.winograd_adder.PScheduleHook`.
Gradients: at p = 1 AdderNet's (the weight gets the full-precision ``V − U``, the input the
HardTanh-clipped ``HT(U − V)``), for p > 1 the true gradient of ``−|U − V|^p``.

Inference (p = 1, no gradient) on AVX-512 CPUs runs the native kernel
``winograd_adder_forward`` (``kernels/csrc/adder.cpp``: the input transform, the core as
2·Σmin(U, V) − ΣU − ΣV, and the output transform per tile row, no temporaries). Training on
them (fp32) runs the input transform and its backward natively (``winograd_input_transform``:
each tile read once), and the core and its backward (``winograd_adder_core``); other devices
and dtypes run the PyTorch path (strided adds for the transforms, ``torch.cdist`` for the
core), and a recording profiler is told when inference falls back (``kernels.fell_back``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import nn

from leanvision import kernels
from leanvision.errors import ConfigError
from leanvision.opcounts import OpCounts, register_module_counter
from leanvision.shapes import check_conv_input

__all__ = [
    "TRANSFORMS",
    "WinogradAdderConv2d",
    "transform_matrices",
    "winograd_adder2d",
    "winograd_eligible",
]

#: the transforms by name; the exact ones compute F.conv2d when the core is a product
TRANSFORMS = ("standard", "balanced_a", "balanced_b", "window_sum")
EXACT = ("standard", "balanced_a", "balanced_b")
_SIGNS = {
    "standard": (1.0, 1.0, 1.0, 1.0),
    "balanced_a": (1.0, 1.0, -1.0, 1.0),
    "balanced_b": (-1.0, 1.0, 1.0, -1.0),
    "window_sum": (1.0, 1.0, 1.0, 1.0),
}
# additions per 4×4 tile: Bᵀ d B (two passes of 16 two-term sums) per input channel, and
# Aᵀ M A (8 three-term sums, then 4) per output channel; the core: 16 |u − v| and 16
# accumulations per channel pair
INPUT_ADDS_PER_TILE = 32
OUTPUT_ADDS_PER_TILE = 24
CORE_ADDS_PER_TILE = 32

# working-set cap of the pairwise backward, in float elements (256 MiB of fp32)
_CHUNK_ELEMENTS = 64 * 2**20


def transform_matrices(
    transform: str, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(Bᵀ (4×4), G (4×3), Aᵀ (2×4))`` of the named F(2×2, 3×3) transform (see the module
    docstring; the sign variants are ours)."""
    if transform not in TRANSFORMS:
        raise ConfigError(
            f"unknown Winograd transform {transform!r}; choose one of {', '.join(TRANSFORMS)}"
        )
    bt = torch.tensor(
        [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=torch.float64
    )
    g = torch.tensor([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], dtype=torch.float64)
    at = torch.tensor([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=torch.float64)
    if transform == "window_sum":
        at = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]], dtype=torch.float64)
    d = torch.tensor(_SIGNS[transform], dtype=torch.float64)
    return bt.to(dtype), (d[:, None] * g).to(dtype), (at * d[None, :]).to(dtype)


def winograd_eligible(conv: nn.Module) -> bool:
    """Whether ``conv`` is a 3×3, stride-1, ungrouped, undilated, zero-padded ``nn.Conv2d``
    (the F(2×2, 3×3) layer's shape; other convolutions stay direct adders)."""
    return (
        isinstance(conv, nn.Conv2d)
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and not isinstance(conv.padding, str)
        and conv.padding[0] == conv.padding[1]
        and conv.padding_mode == "zeros"
    )


def _tiles(x: torch.Tensor, padding: int) -> tuple[torch.Tensor, int, int, int, int]:
    """x padded so that 4×4 tiles at stride 2 cover the output: (padded x, out H, out W,
    tiles down, tiles across)."""
    h, w = x.shape[2] + 2 * padding - 2, x.shape[3] + 2 * padding - 2
    th, tw = -(-h // 2), -(-w // 2)
    bottom = 2 * th + 2 - x.shape[2] - padding
    right = 2 * tw + 2 - x.shape[3] - padding
    return F.pad(x, (padding, right, padding, bottom)), h, w, th, tw


def _combine(coeffs: list[float], parts: list[torch.Tensor]) -> torch.Tensor:
    """Σ coeffs[i]·parts[i] over the non-zero coefficients (±1: an add or a subtract)."""
    out = None
    for a, t in zip(coeffs, parts, strict=True):
        if a == 0:
            continue
        if out is None:
            out = t if a == 1 else -t if a == -1 else a * t
        elif a == 1:
            out = out + t
        elif a == -1:
            out = out - t
        else:
            out = out + a * t
    assert out is not None  # every row of a transform has a non-zero entry
    return out


def _bt_rows_cols(x: torch.Tensor, b: list[list[float]], th: int, tw: int) -> torch.Tensor:
    """V = Bᵀ d B of every tile of the padded NHWC map ``x`` (N, Hp, Wp, C): (16, N, th, tw,
    C). Row u of every tile is the map's rows u, u + 2, ...; the column pass likewise; each
    of the 16 results written in place into the output (no stacking copy)."""
    rows = [x[:, u : u + 2 * th : 2] for u in range(4)]  # (N, th, Wp, C)
    out = x.new_empty(16, x.shape[0], th, tw, x.shape[3])
    for i in range(4):
        e = _combine(b[i], rows)
        cols = [e[:, :, v : v + 2 * tw : 2] for v in range(4)]  # (N, th, tw, C)
        for j in range(4):
            nz = sorted(((a, t) for a, t in zip(b[j], cols, strict=True) if a != 0),
                        key=lambda at: -at[0])  # fmt: skip
            if len(nz) == 2 and nz[0][0] == 1 and nz[1][0] in (1, -1):  # a ± b (Bᵀ's rows)
                op = torch.add if nz[1][0] == 1 else torch.sub
                op(nz[0][1], nz[1][1], out=out[4 * i + j])
            else:
                out[4 * i + j].copy_(_combine(b[j], cols))
    return out


class _InputTransform(torch.autograd.Function):
    """V = Bᵀ d B over the padded NHWC map, with a backward that adds B gV Bᵀ of every tile
    into one gradient map (16 strided adds; autograd's slices would zero-fill the whole map
    once per slice). fp32 on AVX-512 CPUs runs the native pair
    (``winograd_input_transform`` and its backward: each tile read once)."""

    @staticmethod
    def forward(ctx, xh, bt, th: int, tw: int):  # type: ignore[override]
        ctx.bt, ctx.shape, ctx.th, ctx.tw = bt.tolist(), xh.shape, th, tw
        ctx.native = kernels.why_not("adder", xh, dtype=torch.float32) is None
        if ctx.native:
            ctx.bt_tensor = bt.detach().to("cpu", torch.float32)
            return torch.ops.leanvision.winograd_input_transform(xh, ctx.bt_tensor, th, tw)
        return _bt_rows_cols(xh, ctx.bt, th, tw)

    @staticmethod
    def backward(ctx, gv):  # type: ignore[override]
        if ctx.native and gv.dtype == torch.float32:
            hp, wp = ctx.shape[1], ctx.shape[2]
            gx = torch.ops.leanvision.winograd_input_transform_backward(gv, ctx.bt_tensor, hp, wp)
            return gx, None, None, None
        b, th, tw = ctx.bt, ctx.th, ctx.tw
        bt_cols = [[b[j][v] for j in range(4)] for v in range(4)]  # B's rows: Bᵀ's columns
        gx = gv.new_zeros(ctx.shape)
        ge = []  # ge[i][v] = Σ_j Bᵀ[j][v] gV[i][j]
        for i in range(4):
            parts = [gv[4 * i + j] for j in range(4)]
            ge.append([_combine(bt_cols[v], parts) for v in range(4)])
        for u in range(4):
            for v in range(4):
                g = _combine(bt_cols[u], [ge[i][v] for i in range(4)])  # Σ_i Bᵀ[i][u] ge[i][v]
                gx[:, u : u + 2 * th : 2, v : v + 2 * tw : 2].add_(g)
        return gx, None, None, None


def _input_transform(x: torch.Tensor, bt: torch.Tensor, padding: int):
    """V = Bᵀ d B of every 4×4 tile: (16, N·T, C), T tiles per image in row-major order, and
    the output's geometry. Strided views and adds over NHWC, no unfold."""
    xp, h, w, th, tw = _tiles(x, padding)
    n, c = x.shape[:2]
    xh = xp.permute(0, 2, 3, 1)  # (N, Hp, Wp, C) view
    if torch.is_grad_enabled() and xh.requires_grad:
        v = _InputTransform.apply(xh, bt, th, tw)
    elif kernels.why_not("adder", xh, dtype=torch.float32) is None:
        v = torch.ops.leanvision.winograd_input_transform(xh, bt.to("cpu", torch.float32), th, tw)
    else:
        v = _bt_rows_cols(xh, bt.tolist(), th, tw)
    return v.reshape(16, n * th * tw, c), (n, h, w, th, tw)


def _output_transform(m: torch.Tensor, at: torch.Tensor, geo: tuple[int, ...]) -> torch.Tensor:
    """Y = Aᵀ M A per tile, from M (16, N·T, O), back to (N, O, H, W) (channels-last): one
    (4 × 16) matrix product."""
    n, h, w, th, tw = geo
    o = m.shape[-1]
    k = torch.einsum("ia,jb->ijab", at, at).reshape(4, 16).to(m.dtype)
    y = (k @ m.reshape(16, -1)).reshape(2, 2, n, th, tw, o)
    y = y.permute(2, 3, 0, 4, 1, 5).reshape(n, 2 * th, 2 * tw, o)  # (N, H', W', O)
    return y[:, :h, :w].permute(0, 3, 1, 2)


def _pack_u(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """U (16, O, C) packed for the kernels: (16·C, O rounded up to 16) as [k][c][o], and its
    sums over C (16, O rounded up)."""
    o, c = u.shape[1:]
    op = -(-o // 16) * 16
    packed = F.pad(u.detach().transpose(1, 2), (0, op - o))  # (16, C, Op)
    return packed.reshape(16 * c, op).contiguous(), packed.sum(1).contiguous()


def pairwise_grads(
    gm: torch.Tensor,
    v: torch.Tensor,
    u: torch.Tensor,
    p: torch.Tensor,
    hardtanh: bool,
    need_v: bool = True,
    need_u: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The core's pairwise gradients as one broadcast expression over (16, L, O, C):
    ``∂/∂V = Σ_o gm·t`` and ``∂/∂U = −Σ_l gm·t`` with ``t = HardTanh(U − V)`` (AdderNet's input
    rule, ``hardtanh``) or ``p |U − V|^(p−1) sign(U − V)`` (the true gradient, ``p`` a 0-dim
    tensor so a moving p needs no new graph). Eager, it materialises the (16, L, O, C) term;
    compiled (:func:`_fused_pairwise`, on CUDA) the term is fused into the two reductions."""
    d = u.unsqueeze(1) - v.unsqueeze(2)  # U − V
    t = d.clamp(-1.0, 1.0) if hardtanh else p * d.abs().pow(p - 1.0) * d.sign()
    g = gm.unsqueeze(-1)
    return ((g * t).sum(2) if need_v else None), (-(g * t).sum(1) if need_u else None)


_FUSED: dict[str, Any] = {}


def _fused_pairwise() -> Any:
    """:func:`pairwise_grads` under ``torch.compile`` (built once), or None where it cannot be
    built: then the chunked eager backward runs. Used for CUDA tensors, where the chunked
    backward is memory-bound (it writes and reads the (16, L, O, C) term several times)."""
    if "fn" not in _FUSED:
        try:
            _FUSED["fn"] = torch.compile(pairwise_grads, dynamic=True)
            _FUSED["backend"] = "torch.compile(inductor)"
        except Exception as exc:  # no compiler backend on this install: keep the eager path
            _FUSED["fn"], _FUSED["backend"] = None, f"chunked eager ({exc.__class__.__name__})"
    return _FUSED["fn"]


def _run_fused(
    gm: torch.Tensor, v: torch.Tensor, u: torch.Tensor, p: float, need_v: bool, need_u: bool
) -> tuple[Any, Any] | None:
    """The fused pairwise gradients, or None (the caller runs the chunked path) where the
    compiled function is unavailable or fails: it then stays off, and the reason is recorded
    in :func:`cuda_backward_backend`."""
    fn = _fused_pairwise()
    if fn is None:
        return None
    try:
        pt = torch.tensor(p, dtype=v.dtype, device=v.device)
        return fn(gm, v, u, pt, p == 1.0, need_v, need_u)
    except Exception as exc:  # a compile error on this device: the eager path is exact
        _FUSED["fn"], _FUSED["backend"] = None, f"chunked eager ({exc.__class__.__name__})"
        return None


def cuda_backward_backend() -> str:
    """What runs the core's pairwise backward on CUDA tensors (for run records)."""
    _fused_pairwise()
    return str(_FUSED["backend"])


class _Core(torch.autograd.Function):
    """M = −Σ_c |U − V|^p over 16 independent positions: V (16, L, C), U (16, O, C) →
    (16, L, O). Backward: AdderNet's rule at p = 1, the true gradient for p > 1. fp32 on
    AVX-512 CPUs runs the native kernels (``winograd_adder_core`` and its backward; p = 2 and
    the p = 1 weight gradient as matrix products); elsewhere ``torch.cdist`` and a chunked
    pairwise backward."""

    @staticmethod
    def forward(ctx, v, u, p: float):  # type: ignore[override]
        ctx.save_for_backward(v, u)
        ctx.p = p
        ctx.native = kernels.why_not("adder", v, dtype=torch.float32) is None
        if p == 2.0 and ctx.native:  # −Σ(U − V)² = 2 V·U − ΣU² − ΣV²
            return (
                2.0 * torch.bmm(v, u.transpose(1, 2))
                - (u * u).sum(2).unsqueeze(1)
                - (v * v).sum(2, keepdim=True)
            )
        if ctx.native:
            packed, usum = _pack_u(u)
            return torch.ops.leanvision.winograd_adder_core(
                v.contiguous(), packed, usum, u.shape[1], p
            )
        if p == 1.0:
            return -torch.cdist(v, u, p=1.0)
        if p == 2.0:  # exact, not the matmul form cdist may take for p = 2
            d = torch.cdist(v, u, p=2.0, compute_mode="donot_use_mm_for_euclid_dist")
            return -(d * d)
        return -torch.cdist(v, u, p=p).pow(p)

    @staticmethod
    def backward(ctx, gm):  # type: ignore[override]
        v, u = ctx.saved_tensors
        p = ctx.p
        gv = gu = None
        col = gm.sum(1)  # (16, O): Σ over tiles
        if p == 1.0 or p == 2.0:
            # Σ_l gm (V − U) for the weights (AdderNet's full-precision rule at p = 1; the
            # exact gradient 2 Σ gm (V − U) at p = 2)
            k = 1.0 if p == 1.0 else 2.0
            if ctx.needs_input_grad[1]:
                gu = k * (torch.bmm(gm.transpose(1, 2), v) - u * col.unsqueeze(-1))
            if p == 2.0 and ctx.needs_input_grad[0]:
                gv = 2.0 * (torch.bmm(gm, u) - v * gm.sum(2, keepdim=True))
        need_v = ctx.needs_input_grad[0] and gv is None
        need_u = ctx.needs_input_grad[1] and gu is None
        if (need_v or need_u) and ctx.native:
            gv_k, gu_k = torch.ops.leanvision.winograd_adder_core_backward(
                gm.contiguous(), v.contiguous(), u.contiguous(), p
            )
            return (gv_k if need_v else gv), (gu_k if need_u else gu), None
        if (need_v or need_u) and v.is_cuda:
            fused = _run_fused(gm, v, u, p, need_v, need_u)
            if fused is not None:
                return (fused[0] if need_v else gv), (fused[1] if need_u else gu), None
        if need_v or need_u:
            gv = torch.zeros_like(v) if need_v else gv
            gu = torch.zeros_like(u) if need_u else gu
            o, c = u.shape[1:]
            step = max(1, _CHUNK_ELEMENTS // max(1, 16 * o * c))
            for l0 in range(0, v.shape[1], step):
                vc, gc = v[:, l0 : l0 + step], gm[:, l0 : l0 + step]  # (16, l, C), (16, l, O)
                diff = u.unsqueeze(1) - vc.unsqueeze(2)  # U − V: (16, l, O, C)
                if p == 1.0:  # input: HardTanh(U − V)
                    t = diff.clamp_(-1.0, 1.0)
                else:  # d(−|U − V|^p)/dV = p |U − V|^(p−1) sign(U − V)
                    t = diff.abs().pow_(p - 1.0).mul_(diff.sign()).mul_(p)
                if need_v:
                    gv[:, l0 : l0 + step] = torch.einsum("klo,kloc->klc", gc, t)
                if need_u:
                    gu -= torch.einsum("klo,kloc->koc", gc, t)
        return gv, gu, None


def winograd_adder2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    transform: str = "balanced_a",
    p: float = 1.0,
    padding: int = 1,
    core: str = "adder",
) -> torch.Tensor:
    """The Winograd adder layer's output for ``x`` (N, C, H, W) and 3×3 ``weight`` (O, C, 3, 3)
    at stride 1 and ``padding``.

    Args:
        transform: One of ``TRANSFORMS``.
        p: The core's exponent (1 at inference; 1 ≤ p ≤ 2 while annealing).
        core: ``"adder"`` (−Σ|U − V|^p), or ``"product"`` (Σ U·V, the Winograd convolution:
            with an exact transform it equals ``F.conv2d``; for tests and diagnostics).
    """
    if x.dim() != 4 or weight.dim() != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise ConfigError(
            f"winograd_adder2d needs x (N, C, H, W) and a 3×3 weight (O, C, 3, 3); got "
            f"{tuple(x.shape)} and {tuple(weight.shape)}"
        )
    if x.shape[1] != weight.shape[1]:
        raise ConfigError(
            f"winograd_adder2d: input has {x.shape[1]} channels, weight expects {weight.shape[1]}"
        )
    if core not in ("adder", "product"):
        raise ConfigError(f"core must be 'adder' or 'product', got {core!r}")
    if not 1.0 <= float(p) <= 2.0:
        raise ConfigError(f"p must be in [1, 2], got {p!r}")
    bt, g, at = (t.to(x.device) for t in transform_matrices(transform, x.dtype))
    u = torch.einsum("ia,ocab,jb->ijoc", g, weight, g).reshape(16, *weight.shape[:2])
    if core == "adder" and float(p) == 1.0 and _why_not(x, weight) is None:
        return _forward_native(x, u, at, padding)
    v, geo = _input_transform(x, bt, padding)
    m = torch.bmm(v, u.transpose(1, 2)) if core == "product" else _Core.apply(v, u, float(p))
    return _output_transform(m, at, geo)


def _why_not(x: torch.Tensor, weight: torch.Tensor) -> str | None:
    """None when the forward runs the native kernel (fp32 CPU, a build with its AVX-512 path,
    no gradient wanted: training runs the PyTorch path, whose backward it needs); else the
    reason token for ``kernels.fell_back``."""
    grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    return kernels.why_not("adder", x, dtype=torch.float32, grad=grad)


def _forward_native(x: torch.Tensor, u: torch.Tensor, at: torch.Tensor, padding: int):
    """``winograd_adder_forward`` of ``kernels/csrc/adder.cpp`` on U (16, O, C)."""
    packed, usum = _pack_u(u)
    return torch.ops.leanvision.winograd_adder_forward(
        x, packed, usum, at.contiguous(), u.shape[1], padding
    )


@register_notrace_module  # a leaf for timm's fx feature extraction, like AdderConv2d
class WinogradAdderConv2d(nn.Module):
    """Drop-in for a 3×3, stride-1 ``nn.Conv2d`` computing the Winograd adder layer
    (:func:`winograd_adder2d`). Weights start N(0, 1) as AdderNet's; ``bias`` off by default;
    ``p`` (a buffer, so a resumed run keeps it) is 1 unless a schedule anneals it."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        padding: int = 1,
        transform: str = "balanced_a",
        bias: bool = False,
        p: float = 1.0,
    ) -> None:
        super().__init__()
        if min(in_channels, out_channels) < 1 or padding < 0:
            raise ConfigError(
                f"WinogradAdderConv2d({in_channels}, {out_channels}, padding={padding}): "
                "channels must be ≥ 1, padding ≥ 0"
            )
        transform_matrices(transform)  # names a bad transform
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = 3, 1, padding
        self.transform = transform
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.register_buffer("p", torch.tensor(float(p)))
        self.set_p(p)

    def set_p(self, p: float) -> None:
        """Set the core's exponent (1 ≤ p ≤ 2)."""
        if isinstance(p, bool) or not 1.0 <= float(p) <= 2.0:
            raise ConfigError(f"p must be in [1, 2], got {p!r}")
        self.p.fill_(float(p))

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, transform: str = "balanced_a") -> WinogradAdderConv2d:
        """A Winograd adder layer of ``conv``'s shape (fresh N(0, 1) weights)."""
        if not winograd_eligible(conv):
            raise ConfigError(
                f"WinogradAdderConv2d cannot replace {conv}: needs a 3×3, stride-1 conv with "
                "zero padding, no groups or dilation"
            )
        layer = cls(
            conv.in_channels, conv.out_channels, conv.padding[0], transform,
            conv.bias is not None,
        )  # fmt: skip
        return layer.to(conv.weight.device)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size=3, padding={self.padding}, "
            f"transform={self.transform!r}, p={float(self.p):g}, bias={self.bias is not None}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) → (N, C_out, H + 2·padding − 2, W + 2·padding − 2)."""
        check_conv_input(
            f"WinogradAdderConv2d({self.in_channels}, {self.out_channels})", x,
            self.in_channels, 3, self.padding,
        )  # fmt: skip
        p = float(self.p)
        reason = _why_not(x, self.weight) if p == 1.0 else None
        if reason is not None:
            kernels.fell_back(self, reason)
        y = winograd_adder2d(x, self.weight, self.transform, p, self.padding)
        return y + self.bias.view(1, -1, 1, 1) if self.bias is not None else y


def winograd_adder_counts(n: int, c: int, o: int, h: int, w: int) -> dict[str, int]:
    """Additions of one forward on an N × C × H × W input giving O × h × w outputs (the
    output's size): the core, the input transform and the output transform apart."""
    tiles = n * (-(-h // 2)) * (-(-w // 2))
    return {
        "winograd_adder_core": CORE_ADDS_PER_TILE * tiles * c * o,
        "winograd_input_transform": INPUT_ADDS_PER_TILE * tiles * c,
        "winograd_output_transform": OUTPUT_ADDS_PER_TILE * tiles * o,
    }


def _count(module: WinogradAdderConv2d, inputs: tuple[Any, ...], output: torch.Tensor):
    n, o, h, w = output.shape
    parts = winograd_adder_counts(n, module.in_channels, o, h, w)
    total = sum(parts.values())
    return OpCounts(adds=total, by_op=parts)


register_module_counter(WinogradAdderConv2d, _count)
