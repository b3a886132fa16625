"""One call that measures everything: parameters, operations, latency, memory and energy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from leanvision.profiling._common import check_batch, resolve_input_size
from leanvision.profiling.counting import count_ops, count_params
from leanvision.profiling.energy import energy_uj
from leanvision.profiling.latency import LatencyStats, measure_latency
from leanvision.profiling.memory import peak_memory_mb

__all__ = ["Profile", "profile"]


@dataclass
class Profile:
    """Everything measured about one model at one input size and batch (one forward of the
    whole batch).

    Attributes:
        params: Parameters.
        macs: Multiply-accumulates of one forward of the whole batch (FLOPs = 2 × MACs).
        adds: Additions.
        muls: Multiplications.
        bitops: Binary operations.
        latency: Latency stats in ms, or None when not measured.
        peak_mem_mb: Peak activation memory in MiB (see ``peak_memory_mb``), or None.
        energy_uj: Estimated compute energy in µJ (see ``leanvision.profiling.energy``).
        input_size: One sample's shape without the batch (the rule: :mod:`leanvision.shapes`).
        by_op: Count per op kind (MACs, or the op's own unit).
        int8_macs: The part of ``macs`` run by int8 kernels.
        int_adds: The part of ``adds`` run in integer arithmetic outside int8 MACs.
        batch: Samples per forward: every count, the latency, the memory and the energy are
            for ``(batch, *input_size)``.
    """

    params: int
    macs: int
    adds: int
    muls: int
    bitops: int
    latency: LatencyStats | None
    peak_mem_mb: float | None
    energy_uj: float
    input_size: tuple[int, ...]
    by_op: dict[str, int] = field(default_factory=dict)
    int8_macs: int = 0
    int_adds: int = 0
    batch: int = 1

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the ``results.json`` field names.

        ``latency_ms`` holds ``{median, p90, mean, batch, threads, backend, repeats}`` (or
        None); ``input_size`` (one sample's shape) is a list; ``batch`` an int.
        """
        return {
            "params": self.params,
            "macs": self.macs,
            "adds": self.adds,
            "muls": self.muls,
            "bitops": self.bitops,
            "int8_macs": self.int8_macs,
            "int_adds": self.int_adds,
            "latency_ms": self.latency.as_dict() if self.latency is not None else None,
            "peak_mem_mb": self.peak_mem_mb,
            "energy_uj": self.energy_uj,
            "input_size": list(self.input_size),
            "batch": self.batch,
            "by_op": dict(self.by_op),
        }


def profile(
    model: nn.Module,
    input_size: Sequence[int] | None = None,
    *,
    batch: int = 1,
    latency: bool = True,
    memory: bool = True,
    threads: int | None = None,
    warmup: int = 5,
    repeats: int = 30,
) -> Profile:
    """Measure a model: parameters, MACs/adds/muls/bit-ops, latency, peak memory, energy.

    Args:
        model: The model, on the device to measure on; its training flags are restored.
        input_size: One sample's shape without the batch, e.g. (3, 224, 224); None: the
            model's ``pretrained_cfg["input_size"]``. The one rule for ``input_size`` and
            ``batch`` is written in :mod:`leanvision.shapes`.
        batch: Samples per forward: the input is ``(batch, *input_size)``.
        latency: Time it (``measure_latency``, torch eager).
        memory: Measure peak activation memory.
        threads: Torch threads for timing; default: the current count.
        warmup: Untimed runs before timing.
        repeats: Timed runs.

    Returns:
        Profile of one forward of the whole batch.

    Raises:
        ConfigError: Bad ``input_size``, ``batch``, ``threads``, ``warmup`` or ``repeats``, or
            no ``input_size`` where the model records none.
        InputShapeError: The forward failed because of the input's shape; an ``input_size``
            that is evidently batch first says so.
    """
    size = resolve_input_size(model, input_size)
    n = check_batch(batch)
    counts = count_ops(model, size, batch=n)
    stats = (
        measure_latency(model, size, batch=n, threads=threads, warmup=warmup, repeats=repeats)
        if latency
        else None
    )
    peak = peak_memory_mb(model, size, batch=n) if memory else None
    return Profile(
        params=count_params(model),
        macs=counts.macs,
        adds=counts.adds,
        muls=counts.muls,
        bitops=counts.bitops,
        latency=stats,
        peak_mem_mb=peak,
        energy_uj=energy_uj(counts),
        input_size=size,
        by_op=dict(counts.by_op),
        int8_macs=counts.int8_macs,
        int_adds=counts.int_adds,
        batch=n,
    )
