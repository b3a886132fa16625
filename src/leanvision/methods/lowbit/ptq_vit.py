"""Post-training quantization of vision transformers (Liu et al., NeurIPS 2021,
arXiv 2106.14156), in simulated (fake-quant) form.

Every linear layer of the blocks (qkv, proj, fc1, fc2) and both attention matmuls (Q·Kᵀ,
A·V) get symmetric uniform quantizers on both operands. Per op, the steps are searched on
calibration images to maximise the cosine similarity of the full-precision and quantized
outputs (:func:`~leanvision.methods.lowbit.quant.search_intervals`), with the ranking loss on
the attention scores subtracted for Q·Kᵀ; linear layers then get bias correction. Mixed
precision gives more bits to ops whose outputs have larger nuclear norms, under an average
budget. The patch embedding and the head stay in float, as usual.

Calibration streams (:func:`calibrate`): the images pass in chunks, block by block. Each
block's input is held for every calibration image (N × tokens × dim floats, the only tensor
that grows with N); while the block runs, each of its ops keeps ``rows_per_image`` random rows
of its first operand per image (tokens of a linear layer's input, query rows of Q and of the
attention probabilities, with the whole second operand K or V) and the running max of |x| over
every row. The searches run on those rows, then the quantized block produces the next block's
input, so later blocks are calibrated on the inputs they will see when deployed.

Deployment: exported with :func:`leanvision.export_onnx`, every quantizer becomes an int8
QuantizeLinear → DequantizeLinear pair (fewer bits clip first), which onnxruntime fuses into
integer matmuls (``MatMulIntegerToFloat``, ``QLinearMatMul``).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leanvision.errors import ConfigError, UnsupportedModelError
from leanvision.methods.config import (
    MethodConfig,
    check_choice,
    check_int,
    check_real,
    field_error,
)
from leanvision.methods.lowbit.quant import (
    allocate_bits,
    bias_correction,
    fake_quant,
    nuclear_norm,
    ranking_loss,
    search_intervals,
)
from leanvision.methods.registry import record_transform, register_method

log = logging.getLogger(__name__)

__all__ = [
    "PTQViTConfig",
    "QuantAttention",
    "QuantLinear",
    "QuantMatMul",
    "calibrate",
    "quantize_vit",
]


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
        xq = fake_quant(x, self.delta_x, self.bits_x, activation=True)
        y = F.linear(xq, fake_quant(self.weight, self.delta_w, self.bits_w))
        return y if self.bias is None else y + self.bias  # MatMul → Add: ORT fuses the bias


class QuantMatMul(nn.Module):
    """``q(a; Δ_a) @ q(b; Δ_b)`` (fake quantization); ``b`` plays the weight's role."""

    def __init__(self, bits_a: int = 8, bits_b: int = 8) -> None:
        super().__init__()
        self.bits_w, self.bits_x = bits_b, bits_a
        self.register_buffer("delta_w", torch.tensor(0.0))
        self.register_buffer("delta_x", torch.tensor(0.0))
        self.record: Callable[..., None] | None = None

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.record is not None:
            self.record(a.detach(), b.detach())
        if float(self.delta_w) <= 0:
            return a @ b
        aq = fake_quant(a, self.delta_x, self.bits_x, activation=True)
        return aq @ fake_quant(b, self.delta_w, self.bits_w, activation=True)


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


def _macs(n: int, op: nn.Module, name: str) -> Any:
    """int8 MACs once calibrated at ≤ 8 bits (the deployed kernels), else float MACs."""
    from leanvision.profiling.counting import OpCounts

    if float(op.delta_w) > 0 and op.bits_w <= 8 and op.bits_x <= 8:
        return OpCounts.from_int8_macs(n, op=f"int8_{name}")
    return OpCounts.from_macs(n, op=name)


def _count_linear(module: nn.Module, inputs: tuple, output: torch.Tensor) -> Any:
    return _macs(output.numel() * module.weight.shape[1], module, "linear")


def _count_matmul(module: nn.Module, inputs: tuple, output: torch.Tensor) -> Any:
    return _macs(output.numel() * inputs[0].shape[-1], module, "matmul")


def _register() -> None:
    from leanvision.profiling.counting import register_module_counter

    register_module_counter(QuantLinear, _count_linear)
    register_module_counter(QuantMatMul, _count_matmul)


_register()


