"""The search-method registry: ``lv.search(space, data, method="<key>", ...)`` lands here.

A search method (a file in ``leanvision/methods/search/``) registers a config dataclass, checked
at the door like every method's, and ``run(space, data, config, ctx) -> SearchResult``; ``ctx``
(:class:`SearchContext`) carries what the verb owns: the opened study, the objectives' storage,
the trial count, the budget and the run directory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leanvision.errors import ConfigError, UnknownNameError
from leanvision.search.space import SearchSpace

__all__ = [
    "SearchContext",
    "SearchMethod",
    "get_search_method",
    "list_search_methods",
    "register_search_method",
]


@dataclass
class SearchContext:
    """What ``lv.search`` hands a method: where and how long to search."""

    storage: Any  # None, an RDB URL or a journal path (see leanvision.search.study)
    study: str | None
    n_trials: int
    budget_macs: float | None
    out_dir: Path
    progress: bool = True


@dataclass(frozen=True)
class SearchMethod:
    name: str
    paper: str
    config_cls: type
    run: Callable[[SearchSpace, Any, Any, SearchContext], Any]
    summary: str = ""

    def make_config(self, **hparams: Any) -> Any:
        """The checked config (unknown names and bad values fail here, before any work)."""
        allowed = {f.name for f in dataclasses.fields(self.config_cls)}
        unknown = sorted(set(hparams) - allowed)
        if unknown:
            raise ConfigError(
                f"search method {self.name!r} has no hyper-parameter(s) {unknown}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
        try:
            return self.config_cls(**hparams)
        except ConfigError as e:
            raise type(e)(f"search method {self.name!r}: {e}") from e


_METHODS: dict[str, SearchMethod] = {}


class UnknownSearchMethodError(UnknownNameError):
    def __init__(self, name: str, allowed: list[str]) -> None:
        super().__init__("search method", name, allowed, "See `leanvision list search`.")


def register_search_method(
    name: str, *, paper: str, config: type, summary: str = ""
) -> Callable[[Callable], Callable]:
    def deco(run: Callable) -> Callable:
        _METHODS[name] = SearchMethod(name, paper, config, run, summary)
        return run

    return deco


def list_search_methods() -> list[str]:
    return sorted(_METHODS)


def get_search_method(name: str) -> SearchMethod:
    if name not in _METHODS:
        raise UnknownSearchMethodError(name, list_search_methods())
    return _METHODS[name]
