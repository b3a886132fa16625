"""Search spaces: a declared set of choices that turns a sampled dict into a model spec.

A :class:`SearchSpace` names its choices (per block: kernel, expansion, skip; per stage: width,
depth, resolution path) and a ``build`` function that turns one complete sample into a
:class:`ModelSpec`, the ``(name, kwargs)`` pair :func:`leanvision.create_model` builds (the same
pair a built model carries as ``model.lv_spec``). Samples are checked at the door: an unknown
key, a missing key or a value the choice does not allow is a :class:`ConfigError` naming it and
what is allowed. The space's fingerprint (its name and choices) is stored with a study, so a
study is never continued with another space.

Choices are Optuna categorical distributions (``trial.suggest_categorical``), so every sampler
(TPE, NSGA-II, random) works on any space unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from leanvision.errors import ConfigError

__all__ = ["Choice", "ModelSpec", "SearchSpace"]

_SCALARS = (bool, int, float, str, type(None))


@dataclass(frozen=True)
class Choice:
    """One decision of a space: its key and the values it may take (scalars, in order)."""

    key: str
    options: tuple[Any, ...]
    doc: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not self.key:
            raise ConfigError(f"a choice needs a non-empty string key, got {self.key!r}")
        options = tuple(self.options)
        object.__setattr__(self, "options", options)
        if not options:
            raise ConfigError(f"choice {self.key!r} has no options")
        bad = [o for o in options if not isinstance(o, _SCALARS)]
        if bad:
            raise ConfigError(
                f"choice {self.key!r}: options must be None, bool, int, float or str "
                f"(Optuna's categorical values), got {bad!r}"
            )
        if len(set(map(repr, options))) != len(options):
            raise ConfigError(f"choice {self.key!r} repeats an option: {options!r}")

    def allows(self, value: Any) -> bool:
        # bool is an int in Python: True must not pass for 1, nor 1 for True
        return any(type(value) is type(o) and value == o for o in self.options)


@dataclass(frozen=True)
class ModelSpec:
    """What :func:`leanvision.create_model` builds: ``create_model(name, **kwargs)``."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self, **overrides: Any) -> nn.Module:
        """The model (``overrides``, e.g. ``num_classes``, win over the spec's kwargs)."""
        from leanvision.models import create_model

        return create_model(self.name, **{**self.kwargs, **overrides})

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kwargs": dict(self.kwargs)}