@dataclass
class PTQViTConfig(MethodConfig):
    """Calibration: ``num_images`` images of ``calib_split`` (never test), pushed in chunks of
    ``batch_size``, ``rows_per_image`` random rows kept per op and image for the searches.
    Search: ``rounds`` alternations; the ranking loss (weight γ, margin θ, on up to
    ``ranking_rows`` rows of attention scores) is subtracted for Q·Kᵀ. Mixed precision: an
    average bit budget per weight over ``bit_choices`` for the linear layers, sensitivity =
    nuclear norm of each op's output on ``nuclear_images`` images (None = uniform ``bits``;
    attention matmuls keep ``bits``). Bias correction on the linear layers.

    Cost: each search evaluates 1 + 2·``rounds``·15 candidates on ``num_images`` ×
    ``rows_per_image`` rows per op; the ranking term grows as ``ranking_rows`` × tokens² (at
    224 px, 197 tokens, lower ``ranking_rows`` to a few hundred to keep it bounded).

    No training, so no ``max_steps``: ``num_images`` alone bounds the calibration (the one
    pass over data reads ⌈``num_images`` / ``batch_size``⌉ batches); a smoke run lowers it."""

    bits: int = 8
    num_images: int = 1024
    calib_split: str = "val"
    batch_size: int = 64
    rows_per_image: int = 16
    ranking_weight: float = 0.1
    ranking_theta: float = 0.0
    ranking_rows: int = 2048
    bit_budget: float | None = None
    bit_choices: tuple[int, ...] = (4, 6, 8)
    nuclear_images: int = 32
    bias_correction: bool = True
    rounds: int = 2
    seed: int = 0

    def validate(self) -> None:
        """Types; bits in 2..16; image, batch and row counts ≥ 1; rounds ≥ 0; calib_split
        'train' or 'val' (never test); ranking weight and margin ≥ 0; bit_choices in 2..16 and
        bit_budget (or None) within them; seed ≥ 0."""
        super().validate()
        check_int("bits", self.bits, 2, 16)
        for name in ("num_images", "batch_size", "rows_per_image", "ranking_rows",
                     "nuclear_images"):  # fmt: skip
            check_int(name, getattr(self, name), 1)
        check_int("rounds", self.rounds, 0)
        check_choice("calib_split", self.calib_split, ("train", "val"))
        check_real("ranking_weight", self.ranking_weight, 0.0)
        check_real("ranking_theta", self.ranking_theta, 0.0)
        if not self.bit_choices:
            raise field_error("bit_choices", self.bit_choices, "a non-empty list of bits in 2..16")
        for i, b in enumerate(self.bit_choices):
            check_int(f"bit_choices[{i}]", b, 2, 16)
        check_real("bit_budget", self.bit_budget, min(self.bit_choices), max(self.bit_choices),
                   none_ok=True)  # fmt: skip
        check_int("seed", self.seed, 0)

    def check_inputs(self, data: Any) -> None:
        """Calibration reads training or validation images: ``data`` is required."""
        super().check_inputs(data)
        if data is None:
            raise ConfigError("ptq_vit calibrates on training or validation images: pass data=")


def _quant_ops(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear | QuantMatMul)}


