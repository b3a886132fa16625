"""Parameter and operation counting.

MACs come from PyTorch's :class:`torch.utils.flop_counter.FlopCounterMode`, which counts
convolutions and matrix products (``mm``, ``addmm``, ``bmm``, ``baddbmm``, ...) as FLOPs; one
multiply-accumulate is two FLOPs, so MACs = FLOPs / 2. Element-wise work (BatchNorm, activations,
residual adds, softmax) is not counted, as is usual for MAC tables.

Two gaps are filled here:

* CPU attention: ``F.scaled_dot_product_attention`` on CPU runs
  ``aten._scaled_dot_product_flash_attention_for_cpu``, which the stock counter treats as free.
  We add a formula counting Q·Kᵀ and A·V (the math fallback decomposes into ``bmm`` and is
  already counted). Causal masks are not discounted, as in PyTorch's own SDPA formulas.
* Custom layers (adder, binary, quantized): a layer type registered with
  :func:`leanvision.opcounts.register_module_counter` (the ground-floor registry layers write
  to at import) is counted by its own function *instead of* the aten ops its
  forward runs: hooks around the module record what the flop counter saw inside it and subtract
  it, then add the layer's own :class:`OpCounts`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from leanvision.errors import ConfigError
from leanvision.opcounts import (
    OpCounts,
    counter_for,
    op_handlers,
    register_module_counter,
    register_op_handler,
)
from leanvision.profiling._common import (
    check_batch,
    eval_mode,
    guarded_forward,
    make_input,
    model_device_dtype,
    resolve_input_size,
)

__all__ = [
    "OpCounts",
    "count_ops",
    "count_params",
    "register_module_counter",
    "register_op_handler",
]

aten = torch.ops.aten

# --------------------------------------------------------------------------- SDPA


def _sdpa_flops(
    query_shape: Sequence[int],
    key_shape: Sequence[int],
    value_shape: Sequence[int],
    *args: Any,
    out_shape: Any = None,
    **kwargs: Any,
) -> int:
    """FLOPs of attention: Q·Kᵀ plus A·V, for q (..., L, E), k (..., S, E), v (..., S, Ev).

    Query heads may outnumber key/value heads (grouped-query attention); every query row
    still meets all S keys, so the count follows the query's leading dimensions.
    """
    rows = math.prod(query_shape[:-1])  # batch * heads * L
    s, e, ev = key_shape[-2], query_shape[-1], value_shape[-1]
    return 2 * rows * s * (e + ev)


# SDPA back-ends that the stock flop counter leaves at zero. The first is what CPU runs.
_SDPA_OPS = [
    name
    for name in (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_fused_attention_overrideable",
        "_scaled_dot_product_attention_math_for_mps",
    )
    if hasattr(aten, name)
]
_BUILTIN_HANDLERS: dict[Any, Callable[..., int]] = {
    getattr(aten, n): _sdpa_flops for n in _SDPA_OPS
}

# Names for by_op; any op not listed is named after its aten packet ("convolution", "addmm").
_SDPA_NAMES = {
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_fused_attention_overrideable",
    "_scaled_dot_product_attention_math_for_mps",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_flash_attention_forward",
    "_efficient_attention_forward",
}


# --------------------------------------------------------------------------- counting


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters counted once; buffers not counted)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def _op_name(packet: Any) -> str:
    name = str(packet)
    name = name.removeprefix("aten.")
    return "scaled_dot_product_attention" if name in _SDPA_NAMES else name


class _CustomModuleCounting:
    """Forward hooks that swap a registered module's aten counts for its own OpCounts."""

    def __init__(self, counter: FlopCounterMode) -> None:
        self.counter = counter
        self.depth = 0
        self.before: dict[Any, int] = {}
        self.excluded: dict[Any, int] = {}
        self.custom = OpCounts()

    def _global(self) -> dict[Any, int]:
        return dict(self.counter.get_flop_counts().get("Global", {}))

    def pre_hook(self, module: nn.Module, inputs: tuple[Any, ...]) -> None:
        if self.depth == 0:
            self.before = self._global()
        self.depth += 1

    def post_hook(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        self.depth -= 1
        if self.depth > 0:
            return  # an inner registered module: the outer one's counter covers it
        fn = counter_for(module)
        if fn is None:  # unregistered between hooking and running; count its aten ops
            return
        counts = fn(module, inputs, output)  # any tensor ops it runs are excluded below
        if not isinstance(counts, OpCounts):
            raise ConfigError(
                f"the module counter registered for {type(module).__name__} returned "
                f"{type(counts).__name__}; it must return an OpCounts"
            )
        if not counts.by_op:
            main = counts.macs or counts.adds or counts.bitops or counts.muls
            counts = counts + OpCounts(by_op={type(module).__name__: main})
        self.custom = self.custom + counts
        for op, flops in self._global().items():
            delta = flops - self.before.get(op, 0)
            if delta:
                self.excluded[op] = self.excluded.get(op, 0) + delta


def count_ops(
    model: nn.Module,
    input_size: Sequence[int] | None = None,
    *,
    batch: int = 1,
    inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
) -> OpCounts:
    """Count the operations of one inference forward of a batch.

    Args:
        model: The model; it runs in eval mode under ``torch.no_grad`` on its own device,
            and every submodule's training flag is restored afterwards.
        input_size: One sample's shape without the batch, e.g. (3, 224, 224); None: the
            model's ``pretrained_cfg["input_size"]`` (the rule: :mod:`leanvision.shapes`).
        batch: Samples in the random input, which is ``(batch, *input_size)``.
        inputs: Optional ready input tensor (or tuple of positional inputs) used instead of a
            random one; then ``input_size`` and ``batch`` are not given.

    Returns:
        OpCounts for the whole batch: MACs of convs, matmuls and attention (``macs == muls ==
        adds`` for those) plus whatever registered module counters report.

    Raises:
        ConfigError: Bad ``input_size`` or ``batch``, no ``input_size`` and none recorded by
            the model, or ``inputs`` together with ``input_size`` or ``batch``.
        InputShapeError: The forward failed because of the input's shape.
    """
    x: torch.Tensor | tuple[Any, ...]
    n: int | None  # None: a ready input, named by its own shape in errors
    if inputs is None:
        size = resolve_input_size(model, input_size)
        n = check_batch(batch)
        device, dtype = model_device_dtype(model)
        x = make_input((n, *size), device, dtype)
    else:
        if input_size is not None or batch != 1:
            raise ConfigError(
                "count_ops takes either inputs= (a ready input, batch included) or "
                f"input_size= and batch=, not both (got input_size={input_size!r}, "
                f"batch={batch!r})"
            )
        x = inputs if isinstance(inputs, torch.Tensor) else tuple(inputs)
        first = x if isinstance(x, torch.Tensor) else next(iter(x), None)
        size, n = (tuple(first.shape) if isinstance(first, torch.Tensor) else ()), None

    mapping = {**_BUILTIN_HANDLERS, **op_handlers()}
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    tracking = _CustomModuleCounting(counter)
    handles = []
    try:
        for m in model.modules():
            if counter_for(m) is not None:
                handles.append(m.register_forward_pre_hook(tracking.pre_hook))
                handles.append(m.register_forward_hook(tracking.post_hook))
        with eval_mode(model), torch.no_grad(), counter:
            guarded_forward(model, x, size, batch=n)
    finally:
        for h in handles:
            h.remove()

    by_op: dict[str, int] = {}
    total = 0
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        macs = (flops - tracking.excluded.get(op, 0)) // 2
        if macs:
            name = _op_name(op)
            by_op[name] = by_op.get(name, 0) + macs
            total += macs
    return OpCounts(macs=total, adds=total, muls=total, by_op=by_op) + tracking.custom