class SearchSpace:
    """A named set of :class:`Choice` and the function that builds a spec from a sample.

    Args:
        name: the space's name (stored with a study; part of its fingerprint).
        choices: the decisions, in the order a sampler meets them.
        build: one complete, checked sample -> :class:`ModelSpec`.
        description: one line for reports and ``--help``.
        smallest: the sample with the fewest MACs, if the space knows it (a budget is checked
            against it at the door); else the smallest is found by enumerating a small space.
        supernet: ``supernet(**build_kwargs) -> nn.Module``, the weight-sharing network holding
            every member (one-shot methods need it); ``activate(net, spec)`` selects a member;
            ``activate_group(net, specs)``, if the supernet can, several members that share one
            batch (multi-architecture sampling).
        vital: the choices on the network's shortest path (stage entries, down-sampling, the
            widths), HourNAS's "vital blocks"; ``skip_value``: the value of a non-vital
            choice that removes its block (the hourglass network holds the vital ones only).
        groups: an ordered partition of the choices by granularity, coarsest first (e.g.
            path, operators, widths) for coarse-to-fine searches.
    """

    def __init__(
        self,
        name: str,
        choices: Sequence[Choice],
        build: Callable[[dict[str, Any]], ModelSpec],
        description: str = "",
        smallest: Mapping[str, Any] | None = None,
        supernet: Callable[..., nn.Module] | None = None,
        activate: Callable[[nn.Module, ModelSpec], None] | None = None,
        activate_group: Callable[[nn.Module, list[ModelSpec]], None] | None = None,
        vital: Sequence[str] | None = None,
        skip_value: Any = None,
        groups: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        if (supernet is None) != (activate is None):
            raise ConfigError(f"space {name!r}: give supernet and activate together")
        if activate_group is not None and supernet is None:
            raise ConfigError(f"space {name!r}: activate_group needs a supernet")
        keys = [c.key for c in choices]
        if len(set(keys)) != len(keys):
            dup = sorted({k for k in keys if keys.count(k) > 1})
            raise ConfigError(f"space {name!r} declares the choice(s) {dup} twice")
        if not choices:
            raise ConfigError(f"space {name!r} has no choices")
        self.name = name
        self.choices = {c.key: c for c in choices}
        self._build = build
        self.description = description
        self.smallest = None if smallest is None else self.check(smallest)
        self._supernet, self._activate = supernet, activate
        self._activate_group = activate_group
        self.vital = list(vital or [])
        unknown = sorted(set(self.vital) - set(self.choices))
        if unknown:
            raise ConfigError(f"space {name!r}: vital choice(s) {unknown} are not its keys")
        self.skip_value = skip_value
        self.groups = {g: list(keys) for g, keys in (groups or {}).items()}
        if self.groups:
            grouped = [k for keys in self.groups.values() for k in keys]
            if sorted(grouped) != sorted(self.choices):
                raise ConfigError(
                    f"space {name!r}: groups must hold every choice once; unknown "
                    f"{sorted(set(grouped) - set(self.choices))}, missing "
                    f"{sorted(set(self.choices) - set(grouped))}, repeated "
                    f"{sorted({k for k in grouped if grouped.count(k) > 1})}"
                )
        if self.vital:
            rest = [k for k in self.choices if k not in self.vital]
            cannot = [k for k in rest if not self.choices[k].allows(skip_value)]
            if cannot:
                raise ConfigError(
                    f"space {name!r}: non-vital choice(s) {cannot} cannot take the skip value "
                    f"{skip_value!r} (the hourglass network must drop them)"
                )

    def hourglass(self) -> dict[str, Any]:
        """Every non-vital choice at the skip value: the vital blocks' network."""
        if not self.vital:
            raise ConfigError(f"space {self.name!r} declares no vital choices")
        return {k: self.skip_value for k in self.choices if k not in self.vital}

    @property
    def has_supernet(self) -> bool:
        return self._supernet is not None

    def supernet(self, **build: Any) -> nn.Module:
        """The space's weight-sharing supernet (``build``: e.g. num_classes, in_chans)."""
        if self._supernet is None:
            raise ConfigError(f"space {self.name!r} has no supernet (one-shot methods need one)")
        return self._supernet(**build)

    def activate(self, net: nn.Module, sample: Mapping[str, Any]) -> ModelSpec:
        """Select ``sample``'s member in the supernet ``net``; returns its spec."""
        spec = self.spec(sample)
        if self._activate is None:
            raise ConfigError(f"space {self.name!r} has no supernet (one-shot methods need one)")
        self._activate(net, spec)
        return spec

    @property
    def can_share_batches(self) -> bool:
        """Whether its supernet runs several members on the parts of one batch."""
        return self._activate_group is not None

    def activate_group(self, net: nn.Module, samples: Sequence[Mapping[str, Any]]) -> list:
        """Select several members of ``net``, each computing its own part of a batch."""
        if self._activate_group is None:
            raise ConfigError(
                f"space {self.name!r}: its supernet runs one member per batch "
                "(multi-architecture sampling needs activate_group)"
            )
        specs = [self.spec(s) for s in samples]
        self._activate_group(net, specs)
        return specs

    def __repr__(self) -> str:
        return f"SearchSpace({self.name!r}, {len(self.choices)} choices, {self.size():.3g} archs)"

    def keys(self) -> list[str]:
        return list(self.choices)

    def size(self) -> int:
        """How many samples the space holds (the product of the options' counts)."""
        return math.prod(len(c.options) for c in self.choices.values())

    def fingerprint(self) -> str:
        """sha256 of the name and every choice's key and options (what a study must match)."""
        body = [self.name, [[c.key, [repr(o) for o in c.options]] for c in self.choices.values()]]
        return hashlib.sha256(json.dumps(body).encode()).hexdigest()[:16]

    def check(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """The sample as a dict, after checking every key and value.

        Raises:
            ConfigError: an unknown key (naming the space's keys), a missing key, or a value
                its choice does not allow (naming the allowed values).
        """
        if not isinstance(sample, Mapping):
            raise ConfigError(f"space {self.name!r}: a sample is a dict, got {type(sample)}")
        unknown = sorted(set(sample) - set(self.choices))
        if unknown:
            raise ConfigError(
                f"space {self.name!r} has no choice(s) {unknown}; its keys: {self.keys()}"
            )
        missing = [k for k in self.choices if k not in sample]
        if missing:
            raise ConfigError(f"space {self.name!r}: the sample lacks {missing}")
        for key, value in sample.items():
            choice = self.choices[key]
            if not choice.allows(value):
                raise ConfigError(
                    f"space {self.name!r}: {key}={value!r} is not allowed; allowed: "
                    f"{list(choice.options)}"
                )
        return {k: sample[k] for k in self.choices}

    def spec(self, sample: Mapping[str, Any]) -> ModelSpec:
        """The model spec of a (checked) sample."""
        spec = self._build(self.check(sample))
        if not isinstance(spec, ModelSpec):
            raise ConfigError(f"space {self.name!r}: build returned {type(spec)}, not a ModelSpec")
        return spec

    def suggest(self, trial: Any) -> dict[str, Any]:
        """A sample drawn through an Optuna trial (every choice categorical)."""
        return {k: trial.suggest_categorical(k, list(c.options)) for k, c in self.choices.items()}

    def distributions(self) -> dict[str, Any]:
        """Optuna's distributions of the choices (for ``study.add_trial`` / ``enqueue``)."""
        from optuna.distributions import CategoricalDistribution

        return {k: CategoricalDistribution(list(c.options)) for k, c in self.choices.items()}

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """A uniform sample (single-path supernet training draws these)."""
        return {k: rng.choice(c.options) for k, c in self.choices.items()}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Every sample, in order (small spaces only: tests, exhaustive baselines)."""
        import itertools

        items = list(self.choices.items())
        for values in itertools.product(*(c.options for _, c in items)):
            yield {k: v for (k, _), v in zip(items, values, strict=True)}
