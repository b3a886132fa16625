"""Run a user's model on an input and turn a failure into a clear InputShapeError.

Shared by the profiler, the evaluator and the trainer's first step (anything that runs a user's
model on an input). Two parts, neither of which reads exception messages:

- the input is checked against the first layer the forward reaches (a convolution, batch norm,
  linear or layer norm), before that layer runs: rank (batch first: ``(N, C, H, W)`` for a
  2-D convolution, even though torch also accepts an unbatched ``(C, H, W)``), channels or
  features. This check runs once per model and input shape;
- any other exception the forward raises (except leanvision's own errors and out-of-memory)
  becomes an InputShapeError naming the input and what the model expects, with the original
  exception chained (``raise ... from err``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.modules.module import register_module_forward_pre_hook

from leanvision.errors import InputShapeError, LeanVisionError

_LAYOUTS = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}
_BATCHNORM_DIMS = {nn.BatchNorm1d: (2, 3), nn.BatchNorm2d: (4,), nn.BatchNorm3d: (5,)}
_CHECKED_LAYERS = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._BatchNorm,
    nn.Linear,
    nn.LayerNorm,
)
# Input shapes already checked, per model: the check runs once, not on every timed call.
_CHECKED: weakref.WeakKeyDictionary[nn.Module, set[tuple[Any, ...]]] = weakref.WeakKeyDictionary()


def expected_input(model: nn.Module) -> str:
    """Describe what input a model expects, from its timm config and first layers."""
    parts: list[str] = []
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict) and cfg.get("input_size"):
            parts.append(f"its {attr} input_size is {tuple(cfg['input_size'])} (C, H, W)")
            break
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            parts.append(f"its first {type(m).__name__} has in_channels={m.in_channels}")
            break
        if isinstance(m, nn.Linear):
            parts.append(f"its first Linear has in_features={m.in_features}")
            break
    return "; ".join(parts) if parts else "its expected input is not recorded"


def call_model(model: Callable[..., Any], inputs: torch.Tensor | tuple[Any, ...]) -> Any:
    """Run ``model`` on one tensor or a tuple of positional inputs."""
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def _layer_mismatch(layer: nn.Module, x: torch.Tensor) -> str | None:
    """What is wrong with ``x`` as the input of ``layer`` (None when it fits)."""
    shape = tuple(x.shape)
    if isinstance(layer, nn.modules.conv._ConvNd):
        spatial = len(layer.kernel_size)
        layout = _LAYOUTS.get(spatial, f"(N, C, {spatial} spatial dims)")
        if x.dim() != spatial + 2:
            return (
                f"needs a {spatial + 2}-D input {layout}, batch first, with "
                f"C={layer.in_channels}, but got the {x.dim()}-D shape {shape}"
            )
        if shape[1] != layer.in_channels:
            return f"has in_channels={layer.in_channels} but got {shape[1]} channels in {shape}"
    elif isinstance(layer, nn.modules.batchnorm._BatchNorm):
        dims = _BATCHNORM_DIMS.get(type(layer))
        if dims is not None and x.dim() not in dims:
            wanted = " or ".join(f"{d}-D" for d in dims)
            return f"needs a {wanted} input, batch first, but got the {x.dim()}-D shape {shape}"
        if x.dim() >= 2 and shape[1] != layer.num_features:
            return f"has num_features={layer.num_features} but got {shape[1]} channels in {shape}"
    elif isinstance(layer, nn.Linear):
        if x.dim() == 0 or shape[-1] != layer.in_features:
            return f"has in_features={layer.in_features} but got the shape {shape}"
    elif isinstance(layer, nn.LayerNorm):
        normalized = tuple(layer.normalized_shape)
        if shape[len(shape) - len(normalized) :] != normalized:
            return f"normalizes the last dims {normalized} but got the shape {shape}"
    return None


def _fix_hint(input_size: tuple[int, ...], layer: nn.Module) -> str:
    """A concrete input_size to try, when one can be guessed from the first layer."""
    ndim, channels = None, None
    if isinstance(layer, nn.modules.conv._ConvNd):
        ndim, channels = len(layer.kernel_size) + 2, layer.in_channels
    elif type(layer) in (nn.BatchNorm2d, nn.BatchNorm3d):
        ndim, channels = _BATCHNORM_DIMS[type(layer)][0], layer.num_features
    if ndim is not None and len(input_size) == ndim - 1 and input_size[0] == channels:
        return f" Pass the batch first: input_size={(1, *input_size)}."
    if ndim is not None and len(input_size) == ndim:
        return f" Pass C={channels}, e.g. input_size={(input_size[0], channels, *input_size[2:])}."
    return " Pass an input that fits, batch first, e.g. (N, C, H, W) for an image model."


def _checked_forward(model: nn.Module, inputs: Any, input_size: tuple[int, ...]) -> Any:
    """Forward with the first layer reached checked against its input (see module docstring)."""
    names = {id(m): name for name, m in model.named_modules()}
    state = {"done": False}

    def check(module: nn.Module, args: tuple[Any, ...]) -> None:
        if state["done"] or id(module) not in names or not isinstance(module, _CHECKED_LAYERS):
            return
        if isinstance(module, LazyModuleMixin) and module.has_uninitialized_params():
            return  # a lazy layer learns its input size from this very call
        state["done"] = True
        if not args or not isinstance(args[0], torch.Tensor):
            return
        problem = _layer_mismatch(module, args[0])
        if problem is not None:
            name = names[id(module)] or "(the model itself)"
            raise InputShapeError(
                f"{type(model).__name__} cannot run on an input of size {tuple(input_size)}: "
                f"its first layer {name!r} ({type(module).__name__}) {problem}; "
                f"{expected_input(model)}." + _fix_hint(tuple(input_size), module)
            )

    handle = register_module_forward_pre_hook(check)
    try:
        return call_model(model, inputs)
    finally:
        handle.remove()


def _shape_key(inputs: Any) -> tuple[Any, ...]:
    items = inputs if isinstance(inputs, tuple) else (inputs,)
    return tuple(
        (tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else type(t) for t in items
    )


def guarded_forward(
    model: nn.Module, inputs: torch.Tensor | tuple[Any, ...], input_size: tuple[int, ...]
) -> Any:
    """Run a forward; an input that does not fit, or a failing forward, is an InputShapeError.

    Args:
        model: The model to run.
        inputs: One tensor or a tuple of positional inputs.
        input_size: The input size the caller was given, named in error messages.

    Returns:
        The model's output.

    Raises:
        InputShapeError: The input does not fit the first layer the forward reaches (raised
            before that layer runs), or the forward raised; the original error is chained.
            leanvision's own errors and out-of-memory errors pass through unchanged.
    """
    key = _shape_key(inputs)
    try:
        seen = _CHECKED.setdefault(model, set())
    except TypeError:  # a model that cannot be weakly referenced: check every call
        seen = set()
    try:
        if key in seen:
            out = call_model(model, inputs)
        else:
            out = _checked_forward(model, inputs, input_size)
            seen.add(key)
        return out
    except (LeanVisionError, torch.OutOfMemoryError):
        raise
    except Exception as err:
        first = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else ""
        raise InputShapeError(
            f"{type(model).__name__} failed on an input of size {tuple(input_size)} "
            f"({expected_input(model)}): {type(err).__name__}: {first}. If that input is right "
            "for the model, the fault is in its forward: see the chained exception."
        ) from err


def check_conv_input(
    layer: str, x: torch.Tensor, in_channels: int, kernel: int = 1, padding: int = 0
) -> None:
    """Raise InputShapeError unless ``x`` is ``(N, in_channels, H, W)`` with H and W, padded by
    ``padding``, at least ``kernel``: the check a native conv-like layer makes before handing
    ``x`` to a kernel that would read garbage past a wrong shape.

    Args:
        layer: The layer as the message names it, e.g. ``"PackedBinaryConv2d(64, 64, k=3)"``.
    """
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise InputShapeError(
            f"{layer} expects an input (N, {in_channels}, H, W), got {tuple(x.shape)}"
        )
    if min(x.shape[2], x.shape[3]) + 2 * padding < kernel:
        raise InputShapeError(
            f"{layer}: input {tuple(x.shape)} padded by {padding} is smaller than the "
            f"{kernel}x{kernel} kernel"
        )
