"""Collect intermediate features of a model by module name (for teacher–student losses)."""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import nn

from leanvision.errors import UnknownNameError


def resolve_module(model: nn.Module, name: str) -> nn.Module:
    """Return the sub-module called ``name``; a clear error lists close names when missing."""
    modules = dict(model.named_modules())
    if name not in modules:
        close = difflib.get_close_matches(name, list(modules), n=10, cutoff=0.5)
        raise UnknownNameError(
            "module",
            name,
            close or list(modules)[:40],
            f"The model is {type(model).__name__}; names are those of model.named_modules()",
        )
    return modules[name]


class FeatureRecorder:
    """Record the outputs of named sub-modules at every forward.

    Example:
        >>> rec = FeatureRecorder(model, ["layer1", "layer3"])
        >>> logits = model(x); feats = rec.features  # {"layer1": tensor, "layer3": tensor}
        >>> rec.remove()

    Outputs are kept as produced (with their autograd graph), so losses on them train the model.
    """

    def __init__(self, model: nn.Module, names: list[str], detach: bool = False) -> None:
        self.names, self.detach = list(names), detach
        self.features: dict[str, Any] = {}
        self._handles = []
        for name in self.names:
            module = resolve_module(model, name)
            self._handles.append(module.register_forward_hook(self._make_hook(name)))

    def _make_hook(self, name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if self.detach and isinstance(output, torch.Tensor):
                output = output.detach()
            self.features[name] = output

        return hook

    def clear(self) -> None:
        self.features = {}

    def remove(self) -> None:
        """Detach the forward hooks from the model."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> FeatureRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
