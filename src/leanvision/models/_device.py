"""Where and in what dtype a model builds its tensors: timm's ``device=`` / ``dtype=`` arguments.

timm's builder passes ``device`` and ``dtype`` to every model constructor (``create_model(name,
device="meta")`` builds without allocating weights), and timm's own models thread them to every
layer. Ours build their layers inside :func:`build_on` instead: every tensor a layer creates in
the block lands on ``device`` and every floating tensor has ``dtype``, whatever layer made it
(ours, timm's or torch's). ``reset_classifier`` builds the new head inside
``build_on(**device_dtype(model))``, on the model's current device and dtype.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["DeviceLike", "build_on", "device_dtype"]

DeviceLike = torch.device | str | int | None


@contextmanager
def build_on(device: DeviceLike = None, dtype: torch.dtype | None = None) -> Iterator[None]:
    """Create tensors on ``device`` with floating dtype ``dtype`` inside the block.

    ``None`` keeps torch's current default for that argument.

    Raises:
        TypeError: ``dtype`` is not a floating-point dtype (parameters are floating).
    """
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    with ExitStack() as stack:
        if device is not None:
            stack.enter_context(torch.device(device))
        if dtype is not None:
            previous = torch.get_default_dtype()
            torch.set_default_dtype(dtype)
            stack.callback(torch.set_default_dtype, previous)
        yield


def device_dtype(module: nn.Module) -> dict[str, Any]:
    """``{"device": ..., "dtype": ...}`` of the module's first floating parameter (or Nones)."""
    for p in module.parameters():
        if p.is_floating_point():
            return {"device": p.device, "dtype": p.dtype}
    return {"device": None, "dtype": None}