def quantize_vit(model: nn.Module, bits: int | dict[str, int] = 8) -> nn.Module:
    """A copy of a timm ViT with quantizable attention and MLP layers (steps still 0: it runs
    in full precision until :func:`calibrate` sets them). ``bits``: one width, or one per op
    name (as :func:`calibrate` records them)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise UnsupportedModelError(
            f"ptq_vit: {type(model).__name__} has no .blocks (timm ViT / DeiT expected)"
        )
    new = copy.deepcopy(model).eval()
    uniform = bits if isinstance(bits, int) else 8
    for blk in new.blocks:
        if not hasattr(blk, "attn") or not hasattr(blk, "mlp"):
            raise UnsupportedModelError("ptq_vit: each block needs .attn and .mlp (timm ViT)")
        blk.attn = QuantAttention(blk.attn, uniform)
        for name in ("fc1", "fc2"):
            lin = getattr(blk.mlp, name, None)
            if not isinstance(lin, nn.Linear):
                raise UnsupportedModelError(f"ptq_vit: mlp.{name} is not a Linear")
            setattr(blk.mlp, name, QuantLinear(lin, uniform, uniform))
    if isinstance(bits, dict):
        for n, m in _quant_ops(new).items():
            m.bits_w = m.bits_x = int(bits.get(n, uniform))
    return new


class _Stop(Exception):
    """Raised by the capture hook: nothing after the first block needs to run."""


@torch.no_grad()
def _block_inputs(model: nn.Module, images: Any, cfg: PTQViTConfig) -> torch.Tensor:
    """The input of ``model.blocks[0]`` for up to ``cfg.num_images`` images (a tensor, or an
    iterable of tensors / (image, label) batches), computed in chunks."""
    seen: list[torch.Tensor] = []

    def hook(_m: nn.Module, args: tuple) -> None:
        seen.append(args[0].detach())
        raise _Stop

    if isinstance(images, torch.Tensor):
        images = images[: cfg.num_images].split(cfg.batch_size)
    handle = model.blocks[0].register_forward_pre_hook(hook)
    count = 0
    try:
        for batch in images:
            x = batch[0] if isinstance(batch, list | tuple) else batch
            x = x[: cfg.num_images - count]
            with contextlib.suppress(_Stop):
                model(x)
            count += x.shape[0]
            if count >= cfg.num_images:
                break
    finally:
        handle.remove()
    if not seen:
        raise ConfigError("ptq_vit: no calibration images")
    return torch.cat(seen)


def _run(block: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    return torch.cat([block(c) for c in x.split(batch)])


def _fn(op: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if isinstance(op, QuantLinear):
        return lambda x, w: F.linear(x, w)
    return lambda a, b: a @ b


class _Rows:
    """Calibration record of one op: ``rows`` random rows (dim −2) of its first operand per
    image, the whole second operand of a matmul (a linear layer's is its weight), and the max
    of |first operand| over every row."""

    def __init__(self, rows: int, matmul: bool, gen: torch.Generator) -> None:
        self.rows, self.matmul, self.gen = rows, matmul, gen
        self.a: list[torch.Tensor] = []
        self.b: list[torch.Tensor] = []
        self.a_max = 0.0

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.a_max = max(self.a_max, float(a.abs().max()))
        if a.dim() >= 3 and a.shape[-2] > self.rows:
            n, t = a.shape[0], a.shape[-2]
            idx = torch.rand(n, t, generator=self.gen).argsort(-1)[:, : self.rows]
            shape = (n,) + (1,) * (a.dim() - 3) + (self.rows, 1)
            idx = idx.view(shape).expand(*a.shape[:-2], self.rows, a.shape[-1])
            a = a.gather(-2, idx)
        self.a.append(a)
        if self.matmul:
            self.b.append(b)

    def operands(self, op: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.cat(self.a)
        return a, (torch.cat(self.b) if self.matmul else op.weight)


class _Nuclear:
    """Mean nuclear norm of an op's output matrices (tokens × channels, or queries × keys per
    head) over the first ``limit`` images."""

    def __init__(self, fn: Callable, matmul: bool, limit: int) -> None:
        self.fn, self.matmul, self.limit = fn, matmul, limit
        self.total, self.matrices, self.images = 0.0, 0, 0

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        take = min(a.shape[0], self.limit - self.images)
        if take <= 0:
            return
        out = self.fn(a[:take], b[:take] if self.matmul else b)
        mats = out.reshape(-1, out.shape[-2], out.shape[-1])
        self.total += nuclear_norm(mats) * mats.shape[0]
        self.matrices += mats.shape[0]
        self.images += take


@torch.no_grad()
def _allocate(
    model: nn.Module, x0: torch.Tensor, ops: dict[str, nn.Module], cfg: PTQViTConfig
) -> dict[str, int]:
    """Nuclear-norm bit allocation of the linear layers under ``cfg.bit_budget`` bits per
    weight (full-precision pass over ``cfg.nuclear_images`` images)."""
    linear = {n: m for n, m in ops.items() if isinstance(m, QuantLinear)}
    recs = {n: _Nuclear(_fn(m), False, cfg.nuclear_images) for n, m in linear.items()}
    for n, m in linear.items():
        m.record = recs[n]
    try:
        x = x0[: cfg.nuclear_images]
        for blk in model.blocks:
            x = _run(blk, x, cfg.batch_size)
    finally:
        for m in linear.values():
            m.record = None
    sens = {n: r.total / max(1, r.matrices) for n, r in recs.items()}
    sizes = {n: m.weight.numel() for n, m in linear.items()}
    return allocate_bits(sens, sizes, cfg.bit_budget, cfg.bit_choices)


def _ranking_penalty(cfg: PTQViTConfig) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """γ × the ranking loss per pair of scores, on the first ``ranking_rows`` score rows."""

    def penalty(ref: torch.Tensor, out: torch.Tensor) -> float:
        t = ref.shape[-1]
        r, o = ref.reshape(-1, t)[: cfg.ranking_rows], out.reshape(-1, t)[: cfg.ranking_rows]
        per_pair = ranking_loss(r, o, cfg.ranking_theta) / max(1, t * (t - 1) // 2)
        return cfg.ranking_weight * float(per_pair)

    return penalty


@torch.no_grad()
def calibrate(model: nn.Module, images: Any, cfg: PTQViTConfig) -> dict[str, Any]:
    """Search every op's steps on calibration ``images`` (a tensor, or an iterable of batches)
    block by block: bits (uniform or nuclear-norm mixed precision), interval search with the
    ranking penalty for Q·Kᵀ, bias correction. Returns a record per op (bits, steps, objective)."""
    ops = _quant_ops(model)
    if not ops:
        raise ConfigError("ptq_vit.calibrate: no quantized ops (run quantize_vit first)")
    was = model.training
    model.eval()
    for m in ops.values():  # full precision until searched
        m.delta_w.zero_()
        m.delta_x.zero_()
    x = _block_inputs(model, images, cfg)
    bits = {n: cfg.bits for n in ops}
    if cfg.bit_budget is not None:
        bits.update(_allocate(model, x, ops, cfg))
    gen = torch.Generator().manual_seed(cfg.seed)
    record: dict[str, Any] = {}
    try:
        for i, blk in enumerate(model.blocks):
            mine = {n: m for n, m in ops.items() if n.startswith(f"blocks.{i}.")}
            recs = {
                n: _Rows(cfg.rows_per_image, isinstance(m, QuantMatMul), gen)
                for n, m in mine.items()
            }
            for n, m in mine.items():
                m.record = recs[n]
            try:
                _run(blk, x, cfg.batch_size)  # full precision: record operands
            finally:
                for m in mine.values():
                    m.record = None
            for n, m in mine.items():
                record[n] = _search_op(n, m, recs.pop(n), bits[n], cfg)
            x = _run(blk, x, cfg.batch_size)  # quantized: the next block's input
            log.info("ptq_vit: block %d/%d calibrated", i + 1, len(model.blocks))
    finally:
        model.train(was)
    return record


def _search_op(
    name: str, op: nn.Module, rec: _Rows, bits: int, cfg: PTQViTConfig
) -> dict[str, Any]:
    """Interval search of one op on its recorded rows, then bias correction."""
    op.bits_w = op.bits_x = bits
    fn = _fn(op)
    x, w = rec.operands(op)
    penalty = _ranking_penalty(cfg) if name.endswith(".qk") and cfg.ranking_weight > 0 else None
    dw, dx, best = search_intervals(
        fn, x, w, bits, bits, rounds=cfg.rounds, penalty=penalty, x_max=rec.a_max
    )
    op.delta_w.fill_(dw)
    op.delta_x.fill_(dx)
    if cfg.bias_correction and isinstance(op, QuantLinear) and op.bias is not None:
        quant = fn(fake_quant(x, dx, bits), fake_quant(w, dw, bits))
        op.bias.sub_(bias_correction(fn(x, w), quant))
    return {"bits": bits, "delta_w": dw, "delta_x": dx, "objective": best}


def _rebuild(model: nn.Module, arch: dict[str, Any]) -> nn.Module:
    return quantize_vit(model, {n: int(b) for n, b in arch["bits"].items()})


@register_method(
    "ptq_vit",
    family="lowbit",
    paper="Post-Training Quantization for Vision Transformer, NeurIPS 2021, arXiv 2106.14156",
    config=PTQViTConfig,
    rebuild=_rebuild,
)
def apply_ptq_vit(model: nn.Module, data: Any, cfg: PTQViTConfig) -> nn.Module:
    """Quantize a ViT's linear layers and attention matmuls after training (no retraining)."""
    if data is None:
        raise ConfigError("ptq_vit calibrates on training or validation images: pass data=")
    split = cfg.calib_split
    if split == "val" and len(data.val_set) == 0:
        split = "train"
    new = quantize_vit(model, cfg.bits)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = data.loader(split, batch_size=cfg.batch_size, shuffle=True, generator=gen)
    record = calibrate(new, loader, cfg)
    new.ptq_record = record
    bits = {n: r["bits"] for n, r in record.items()}
    record_transform(new, model, "ptq_vit", {"bits": bits})
    return new.eval()
