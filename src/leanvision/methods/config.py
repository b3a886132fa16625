"""The base of every method's config: checked at the door, before any data is read or trained on.

A method's config is a dataclass deriving from :class:`MethodConfig`. Building it runs
:meth:`MethodConfig.validate`: every field's value against its type annotation, then the
ranges and combinations the config's class adds (ratios in (0, 1], epochs ≥ 0, lr > 0, known
string options, ...). :meth:`MethodConfig.check_inputs` then checks what a call needs beyond
well-formed values: ``data`` where the method reads data, a ``teacher`` for distillation, one
of several alternative targets. ``lv.compress`` and recipe stages run both (through
:class:`~leanvision.methods.registry.MethodSpec`) before the method touches data or trains, and
the errors name the method, the field, the bad value and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from leanvision.checks import check_choice, check_int, check_real, check_types, field_error

__all__ = [
    "MethodConfig",
    "check_choice",
    "check_int",
    "check_real",
    "field_error",
]


@dataclass
class MethodConfig:
    """Base of every method's config (a dataclass): :meth:`validate` runs when it is built.

    Subclasses override :meth:`validate` (calling ``super().validate()`` first) to check their
    fields' ranges and combinations, and :meth:`check_inputs` for what a call needs.

    ``version`` is the config's schema version. A compressed model's saved record carries it;
    a method raises it when a field's meaning or default changes, so that loading a record
    made under another version can say so instead of silently rebuilding something else."""

    version: ClassVar[int] = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field's type against its annotation; raises ConfigError naming it."""
        check_types(self)

    def check_inputs(self, data: Any) -> None:
        """Check what a call with this config needs beyond well-formed values (e.g. data).

        Raises:
            ConfigError: something the method needs is missing.
        """
