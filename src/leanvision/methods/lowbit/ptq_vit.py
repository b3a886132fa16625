"""Post-training quantization of vision transformers (Liu et al., NeurIPS 2021,
arXiv 2106.14156), in simulated (fake-quant) form.

Every linear layer of the blocks (qkv, proj, fc1, fc2) and both attention matmuls (Q·Kᵀ,
A·V) get uniform quantizers on both operands: symmetric and signed (the paper's Eq. 8), except
the post-softmax probabilities A of A·V, which are never negative and get the unsigned grid, all
2^b levels on [0, max] (``softmax_grid``). Per op, the steps are searched on calibration images
to maximise the cosine similarity of the full-precision and quantized outputs
(:func:`~leanvision.methods.lowbit.quant.search_intervals`), with γ × the ranking loss on the
attention scores (the paper's Eq. 12-13, a sum over pairs) subtracted for Q·Kᵀ; linear layers
then get bias correction. Mixed precision (the paper's Sec. 3.3) gives one width to each block's
MSA module (qkv, Q·Kᵀ, A·V, proj) and one to its MLP (fc1, fc2), from the nuclear norm of the
attention map, resp. of the MLP output, times the perturbation quantization causes there,
under an average budget of bits per weight. The patch embedding and the head stay in float, as
usual.

Calibration streams (:func:`calibrate`): the images pass in chunks, block by block. Each
block's input is held for every calibration image (N × tokens × dim floats, the only tensor
that grows with N); while the block runs, each of its ops keeps ``rows_per_image`` random rows
of its first operand per image (tokens of a linear layer's input, query rows of Q and of the
attention probabilities, with the whole second operand K or V) and the running max of |x| over
every row. The searches run on those rows, then the quantized block produces the next block's
input, so later blocks are calibrated on the inputs they will see when deployed.

Deployment: exported with :func:`leanvision.export_onnx`, every quantizer becomes an 8-bit
QuantizeLinear → DequantizeLinear pair (zero point 0: int8 weights and activations, uint8 for
the probabilities; fewer bits clip first), which onnxruntime fuses into integer matmuls
(``MatMulIntegerToFloat``, ``QLinearMatMul``) and OpenVINO runs as int8 linear layers and an
int8 fused attention (K is quantized before its transpose, which the attention then folds).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leanvision.errors import ConfigError, UnsupportedModelError
from leanvision.layers.quant import (
    SOFTMAX_GRIDS,
    QuantAttention,
    QuantLinear,
    QuantMatMul,
    fake_quant,
)
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
    nuclear_norm,
    ranking_loss,
    search_intervals,
)
from leanvision.methods.registry import record_transform, register_method
from leanvision.utils import replace_modules

log = logging.getLogger(__name__)

__all__ = [
    "PTQViTConfig",
    "calibrate",
    "quantize_vit",
]


@dataclass
class PTQViTConfig(MethodConfig):
    """Calibration: ``num_images`` images of ``calib_split`` (never test), pushed in chunks of
    ``batch_size``, ``rows_per_image`` random rows kept per op and image for the searches.
    Search: ``rounds`` alternations; γ × the ranking loss (γ ``ranking_weight``, margin θ
    ``ranking_theta``) is subtracted for Q·Kᵀ. Bias correction on the linear layers.

    ``softmax_grid``: ``"unsigned"`` (default) quantizes the post-softmax probabilities with all
    2^b levels on [0, max] (uint8, zero point 0, in ONNX): one more bit of resolution at the same
    width; ``"signed"`` uses the symmetric grid of the other operands (the paper's Eq. 8 as
    written for every input, and this toolkit before issue 17), whose negative half
    probabilities never use.

    ``rank_norm``: ``"sum"`` (default) is the paper's Eq. 13, the hinge summed over every pair of
    scores in a row, over rows and heads, per image (averaged over images, as the similarity),
    so γ is the paper's trade-off weight; to bound the cost it is estimated from
    ``ranking_rows`` score rows drawn uniformly at random (seeded) as ``heads × tokens × the mean
    pair-sum of a drawn row``, unbiased for that sum. ``"per_pair"`` divides it by the number
    of pairs and rows, on the first ``ranking_rows`` rows (before issue 17: a γ on another scale).

    Mixed precision (``bit_budget`` bits per weight, averaged, over ``bit_choices``; None =
    uniform ``bits``): ``bit_groups="module"`` (default, the paper's Sec. 3.3) gives one width to
    each block's MSA (qkv, Q·Kᵀ, A·V, proj; the matmuls hold no weights and take their module's
    width) and one to its MLP (fc1, fc2); the sensitivity σ is the nuclear norm of the attention
    map (post-softmax, per head) resp. of the MLP output on ``nuclear_images`` images, and a
    greedy walk raises the unit with the largest decrease of the paper's Ω = Σ σ·‖Ŷ − Y‖² per
    added bit·weight (‖Ŷ − Y‖² measured with max-based steps at each choice).
    ``bit_groups="linear"`` (before issue 17): one width per linear layer from the nuclear norm
    of its output alone, attention matmuls at ``bits``.

    Cost: each search evaluates 1 + 2·``rounds``·15 candidates on ``num_images`` ×
    ``rows_per_image`` rows per op; the ranking term grows as ``ranking_rows`` × tokens² (at
    224 px, 197 tokens, lower ``ranking_rows`` to a few hundred to keep it bounded). Mixed
    precision by module runs each block 2 + 2·len(``bit_choices``) times on ``nuclear_images``
    images and takes the SVD of every attention map (images × heads) and MLP output.

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
    softmax_grid: str = "unsigned"
    rank_norm: str = "sum"
    bit_groups: str = "module"

    def validate(self) -> None:
        """Types; bits in 2..16; image, batch and row counts ≥ 1; rounds ≥ 0; calib_split
        'train' or 'val' (never test); ranking weight and margin ≥ 0; bit_choices in 2..16 and
        bit_budget (or None) within them; seed ≥ 0; softmax_grid, rank_norm and bit_groups
        among their choices."""
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
        for name, allowed in _CHOICES.items():
            check_choice(name, getattr(self, name), allowed)

    def check_inputs(self, data: Any) -> None:
        """Calibration reads training or validation images: ``data`` is required."""
        super().check_inputs(data)
        if data is None:
            raise ConfigError("ptq_vit calibrates on training or validation images: pass data=")


