"""Checked values: the door every config passes before anything is read or trained.

A config (a method's, the trainer's) is a dataclass whose fields are checked when it is built:
each value against its type annotation (:func:`check_types`), then ranges and known choices
(:func:`check_int`, :func:`check_real`, :func:`check_choice`). Errors are
:class:`~leanvision.errors.ConfigError` naming the field, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from collections.abc import Iterable
from typing import Any

from leanvision.errors import ConfigError

__all__ = [
    "check_choice",
    "check_int",
    "check_real",
    "check_types",
    "field_error",
]


def field_error(name: str, value: Any, allowed: str) -> ConfigError:
    """A ConfigError naming the field, its bad value and what is allowed."""
    return ConfigError(f"{name}={value!r} is not allowed; allowed: {allowed}")


def _bound(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi:g}"
    return "a finite number"


def check_real(
    name: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    none_ok: bool = False,
) -> None:
    """``value`` is a finite number within the bounds (``lo_open``: excluded); or None."""
    if value is None and none_ok:
        return
    allowed = "a number " + _bound(lo, hi, lo_open, hi_open) + (" or None" if none_ok else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise field_error(name, value, allowed)
    v = float(value)
    if not math.isfinite(v):
        raise field_error(name, value, allowed)
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise field_error(name, value, allowed)
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise field_error(name, value, allowed)


def check_int(
    name: str, value: Any, lo: int | None = None, hi: int | None = None, *, none_ok: bool = False
) -> None:
    """``value`` is an integer in ``[lo, hi]`` (either bound may be None); or None."""
    if value is None and none_ok:
        return
    allowed = "an integer " + _bound(lo, hi, False, False) + (" or None" if none_ok else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise field_error(name, value, allowed)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise field_error(name, value, allowed)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise field_error(name, value, "one of " + ", ".join(repr(c) for c in choices))


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in typing.get_type_hints(cls).items() if k in names}


_NAMES = {int: "an integer", float: "a number", bool: "true/false", str: "a string"}


def _type_name(hint: Any) -> str:
    """``int | None`` → "an integer or None"; ``list[str]`` → "list[str]"."""
    if hint is type(None):
        return "None"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if isinstance(hint, type) and not typing.get_args(hint):
        return _NAMES.get(hint, f"a {hint.__name__}")
    return str(hint).replace("typing.", "")


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the annotation ``hint`` (containers: items checked too).

    Lenient where YAML and Python differ but not the meaning: an int is a float, a list is a
    tuple and a tuple a list."""
    if hint is Any or hint is object:
        return True
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            return False
        if not args:
            return True
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        return all(_matches(v, args[0]) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            return False
        if not args:
            return True
        return all(_matches(k, args[0]) and _matches(v, args[1]) for k, v in value.items())
    if origin is not None:  # other generics (Callable, ...): the container type alone
        return isinstance(value, origin)
    return isinstance(value, hint)


def _number(text: str) -> float | int | None:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None


def check_types(config: Any) -> None:
    """Check every dataclass field of ``config`` against its type annotation.

    Raises:
        ConfigError: naming the first field whose value does not fit its annotation.
    """
    for name, hint in _hints(type(config)).items():
        value = getattr(config, name)
        if not _matches(value, hint):
            allowed = _type_name(hint)
            if isinstance(value, str) and _matches(_number(value), hint):
                allowed += " (a number was given as a string: YAML reads 1e-3 as text; "
                allowed += "write 1.0e-3)"
            raise field_error(name, value, allowed)
