"""Values derived from tensors (packed weights, folded batch norm, a kernel's argument list)
that are rebuilt as soon as a tensor they came from changes.

A layer that keeps such a copy must not serve it after its weights changed, whatever way they
changed: ``load_state_dict`` (an in-place ``copy_``), an in-place edit under ``no_grad``,
``module.weight = nn.Parameter(...)``, ``module.to(...)`` (which swaps a parameter's data and
replaces buffers), new batch-norm statistics or thresholds. :class:`DerivedCache` keys its
value on the source tensors' identity, version counter (torch bumps it on every in-place op)
and data pointer (which catches ``param.data = ...``, dtype and device moves); checking the
key reads three attributes per tensor and hashes no contents, so it is cheap enough for
batch-1 inference of millisecond models.

    self._packed = DerivedCache()
    packed = self._packed.get((self.weight,), lambda: pack(self.weight))

A layer whose sources sit in many submodules can look them up through the modules'
parameter/buffer dicts (no ``nn.Module.__getattr__`` per call) and redo that list when
:func:`structure_version` moves (a submodule, parameter or buffer was set anywhere). A layer
that hands a kernel its live tensors (nothing derived, so in-place changes count at once) keys
its argument list on :func:`structure_version` alone, which costs one integer comparison.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

import torch
from torch import nn

__all__ = ["DerivedCache", "structure_version", "tensor_key", "touch_structure"]

T = TypeVar("T")

_VERSION = operator.attrgetter("_version")
_DATA_PTR = torch.Tensor.data_ptr


def tensor_key(tensors: Sequence[torch.Tensor]) -> tuple[tuple[int, int, int], ...]:
    """``(id, version, data pointer)`` of each tensor: what :class:`DerivedCache` compares."""
    return tuple((id(t), t._version, t.data_ptr()) for t in tensors)


class DerivedCache(Generic[T]):
    """One value derived from a sequence of tensors (and optional plain settings).

    :meth:`get` returns the stored value while every source is the same tensor object with
    the same version counter and data pointer as when the value was built, and ``extra``
    (hashable settings the value depends on, e.g. a flag) compares equal; otherwise it builds
    the value again. The sources are held by reference until the next rebuild, so a freed
    tensor's id can never be mistaken for a new one. A copied or pickled cache is empty: the
    copy builds its own value on first use.
    """

    __slots__ = ("_value", "_sources", "_versions", "_ptrs", "_extra")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Forget the value (the next :meth:`get` builds it)."""
        self._value: T | None = None
        self._sources: tuple[torch.Tensor, ...] = ()
        self._versions: list[int] = []
        self._ptrs: list[int] = []
        self._extra: Hashable = _EMPTY

    def fresh(self, sources: Sequence[torch.Tensor], extra: Hashable = None) -> bool:
        """Whether the stored value was built from exactly these tensors, unchanged."""
        s = self._sources
        return (
            self._extra is not _EMPTY
            and len(sources) == len(s)
            and all(map(operator.is_, sources, s))
            and list(map(_VERSION, sources)) == self._versions
            and list(map(_DATA_PTR, sources)) == self._ptrs
            and extra == self._extra
        )

    def stale(self) -> bool:
        """Whether a tensor the stored value was built from changed since, in place or by a new
        data pointer (the same objects: no identity check); False when nothing is stored."""
        s = self._sources
        return bool(s) and (
            list(map(_VERSION, s)) != self._versions or list(map(_DATA_PTR, s)) != self._ptrs
        )

    def store(self, sources: Sequence[torch.Tensor], value: T, extra: Hashable = None) -> T:
        """Keep ``value`` as derived from ``sources`` (as they are now) and ``extra``."""
        self._sources = tuple(sources)
        self._versions = list(map(_VERSION, self._sources))
        self._ptrs = list(map(_DATA_PTR, self._sources))
        self._value, self._extra = value, extra
        return value

    def get(
        self, sources: Sequence[torch.Tensor], build: Callable[[], T], extra: Hashable = None
    ) -> T:
        """The value for ``sources`` and ``extra``: the stored one, or ``build()`` stored."""
        if self.fresh(sources, extra):
            return self._value  # type: ignore[return-value]
        return self.store(sources, build(), extra)

    @property
    def value(self) -> T | None:
        """The stored value, fresh or not (None when there is none)."""
        return self._value

    def __reduce__(self) -> tuple[Any, ...]:
        return (DerivedCache, ())

    def __repr__(self) -> str:
        state = "empty" if self._extra is _EMPTY else f"{len(self._sources)} sources"
        return f"DerivedCache({state})"


_structure = [0]


def _moved(module: nn.Module, name: str, value: Any) -> None:
    _structure[0] += 1


# every submodule, parameter or buffer set anywhere in the process moves the counter
nn.modules.module.register_module_module_registration_hook(_moved)
nn.modules.module.register_module_parameter_registration_hook(_moved)
nn.modules.module.register_module_buffer_registration_hook(_moved)


def structure_version() -> int:
    """A counter that changes whenever any module anywhere gets a submodule, parameter or
    buffer set or replaced (``parent.name = module``, ``module.weight = nn.Parameter(...)``,
    ``register_buffer``, ``load_state_dict(assign=True)``), or a layer calls
    :func:`touch_structure`. Lists of a layer's tensors (or of where they live), kept across
    calls, are valid while it stands still."""
    return _structure[0]


def touch_structure() -> None:
    """Move :func:`structure_version`: for replacements no torch hook reports, e.g. a layer's
    ``_apply`` (``.to()``, ``.float()``), which swaps buffers for new tensors."""
    _structure[0] += 1


class _Empty:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<empty>"


_EMPTY: Any = _Empty()
