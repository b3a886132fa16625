"""Shared helpers of the profiling package: argument checks, inputs, eval mode, shape errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from leanvision.errors import ConfigError
from leanvision.shapes import (  # noqa: F401  (re-exported for the profiling modules)
    call_model,
    expected_input,
    guarded_forward,
)


def check_input_size(input_size: Sequence[int]) -> tuple[int, ...]:
    """Return ``input_size`` as a tuple of positive ints, or raise ConfigError."""
    try:
        size = tuple(input_size)
    except TypeError:
        raise ConfigError(
            f"input_size must be a sequence of positive ints such as (1, 3, 224, 224), "
            f"got {input_size!r}"
        ) from None
    if not size or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in size):
        raise ConfigError(
            f"input_size must be a non-empty sequence of positive ints such as "
            f"(1, 3, 224, 224), got {input_size!r}"
        )
    return size


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
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode; restore each one's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def num_threads(threads: int) -> Iterator[int]:
    """Fix ``torch.set_num_threads(threads)`` for the block, then restore the previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(previous)
