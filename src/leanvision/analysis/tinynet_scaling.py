"""TinyNet's scaling procedure: the tiny formula, inverse compound scaling and exact MACs.

Model Rubik's Cube: Twisting Resolution, Depth and Width for TinyNets, Han et al., NeurIPS 2020
(arXiv 2010.14819). The architecture the multipliers (r, d, w) build is
``tinynet_custom`` in :mod:`leanvision.models.tinynet`; this module chooses them.

The paper's **tiny formula** (§3) chooses (r, d, w) for a FLOPs ratio ``c`` (model FLOPs over
EfficientNet-B0's): random (r, d, w) shrinks of B0 are trained under several FLOPs budgets, the
most accurate per budget are kept, r and d are fitted as functions of ``c`` by Gaussian-process
regression, and w follows from the FLOPs model ``c ≈ r² · w² · d``. Its finding: for small
budgets resolution and depth should shrink less, and width more, than inverting EfficientNet's
compound scaling (``d = 1.2^φ, w = 1.1^φ, r = 1.15^φ``) would. Here:

* :func:`fit_tiny_formula` runs steps 2-3 on search results (``ScalingSample`` rows);
  :func:`random_scalings` draws the candidates of step 1.
* :func:`tiny_formula` uses a default fit on the paper's own best models: TinyNet-A..E (r, d
  from ``eval.py``, ``c`` = README FLOPs / EfficientNet-B0's 390 M) plus B0 itself at ``c = 1``.
  The GP regresses r and d on ``log c`` (the budgets are spaced geometrically), so it
  interpolates those six points; outside their range (``c < 24/390``) it raises. Between
  TinyNet-B (c = 0.52) and TinyNet-A (0.87) the fit swings (d up to 1.32, r down to 0.74)
  because A has d = 1.2 where B0, just above, has 1.0: six points cannot say more; fit real
  search results for a smoother curve.
* :func:`inverse_compound_scaling` is the paper's baseline.

**FLOPs budget.** The FLOPs model ``r² w² d`` ignores the fixed-width stem and head, the
classifier and the depthwise convolutions (linear, not quadratic, in ``w``): for TinyNet-E it
predicts 0.035 x B0 where the model has 0.063 x B0. With ``budget="macs"`` (the default) the
width (tiny formula) or φ (compound scaling) is therefore solved so that the MACs of the model
actually built, counted exactly by :func:`tinynet_macs`, are ``c`` times B0's at the same base
resolution and layout; ``budget="nominal"`` uses the closed forms (``w = sqrt(c / (r² d))``,
``φ = log c / log(α β² γ²)``). Matching real MACs is what makes a comparison of two formulas
at equal cost fair: with the closed form the tiny formula's models cost 1.4-1.8x their budget
for ``c <= 0.26`` (TinyNet-C and below). At the published budgets the solved widths are
0.98 / 0.76 / 0.54 / 0.54 / 0.47 against the published 1.0 / 0.75 / 0.54 / 0.54 / 0.51 (E's gap:
24 M / 390 M asks for 23.7 M MACs of our 385.8 M-MAC B0, TinyNet-E has 24.4 M); the closed form
gives 0.99 / 0.82 / 0.67 / 0.64 / 0.67. Channels are multiples of 8, so some budgets sit in a gap
of the reachable MACs (the widest, ~17 %, where the 16-channel stage jumps from 8 to 16
channels at w = 0.556): the solved width is the best one, within ~9 % of the budget. Compound
scaling moves r in whole pixels and d in whole blocks, so its best φ can miss the budget by up
to ~10 % at 224 and ~25 % at a 32-pixel base.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Literal, NamedTuple

import numpy as np
from timm.layers import make_divisible
from timm.models._efficientnet_builder import decode_arch_def, round_channels

from leanvision.errors import ConfigError
from leanvision.models.tinynet import (
    HEAD_CHS,
    STEM_CHS,
    arch_def,
    check_multipliers,
    resolve_input,
)

__all__ = [
    "EFFICIENTNET_B0_FLOPS",
    "TINYNET_PUBLISHED",
    "Budget",
    "ScalingSample",
    "TinyFormula",
    "TinyScaling",
    "default_tiny_formula",
    "fit_tiny_formula",
    "inverse_compound_scaling",
    "random_scalings",
    "solve_width",
    "tiny_formula",
    "tinynet_macs",
]

Budget = Literal["macs", "nominal"]

EFFICIENTNET_B0_FLOPS = 390e6
"""EfficientNet-B0's FLOPs (multiply-accumulates) as the paper and README count them."""


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# ----------------------------------------------------------------------------------------------
# Exact MAC count, the budget the formulas solve for.


