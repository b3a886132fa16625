"""Turn a forward that fails because of the input's shape into a clear InputShapeError.

Shared by the profiler and the evaluator (anything that runs a user's model on an input).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from leanvision.errors import InputShapeError, LeanVisionError

# Words that forward errors caused by the input's shape carry (conv channel checks, matmul
# shape checks, view/reshape checks, broadcasting, timm's image-size assertions).
_SHAPE_WORDS = re.compile(
    r"shape|size|channel|dimension|\bdims?\b|input height|input width|doesn't match|"
    r"must match|cannot be multiplied|expected input",
    re.IGNORECASE,
)


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


def looks_like_shape_error(err: BaseException) -> bool:
    """True when an exception raised by a forward is about tensor shapes."""
    return bool(_SHAPE_WORDS.search(str(err)))


def call_model(model: Callable[..., Any], inputs: torch.Tensor | tuple[Any, ...]) -> Any:
    """Run ``model`` on one tensor or a tuple of positional inputs."""
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def guarded_forward(
    model: nn.Module, inputs: torch.Tensor | tuple[Any, ...], input_size: tuple[int, ...]
) -> Any:
    """Run a forward; turn a shape failure into :class:`InputShapeError` chained from it."""
    try:
        return call_model(model, inputs)
    except (RuntimeError, AssertionError, ValueError) as err:
        if isinstance(err, LeanVisionError) or not looks_like_shape_error(err):
            raise
        raise InputShapeError(
            f"{type(model).__name__} cannot run on an input of size {tuple(input_size)}: "
            f"{expected_input(model)}. Pass an input_size that fits, e.g. (N, C, H, W) with "
            f"the channels above. Original error: {err}"
        ) from err
