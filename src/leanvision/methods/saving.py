"""Save and load models — compressed ones included — without pickling modules.

A saved file holds the weights plus the recipe of the architecture: the ``create_model`` spec
and the list of architecture-changing methods applied (recorded by each method with
``record_transform``). Loading rebuilds the architecture, then loads the weights with
``weights_only=True`` — the answer to "size mismatch when loading a compressed checkpoint",
following ModelOpt's save/restore.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from leanvision.engine.checkpoint import load_checkpoint, save_checkpoint
from leanvision.errors import CheckpointError, ConfigError
from leanvision.methods.registry import HISTORY_ATTR, get_method
from leanvision.models import create_model

__all__ = ["save", "load", "rebuild"]


def save(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model``'s weights and architecture record to ``path`` (atomically).

    Raises:
        ConfigError: the model was not made by ``create_model`` (no architecture record); save
            its ``state_dict()`` instead and rebuild it in code.
    """
    spec = getattr(model, "lv_spec", None)
    if spec is None:
        raise ConfigError(
            f"{type(model).__name__} has no architecture record (it was not built with "
            "leanvision.create_model); save model.state_dict() with torch.save instead"
        )
    return save_checkpoint(
        {
            "kind": "model",
            "arch": {"spec": spec, "history": list(getattr(model, HISTORY_ATTR, []))},
            "model": model.state_dict(),
        },
        path,
    )


def rebuild(arch: dict[str, Any]) -> nn.Module:
    """Build the (untrained) architecture described by a saved ``arch`` record."""
    spec = arch["spec"]
    model = create_model(spec["name"], **spec.get("kwargs", {}))
    model.lv_spec = spec
    for step in arch.get("history", []):
        method = get_method(step["method"])
        if method.rebuild is not None:
            new = method.rebuild(model, step.get("arch", {}))
            new.lv_spec = spec
            model = new
    model.lv_history = list(arch.get("history", []))  # noqa: B010
    return model


def load(path: str | os.PathLike) -> nn.Module:
    """Load a model written by :func:`save` (in eval mode, on CPU).

    Raises:
        CheckpointError: missing, corrupt or foreign file, or weights that do not fit the
            rebuilt architecture.
    """
    state = load_checkpoint(path)
    if state.get("kind") != "model" or "arch" not in state:
        raise CheckpointError(
            f"{str(path)!r} is a leanvision checkpoint but not a saved model (use "
            "leanvision.save to write one; training checkpoints hold only weights)"
        )
    model = rebuild(state["arch"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(
            f"weights in {str(path)!r} do not fit the rebuilt architecture: "
            f"{str(e).splitlines()[0]}"
        ) from e
    return model.eval()
