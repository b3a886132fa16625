"""Building blocks of post-training quantization for vision transformers (Liu et al.,
"Post-Training Quantization for Vision Transformer", NeurIPS 2021, arXiv 2106.14156).

* :func:`~leanvision.layers.quant.fake_quant` (a layer primitive, in
  :mod:`leanvision.layers.quant`): uniform quantization to ``bits`` with step Δ, symmetric and
  signed (the paper's Eq. 8), or unsigned for non-negative tensors such as probabilities.
* :func:`search_intervals`: per layer, the weight and input steps ``Δ = α·Δ₀`` (α on a grid,
  Δ₀ from the max) that maximise the cosine similarity of the full-precision and quantized
  outputs on calibration inputs, alternating weights and inputs for a few rounds.
* :func:`ranking_loss`: the paper's Eq. 13, the hinge on every pair of attention scores of a
  row, ``Σ_rows Σ_{i<j} (θ − (Â_i − Â_j)·sign(A_i − A_j))₊``, summed over heads and rows and
  averaged over images; with θ = 0 it is zero exactly when every strict order is kept.
* :func:`allocate_bits`: mixed precision, more bits for units whose features have a larger
  nuclear norm (weighted by their quantization perturbation, the paper's Ω), under an average
  bit budget.
* :func:`bias_correction`: the mean output error on calibration data, to subtract from the
  quantized layer's bias.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from leanvision.errors import ConfigError
from leanvision.layers.quant import fake_quant

__all__ = [
    "allocate_bits",
    "bias_correction",
    "nuclear_norm",
    "ranking_loss",
    "search_intervals",
]


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
    unsigned_x: bool = False,
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
        unsigned_x: ``x`` is non-negative and quantized on the unsigned grid (Δ₀ = max / (2^b − 1)).

    Returns:
        (Δ_W, Δ_X, best objective).
    """
    ref = fn(x, w)
    ref_norm = float(ref.norm())
    base_w = float(w.abs().max()) / (2 ** (bits_w - 1) - 1) or 1e-8
    x_max = float(x.abs().max()) if x_max is None else x_max
    levels_x = 2**bits_x - 1 if unsigned_x else 2 ** (bits_x - 1) - 1
    base_x = x_max / levels_x or 1e-8

    def qx(step: float) -> torch.Tensor:
        return fake_quant(x, step, bits_x, unsigned=unsigned_x)

    def score(xq: torch.Tensor, wq: torch.Tensor) -> float:
        out = fn(xq, wq)
        s = _cosine(ref, out, ref_norm)
        return s - penalty(ref, out) if penalty is not None else s

    dw, dx = base_w, base_x
    best = score(qx(dx), fake_quant(w, dw, bits_w))
    for _ in range(rounds):
        xq = qx(dx)  # fixed while the weight step is searched
        for a in grid:
            s = score(xq, fake_quant(w, a * base_w, bits_w))
            if s > best:
                best, dw = s, a * base_w
        wq = fake_quant(w, dw, bits_w)
        for a in grid:
            s = score(qx(a * base_x), wq)
            if s > best:
                best, dx = s, a * base_x
    return dw, dx, best


def ranking_loss(a: torch.Tensor, a_hat: torch.Tensor, theta: float = 0.0) -> torch.Tensor:
    """Pairwise hinge over the last dimension: ``Σ_{i<j} (θ − (â_i − â_j)·sign(a_i − a_j))₊``,
    summed over every leading index (heads, query rows) and averaged over the batch (dim 0):
    for (images, heads, rows, keys) scores, the paper's Eq. 13 per image (a sum over pairs, no
    normalisation), averaged over images as the similarity term is. Pairs that are equal in
    ``a`` count nothing: sign 0 when θ = 0, and masked out when θ > 0."""
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
    perturbation: dict[str, dict[int, float]] | None = None,
) -> dict[str, int]:  # fmt: skip
    """Bits per unit: start every unit at the lowest choice, then, while the size-weighted
    average stays within ``budget``, raise the unit with the largest gain per added
    bit·parameter to its next choice (a greedy walk along the Pareto front).

    The gain of raising unit u from b to b′ is ``σ_u·(e_u(b) − e_u(b′))`` when
    ``perturbation`` gives e_u(b) = ‖Ŷ_u − Y_u‖² at each choice (the decrease of the paper's
    ``Ω = Σ_u σ_u·‖Ŷ_u − Y_u‖²``, σ_u the nuclear norm of the unit's feature), else ``σ_u``
    alone (sensitivity only).

    Raises:
        ConfigError: the budget is below the lowest choice, or keys differ.
    """
    if set(sensitivity) != set(sizes) or (
        perturbation is not None and set(perturbation) != set(sizes)
    ):
        raise ConfigError(
            "allocate_bits: sensitivity, sizes (and perturbation) must name the same units"
        )
    levels = sorted(choices)
    if budget < levels[0]:
        raise ConfigError(f"allocate_bits: budget {budget} is below the lowest choice {levels[0]}")
    bits = {k: levels[0] for k in sizes}
    total = sum(sizes.values())

    def avg(b: dict[str, int]) -> float:
        return sum(b[k] * sizes[k] for k in b) / total

    while True:
        best, best_gain = None, -math.inf
        for k, b in bits.items():
            idx = levels.index(b)
            if idx + 1 == len(levels):
                continue
            nxt = levels[idx + 1]
            trial = dict(bits, **{k: nxt})
            if avg(trial) > budget + 1e-9:
                continue
            drop = 1.0 if perturbation is None else perturbation[k][b] - perturbation[k][nxt]
            gain = sensitivity[k] * drop / ((nxt - b) * max(1, sizes[k]))
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
