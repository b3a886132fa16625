"""Run a user's model on an input and turn a failure into a clear InputShapeError.

Shared by the profiler, the evaluator, the trainer's first step and ``leanvision.deploy``
(anything that runs a user's model on an input).

``input_size``: one meaning everywhere in leanvision (the profiler and ``lv.profile``,
``lv.export_onnx``, ``lv.optimize_for_cpu``, the pruners' configs, ``DataBundle``, the CLI's
``--input-size``), timm's ``pretrained_cfg["input_size"]``:

- ``input_size`` is the shape of ONE sample, without the batch: ``(C, H, W)`` for an image
  model, any shape for other models (``(L, D)`` tokens, ``(D,)`` features).
- A function that runs a batch takes ``batch=N`` (an int >= 1, default 1) and runs the model
  on one ``(N, *input_size)`` tensor; what it reports (MACs, adds, bit-ops, latency, memory,
  energy) is for that whole batch.
- ``input_size=None`` means the model's own size, ``model.pretrained_cfg["input_size"]``
  (timm's models and leanvision's carry it, :func:`recorded_input_size`); a model without one
  is a ConfigError asking for ``input_size``.
- The batch-first form ``(1, 3, 32, 32)`` is not guessed at (a 4-D sample is legitimate):
  it is taken as one sample's shape. When the forward then fails and ``input_size`` has one
  dim more than the model's recorded input size, or than its first layer takes, the
  InputShapeError says: "input_size is one sample's shape without the batch, e.g.
  (3, 32, 32); pass the batch as batch=N".

How a forward is guarded (:func:`guarded_forward`), without reading exception messages:

- the input is checked against the first layer the forward reaches (a convolution, batch norm,
  linear or layer norm), before that layer runs: rank (batch first: ``(N, C, H, W)`` for a
  2-D convolution, even though torch also accepts an unbatched ``(C, H, W)``), channels or
  features. This check runs once per model and input shape;
- any other exception the forward raises (except leanvision's own errors and out-of-memory)
  becomes an InputShapeError naming the input and what the model expects, with the original
  exception chained (``raise ... from err``).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.modules.module import register_module_forward_pre_hook

from leanvision.errors import ConfigError, InputShapeError, LeanVisionError

__all__ = [
    "call_model",
    "check_batch",
    "check_conv_input",
    "eval_mode",
    "expected_input",
    "guarded_forward",
    "recorded_input_size",
    "resolve_input_size",
]

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


# --------------------------------------------------------------------------- input_size


def recorded_input_size(model: Any) -> tuple[int, ...] | None:
    """The model's own input size, one sample's shape: ``pretrained_cfg["input_size"]`` (or
    ``default_cfg``'s), as timm's models and leanvision's record it; None when it has none."""
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict) and cfg.get("input_size"):
            try:
                return tuple(int(d) for d in cfg["input_size"])
            except (TypeError, ValueError):
                return None
    return None


def _check_size(input_size: Any) -> tuple[int, ...]:
    allowed = (
        "a non-empty sequence of positive ints, one sample's shape without the batch such as "
        "(3, 224, 224) (see leanvision.shapes)"
    )
    try:
        size = tuple(input_size)
    except TypeError:
        raise ConfigError(f"input_size must be {allowed}, got {input_size!r}") from None
    if not size or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in size):
        raise ConfigError(f"input_size must be {allowed}, got {input_size!r}")
    return size


