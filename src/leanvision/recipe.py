"""Recipes: data, model, baseline training and an ordered list of method stages, in YAML.

A recipe file::

    name: ghost_resnet20_mnist5k
    data: {name: mnist5k, batch_size: 64}
    model: {name: resnet20_cifar, kwargs: {in_chans: 1}}
    train: {epochs: 3, lr: 0.1}          # the baseline; epochs: 0 skips training
    stages:
      - {method: ghost, ratio: 2, dw_size: 3, finetune_epochs: 2, distill: true}
    measure: {batch: 32, threads: 2}

Unknown keys are errors that name the key and the allowed ones. ``--set a.b=value`` overrides
any field (``--set train.epochs=1``, ``--set stages.0.finetune_epochs=1``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from leanvision.data import load_data
from leanvision.deploy import BACKENDS
from leanvision.engine import TrainConfig
from leanvision.errors import RecipeError
from leanvision.pipeline import measure_models


def _default(fn: Any, name: str) -> Any:
    """The default of ``fn``'s argument ``name``: a recipe repeats no library default."""
    return inspect.signature(fn).parameters[name].default


_LOAD = functools.partial(_default, load_data)
_MEASURE = functools.partial(_default, measure_models)


@dataclass
class DataSpec:
    """Arguments of :func:`leanvision.load_data`."""

    name: str = "mnist5k"
    root: str | None = _LOAD("root")
    batch_size: int = _LOAD("batch_size")
    eval_batch_size: int | None = _LOAD("eval_batch_size")
    val_fraction: float = _LOAD("val_fraction")
    seed: int = _LOAD("seed")
    num_workers: int = _LOAD("num_workers")
    augment: bool = _LOAD("augment")
    image_size: int | None = _LOAD("image_size")
    max_train: int | None = _LOAD("max_train")
    max_val: int | None = _LOAD("max_val")
    max_test: int | None = _LOAD("max_test")
    # a dataset's own options, e.g. sr's {scale: 2, test_set: Set14}
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelSpec:
    """Arguments of :func:`leanvision.create_model`."""

    name: str = "resnet20_cifar"
    kwargs: dict[str, Any] = field(default_factory=dict)
    # trained weights to start from: a trainer checkpoint (last.pt) or a file of
    # leanvision.save; with train.epochs 0 the run starts from a trained baseline
    weights: str | None = None

    def __post_init__(self) -> None:
        if self.weights is not None and not Path(self.weights).is_file():
            raise RecipeError(f"model.weights: no file at {self.weights!r}")