def tinynet_macs(
    r: float = 1.0,
    d: float = 1.0,
    w: float = 1.0,
    *,
    base_size: int = 224,
    img_size: int | None = None,
    small_input: bool | None = None,
    num_classes: int = 1000,
    in_chans: int = 3,
) -> int:
    """MACs of ``tinynet_custom(r=r, d=d, w=w, ...)`` for one image, without building it.

    Counts what :func:`leanvision.profiling.count_ops` counts (convolutions, SE convolutions and
    the classifier; not BN, activations or pooling) from the stage definitions, in ~50 µs
    instead of the ~0.3 s a build and a traced forward take: the formulas' solvers call it
    tens of times. The tests check it equals ``count_ops`` on built models. Default padding
    only (no ``output_stride`` dilation).
    """
    check_multipliers(r, d, w)
    size, small = resolve_input(r, base_size, img_size, small_input)
    h = size if small else math.ceil(size / 2)  # stem
    macs = h * h * in_chans * STEM_CHS * 9
    in_chs = STEM_CHS
    for kind, chs, stride, k, exp, se in _blocks(d, small):
        out_chs = round_channels(chs, w)
        h_out = math.ceil(h / stride)
        if kind == "ir":
            mid = make_divisible(in_chs * exp)
            macs += h * h * in_chs * mid  # 1x1 expansion
        else:  # "ds": depthwise directly on the input
            mid = in_chs
        se_chs = round(mid * se / exp)  # timm sizes SE from the block input
        macs += h_out * h_out * mid * k * k  # depthwise kxk
        macs += 2 * mid * se_chs  # SE reduce + expand on the pooled 1x1 map
        macs += h_out * h_out * mid * out_chs  # 1x1 projection
        in_chs, h = out_chs, h_out
    head = max(HEAD_CHS, round_channels(HEAD_CHS, w, 8, None))
    return macs + h * h * in_chs * head + head * num_classes


@lru_cache(maxsize=256)
def _blocks(d: float, small_input: bool) -> tuple[tuple[str, int, int, int, float, float], ...]:
    """(type, channels, stride, kernel, expansion, SE ratio) per block, as timm decodes them."""
    out = []
    for stage in decode_arch_def(arch_def(small_input), d, depth_trunc="round"):
        for i, ba in enumerate(stage):
            stride = ba["stride"] if i == 0 else 1  # only a stage's first block strides
            exp = ba.get("exp_ratio", 1.0)
            out.append(
                (ba["block_type"], ba["out_chs"], stride, ba["dw_kernel_size"], exp, ba["se_ratio"])
            )
    return tuple(out)


def _b0_macs(base_size: int, small_input: bool | None, num_classes: int) -> int:
    return tinynet_macs(
        1.0, 1.0, 1.0, base_size=base_size, small_input=small_input, num_classes=num_classes
    )


@dataclass(frozen=True)
class TinyScaling:
    """Multipliers of EfficientNet-B0: resolution ``r``, depth ``d``, width ``w``."""

    r: float
    d: float
    w: float

    @property
    def nominal_flops_ratio(self) -> float:
        """The paper's FLOPs model ``r² · w² · d`` (B0 = 1)."""
        return self.r**2 * self.w**2 * self.d

    def input_size(self, base_size: int = 224) -> int:
        """Input side ``int(base_size * r)``."""
        return int(base_size * self.r)

    def macs_ratio(
        self, base_size: int = 224, small_input: bool | None = None, num_classes: int = 1000
    ) -> float:
        """MACs of the model built from these multipliers over B0's (same base and layout)."""
        kw = dict(base_size=base_size, small_input=small_input, num_classes=num_classes)
        return tinynet_macs(self.r, self.d, self.w, **kw) / _b0_macs(**kw)

    def model_kwargs(self) -> dict[str, float]:
        """``create_model("tinynet_custom", **s.model_kwargs(), base_size=...)``."""
        return {"r": self.r, "d": self.d, "w": self.w}