def resolve_input_size(model: Any, input_size: Sequence[int] | None) -> tuple[int, ...]:
    """``input_size`` checked, or, when None, the model's recorded one (module docstring).

    Args:
        model: The model (or callable) the size is for; read only when ``input_size`` is None.
        input_size: One sample's shape without the batch, e.g. ``(3, 32, 32)``, or None.

    Returns:
        One sample's shape as a tuple of positive ints.

    Raises:
        ConfigError: ``input_size`` is not a non-empty sequence of positive ints, or it is None
            and the model records no ``pretrained_cfg["input_size"]``.
    """
    if input_size is not None:
        return _check_size(input_size)
    recorded = recorded_input_size(model)
    if recorded is None:
        raise ConfigError(
            f"{type(model).__name__} records no input size (no pretrained_cfg['input_size']): "
            "pass input_size, one sample's shape without the batch, e.g. input_size=(3, 32, 32) "
            "for an image model, and the batch as batch=N"
        )
    return _check_size(recorded)


def check_batch(batch: Any) -> int:
    """Return ``batch`` if it is an int >= 1, else raise ConfigError."""
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ConfigError(
            f"batch must be an int >= 1 (the samples per forward; input_size is one "
            f"sample's shape), got {batch!r}"
        )
    return batch


def expected_input(model: nn.Module) -> str:
    """Describe what input a model expects, from its timm config and first layers."""
    parts: list[str] = []
    recorded = recorded_input_size(model)
    if recorded is not None:
        parts.append(f"its pretrained_cfg input_size is {recorded} (C, H, W)")
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            parts.append(f"its first {type(m).__name__} has in_channels={m.in_channels}")
            break
        if isinstance(m, nn.Linear):
            parts.append(f"its first Linear has in_features={m.in_features}")
            break
    return "; ".join(parts) if parts else "its expected input is not recorded"


# --------------------------------------------------------------------------- running a model


def call_model(model: Callable[..., Any], inputs: torch.Tensor | tuple[Any, ...]) -> Any:
    """Run ``model`` on one tensor or a tuple of positional inputs."""
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


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


def _layer_rank(layer: nn.Module | None) -> tuple[int | None, int | None]:
    """The rank of the batched input ``layer`` takes and its channels, where both are fixed."""
    if isinstance(layer, nn.modules.conv._ConvNd):
        return len(layer.kernel_size) + 2, layer.in_channels
    if type(layer) in (nn.BatchNorm2d, nn.BatchNorm3d):
        return _BATCHNORM_DIMS[type(layer)][0], layer.num_features
    return None, None


def _batch_first_hint(
    model: nn.Module, size: tuple[int, ...], batch: int, layer: nn.Module | None
) -> str:
    """The rule's message when ``size`` is evidently batch first (one dim more than the model's
    recorded input size, or than its first layer takes), else ``""``."""
    recorded = recorded_input_size(model)
    ndim, _ = _layer_rank(layer)
    if (recorded is not None and len(size) == len(recorded) + 1) or (
        ndim is not None and len(size) == ndim
    ):
        example = size[1:] if len(size) > 1 else size
        fix = f"input_size={example}" + (f", batch={size[0]}" if batch == 1 else "")
        return (
            f"input_size is one sample's shape without the batch, e.g. {example}; pass the "
            f"batch as batch=N (here: {fix})"
        )
    return ""


def _fix_hint(size: tuple[int, ...], layer: nn.Module, sample: bool) -> str:
    """A concrete fix, when one can be guessed from the first layer.

    ``sample``: ``size`` is an ``input_size`` (one sample, the batch given apart); otherwise it
    is the shape of the batched input tensor itself (the trainer's and evaluator's case).
    """
    ndim, channels = _layer_rank(layer)
    if sample:
        if ndim is not None and len(size) == ndim - 1 and size[0] != channels:
            return f" Pass C={channels}, e.g. input_size={(channels, *size[1:])}."
        if ndim is not None and len(size) == ndim - 2:
            return (
                f" input_size is one sample's shape with its channels first, e.g. "
                f"input_size={(channels, *size)}."
            )
        return " input_size is one sample's shape without the batch, e.g. (C, H, W) for images."
    if ndim is not None and len(size) == ndim - 1 and size[0] == channels:
        return f" Give it a batch first: an input of shape {(1, *size)}."
    if ndim is not None and len(size) == ndim:
        return f" Give it C={channels}: an input of shape {(size[0], channels, *size[2:])}."
    return " Give it an input that fits, batch first, e.g. (N, C, H, W) for an image model."


