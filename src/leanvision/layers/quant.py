"""Fake-quantized linear layers and attention matmuls for vision transformers.

From Post-Training Quantization for Vision Transformer, Liu et al., NeurIPS 2021
(arXiv 2106.14156). :func:`fake_quant` is the uniform quantizer with step Δ: symmetric and
signed (the paper's Eq. 8), or unsigned (``2^b`` levels on [0, (2^b − 1)·Δ]) for tensors that
are never negative, such as post-softmax probabilities. :class:`QuantLinear` and
:class:`QuantMatMul` quantize both operands with their steps ``delta_w`` / ``delta_x`` (0: not
calibrated yet, full precision); :class:`QuantAttention` is timm's ``Attention`` with both
matmuls explicit and quantized. The steps are searched by the method
(:mod:`leanvision.methods.lowbit.ptq_vit`).

In ONNX export every quantizer becomes an 8-bit QuantizeLinear → DequantizeLinear pair, which
onnxruntime fuses into integer matmuls. The op counter counts int8 MACs once an op is
calibrated at ≤ 8 bits (the deployed kernels), float MACs before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leanvision.errors import ConfigError, UnsupportedModelError
from leanvision.opcounts import OpCounts, register_module_counter

__all__ = [
    "SOFTMAX_GRIDS",
    "QuantAttention",
    "QuantLinear",
    "QuantMatMul",
    "fake_quant",
    "quantization_state",
]

SOFTMAX_GRIDS = ("unsigned", "signed")  # the grids of A·V's probabilities (QuantAttention)


def fake_quant(
    x: torch.Tensor,
    delta: float | torch.Tensor,
    bits: int,
    unsigned: bool = False,
) -> torch.Tensor:
    """``clamp(round(x/Δ), −2^(b−1), 2^(b−1) − 1)·Δ`` (symmetric, signed), or with
    ``unsigned=True`` ``clamp(round(x/Δ), 0, 2^b − 1)·Δ``: all 2^b levels on [0, (2^b − 1)·Δ],
    for tensors that are never negative (post-softmax probabilities; a signed grid leaves half
    its levels unused there).

    In ONNX export it becomes QuantizeLinear → DequantizeLinear with zero point 0: int8 for
    weights and activations alike, uint8 for ``unsigned=True``. Signed activations rather than
    uint8 with zero point 128 (the same values): OpenVINO then runs
    the attention's matmuls in int8 and its int8 linear layers without zero-point
    subtractions (W8A8 DeiT-Tiny at 32 px, batch 1: 20–30 % faster on OpenVINO 2026.4, the same
    on onnxruntime 1.32, which converts to its u8·s8 kernels itself)."""
    if bits < 2:
        raise ConfigError(f"fake_quant: bits must be ≥ 2, got {bits}")
    lo, hi = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    if torch.onnx.is_in_onnx_export() and bits <= 8:
        # QuantizeLinear → DequantizeLinear (8 bits) in the ONNX graph; fewer bits clip first
        d = float(delta)
        if bits < 8:
            x = torch.clamp(x, lo * d, hi * d)
        if unsigned:
            return torch.fake_quantize_per_tensor_affine(x, d, 0, 0, 255)
        return torch.fake_quantize_per_tensor_affine(x, d, 0, -128, 127)
    if isinstance(delta, torch.Tensor):
        delta = float(delta)
    return torch.fake_quantize_per_tensor_affine(x, delta, 0, lo, hi)  # one fused pass


class QuantLinear(nn.Module):
    """``F.linear(q(x; Δ_x), q(W; Δ_w)) + b`` with searched steps (fake quantization)."""

    def __init__(self, linear: nn.Linear, bits_w: int = 8, bits_x: int = 8) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().clone(), requires_grad=False)
        b = linear.bias.detach().clone() if linear.bias is not None else None
        self.bias = None if b is None else nn.Parameter(b, requires_grad=False)
        self.bits_w, self.bits_x = bits_w, bits_x
        self.register_buffer("delta_w", torch.tensor(0.0))
        self.register_buffer("delta_x", torch.tensor(0.0))
        self.record: Callable[..., None] | None = None  # calibration: sees every input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.record is not None:
            self.record(x.detach(), self.weight)
        if float(self.delta_w) <= 0:  # not calibrated yet: full precision
            return F.linear(x, self.weight, self.bias)
        xq = fake_quant(x, self.delta_x, self.bits_x)
        y = F.linear(xq, fake_quant(self.weight, self.delta_w, self.bits_w))
        return y if self.bias is None else y + self.bias  # MatMul → Add: ORT fuses the bias


class QuantMatMul(nn.Module):
    """``q(a; Δ_a) @ q(b; Δ_b)`` (fake quantization); ``b`` plays the weight's role.
    ``unsigned_a``: ``a`` is never negative (probabilities) and uses the unsigned grid."""

    def __init__(self, bits_a: int = 8, bits_b: int = 8, unsigned_a: bool = False) -> None:
        super().__init__()
        self.bits_w, self.bits_x = bits_b, bits_a
        self.unsigned_a = unsigned_a
        self.register_buffer("delta_w", torch.tensor(0.0))
        self.register_buffer("delta_x", torch.tensor(0.0))
        self.record: Callable[..., None] | None = None

    def forward(self, a: torch.Tensor, b: torch.Tensor, transpose_b: bool = False) -> torch.Tensor:
        """``q(a) @ q(b)``; with ``transpose_b``, ``q(a) @ q(b)ᵀ``: ``b`` is quantized before
        the transpose (the same values, a per-tensor grid commutes with it), so an exported
        graph keeps the transpose next to the matmul, where OpenVINO folds it into its fused
        attention (quantized after it, the transpose ran as a copy of its own)."""
        if self.record is not None:
            self.record(a.detach(), (b.transpose(-2, -1) if transpose_b else b).detach())
        if float(self.delta_w) <= 0:
            return a @ (b.transpose(-2, -1) if transpose_b else b)
        qb = fake_quant(b, self.delta_w, self.bits_w)
        return self.quantize_a(a) @ (qb.transpose(-2, -1) if transpose_b else qb)

    def quantize_a(self, a: torch.Tensor) -> torch.Tensor:
        """The first operand as the op quantizes it (Δ_a, ``bits_x``, signed or unsigned)."""
        unsigned = getattr(self, "unsigned_a", False)
        return fake_quant(a, self.delta_x, self.bits_x, unsigned=unsigned)


class QuantAttention(nn.Module):
    """timm ``Attention`` with explicit, quantized matmuls (no fused SDPA); ``softmax_grid``:
    the probabilities of A·V on the ``"unsigned"`` grid (default) or the ``"signed"`` one."""

    def __init__(self, attn: nn.Module, bits: int = 8, softmax_grid: str = "unsigned") -> None:
        super().__init__()
        if getattr(attn, "gate", None) is not None:
            raise UnsupportedModelError("QuantAttention: gated attention is not supported")
        self.num_heads, self.head_dim, self.scale = attn.num_heads, attn.head_dim, attn.scale
        self.attn_dim = getattr(attn, "attn_dim", attn.num_heads * attn.head_dim)
        self.qkv = QuantLinear(attn.qkv, bits, bits)
        self.q_norm, self.k_norm = attn.q_norm, attn.k_norm
        self.norm = getattr(attn, "norm", nn.Identity())
        self.proj = QuantLinear(attn.proj, bits, bits)
        self.qk = QuantMatMul(bits, bits)
        if softmax_grid not in SOFTMAX_GRIDS:
            raise ConfigError(
                f"QuantAttention: softmax_grid must be one of {SOFTMAX_GRIDS}, got {softmax_grid!r}"
            )
        self.av = QuantMatMul(bits, bits, unsigned_a=softmax_grid == "unsigned")
        self.last_scores: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, attn_mask: Any = None, is_causal: bool = False):
        if attn_mask is not None or is_causal:
            raise UnsupportedModelError("QuantAttention: attention masks are not supported")
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        scores = self.qk(q * self.scale, k, transpose_b=True)
        out = self.av(scores.softmax(dim=-1), v)
        out = self.norm(out.transpose(1, 2).reshape(b, n, self.attn_dim))
        return self.proj(out)


def quantization_state(model: nn.Module) -> str:
    """``"none"``: no fake-quantized op; ``"calibrated"``: every :class:`QuantLinear` /
    :class:`QuantMatMul` has its steps, so the model exports its own QDQ int8 graph;
    ``"uncalibrated"``: some have none yet (they run, and export, in full precision)."""
    ops = [m for m in model.modules() if isinstance(m, (QuantLinear, QuantMatMul))]
    if not ops:
        return "none"
    return "calibrated" if all(float(m.delta_w) > 0 for m in ops) else "uncalibrated"


def _macs(n: int, op: nn.Module, name: str) -> Any:
    """int8 MACs once calibrated at ≤ 8 bits (the deployed kernels), else float MACs."""
    if float(op.delta_w) > 0 and op.bits_w <= 8 and op.bits_x <= 8:
        return OpCounts.from_int8_macs(n, op=f"int8_{name}")
    return OpCounts.from_macs(n, op=name)


def _count_linear(module: nn.Module, inputs: tuple, output: torch.Tensor) -> Any:
    return _macs(output.numel() * module.weight.shape[1], module, "linear")


def _count_matmul(module: nn.Module, inputs: tuple, output: torch.Tensor) -> Any:
    return _macs(output.numel() * inputs[0].shape[-1], module, "matmul")


register_module_counter(QuantLinear, _count_linear)
register_module_counter(QuantMatMul, _count_matmul)
