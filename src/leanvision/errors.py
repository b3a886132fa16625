"""Exceptions raised by leanvision.

Every error says what was wrong, where, and how to fix it. All derive from
:class:`LeanVisionError`; each also derives from the built-in exception a user would
naturally catch (``KeyError`` for unknown names, ``ValueError`` for bad values, ...).
"""

from __future__ import annotations

from collections.abc import Iterable


class LeanVisionError(Exception):
    """Base class of every leanvision error."""

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text.
        return str(self.args[0]) if self.args else ""


def _choices(allowed: Iterable[str], limit: int = 40) -> str:
    names = sorted(allowed)
    shown = ", ".join(names[:limit])
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return shown + more


class UnknownNameError(LeanVisionError, KeyError):
    """A name (model, method, dataset, ...) that no registry knows."""

    def __init__(self, kind: str, name: str, allowed: Iterable[str], hint: str = "") -> None:
        self.kind, self.name, self.allowed = kind, name, sorted(allowed)
        msg = f"unknown {kind} {name!r}; allowed: {_choices(self.allowed)}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)


class UnknownModelError(UnknownNameError):
    """``create_model`` got a name that neither leanvision nor timm registers."""

    def __init__(self, name: str, allowed: Iterable[str]) -> None:
        super().__init__("model", name, allowed, "See `leanvision list models`.")


class UnknownMethodError(UnknownNameError):
    """``compress`` or a recipe stage named a method that is not registered."""

    def __init__(self, name: str, allowed: Iterable[str]) -> None:
        super().__init__("method", name, allowed, "See `leanvision list methods`.")


class UnknownDatasetError(UnknownNameError):
    """``load_data`` got a dataset name it does not know."""

    def __init__(self, name: str, allowed: Iterable[str]) -> None:
        super().__init__("dataset", name, allowed)


class ConfigError(LeanVisionError, ValueError):
    """A bad hyper-parameter, recipe key or option value."""


class RecipeError(ConfigError):
    """A recipe file or dict that does not match the recipe schema."""


class DataError(LeanVisionError, FileNotFoundError):
    """A missing or malformed data root, or a dataset that cannot be read."""


class CheckpointError(LeanVisionError, RuntimeError):
    """A checkpoint that is missing, corrupt, or was written by something else."""


class InputShapeError(LeanVisionError, ValueError):
    """An input tensor whose shape does not fit the model."""


class UnsupportedModelError(LeanVisionError, TypeError):
    """A method met a layer or model it cannot handle; the message names the layer."""


class DirtyTreeError(ConfigError):
    """Results meant to be committed would come from a checkout with uncommitted changes."""


class KernelError(LeanVisionError, RuntimeError):
    """A native kernel that was required (``kernels.load(name, required=True)`` or
    ``LEANVISION_REQUIRE_KERNELS=1``) could not be built or loaded; the message says why."""