@dataclass
class StageSpec:
    """One method stage: the registry key and its hyper-parameters."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class MeasureSpec:
    """How the models are measured at the end of the run."""

    batch: int = _MEASURE("batch")
    threads: int | None = _MEASURE("threads")
    repeats: int = _MEASURE("repeats")
    split: str = _MEASURE("split")
    backend: str = _MEASURE("backend")

    def __post_init__(self) -> None:
        allowed = ("torch", "auto", *BACKENDS)
        if self.backend not in allowed:
            raise RecipeError(
                f"measure.backend {self.backend!r} is not one of {', '.join(allowed)} "
                "(torch: eager PyTorch; auto: each model on its fastest runtime)"
            )


@dataclass
class Recipe:
    """A whole run: data → model → (baseline training) → stages → measure → report."""

    name: str = "run"
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: dict[str, Any] = field(default_factory=dict)
    stages: list[StageSpec] = field(default_factory=list)
    measure: MeasureSpec = field(default_factory=MeasureSpec)
    out_dir: str | None = None
    seed: int = 0
    source: str | None = None


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _build(cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise RecipeError(f"{where} must be a mapping, got {type(raw).__name__}: {raw!r}")
    allowed = _fields(cls)
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise RecipeError(
            f"unknown recipe key {where + '.' if where != 'recipe' else ''}{unknown[0]}"
            f" in {where}; allowed: {', '.join(allowed)}"
        )
    try:
        return cls(**raw)
    except TypeError as e:
        raise RecipeError(f"{where}: {e}") from e


def _train_keys() -> list[str]:
    return _fields(TrainConfig)


def recipe_from_dict(raw: dict[str, Any], source: str | None = None) -> Recipe:
    """Validate a recipe mapping and build a :class:`Recipe`."""
    if not isinstance(raw, dict):
        raise RecipeError(f"a recipe must be a mapping at the top level, got {type(raw).__name__}")
    top_allowed = [f for f in _fields(Recipe) if f != "source"]
    unknown = sorted(set(raw) - set(top_allowed))
    if unknown:
        raise RecipeError(f"unknown recipe key {unknown[0]!r}; allowed: {', '.join(top_allowed)}")
    train = raw.get("train") or {}
    if not isinstance(train, dict):
        raise RecipeError(f"train must be a mapping, got {train!r}")
    bad = sorted(set(train) - set(_train_keys()))
    if bad:
        raise RecipeError(f"unknown recipe key train.{bad[0]}; allowed: {', '.join(_train_keys())}")
    stages = []
    for i, st in enumerate(raw.get("stages") or []):
        if not isinstance(st, dict) or "method" not in st:
            raise RecipeError(f"stages[{i}] must be a mapping with a 'method' key, got {st!r}")
        params = {k: v for k, v in st.items() if k != "method"}
        stages.append(StageSpec(method=str(st["method"]), params=params))
    return Recipe(
        name=str(raw.get("name", "run")),
        data=_build(DataSpec, raw.get("data"), "data"),
        model=_build(ModelSpec, raw.get("model"), "model"),
        train=dict(train),
        stages=stages,
        measure=_build(MeasureSpec, raw.get("measure"), "measure"),
        out_dir=raw.get("out_dir"),
        seed=int(raw.get("seed", 0)),
        source=source,
    )


def _apply_override(raw: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise RecipeError(f"--set expects key=value (e.g. train.epochs=1), got {item!r}")
    key, value = item.split("=", 1)
    parsed = yaml.safe_load(value) if value else None
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            try:
                node = node[int(part)]
            except (ValueError, IndexError) as e:
                raise RecipeError(f"--set {key}: no list item {part!r}") from e
            continue
        node = node.setdefault(part, {})
        if not isinstance(node, dict | list):
            raise RecipeError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a mapping")
    last = parts[-1]
    if isinstance(node, list):
        try:
            node[int(last)] = parsed
        except (ValueError, IndexError) as e:
            raise RecipeError(f"--set {key}: no list item {last!r}") from e
    else:
        node[last] = parsed


def _read_yaml(path: Path, what: str) -> Any:
    """The YAML document of ``path`` (``{}`` when empty); a RecipeError naming ``what`` when
    the file is missing or not YAML."""
    if not path.is_file():
        raise RecipeError(f"{what} file {str(path)!r} does not exist")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{what} {str(path)!r} is not valid YAML: {e}") from e


def load_recipe(path: str | os.PathLike, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply ``key=value`` overrides, validate it.

    Raises:
        RecipeError: unreadable YAML, unknown keys (named, with the allowed ones), bad values.
    """
    raw = _read_yaml(Path(path), "recipe")
    for item in overrides or []:
        _apply_override(raw, item)
    return recipe_from_dict(raw, source=str(path))


SEARCH_RECIPE_KEYS = ("space", "method", "data", "n_trials", "budget", "storage", "study", "out",
                      "hparams")  # fmt: skip


def load_search_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """Read a search recipe (``leanvision search --recipe``): a mapping with the keys of
    :data:`SEARCH_RECIPE_KEYS` (``data`` and ``hparams`` mappings); ``hparams`` go to the
    search method, the rest to :func:`leanvision.search`.

    Raises:
        RecipeError: unreadable YAML, not a mapping, unknown keys (named, with the allowed).
    """
    path = Path(path)
    raw = _read_yaml(path, "search recipe")
    if not isinstance(raw, dict):
        raise RecipeError(f"search recipe {str(path)!r}: a mapping at the top, please")
    unknown = sorted(set(raw) - set(SEARCH_RECIPE_KEYS))
    if unknown:
        raise RecipeError(
            f"search recipe {str(path)!r}: unknown key(s) {unknown}; allowed: "
            f"{', '.join(SEARCH_RECIPE_KEYS)}"
        )
    for key in ("data", "hparams"):
        if not isinstance(raw.get(key, {}), dict):
            raise RecipeError(f"search recipe {str(path)!r}: {key} must be a mapping")
    if isinstance(raw.get("budget"), str):  # YAML 1.1 reads 30e6 (no exponent sign) as text
        try:
            raw["budget"] = float(raw["budget"])
        except ValueError:
            raise RecipeError(f"budget={raw['budget']!r} is not a number of MACs") from None
    return raw
