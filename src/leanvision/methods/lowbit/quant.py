"""Building blocks of post-training quantization for vision transformers (Liu et al.,
"Post-Training Quantization for Vision Transformer", NeurIPS 2021, arXiv 2106.14156).

* :func:`fake_quant`: symmetric uniform quantization to ``bits`` with step Δ.
* :func:`search_intervals`: per layer, the weight and input steps ``Δ = α·Δ₀`` (α on a grid,
  Δ₀ from the max) that maximise the cosine similarity of the full-precision and quantized
  outputs on calibration inputs, alternating weights and inputs for a few rounds.
* :func:`ranking_loss`: the hinge on every pair of attention scores whose order quantization
  flips, ``Σ_{i<j} (θ − (Â_i − Â_j)·sign(A_i − A_j))₊`` per row; with θ = 0 it is zero exactly
  when every strict order is kept.
* :func:`allocate_bits`: mixed precision, more bits for layers whose output features have a
  larger nuclear norm, under an average bit budget.
* :func:`bias_correction`: the mean output error on calibration data, to subtract from the
  quantized layer's bias.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from leanvision.errors import ConfigError

__all__ = [
    "allocate_bits",
    "bias_correction",
    "fake_quant",
    "nuclear_norm",
    "ranking_loss",
    "search_intervals",
]


def fake_quant(
    x: torch.Tensor, delta: float | torch.Tensor, bits: int, activation: bool = False
) -> torch.Tensor:
    """``clamp(round(x/Δ), −2^(b−1), 2^(b−1) − 1)·Δ`` (symmetric, signed).

    In ONNX export it becomes QuantizeLinear → DequantizeLinear: int8 for weights, and for
    ``activation=True`` uint8 with zero point 128, the same grid (x86 int8 GEMMs take
    unsigned activations: VNNI multiplies u8 by s8)."""
    if bits < 2:
        raise ConfigError(f"fake_quant: bits must be ≥ 2, got {bits}")
    q = 2 ** (bits - 1)
    if torch.onnx.is_in_onnx_export() and bits <= 8:
        # QuantizeLinear → DequantizeLinear (int8) in the ONNX graph; fewer bits clip first
        d = float(delta)
        if bits < 8:
            x = torch.clamp(x, -q * d, (q - 1) * d)
        if activation:
            return torch.fake_quantize_per_tensor_affine(x, d, 128, 0, 255)
        return torch.fake_quantize_per_tensor_affine(x, d, 0, -128, 127)
    if isinstance(delta, torch.Tensor):
        delta = float(delta)
    return torch.fake_quantize_per_tensor_affine(x, delta, 0, -q, q - 1)  # one fused pass


def _cosine(a: torch.Tensor, b: torch.Tensor, a_norm: float | None = None) -> float:
    a, b = a.reshape(-1), b.reshape(-1)
    a_norm = float(a.norm()) if a_norm is None else a_norm
    return float(torch.dot(a, b)) / max(a_norm * float(b.norm()), 1e-12)


@torch.no_grad()
def search_intervals(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    w: torch.Tensor,
    bits_w: int,
    bits_x: int,
    grid: Sequence[float] = tuple(0.5 + 0.05 * i for i in range(15)),
    rounds: int = 2,
    penalty: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
    x_max: float | None = None,
) -> tuple[float, float, float]:
    """Steps (Δ_W, Δ_X) maximising ``cos(fn(x, w), fn(q(x), q(w))) − penalty``.

    Args:
        fn: the layer as a function of its input and weight (e.g. ``F.linear`` without bias,
            or ``lambda q, k: q @ k.transpose(-2, -1)`` for an attention matmul).
        x, w: calibration input and weight (or second operand).
        bits_w, bits_x: bit widths.
        grid: factors α applied to Δ₀ = max|·| / (2^(b−1) − 1) (the paper searches [0.5, 1.2]).
        rounds: alternations of the weight search and the input search.
        penalty: extra term subtracted from the similarity (e.g. γ × the ranking loss of the
            attention scores), called with (full-precision output, quantized output).
        x_max: max |x| over all the calibration data when ``x`` is a sample of it (Δ₀ of x).

    Returns:
        (Δ_W, Δ_X, best objective).
    """
    ref = fn(x, w)
    ref_norm = float(ref.norm())
    base_w = float(w.abs().max()) / (2 ** (bits_w - 1) - 1) or 1e-8
    x_max = float(x.abs().max()) if x_max is None else x_max
    base_x = x_max / (2 ** (bits_x - 1) - 1) or 1e-8

    def score(xq: torch.Tensor, wq: torch.Tensor) -> float:
        out = fn(xq, wq)
        s = _cosine(ref, out, ref_norm)
        return s - penalty(ref, out) if penalty is not None else s

    dw, dx = base_w, base_x
    best = score(fake_quant(x, dx, bits_x), fake_quant(w, dw, bits_w))
    for _ in range(rounds):
        xq = fake_quant(x, dx, bits_x)  # fixed while the weight step is searched
        for a in grid:
            s = score(xq, fake_quant(w, a * base_w, bits_w))
            if s > best:
                best, dw = s, a * base_w
        wq = fake_quant(w, dw, bits_w)
        for a in grid:
            s = score(fake_quant(x, a * base_x, bits_x), wq)
            if s > best:
                best, dx = s, a * base_x
    return dw, dx, best


def ranking_loss(a: torch.Tensor, a_hat: torch.Tensor, theta: float = 0.0) -> torch.Tensor:
    """Pairwise hinge over the last dimension: ``Σ_{i<j} (θ − (â_i − â_j)·sign(a_i − a_j))₊``,
    summed over every leading index (heads, query rows) and averaged over the batch (dim 0).
    Pairs that are equal in ``a`` count nothing (sign 0) when θ = 0."""
    if a.shape != a_hat.shape:
        raise ConfigError(f"ranking_loss: shapes differ, {tuple(a.shape)} vs {tuple(a_hat.shape)}")
    n = a.shape[-1]
    i, j = torch.triu_indices(n, n, offset=1, device=a.device)
    order = torch.sign(a[..., i] - a[..., j])
    p = (a_hat[..., i] - a_hat[..., j]) * order
    hinge = torch.clamp(theta - p, min=0)
    if theta > 0:
        hinge = hinge * (order != 0)
    return hinge.sum() / max(1, a.shape[0])


def nuclear_norm(features: torch.Tensor) -> float:
    """Mean nuclear norm (sum of singular values) of (tokens × channels) feature matrices;
    ``features`` is (B, N, C) (or (N, C))."""
    f = features if features.dim() == 3 else features.unsqueeze(0)
    return float(torch.linalg.matrix_norm(f.float(), ord="nuc").mean())


def allocate_bits(
    sensitivity: dict[str, float], sizes: dict[str, int], budget: float,
    choices: Sequence[int] = (4, 6, 8),
) -> dict[str, int]:  # fmt: skip
    """Bits per layer: start every layer at the lowest choice, then, while the size-weighted
    average stays within ``budget``, raise the layer with the largest sensitivity per added
    bit·parameter to its next choice (greedy Pareto walk on nuclear-norm sensitivity).

    Raises:
        ConfigError: the budget is below the lowest choice, or keys differ.
    """
    if set(sensitivity) != set(sizes):
        raise ConfigError("allocate_bits: sensitivity and sizes must name the same layers")
    levels = sorted(choices)
    if budget < levels[0]:
        raise ConfigError(f"allocate_bits: budget {budget} is below the lowest choice {levels[0]}")
    bits = {k: levels[0] for k in sizes}
    total = sum(sizes.values())

    def avg(b: dict[str, int]) -> float:
        return sum(b[k] * sizes[k] for k in b) / total

    while True:
        best, best_gain = None, -1.0
        for k, b in bits.items():
            idx = levels.index(b)
            if idx + 1 == len(levels):
                continue
            trial = dict(bits, **{k: levels[idx + 1]})
            if avg(trial) > budget + 1e-9:
                continue
            gain = sensitivity[k] / ((levels[idx + 1] - b) * sizes[k])
            if gain > best_gain:
                best, best_gain = k, gain
        if best is None:
            return bits
        bits[best] = levels[levels.index(bits[best]) + 1]


@torch.no_grad()
def bias_correction(ref_out: torch.Tensor, quant_out: torch.Tensor) -> torch.Tensor:
    """Per output channel (last dim), the mean of ``quant_out − ref_out`` over every other dim:
    subtract it from the quantized layer's bias (Nagel et al., 2019; used by the paper)."""
    return (quant_out - ref_out).reshape(-1, ref_out.shape[-1]).mean(0)
