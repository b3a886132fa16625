"""Shared helpers of the profiling package: argument checks, inputs, eval mode, shape errors.

``input_size`` and ``batch`` follow the one rule written in :mod:`leanvision.shapes`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from leanvision.errors import ConfigError
from leanvision.shapes import (  # noqa: F401  (re-exported for the profiling modules)
    call_model,
    check_batch,
    eval_mode,
    expected_input,
    guarded_forward,
    resolve_input_size,
)


def check_positive_int(name: str, value: Any, *, allow_zero: bool = False) -> int:
    """Return ``value`` if it is an int > 0 (>= 0 with ``allow_zero``); else raise ConfigError."""
    low = 0 if allow_zero else 1
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        bound = "a non-negative" if allow_zero else "a positive"
        raise ConfigError(f"{name} must be {bound} int, got {value!r}")
    return value


def check_threads(threads: int | None) -> int:
    """Return the thread count to use: ``threads`` or, when None, torch's current count."""
    if threads is None:
        return torch.get_num_threads()
    return check_positive_int("threads", threads)


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device of the model's first parameter (or buffer) and its floating dtype.

    A model with no tensors runs on CPU in float32.
    """
    device = torch.device("cpu")
    dtype = torch.float32
    tensors = list(model.parameters()) + list(model.buffers())
    if tensors:
        device = tensors[0].device
    for t in tensors:
        if t.is_floating_point():
            dtype = t.dtype
            break
    return device, dtype


def make_input(
    input_size: tuple[int, ...],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A reproducible standard-normal input (seed 0) without touching the global RNG."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(input_size, generator=gen, dtype=torch.float32)
    return x.to(device=device, dtype=dtype)


@contextlib.contextmanager
def num_threads(threads: int) -> Iterator[int]:
    """Fix ``torch.set_num_threads(threads)`` for the block, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)