_CHOICES = {
    "softmax_grid": SOFTMAX_GRIDS,
    "rank_norm": ("sum", "per_pair"),
    "bit_groups": ("module", "linear"),
}


def _choice(name: str, value: str) -> str:
    if value not in _CHOICES[name]:
        raise ConfigError(f"ptq_vit: {name} must be one of {_CHOICES[name]}, got {value!r}")
    return value


def _grid(value: str) -> str:
    return _choice("softmax_grid", value)


def _quant_ops(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear | QuantMatMul)}


def quantize_vit(
    model: nn.Module, bits: int | dict[str, int] = 8, softmax_grid: str = "unsigned"
) -> nn.Module:
    """A copy of a timm ViT with quantizable attention and MLP layers (steps still 0: it runs
    in full precision until :func:`calibrate` sets them). ``bits``: one width, or one per op
    name (as :func:`calibrate` records them); ``softmax_grid``: the probabilities' grid
    (:class:`PTQViTConfig`; :func:`calibrate` sets it from its config)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise UnsupportedModelError(
            f"ptq_vit: {type(model).__name__} has no .blocks (timm ViT / DeiT expected)"
        )
    new = copy.deepcopy(model).eval()
    uniform = bits if isinstance(bits, int) else 8
    targets = set()
    for i, blk in enumerate(new.blocks):
        if not hasattr(blk, "attn") or not hasattr(blk, "mlp"):
            raise UnsupportedModelError("ptq_vit: each block needs .attn and .mlp (timm ViT)")
        for name in ("fc1", "fc2"):
            if not isinstance(getattr(blk.mlp, name, None), nn.Linear):
                raise UnsupportedModelError(f"ptq_vit: mlp.{name} is not a Linear")
        targets |= {f"blocks.{i}.attn", f"blocks.{i}.mlp.fc1", f"blocks.{i}.mlp.fc2"}
    _grid(softmax_grid)  # named as this method's option, before any layer is made

    def make(m: nn.Module, name: str) -> nn.Module:
        if name.endswith(".attn"):
            return QuantAttention(m, uniform, softmax_grid)
        return QuantLinear(m, uniform, uniform)

    replace_modules(new, make, lambda m, name: name in targets)
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
    """Bits per op under ``cfg.bit_budget`` bits per weight (full-precision passes over
    ``cfg.nuclear_images`` images): per MSA / MLP module (``bit_groups="module"``), or per
    linear layer from its output's nuclear norm (``"linear"``)."""
    if _choice("bit_groups", cfg.bit_groups) == "module":
        return _allocate_modules(model, x0, ops, cfg)
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