# TinyNet-A..E: (r, d, w) from the official eval.py [C], FLOPs from the README [R].
TINYNET_PUBLISHED: dict[str, tuple[TinyScaling, float]] = {
    "tinynet_a": (TinyScaling(r=0.86, d=1.2, w=1.0), 339e6),
    "tinynet_b": (TinyScaling(r=0.84, d=1.1, w=0.75), 202e6),
    "tinynet_c": (TinyScaling(r=0.825, d=0.85, w=0.54), 100e6),
    "tinynet_d": (TinyScaling(r=0.68, d=0.695, w=0.54), 52e6),
    "tinynet_e": (TinyScaling(r=0.475, d=0.6, w=0.51), 24e6),
}


def _check_ratio(flops_ratio: float, what: str = "flops_ratio") -> float:
    if not (_is_real(flops_ratio) and math.isfinite(flops_ratio) and flops_ratio > 0):
        raise ConfigError(
            f"{what} (model FLOPs / EfficientNet-B0 FLOPs) must be > 0, got {flops_ratio!r}"
        )
    return float(flops_ratio)


def _check_budget(budget: str) -> None:
    if budget not in ("macs", "nominal"):
        raise ConfigError(f"budget must be 'macs' or 'nominal', got {budget!r}")


def _bisect(
    f: Callable[[float], float], target: float, lo: float, hi: float, steps: int = 50
) -> float:
    """The argument in [lo, hi] where the non-decreasing step function ``f`` best meets target."""
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return lo if abs(f(lo) - target) <= abs(f(hi) - target) else hi


def _first_true(pred: Callable[[float], bool], lo: float, hi: float, steps: int = 40) -> float:
    """About the smallest x in [lo, hi] where the monotone ``pred`` holds (hi if nowhere)."""
    if pred(lo):
        return lo
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if pred(mid):
            hi = mid
        else:
            lo = mid
    return hi


def solve_width(
    r: float,
    d: float,
    flops_ratio: float,
    *,
    base_size: int = 224,
    small_input: bool | None = None,
    num_classes: int = 1000,
) -> float:
    """The width whose model's MACs are closest to ``flops_ratio`` x B0's, r and d fixed.

    Channels are multiples of 8, so MACs are a step function of w; the value returned is the
    middle of the best step, rounded to 3 decimals when that stays on it.

    Raises:
        ConfigError: the budget is out of reach at this r and d (even 8-channel stages cost
            more, or a 4x width costs less).
    """
    check_multipliers(r, d, 1.0)
    c = _check_ratio(flops_ratio)
    kw = dict(base_size=base_size, small_input=small_input, num_classes=num_classes)
    target = c * _b0_macs(**kw)

    def macs(width: float) -> int:
        return tinynet_macs(r, d, width, **kw)

    lo, hi = 0.01, 4.0
    if not macs(lo) <= target <= macs(hi):
        raise ConfigError(
            f"no width gives {c:.4g} x EfficientNet-B0's MACs at r={r:.4g}, d={d:.4g} "
            f"(reachable: {macs(lo) / target * c:.4g} .. {macs(hi) / target * c:.4g}); "
            "change r or d, or the budget"
        )
    best = _bisect(macs, target, lo, hi)
    # The whole step [a, b) with the same MACs as the best width; return its middle.
    m = macs(best)
    a = _first_true(lambda x: macs(x) >= m, max(lo, best - 0.2), best)
    b = _first_true(lambda x: macs(x) > m, best, min(hi, best + 0.2))
    mid = 0.5 * (a + b)
    return round(mid, 3) if macs(round(mid, 3)) == m else mid


