"""The one method registry: ``lv.compress(model, "<key>", ...)`` and recipe stages both land here.

A method registers a config dataclass (its hyper-parameters with the paper's defaults) and an
``apply(model, data, config) -> nn.Module`` function; torchao's ``quantize_(model, config)`` is the
model for this shape.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from leanvision.errors import ConfigError, UnknownMethodError

ApplyFn = Callable[[nn.Module, Any, Any], nn.Module]
RebuildFn = Callable[[nn.Module, dict[str, Any]], nn.Module]
HISTORY_ATTR = "lv_history"


@dataclass(frozen=True)
class MethodSpec:
    """A registered method."""

    name: str
    family: str
    paper: str
    config_cls: type
    apply: ApplyFn
    summary: str = ""
    rebuild: RebuildFn | None = None

    def make_config(self, **hparams: Any) -> Any:
        """Build and validate the config (before any data is read or any training).

        Raises:
            ConfigError: an unknown hyper-parameter (naming the allowed ones), or a value of
                the wrong type or out of range (naming the method, the field, the value and
                what is allowed: :meth:`MethodConfig.validate`, run when the config is built).
        """
        allowed = {f.name for f in dataclasses.fields(self.config_cls)}
        unknown = sorted(set(hparams) - allowed)
        if unknown:
            raise ConfigError(
                f"method {self.name!r} has no hyper-parameter(s) {unknown}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
        try:
            return self.config_cls(**hparams)
        except TypeError as e:  # a required field is missing
            raise ConfigError(f"method {self.name!r}: {e}") from e
        except ConfigError as e:
            raise type(e)(f"method {self.name!r}: {e}") from e

    def check_inputs(self, config: Any, data: Any) -> None:
        """What a call needs beyond the config's values (data, a teacher, one target), checked
        before the method runs (:meth:`MethodConfig.check_inputs`)."""
        check = getattr(config, "check_inputs", None)
        if check is None:
            return
        try:
            check(data)
        except ConfigError as e:
            raise type(e)(f"method {self.name!r}: {e}") from e


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(
    name: str,
    *,
    family: str,
    paper: str,
    config: type,
    summary: str = "",
    rebuild: RebuildFn | None = None,
) -> Callable[[ApplyFn], ApplyFn]:
    """Decorator registering ``apply(model, data, config) -> nn.Module`` under ``name``.

    ``rebuild(model, arch)`` redoes the method's change of architecture (no training) from
    the ``arch`` dict the method recorded with :func:`record_transform`; ``leanvision.load``
    uses it to rebuild a compressed model before loading its weights. Methods that do not
    change the architecture need none.
    """

    def deco(fn: ApplyFn) -> ApplyFn:
        if name in _REGISTRY and _REGISTRY[name].apply is not fn:
            raise ConfigError(f"method {name!r} is registered twice")
        owner = next((s.name for s in _REGISTRY.values() if s.config_cls is config), name)
        if owner != name:  # lv.compress(model, config) finds the method by its config's class
            raise ConfigError(
                f"method {name!r} registers config {config.__name__}, which method {owner!r} "
                "already uses; give each method its own config class (a subclass will do)"
            )
        doc = summary or ((fn.__doc__ or "").strip().splitlines() or [""])[0]
        _REGISTRY[name] = MethodSpec(name, family, paper, config, fn, doc, rebuild)
        return fn

    return deco


def record_transform(
    new: nn.Module, source: nn.Module | None, method: str, arch: dict[str, Any] | None = None
) -> nn.Module:
    """Record on ``new`` that ``method`` made it from ``source`` (with architecture ``arch``).

    The record (a list of ``{"method", "arch"}`` in ``new.lv_history``) lets ``leanvision.save``
    store a compressed model as weights plus the recipe of its architecture, so loading never
    unpickles a module (ModelOpt's save/restore idea).
    """
    history = list(getattr(source, HISTORY_ATTR, [])) if source is not None else []
    step: dict[str, Any] = {"method": method, "arch": dict(arch or {})}
    if method in _REGISTRY:  # the schema version of the config that made this architecture
        step["config_version"] = getattr(_REGISTRY[method].config_cls, "version", 1)
    history.append(step)
    setattr(new, HISTORY_ATTR, history)
    spec = getattr(source, "lv_spec", None)
    if spec is not None and getattr(new, "lv_spec", None) is None:
        new.lv_spec = spec  # a wrapper (e.g. a token-pruned ViT) is rebuilt from its source's spec
    return new


def get_method(name: str) -> MethodSpec:
    """The registered method called ``name``; raises UnknownMethodError listing the known ones."""
    if name not in _REGISTRY:
        raise UnknownMethodError(name, _REGISTRY)
    return _REGISTRY[name]


def list_methods() -> list[str]:
    """Names of all registered methods."""
    return sorted(_REGISTRY)


def method_specs() -> list[MethodSpec]:
    """All registered methods, sorted by name."""
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def method_for_config(config: Any) -> MethodSpec:
    """The registered method whose config class ``config`` is an instance of (exactly).

    Raises:
        ConfigError: no registered method uses this config class.
    """
    for spec in _REGISTRY.values():
        if type(config) is spec.config_cls:
            return spec
    raise ConfigError(
        f"{type(config).__name__} is not the config of a registered method; pass a method "
        f"name ({', '.join(sorted(_REGISTRY))}) or its config, e.g. "
        "lv.compress(model, ScopConfig(...), data=...)"
    )


def compress(model: nn.Module, method: Any, data: Any = None, **hparams: Any) -> nn.Module:
    """Apply a registered method to ``model`` and return the resulting model.

    The input model is left unchanged; the result is a new ``nn.Module``.

    Args:
        model: any ``nn.Module`` the method supports.
        method: a registry key (see :func:`list_methods`) with its hyper-parameters as
            ``**hparams``, or a method's config instance (``ScopConfig(target_macs_ratio=0.5)``:
            torchao's ``quantize_(model, config)`` shape), checked again here.
        data: a :class:`~leanvision.data.DataBundle`, needed by methods that train or calibrate.
        **hparams: the method's config fields (``finetune_epochs``, ``max_steps``, ...).

    Raises:
        ConfigError: a bad or missing hyper-parameter, hyper-parameters given beside a config
            instance, or missing ``data``, found before the method reads data or trains.
    """
    if isinstance(method, str):
        spec = get_method(method)
        config = spec.make_config(**hparams)  # checked at the door: nothing read or trained yet
    else:
        spec = method_for_config(method)
        if hparams:
            raise ConfigError(
                f"method {spec.name!r}: got a {type(method).__name__} and hyper-parameters "
                f"{sorted(hparams)}; set them on the config (dataclasses.replace(config, ...)) "
                "or pass the method's name with the hyper-parameters"
            )
        config = method
        try:  # a config may have been changed since it was built
            config.validate()
        except ConfigError as e:
            raise type(e)(f"method {spec.name!r}: {e}") from e
    spec.check_inputs(config, data)
    return spec.apply(model, data, config)