class _Probe:
    """Max |operand| of both operands of an op; with ``keep``, its first operands too."""

    def __init__(self, keep: bool = False) -> None:
        self.a_max = self.b_max = 0.0
        self.keep, self.kept = keep, []

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.a_max = max(self.a_max, float(a.abs().max()))
        self.b_max = max(self.b_max, float(b.abs().max()))
        if self.keep:
            self.kept.append(a)


def _unit_features(
    blk: nn.Module, x: torch.Tensor, unit_ops: dict[str, dict[str, nn.Module]], batch: int
) -> tuple[dict[str, torch.Tensor], dict[str, _Probe]]:
    """Run ``blk`` on ``x``: each unit's feature (the MSA's attention map, the input of A·V as
    that op quantizes it once calibrated; the MLP's output) and a probe of every op."""
    probes = {n: _Probe(keep=n.endswith(".av")) for ops in unit_ops.values() for n in ops}
    mlp_out: list[torch.Tensor] = []
    handle = blk.mlp.register_forward_hook(lambda _m, _a, out: mlp_out.append(out))
    for ops in unit_ops.values():
        for n, m in ops.items():
            m.record = probes[n]
    try:
        _run(blk, x, batch)
    finally:
        handle.remove()
        for ops in unit_ops.values():
            for m in ops.values():
                m.record = None
    feats = {}
    for unit, ops in unit_ops.items():
        av = [n for n in ops if n.endswith(".av")]
        if not av:
            feats[unit] = torch.cat(mlp_out)
            continue
        a, op = torch.cat(probes[av[0]].kept), ops[av[0]]
        feats[unit] = op.quantize_a(a) if float(op.delta_x) > 0 else a
    return feats, probes


def _max_steps(op: nn.Module, probe: _Probe, bits: int) -> None:
    """Max-based steps (Δ₀ of the search) for ``bits`` on both operands of ``op``."""
    signed = 2 ** (bits - 1) - 1
    op.bits_w = op.bits_x = bits
    op.delta_w.fill_(max(probe.b_max, 1e-8) / signed)
    levels = 2**bits - 1 if getattr(op, "unsigned_a", False) else signed
    op.delta_x.fill_(max(probe.a_max, 1e-8) / levels)


@torch.no_grad()
def _allocate_modules(
    model: nn.Module, x0: torch.Tensor, ops: dict[str, nn.Module], cfg: PTQViTConfig
) -> dict[str, int]:
    """The paper's mixed precision (Sec. 3.3): one width per MSA and per MLP module. σ_u is the
    mean nuclear norm of the unit's feature (attention maps per head, MLP outputs per image),
    e_u(b) the mean squared error ‖Ŷ_u − Y_u‖² per image with the unit alone quantized at b
    bits (max-based steps, the block's full-precision input); :func:`allocate_bits` walks Ω."""
    x = x0[: cfg.nuclear_images]
    sens: dict[str, float] = {}
    sizes: dict[str, int] = {}
    pert: dict[str, dict[int, float]] = {}
    units: dict[str, dict[str, nn.Module]] = {}
    for i, blk in enumerate(model.blocks):
        pre = f"blocks.{i}."
        unit_ops = {
            pre + kind: {n: m for n, m in ops.items() if n.startswith(pre + kind + ".")}
            for kind in ("attn", "mlp")
        }
        feats, probes = _unit_features(blk, x, unit_ops, cfg.batch_size)
        for unit, members in unit_ops.items():
            y = feats[unit]
            mats = y.reshape(-1, y.shape[-2], y.shape[-1])  # (images × heads, N, N) or (B, N, C)
            sens[unit] = nuclear_norm(mats)
            sizes[unit] = sum(m.weight.numel() for m in members.values() if hasattr(m, "weight"))
            pert[unit] = {}
            for b in cfg.bit_choices:
                for n, m in members.items():
                    _max_steps(m, probes[n], b)
                try:
                    y_hat = _unit_features(blk, x, {unit: members}, cfg.batch_size)[0][unit]
                finally:
                    for m in members.values():
                        m.delta_w.zero_()
                        m.delta_x.zero_()
                pert[unit][b] = float((y_hat - y).pow(2).sum()) / x.shape[0]
            units[unit] = members
        x = _run(blk, x, cfg.batch_size)
    unit_bits = allocate_bits(sens, sizes, cfg.bit_budget, cfg.bit_choices, perturbation=pert)
    return {n: unit_bits[u] for u, members in units.items() for n in members}