def _describe(input_size: tuple[int, ...], batch: int | None) -> str:
    if batch is None:
        return f"an input of size {input_size}"
    return f"input_size={input_size} at batch={batch}"


def _checked_forward(
    model: nn.Module, inputs: Any, input_size: tuple[int, ...], batch: int | None
) -> Any:
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
            rule = _batch_first_hint(model, input_size, batch, module) if batch is not None else ""
            head = f"{type(model).__name__} cannot run on {_describe(input_size, batch)}: "
            detail = (
                f"its first layer {name!r} ({type(module).__name__}) {problem}; "
                f"{expected_input(model)}."
            )
            if rule:
                raise InputShapeError(f"{head}{rule}. {detail[0].upper()}{detail[1:]}")
            hint = _fix_hint(input_size, module, sample=batch is not None)
            raise InputShapeError(head + detail + hint)

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
    model: nn.Module,
    inputs: torch.Tensor | tuple[Any, ...],
    input_size: Sequence[int],
    *,
    batch: int | None = None,
) -> Any:
    """Run a forward; an input that does not fit, or a failing forward, is an InputShapeError.

    Args:
        model: The model to run.
        inputs: One tensor or a tuple of positional inputs.
        input_size: The size named in error messages: with ``batch``, the ``input_size`` the
            caller was given (one sample's shape, see the module docstring); without, the
            shape of the input tensor itself.
        batch: The batch the caller was given, when ``inputs`` is ``(batch, *input_size)``;
            then an ``input_size`` that is evidently batch first gets the rule's message.

    Returns:
        The model's output.

    Raises:
        InputShapeError: The input does not fit the first layer the forward reaches (raised
            before that layer runs), or the forward raised; the original error is chained.
            leanvision's own errors and out-of-memory errors pass through unchanged.
    """
    size = tuple(input_size)
    key = _shape_key(inputs)
    try:
        seen = _CHECKED.setdefault(model, set())
    except TypeError:  # a model that cannot be weakly referenced: check every call
        seen = set()
    try:
        if key in seen:
            out = call_model(model, inputs)
        else:
            out = _checked_forward(model, inputs, size, batch)
            seen.add(key)
        return out
    except (LeanVisionError, torch.OutOfMemoryError):
        raise
    except Exception as err:
        first = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else ""
        rule = _batch_first_hint(model, size, batch, None) if batch is not None else ""
        raise InputShapeError(
            f"{type(model).__name__} failed on {_describe(size, batch)} "
            f"({expected_input(model)}): {type(err).__name__}: {first}. "
            + (f"{rule}. " if rule else "")
            + "If that input is right for the model, the fault is in its forward: see the "
            "chained exception."
        ) from err


def check_conv_input(
    layer: str,
    x: torch.Tensor,
    in_channels: int,
    kernel: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
) -> None:
    """Raise InputShapeError unless ``x`` is ``(N, in_channels, H, W)`` with H and W, padded by
    ``padding``, at least ``kernel`` (ints, or (height, width) pairs): the check a native
    conv-like layer makes before handing ``x`` to a kernel that would read garbage past a
    wrong shape.

    Args:
        layer: The layer as the message names it, e.g. ``"PackedBinaryConv2d(64, 64, k=3)"``.
    """
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise InputShapeError(
            f"{layer} expects an input (N, {in_channels}, H, W), got {tuple(x.shape)}"
        )
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    if x.shape[2] + 2 * ph < kh or x.shape[3] + 2 * pw < kw:
        pad = padding if isinstance(padding, int) else tuple(padding)
        raise InputShapeError(
            f"{layer}: input {tuple(x.shape)} padded by {pad} is smaller than the {kh}x{kw} kernel"
        )