def inverse_compound_scaling(
    flops_ratio: float,
    *,
    alpha: float = 1.2,
    beta: float = 1.1,
    gamma: float = 1.15,
    budget: Budget = "macs",
    base_size: int = 224,
    small_input: bool | None = None,
    num_classes: int = 1000,
) -> TinyScaling:
    """EfficientNet's compound scaling run backwards, the paper's baseline.

    ``d = α^φ, w = β^φ, r = γ^φ`` with one φ (negative to shrink). ``budget="nominal"``:
    ``φ = log c / log(α β² γ²)``, so ``r² w² d = c`` exactly (EfficientNet rounds
    ``α β² γ² = 1.92`` to 2, i.e. ``φ = log2 c``, which at ``c = 1/16`` misses by 16 %).
    ``budget="macs"``: φ solved so the built model's MACs are ``c`` x B0's.

    Args:
        flops_ratio: target FLOPs over EfficientNet-B0's (> 0; above 1 this is ordinary
            compound scaling up).
        alpha, beta, gamma: EfficientNet's depth, width and resolution bases.
        budget: "macs" or "nominal" (see above).
        base_size, small_input, num_classes: the layout the MACs are measured on.
    """
    c = _check_ratio(flops_ratio)
    _check_budget(budget)
    for name, v in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not (math.isfinite(v) and v > 1):
            raise ConfigError(f"compound scaling base {name} must be > 1, got {v!r}")

    def scaling(phi: float) -> TinyScaling:
        return TinyScaling(r=gamma**phi, d=alpha**phi, w=beta**phi)

    phi = math.log(c) / math.log(alpha * beta**2 * gamma**2)
    if budget == "nominal":
        return scaling(phi)
    kw = dict(base_size=base_size, small_input=small_input, num_classes=num_classes)
    target = c * _b0_macs(**kw)

    def macs(p: float) -> float:
        s = scaling(p)
        if int(base_size * s.r) < 1:
            return -math.inf  # no pixels left: below any budget
        return tinynet_macs(s.r, s.d, s.w, **kw)

    lo, hi = phi - 4.0, phi + 4.0
    if not macs(lo) <= target <= macs(hi):
        raise ConfigError(f"compound scaling cannot reach {c:.4g} x EfficientNet-B0's MACs")
    return scaling(_bisect(macs, target, lo, hi))


# ----------------------------------------------------------------------------------------------
# The tiny formula: GP regression of r and d on the FLOPs ratio.


class ScalingSample(NamedTuple):
    """One trained model of the random search: its FLOPs ratio, multipliers and accuracy."""

    flops_ratio: float
    r: float
    d: float
    w: float
    accuracy: float


class TinyFormula:
    """r(c) and d(c) fitted by Gaussian-process regression; w from the budget.

    Each of r and d gets its own :class:`sklearn.gaussian_process.GaussianProcessRegressor` on
    ``x = log c`` (budgets are spaced geometrically), kernel ``C · RBF + White``; the RBF length
    scale is kept >= 0.3 (about a third of a halving of the budget) so a few points cannot make
    it wiggle. ``normalize_y`` makes the prior mean the data mean, so the formula refuses ``c``
    outside the fitted range instead of drifting back to it.

    Args:
        flops_ratios: c of the fitted models (> 0).
        r: their resolution multipliers.
        d: their depth multipliers.
        noise: observation noise of the normalised targets; ``None`` learns it (search results
            are noisy), a number fixes it (``1e-6`` interpolates exact points).
    """

    def __init__(
        self,
        flops_ratios: Sequence[float],
        r: Sequence[float],
        d: Sequence[float],
        noise: float | None = None,
    ) -> None:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import RBF, WhiteKernel
        from sklearn.gaussian_process.kernels import ConstantKernel as C

        c = np.asarray(flops_ratios, dtype=float)
        ys = {"r": np.asarray(r, dtype=float), "d": np.asarray(d, dtype=float)}
        if c.ndim != 1 or any(y.shape != c.shape for y in ys.values()):
            raise ConfigError("flops_ratios, r and d must be 1-D sequences of the same length")
        if len(np.unique(c)) < 2:
            raise ConfigError(
                f"the tiny formula needs models at >= 2 FLOPs ratios, got {c.tolist()}"
            )
        if not (np.all(np.isfinite(c)) and np.all(c > 0)):
            raise ConfigError(f"FLOPs ratios must be finite and > 0, got {c.tolist()}")
        for name, y in ys.items():
            if not (np.all(np.isfinite(y)) and np.all(y > 0)):
                raise ConfigError(f"{name} must be finite and > 0, got {y.tolist()}")
        self.flops_ratios, self.r, self.d = c, ys["r"], ys["d"]
        self.selected: list[ScalingSample] = []  # the kept search models (fit_tiny_formula)
        self.c_range = (float(c.min()), float(c.max()))
        x = np.log(c)[:, None]
        self._gps = {}
        for name, y in ys.items():
            kernel = C(1.0, (1e-2, 1e2)) * RBF(1.0, (0.3, 20.0))
            if noise is None:
                kernel = kernel + WhiteKernel(1e-2, (1e-6, 1.0))
            gp = GaussianProcessRegressor(
                kernel, alpha=1e-10 if noise is None else noise, normalize_y=True
            )
            with warnings.catch_warnings():
                # Few, unevenly spaced budgets often put the length scale on its floor: fine.
                warnings.simplefilter("ignore", ConvergenceWarning)
                self._gps[name] = gp.fit(x, y)

    def predict(self, flops_ratio: float) -> tuple[float, float]:
        """(r, d) at FLOPs ratio ``flops_ratio``.

        Raises:
            ConfigError: ``flops_ratio`` is not > 0 or outside the fitted range.
        """
        c = _check_ratio(flops_ratio)
        lo, hi = self.c_range
        if not lo * (1 - 1e-9) <= c <= hi * (1 + 1e-9):
            hint = (
                " (the tiny formula shrinks B0; use compound scaling to enlarge)" if c > 1 else ""
            )
            raise ConfigError(
                f"flops_ratio {c:.4g} is outside the range the tiny formula was fitted on "
                f"[{lo:.4g}, {hi:.4g}]{hint}; fit_tiny_formula on samples that cover it"
            )
        x = np.array([[math.log(c)]])
        return float(self._gps["r"].predict(x)[0]), float(self._gps["d"].predict(x)[0])

    def __call__(
        self,
        flops_ratio: float,
        *,
        budget: Budget = "macs",
        base_size: int = 224,
        small_input: bool | None = None,
        num_classes: int = 1000,
    ) -> TinyScaling:
        """(r, d, w) for FLOPs ratio ``flops_ratio``; see :func:`tiny_formula`."""
        _check_budget(budget)
        r, d = self.predict(flops_ratio)
        if budget == "nominal":
            return TinyScaling(r=r, d=d, w=math.sqrt(flops_ratio / (r * r * d)))
        w = solve_width(
            r, d, flops_ratio, base_size=base_size, small_input=small_input, num_classes=num_classes
        )
        return TinyScaling(r=r, d=d, w=w)


