"""Compute-energy estimate from operation counts.

Per-operation energies (picojoules) for a 45 nm process, from M. Horowitz, "Computing's energy
problem (and what we can do about it)", IEEE ISSCC 2014, pp. 10-14:

=========  ========  ========
operation  multiply  add
=========  ========  ========
fp32       3.7 pJ    0.9 pJ
fp16       1.1 pJ    0.4 pJ
int32      3.1 pJ    0.1 pJ
int8       0.2 pJ    0.03 pJ
=========  ========  ========

Binary operations are not in that table. Our estimate for one bit-op (the XNOR and popcount
contribution of one bit) follows the convention of XNOR-Net (Rastegari et al., ECCV 2016) and
Bi-Real Net (Liu et al., ECCV 2018) that a 64-bit CPU does 64 bit-ops in one word instruction:
we price that word instruction as a 64-bit integer add, taken as twice Horowitz's 32-bit add
(adder energy grows about linearly with width), i.e. 2 × 0.1 pJ / 64 = 0.003125 pJ per bit-op.
This is an assumption, not a measurement.

How counts are priced:

* floating-point multiplications and additions (``muls`` and ``adds`` minus the int8 part) at
  fp32 rates (or fp16 with ``float_dtype="fp16"``);
* int8 MACs as an int8 multiply plus an int32 accumulate (0.2 + 0.1 = 0.3 pJ);
* other integer additions (``int_adds``: an integer adder layer's subtractions and
  accumulations) at the int32 add rate, 0.1 pJ (an upper bound for the int8 subtractions,
  which Horowitz prices at 0.03 pJ);
* bit-ops at 0.003125 pJ.

Only arithmetic is counted: no memory access (DRAM, SRAM, caches, registers), no data
movement, no control overhead, so real energy is higher, often by a large factor. Use the
number to compare models with each other, not as a measurement.
"""

from __future__ import annotations

from types import MappingProxyType

from leanvision.errors import ConfigError
from leanvision.profiling.counting import OpCounts

__all__ = ["ENERGY_PJ", "energy_uj"]

#: Energy per operation in picojoules (Horowitz, ISSCC 2014, 45 nm; "bitop" is our estimate).
ENERGY_PJ: MappingProxyType[str, float] = MappingProxyType(
    {
        "fp32_mul": 3.7,
        "fp32_add": 0.9,
        "fp16_mul": 1.1,
        "fp16_add": 0.4,
        "int32_mul": 3.1,
        "int32_add": 0.1,
        "int8_mul": 0.2,
        "int8_add": 0.03,
        "bitop": 2 * 0.1 / 64,
    }
)


def energy_uj(counts: OpCounts, *, float_dtype: str = "fp32") -> float:
    """Estimated compute energy of one forward, in microjoules.

    ``sum(count × pJ) / 1e6`` over the table in this module's docstring; memory access is not
    included.

    Args:
        counts: Operation counts, e.g. from :func:`count_ops`.
        float_dtype: Precision of the non-int8 arithmetic: ``"fp32"`` or ``"fp16"``.

    Returns:
        Energy in µJ.

    Raises:
        ConfigError: Unknown ``float_dtype``, negative counts, or ``int8_macs`` larger than
            ``muls`` or ``adds`` (int8 MACs are a part of those, see :class:`OpCounts`).
    """
    if float_dtype not in ("fp32", "fp16"):
        raise ConfigError(f"float_dtype must be 'fp32' or 'fp16', got {float_dtype!r}")
    for name in ("macs", "adds", "muls", "bitops", "int8_macs", "int_adds"):
        if getattr(counts, name) < 0:
            raise ConfigError(f"OpCounts.{name} is negative ({getattr(counts, name)})")
    int8 = counts.int8_macs
    if int8 > counts.muls or int8 > counts.adds:
        raise ConfigError(
            f"OpCounts.int8_macs ({int8}) exceeds muls ({counts.muls}) or adds ({counts.adds}); "
            f"int8 MACs must also be counted in macs, muls and adds "
            f"(use OpCounts.from_int8_macs in a module counter)"
        )
    if int8 + counts.int_adds > counts.adds:
        raise ConfigError(
            f"OpCounts.int_adds ({counts.int_adds}) + int8_macs ({int8}) exceed adds "
            f"({counts.adds}); integer additions must also be counted in adds"
        )
    e = ENERGY_PJ
    pj = (
        (counts.muls - int8) * e[f"{float_dtype}_mul"]
        + (counts.adds - int8 - counts.int_adds) * e[f"{float_dtype}_add"]
        + counts.int_adds * e["int32_add"]
        + int8 * (e["int8_mul"] + e["int32_add"])
        + counts.bitops * e["bitop"]
    )
    return pj / 1e6
