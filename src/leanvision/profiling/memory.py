"""Peak activation memory of one inference forward.

What is measured: the largest total size of tensor storage created *during* one forward (in
eval mode, under ``torch.inference_mode``) that is alive at the same moment: activations,
intermediate results and the output. Weights, buffers and the input are excluded, and so are
views and in-place results that reuse their storage. Scratch buffers a kernel allocates
internally and frees before returning (im2col, oneDNN or cuDNN workspaces) are not seen.

How: a ``TorchDispatchMode`` sees every aten op's outputs; an output whose storage is new (not
one of the op's inputs' storages) is added to the live total and removed when its last tensor
is freed (weak references). The count works the same on every device and gives the same number
on every run, so it is fit for comparing models and input sizes.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from leanvision.profiling._common import (
    check_batch,
    eval_mode,
    guarded_forward,
    make_input,
    model_device_dtype,
    resolve_input_size,
)

__all__ = ["peak_memory_mb"]

_MIB = 2**20


def _storage_key(t: torch.Tensor) -> tuple[str, int] | None:
    if t.layout != torch.strided or t.device.type == "meta":
        return None
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # tensor subclasses with no real storage
        return None
    return (str(t.device), storage.data_ptr())


class _LiveTensorBytes(TorchDispatchMode):
    """Tracks bytes of storages created inside the mode while their tensors are alive."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[tuple[str, int], list[int]] = {}  # key -> [tensor refs, nbytes]
        self.current = 0
        self.peak = 0
        self._refs: list[weakref.ref[torch.Tensor]] = []

    def _release(self, key: tuple[str, int]) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            del self.live[key]
            self.current -= entry[1]

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        input_keys = {
            _storage_key(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            key = _storage_key(t)
            if key is None:
                continue
            if key in self.live:
                self.live[key][0] += 1
            elif key in input_keys:
                continue  # a view or in-place result on memory from before (weights, input)
            else:
                nbytes = t.untyped_storage().nbytes()
                if nbytes == 0:
                    continue
                self.live[key] = [1, nbytes]
                self.current += nbytes
                self.peak = max(self.peak, self.current)
            self._refs.append(weakref.ref(t, lambda _ref, k=key: self._release(k)))
        return out


def peak_memory_mb(
    model: nn.Module, input_size: Sequence[int] | None = None, *, batch: int = 1
) -> float:
    """Peak extra tensor memory of one inference forward of a batch, in MiB (2**20 bytes).

    Counts activations, intermediates and the output alive at the same time; excludes
    weights, buffers, the input and kernels' internal scratch space (see the module docstring).
    The model runs in eval mode on its own device; training flags are restored afterwards.

    Args:
        model: The model.
        input_size: One sample's shape without the batch, e.g. (3, 224, 224); None: the
            model's ``pretrained_cfg["input_size"]`` (the rule: :mod:`leanvision.shapes`).
        batch: Samples in the input, which is ``(batch, *input_size)``; the peak is the
            whole batch's.

    Raises:
        ConfigError: Bad ``input_size`` or ``batch``, or no ``input_size`` where the model
            records none.
        InputShapeError: The forward failed because of the input's shape.
    """
    size = resolve_input_size(model, input_size)
    n = check_batch(batch)
    device, dtype = model_device_dtype(model)
    x = make_input((n, *size), device, dtype)
    mode = _LiveTensorBytes()
    with eval_mode(model), torch.inference_mode():
        with mode:
            out = guarded_forward(model, x, size, batch=n)
        del out
    peak = mode.peak
    mode._refs.clear()  # drop the weak references so no callback outlives the measurement
    return peak / _MIB