@cache
def default_tiny_formula() -> TinyFormula:
    """The formula fitted on TinyNet-A..E and B0 (c = README FLOPs / 390 M; B0 at c = 1)."""
    points = [(1.0, 1.0, 1.0)] + [
        (flops / EFFICIENTNET_B0_FLOPS, s.r, s.d) for s, flops in TINYNET_PUBLISHED.values()
    ]
    c, r, d = zip(*points)
    return TinyFormula(c, r, d, noise=1e-6)  # published best models: exact points


def tiny_formula(
    flops_ratio: float,
    *,
    formula: TinyFormula | None = None,
    budget: Budget = "macs",
    base_size: int = 224,
    small_input: bool | None = None,
    num_classes: int = 1000,
) -> TinyScaling:
    """The tiny formula: (r, d, w) that shrink EfficientNet-B0 to ``flops_ratio`` of its FLOPs.

    r and d come from the GP fit (``formula``, by default :func:`default_tiny_formula`); w from
    the budget: ``"macs"`` solves it so the built model's MACs are ``flops_ratio`` x B0's on the
    layout of ``base_size`` (see :func:`solve_width`), ``"nominal"`` is the paper's closed form
    ``w = sqrt(c / (r² d))``.

    Raises:
        ConfigError: ``flops_ratio`` <= 0 or outside the fitted range (the default fit covers
            [24/390, 1]), or an unknown budget.
    """
    formula = formula or default_tiny_formula()
    return formula(
        flops_ratio,
        budget=budget,
        base_size=base_size,
        small_input=small_input,
        num_classes=num_classes,
    )


def _as_sample(row: ScalingSample | Sequence[float] | Mapping[str, float]) -> ScalingSample:
    try:
        s = ScalingSample(**row) if isinstance(row, Mapping) else ScalingSample(*row)
        s = ScalingSample(*(float(v) for v in s))
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"a search sample must be (flops_ratio, r, d, w, accuracy) numbers, got {row!r}"
        ) from e
    if not all(math.isfinite(v) for v in s) or min(s.flops_ratio, s.r, s.d, s.w) <= 0:
        raise ConfigError(f"search sample needs finite values and c, r, d, w > 0, got {s}")
    return s


