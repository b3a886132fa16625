"""Post-training quantization of vision transformers (Liu et al., NeurIPS 2021,
arXiv 2106.14156), in simulated (fake-quant) form.

Every linear layer of the blocks (qkv, proj, fc1, fc2) and both attention matmuls (Q·Kᵀ,
A·V) get symmetric uniform quantizers on both operands. Per op, the steps are searched on
calibration images to maximise the cosine similarity of the full-precision and quantized
outputs (:func:`~leanvision.methods.lowbit.quant.search_intervals`), with the ranking loss on
the attention scores subtracted for Q·Kᵀ; linear layers then get bias correction. Mixed
precision gives more bits to ops whose outputs have larger nuclear norms, under an average
budget. The patch embedding and the head stay in float, as usual.

This module decides the quantization. Not yet here (so not yet registered as a method):
streaming calibration over the default 1,024 images (the search holds each op's inputs for
``search_images`` images in memory) and the deployment on int8 kernels (QDQ ONNX for
onnxruntime).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leanvision.errors import UnsupportedModelError
from leanvision.methods.lowbit.quant import (
    allocate_bits,
    bias_correction,
    fake_quant,
    nuclear_norm,
    ranking_loss,
    search_intervals,
)

__all__ = ["PTQViTConfig", "QuantAttention", "QuantLinear", "QuantMatMul", "quantize_vit"]


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
        self.record: list[torch.Tensor] | None = None  # calibration: inputs seen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.record is not None:
            self.record.append(x.detach())
        if float(self.delta_w) <= 0:  # not calibrated yet: full precision
            return F.linear(x, self.weight, self.bias)
        xq = fake_quant(x, self.delta_x, self.bits_x)
        return F.linear(xq, fake_quant(self.weight, self.delta_w, self.bits_w), self.bias)


class QuantMatMul(nn.Module):
    """``q(a; Δ_a) @ q(b; Δ_b)`` (fake quantization); ``b`` plays the weight's role."""

    def __init__(self, bits_a: int = 8, bits_b: int = 8) -> None:
        super().__init__()
        self.bits_w, self.bits_x = bits_b, bits_a
        self.register_buffer("delta_w", torch.tensor(0.0))
        self.register_buffer("delta_x", torch.tensor(0.0))
        self.record: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.record is not None:
            self.record.append((a.detach(), b.detach()))
        if float(self.delta_w) <= 0:
            return a @ b
        return fake_quant(a, self.delta_x, self.bits_x) @ fake_quant(b, self.delta_w, self.bits_w)


class QuantAttention(nn.Module):
    """timm ``Attention`` with explicit, quantized matmuls (no fused SDPA)."""

    def __init__(self, attn: nn.Module, bits: int = 8) -> None:
        super().__init__()
        if getattr(attn, "gate", None) is not None:
            raise UnsupportedModelError("ptq_vit: gated attention is not supported")
        self.num_heads, self.head_dim, self.scale = attn.num_heads, attn.head_dim, attn.scale
        self.attn_dim = getattr(attn, "attn_dim", attn.num_heads * attn.head_dim)
        self.qkv = QuantLinear(attn.qkv, bits, bits)
        self.q_norm, self.k_norm = attn.q_norm, attn.k_norm
        self.norm = getattr(attn, "norm", nn.Identity())
        self.proj = QuantLinear(attn.proj, bits, bits)
        self.qk = QuantMatMul(bits, bits)
        self.av = QuantMatMul(bits, bits)
        self.last_scores: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, attn_mask: Any = None, is_causal: bool = False):
        if attn_mask is not None or is_causal:
            raise UnsupportedModelError("ptq_vit: attention masks are not supported")
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        scores = self.qk(q * self.scale, k.transpose(-2, -1))
        out = self.av(scores.softmax(dim=-1), v)
        out = self.norm(out.transpose(1, 2).reshape(b, n, self.attn_dim))
        return self.proj(out)