def _ranking_penalty(cfg: PTQViTConfig) -> Callable[[torch.Tensor, torch.Tensor], float]:
    """γ × the ranking loss of the Q·Kᵀ scores (``ref``, ``out``: images × heads × rows × keys,
    the rows a uniform sample of each image's query rows).

    ``rank_norm="sum"``: the paper's per-image sum over heads, every query row and every pair,
    estimated as ``heads × tokens × mean pair-sum`` over ``ranking_rows`` recorded rows drawn
    uniformly at random (once per op, seeded, the same rows for every candidate step): each
    recorded row is a uniform draw of an (image, head, query row), so the estimate is unbiased.
    ``"per_pair"``: the loss per pair and row on the first ``ranking_rows`` rows."""
    mode = _choice("rank_norm", cfg.rank_norm)
    picked: dict[str, torch.Tensor] = {}

    def penalty(ref: torch.Tensor, out: torch.Tensor) -> float:
        t = ref.shape[-1]
        r, o = ref.reshape(-1, t), out.reshape(-1, t)
        if mode == "per_pair":
            r, o = r[: cfg.ranking_rows], o[: cfg.ranking_rows]
            per_pair = ranking_loss(r, o, cfg.ranking_theta) / max(1, t * (t - 1) // 2)
            return cfg.ranking_weight * float(per_pair)
        if r.shape[0] > cfg.ranking_rows:
            if "idx" not in picked:
                gen = torch.Generator().manual_seed(cfg.seed)
                perm = torch.randperm(r.shape[0], generator=gen)[: cfg.ranking_rows]
                picked["idx"] = perm.to(r.device)
            r, o = r[picked["idx"]], o[picked["idx"]]
        rows_per_image = math.prod(ref.shape[1:-2]) * t  # heads × query rows (= keys)
        mean_row = ranking_loss(r, o, cfg.ranking_theta)  # mean pair-sum per drawn row
        return cfg.ranking_weight * rows_per_image * float(mean_row)

    return penalty


@torch.no_grad()
def calibrate(model: nn.Module, images: Any, cfg: PTQViTConfig) -> dict[str, Any]:
    """Search every op's steps on calibration ``images`` (a tensor, or an iterable of batches)
    block by block: bits (uniform or nuclear-norm mixed precision), interval search with the
    ranking penalty for Q·Kᵀ, bias correction. Returns a record per op (bits, steps, objective)."""
    for name in _CHOICES:  # the options of issue 17, checked before any work
        _choice(name, getattr(cfg, name))
    ops = _quant_ops(model)
    if not ops:
        raise ConfigError("ptq_vit.calibrate: no quantized ops (run quantize_vit first)")
    was = model.training
    model.eval()
    unsigned = _grid(cfg.softmax_grid) == "unsigned"
    for n, m in ops.items():  # full precision until searched
        m.delta_w.zero_()
        m.delta_x.zero_()
        if isinstance(m, QuantMatMul) and n.endswith(".av"):
            m.unsigned_a = unsigned
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
    unsigned = bool(getattr(op, "unsigned_a", False))
    dw, dx, best = search_intervals(
        fn, x, w, bits, bits, rounds=cfg.rounds, penalty=penalty, x_max=rec.a_max,
        unsigned_x=unsigned,
    )  # fmt: skip
    op.delta_w.fill_(dw)
    op.delta_x.fill_(dx)
    if cfg.bias_correction and isinstance(op, QuantLinear) and op.bias is not None:
        quant = fn(fake_quant(x, dx, bits), fake_quant(w, dw, bits))
        op.bias.sub_(bias_correction(fn(x, w), quant))
    return {"bits": bits, "delta_w": dw, "delta_x": dx, "objective": best}


def _rebuild(model: nn.Module, arch: dict[str, Any]) -> nn.Module:
    # models saved before softmax_grid existed quantized the probabilities on the signed grid
    grid = arch.get("softmax_grid", "signed")
    return quantize_vit(model, {n: int(b) for n, b in arch["bits"].items()}, grid)


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
    new = quantize_vit(model, cfg.bits, cfg.softmax_grid)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = data.loader(split, batch_size=cfg.batch_size, shuffle=True, generator=gen)
    record = calibrate(new, loader, cfg)
    new.ptq_record = record
    bits = {n: r["bits"] for n, r in record.items()}
    record_transform(new, model, "ptq_vit", {"bits": bits, "softmax_grid": cfg.softmax_grid})
    return new.eval()
