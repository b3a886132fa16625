"""Save and load models — compressed ones included — without pickling modules.

A saved file holds the weights plus the recipe of the architecture: the ``create_model`` spec
and the list of architecture-changing methods applied (recorded by each method with
``record_transform``). Loading rebuilds the architecture, then loads the weights with
``weights_only=True`` — the answer to "size mismatch when loading a compressed checkpoint",
following ModelOpt's save/restore.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from leanvision.deploy import DeployedModel
from leanvision.engine.checkpoint import (
    check_state_dict,
    describe,
    load_checkpoint,
    save_checkpoint,
)
from leanvision.errors import CheckpointError, ConfigError, UnknownMethodError
from leanvision.methods.registry import HISTORY_ATTR, get_method
from leanvision.models import create_model

__all__ = ["save", "load", "rebuild"]


def save(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write ``model``'s weights and architecture record to ``path`` (atomically).

    Raises:
        ConfigError: the model was not made by ``create_model`` (no architecture record); save
            its ``state_dict()`` instead and rebuild it in code.
    """
    if isinstance(model, DeployedModel):
        raise ConfigError(
            f"the model is deployed on {model.backend}, outside PyTorch: save the graph it "
            "runs with model.save_onnx(path), or save the model it was deployed from"
        )
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


def _malformed(source: str, what: str) -> CheckpointError:
    return CheckpointError(
        f"{source} is malformed: {what}. It was not written by leanvision.save, or was edited; "
        "save the model again with leanvision.save"
    )


def _check_arch(arch: Any, source: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Validate an ``arch`` record; return its spec and history."""
    if not isinstance(arch, Mapping):
        raise _malformed(source, f"'arch' must be a dict, got {describe(arch)}")
    spec = arch.get("spec")
    if not isinstance(spec, Mapping):
        found = "no 'spec'" if "spec" not in arch else describe(spec)
        raise _malformed(source, f"'arch.spec' must be a dict (name, kwargs), got {found}")
    if not isinstance(spec.get("name"), str) or not spec["name"]:
        found = "nothing" if "name" not in spec else describe(spec["name"])
        raise _malformed(source, f"'arch.spec.name' must be a model name, got {found}")
    kwargs = spec.get("kwargs", {})
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise _malformed(source, f"'arch.spec.kwargs' must be a dict, got {describe(kwargs)}")
    history = arch.get("history", [])
    if not isinstance(history, list):
        raise _malformed(source, f"'arch.history' must be a list, got {describe(history)}")
    for i, step in enumerate(history):
        if not isinstance(step, Mapping) or not isinstance(step.get("method"), str):
            found = describe(step) if not isinstance(step, Mapping) else f"keys {list(step)}"
            raise _malformed(
                source, f"'arch.history[{i}]' must be a dict with a 'method' name, got {found}"
            )
        version = step.get("config_version", 1)
        if isinstance(version, bool) or not isinstance(version, int):
            raise _malformed(
                source, f"'arch.history[{i}].config_version' must be an int, got "
                f"{describe(version)}",
            )  # fmt: skip
        if not isinstance(step.get("arch", {}), Mapping):
            raise _malformed(
                source, f"'arch.history[{i}].arch' must be a dict, got {describe(step['arch'])}"
            )
    return dict(spec), [dict(step) for step in history]


def rebuild(arch: dict[str, Any], *, source: str = "the architecture record") -> nn.Module:
    """Build the (untrained) architecture described by a saved ``arch`` record.

    Args:
        arch: ``{"spec": {"name", "kwargs"}, "history": [{"method", "arch"}, ...]}``; a kwarg
            that is itself such a record (``{"spec", "history"}``, e.g. a detector's pruned
            backbone) is rebuilt first and passed as the module.
        source: What the record came from, named in error messages (e.g. the file).

    Raises:
        CheckpointError: The record is malformed, names a model or method this leanvision
            does not know, or a method cannot redo its change from it; the original error
            is chained.
    """
    spec, history = _check_arch(arch, source)
    # the saved weights replace any pretrained ones: never download them to rebuild
    kwargs = {**spec.get("kwargs", {}), "pretrained": False}
    for key, value in kwargs.items():  # a part with a record of its own (a detector's backbone)
        if isinstance(value, Mapping) and set(value) == {"spec", "history"}:
            kwargs[key] = rebuild(dict(value), source=f"{source} ({key})")
    try:
        model = create_model(spec["name"], **kwargs)
    except Exception as e:  # unknown name, bad kwargs: the file cannot be rebuilt here
        raise CheckpointError(
            f"{source} names model {spec['name']!r} with kwargs {spec.get('kwargs', {})}, "
            f"which this leanvision cannot build: {e}"
        ) from e
    model.lv_spec = spec
    for i, step in enumerate(history):
        try:
            method = get_method(step["method"])
        except UnknownMethodError as e:
            raise CheckpointError(
                f"{source} was compressed with method {step['method']!r} (arch.history[{i}]), "
                f"which this leanvision does not register: {e}. Load it with the leanvision "
                "version (or plugin) that wrote it"
            ) from e
        saved = step.get("config_version", 1)  # records older than versions were version 1
        current = getattr(method.config_cls, "version", 1)
        if saved != current:
            raise CheckpointError(
                f"{source} was compressed with method {step['method']!r} (arch.history[{i}]) "
                f"under its config version {saved}; this leanvision's {method.name!r} is version "
                f"{current} and may rebuild another architecture from it. Load it with the "
                "leanvision version that wrote it"
            )
        if method.rebuild is None:
            continue
        try:
            new = method.rebuild(model, step.get("arch", {}))
        except Exception as e:  # the method's own record is wrong or from another version
            raise CheckpointError(
                f"{source}: method {step['method']!r} (arch.history[{i}]) cannot rebuild its "
                f"architecture from the saved record {step.get('arch', {})!r}: "
                f"{type(e).__name__}: {e}"
            ) from e
        new.lv_spec = spec
        model = new
    model.lv_history = history  # noqa: B010
    return model


def load(path: str | os.PathLike) -> nn.Module:
    """Load a model written by :func:`save` (in eval mode, on CPU).

    Raises:
        CheckpointError: missing, corrupt, truncated or foreign file, a malformed record
            (missing keys, wrong types), an unknown model or method in it, or weights that do
            not fit the rebuilt architecture; the message names the file and what is wrong.
    """
    state = load_checkpoint(path)
    source = f"saved model {str(path)!r}"
    if state.get("kind") != "model" or "arch" not in state:
        raise CheckpointError(
            f"{str(path)!r} is a leanvision checkpoint but not a saved model (use "
            "leanvision.save to write one; training checkpoints hold only weights)"
        )
    if "model" not in state:
        raise _malformed(source, "it holds no weights ('model' key)")
    weights = check_state_dict(state["model"], path, "model")
    model = rebuild(state["arch"], source=source)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(
            f"weights in {str(path)!r} do not fit the rebuilt architecture: "
            f"{str(e).splitlines()[0]}"
        ) from e
    return model.eval()