def fit_tiny_formula(
    samples: Iterable[ScalingSample | Sequence[float] | Mapping[str, float]],
    *,
    top_k: int = 3,
    bins: int | Sequence[float] = 8,
    noise: float | None = None,
) -> TinyFormula:
    """The paper's procedure: keep the top-k models per FLOPs bucket, fit r(c) and d(c).

    Args:
        samples: trained search models as :class:`ScalingSample` (or 5-tuples / mappings with
            ``flops_ratio, r, d, w, accuracy``); ``flops_ratio`` should be the measured MACs
            ratio to B0 (e.g. ``TinyScaling.macs_ratio()``). ``w`` is not fitted: it follows
            from c, r and d.
        top_k: most accurate models kept per bucket.
        bins: number of equal buckets in ``log c`` between the smallest and largest c, or
            explicit bucket edges (increasing; samples outside them are dropped).
        noise: see :class:`TinyFormula` (``None`` learns it).

    Returns:
        The fitted :class:`TinyFormula`, with ``selected`` holding the kept samples.
    """
    rows = [_as_sample(s) for s in samples]
    if not (isinstance(top_k, int) and top_k >= 1):
        raise ConfigError(f"top_k must be an int >= 1, got {top_k!r}")
    if not rows:
        raise ConfigError("fit_tiny_formula needs at least one search sample")
    logc = np.log([s.flops_ratio for s in rows])
    if isinstance(bins, int):
        if bins < 1:
            raise ConfigError(f"bins must be >= 1, got {bins}")
        edges = np.linspace(logc.min(), logc.max(), bins + 1)
        edges[-1] += 1e-9  # the largest c falls in the last bucket
    else:
        edges = np.log(np.asarray(bins, dtype=float))
        if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
            raise ConfigError(f"bin edges must be >= 2 increasing FLOPs ratios, got {bins!r}")
    bucket = np.digitize(logc, edges) - 1  # -1 / len(edges)-1: outside the edges
    selected: list[ScalingSample] = []
    for b in range(len(edges) - 1):
        members = [s for s, k in zip(rows, bucket) if k == b]
        selected += sorted(members, key=lambda s: s.accuracy, reverse=True)[:top_k]
    if len({s.flops_ratio for s in selected}) < 2:
        raise ConfigError(
            "fit_tiny_formula needs kept models at >= 2 FLOPs ratios; sample more budgets"
        )
    formula = TinyFormula(
        [s.flops_ratio for s in selected], [s.r for s in selected], [s.d for s in selected], noise
    )
    formula.selected = selected
    return formula


def random_scalings(
    n: int,
    flops_range: tuple[float, float],
    seed: int = 0,
    *,
    r_range: tuple[float, float] = (0.3, 1.2),
    d_range: tuple[float, float] = (0.3, 1.6),
    w_range: tuple[float, float] = (0.2, 1.5),
    budget: Budget = "macs",
    base_size: int = 224,
    small_input: bool | None = None,
    num_classes: int = 1000,
) -> list[TinyScaling]:
    """Random (r, d, w) shrinks of B0 for the search (step 1 of the tiny formula).

    For each model: a budget c log-uniform in ``flops_range``, r and d uniform in their ranges,
    and the width that meets the budget (``budget`` as in :func:`tiny_formula`); draws whose
    width falls outside ``w_range`` (or cannot meet the budget) are redrawn.

    Raises:
        ConfigError: bad ranges, or fewer than ``n`` valid draws in ``200 * n`` tries.
    """
    _check_budget(budget)
    if not (isinstance(n, int) and n >= 0):
        raise ConfigError(f"n must be an int >= 0, got {n!r}")
    lo_c, hi_c = (_check_ratio(v, "flops_range") for v in flops_range)
    for name, (lo, hi) in (
        ("flops_range", (lo_c, hi_c)),
        ("r_range", r_range),
        ("d_range", d_range),
        ("w_range", w_range),
    ):
        if not 0 < lo <= hi:
            raise ConfigError(f"{name} must be (low, high) with 0 < low <= high, got {(lo, hi)}")
    rng = np.random.default_rng(seed)
    kw = dict(base_size=base_size, small_input=small_input, num_classes=num_classes)
    out: list[TinyScaling] = []
    for _ in range(200 * n):
        if len(out) == n:
            break
        c = float(np.exp(rng.uniform(math.log(lo_c), math.log(hi_c))))
        r, d = float(rng.uniform(*r_range)), float(rng.uniform(*d_range))
        if int(base_size * r) < 1:
            continue
        if budget == "nominal":
            w = math.sqrt(c / (r * r * d))
        else:
            try:
                w = solve_width(r, d, c, **kw)
            except ConfigError:
                continue
        if w_range[0] <= w <= w_range[1]:
            out.append(TinyScaling(r=r, d=d, w=w))
    if len(out) < n:
        raise ConfigError(
            f"only {len(out)} of {n} random scalings met flops_range {flops_range} within "
            f"r_range {r_range}, d_range {d_range}, w_range {w_range}; widen the ranges"
        )
    return out