@dataclass
class PTQViTConfig:
    """Bits, the number of calibration images the search holds (``search_images``), the
    ranking loss weight γ and margin θ, mixed precision (an average bit budget over
    ``bit_choices``; None = uniform ``bits``), bias correction."""

    bits: int = 8
    search_images: int = 32
    ranking_weight: float = 0.1
    ranking_theta: float = 0.0
    bit_budget: float | None = None
    bit_choices: tuple[int, ...] = (4, 6, 8)
    bias_correction: bool = True
    rounds: int = 2


def _quant_ops(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear | QuantMatMul)}


def quantize_vit(model: nn.Module, bits: int = 8) -> nn.Module:
    """A copy of a timm ViT with quantizable attention and MLP layers (steps still 0: it runs
    in full precision until :func:`calibrate` sets them)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise UnsupportedModelError(
            f"ptq_vit: {type(model).__name__} has no .blocks (timm ViT / DeiT expected)"
        )
    new = copy.deepcopy(model).eval()
    for blk in new.blocks:
        if not hasattr(blk, "attn") or not hasattr(blk, "mlp"):
            raise UnsupportedModelError("ptq_vit: each block needs .attn and .mlp (timm ViT)")
        blk.attn = QuantAttention(blk.attn, bits)
        for name in ("fc1", "fc2"):
            lin = getattr(blk.mlp, name, None)
            if not isinstance(lin, nn.Linear):
                raise UnsupportedModelError(f"ptq_vit: mlp.{name} is not a Linear")
            setattr(blk.mlp, name, QuantLinear(lin, bits, bits))
    return new


@torch.no_grad()
def calibrate(model: nn.Module, images: torch.Tensor, cfg: PTQViTConfig) -> dict[str, Any]:
    """Search every op's steps on ``images`` (full-precision inputs of each op), with the
    ranking penalty for Q·Kᵀ, optional mixed precision and bias correction. Returns a record
    (bits, steps, similarity per op)."""
    ops = _quant_ops(model)
    search = images[: cfg.search_images]
    for m in ops.values():
        m.record = []
        m.delta_w.zero_()
    model(search)  # full precision: record each op's inputs
    inputs = {n: m.record for n, m in ops.items()}
    for m in ops.values():
        m.record = None

    def operands(name: str) -> tuple[torch.Tensor, torch.Tensor, Any]:
        m = ops[name]
        if isinstance(m, QuantLinear):
            return torch.cat(inputs[name]), m.weight, lambda x, w: F.linear(x, w)
        a = torch.cat([p[0] for p in inputs[name]])
        b = torch.cat([p[1] for p in inputs[name]])
        return a, b, lambda x, w: x @ w

    bits = {n: cfg.bits for n in ops}
    if cfg.bit_budget is not None:
        sens, sizes = {}, {}
        for n in ops:
            x, w, fn = operands(n)
            out = fn(x, w)
            sens[n] = nuclear_norm(out.reshape(-1, out.shape[-2], out.shape[-1])[:64])
            sizes[n] = w.numel() if isinstance(ops[n], QuantLinear) else out[0].numel()
        bits = allocate_bits(sens, sizes, cfg.bit_budget, cfg.bit_choices)
    record: dict[str, Any] = {}
    for n, m in ops.items():
        m.bits_w = m.bits_x = bits[n]
        x, w, fn = operands(n)
        penalty = None
        if n.endswith(".qk") and cfg.ranking_weight > 0:
            scale = 1.0 / max(1, x[0].numel())

            def penalty(ref, out, s=scale):
                return cfg.ranking_weight * s * float(ranking_loss(ref, out, cfg.ranking_theta))

        dw, dx, best = search_intervals(fn, x, w, bits[n], bits[n], rounds=cfg.rounds,
                                        penalty=penalty)  # fmt: skip
        m.delta_w.fill_(dw)
        m.delta_x.fill_(dx)
        if cfg.bias_correction and isinstance(m, QuantLinear) and m.bias is not None:
            ref = fn(x, w)
            out = fn(fake_quant(x, dx, bits[n]), fake_quant(w, dw, bits[n]))
            m.bias.sub_(bias_correction(ref, out))
        record[n] = {"bits": bits[n], "delta_w": dw, "delta_x": dx, "objective": best}
    return record
