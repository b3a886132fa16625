"""Measure models: parameters, MACs, latency, peak memory and an energy estimate.

Units: ``macs`` are multiply-accumulates of one forward of the whole batch (FLOPs = 2 × MACs);
latency in milliseconds per call; peak memory in MiB; energy in microjoules (compute only).
Every function takes ``input_size``, one sample's shape without the batch (default: the model's
``pretrained_cfg["input_size"]``), and ``batch=N``: the one rule is written in
:mod:`leanvision.shapes`.
"""

from leanvision.profiling._common import num_threads
from leanvision.profiling.counting import (
    OpCounts,
    count_ops,
    count_params,
    register_module_counter,
    register_op_handler,
)
from leanvision.profiling.energy import ENERGY_PJ, energy_uj
from leanvision.profiling.latency import LatencyStats, OnInputs, compare, measure_latency
from leanvision.profiling.memory import peak_memory_mb
from leanvision.profiling.summary import Profile, profile

__all__ = [
    "ENERGY_PJ",
    "LatencyStats",
    "OnInputs",
    "OpCounts",
    "Profile",
    "compare",
    "count_ops",
    "count_params",
    "energy_uj",
    "measure_latency",
    "num_threads",
    "peak_memory_mb",
    "profile",
    "register_module_counter",
    "register_op_handler",
]
