"""Recipes: YAML loading, clear errors on unknown keys, --set overrides, an end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import leanvision as lv
from leanvision.errors import RecipeError
from leanvision.methods import get_method
from leanvision.recipe import Recipe, load_recipe
from leanvision.runner import TEACHER_REFS, run_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.y*ml"))

BASE = {
    "name": "tiny",
    "data": {"name": "mnist5k", "batch_size": 32},
    "model": {"name": "resnet20_cifar", "kwargs": {"width": 0.25}},
    "train": {"epochs": 3, "lr": 0.1},
    "stages": [{"method": "ghost", "ratio": 2, "finetune_epochs": 1, "distill": True}],
    "measure": {"batch": 4, "threads": 1},
}


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    """One torch thread: on a loaded 2-core machine two spinning OpenMP threads are far slower."""
    torch.set_num_threads(1)


def _write(tmp_path: Path, raw: dict | str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


def test_load_recipe_builds_dataclasses(tmp_path):
    """A YAML recipe becomes a Recipe with typed specs; stage params keep their keys."""
    path = _write(tmp_path, BASE)
    r = load_recipe(path)
    assert isinstance(r, Recipe)
    assert r.name == "tiny" and r.source == str(path)
    assert r.data.name == "mnist5k" and r.data.batch_size == 32 and r.data.max_train is None
    assert r.model.name == "resnet20_cifar" and r.model.kwargs == {"width": 0.25}
    assert r.train == {"epochs": 3, "lr": 0.1}
    assert len(r.stages) == 1 and r.stages[0].method == "ghost"
    assert r.stages[0].params == {"ratio": 2, "finetune_epochs": 1, "distill": True}
    assert r.measure.batch == 4 and r.measure.threads == 1 and r.measure.repeats == 30
    assert lv.load_recipe(path) == r  # the public alias


@pytest.mark.parametrize(
    "patch, key, allowed",
    [
        ({"modle": {"name": "x"}}, "modle", "stages"),
        ({"data": {"name": "mnist5k", "batchsize": 8}}, "batchsize", "batch_size"),
        ({"train": {"epoch": 1}}, "epoch", "epochs"),
        ({"measure": {"repeat": 3}}, "repeat", "repeats"),
        ({"model": {"name": "resnet20_cifar", "width": 0.5}}, "width", "kwargs"),
    ],
    ids=["top", "data", "train", "measure", "model"],
)
def test_unknown_keys_name_key_and_allowed(tmp_path, patch, key, allowed):
    """Unknown keys anywhere raise RecipeError naming the key and listing the allowed keys."""
    raw = {**BASE, **patch}
    with pytest.raises(RecipeError) as info:
        load_recipe(_write(tmp_path, raw))
    msg = str(info.value)
    assert key in msg
    assert "allowed" in msg and allowed in msg
    assert isinstance(info.value, ValueError)


def test_stage_without_method(tmp_path):
    """A stage without a 'method' key is a RecipeError."""
    raw = {**BASE, "stages": [{"ratio": 2}]}
    with pytest.raises(RecipeError, match="method"):
        load_recipe(_write(tmp_path, raw))


def test_missing_file_and_bad_yaml_name_the_path(tmp_path):
    """A missing file or invalid YAML is a RecipeError naming the path."""
    missing = tmp_path / "nope.yaml"
    with pytest.raises(RecipeError, match="nope.yaml"):
        load_recipe(missing)
    bad = _write(tmp_path, "name: x\ndata: {name: mnist5k\n  - [oops\n", "broken.yaml")
    with pytest.raises(RecipeError) as info:
        load_recipe(bad)
    assert "broken.yaml" in str(info.value) and "YAML" in str(info.value)
    not_a_mapping = _write(tmp_path, "- a\n- b\n", "list.yaml")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(not_a_mapping)


def test_set_overrides_are_typed(tmp_path):
    """--set overrides reach train, stages.N and data, with YAML-parsed types."""
    path = _write(tmp_path, BASE)
    r = load_recipe(
        path,
        [
            "train.epochs=1",
            "stages.0.finetune_epochs=2",
            "data.batch_size=16",
            "train.lr=0.05",
            "stages.0.distill=false",
            "name=renamed",
            "data.max_train=100",
        ],
    )
    assert r.train["epochs"] == 1 and type(r.train["epochs"]) is int
    assert r.train["lr"] == 0.05 and isinstance(r.train["lr"], float)
    assert r.stages[0].params["finetune_epochs"] == 2
    assert type(r.stages[0].params["finetune_epochs"]) is int
    assert r.stages[0].params["distill"] is False
    assert r.data.batch_size == 16 and type(r.data.batch_size) is int
    assert r.data.max_train == 100
    assert r.name == "renamed"
    # The file itself is untouched.
    assert load_recipe(path).train["epochs"] == 3


@pytest.mark.parametrize(
    "override, words",
    [("train.epochs", "key=value"), ("stages.5.ratio=2", "5"), ("train.epoch=1", "epoch")],
)
def test_bad_overrides(tmp_path, override, words):
    """A malformed --set, a missing list item or an unknown key via --set is a RecipeError."""
    with pytest.raises(RecipeError, match=words):
        load_recipe(_write(tmp_path, BASE), [override])


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipes_load_and_validate(path):
    """Every recipe in recipes/ loads, and each stage's params make a valid method config."""
    r = load_recipe(path)
    assert r.name and r.model.name in lv.list_models(include_timm=True)
    assert r.data.name in lv.list_datasets()
    for st in r.stages:
        spec = get_method(st.method)  # known method
        params = {
            k: (nn.Identity() if k == "teacher" and v in TEACHER_REFS else v)
            for k, v in st.params.items()
        }
        spec.make_config(**params)  # no unknown hyper-parameters


def test_run_recipe_end_to_end(tmp_path):
    """A tiny recipe writes results.json (baseline + ghost with fewer MACs) and report.html."""
    raw = {
        "name": "tiny_e2e",
        "data": {
            "name": "mnist5k",
            "batch_size": 32,
            "max_train": 128,
            "max_val": 32,
            "max_test": 32,
        },
        "model": {"name": "resnet20_cifar", "kwargs": {"width": 0.25}},
        "train": {"epochs": 1, "max_steps": 2, "log": False},
        "stages": [
            {"method": "ghost", "finetune_epochs": 1, "max_steps": 2, "distill": True, "log": False}
        ],
        "measure": {"batch": 4, "repeats": 3, "threads": 1},
    }
    recipe = load_recipe(_write(tmp_path, raw))
    run_dir = run_recipe(recipe, tmp_path / "run", progress=False)
    assert run_dir == tmp_path / "run"
    doc = json.loads((run_dir / "results.json").read_text())
    models = doc["models"]
    assert [m["name"] for m in models] == ["resnet20_cifar", "resnet20_cifar+ghost"]
    base, ghost = models
    assert base["method_chain"] == [] and ghost["method_chain"] == ["ghost"]
    assert ghost["macs"] < 0.6 * base["macs"]
    assert ghost["params"] < base["params"]
    assert ghost["baseline"] == "resnet20_cifar"
    assert ghost["dataset"] == "mnist5k" and ghost["split"] == "test"
    for m in models:
        assert 0.0 <= m["top1"] <= 100.0
        assert m["latency_ms"]["batch"] == 4 and m["latency_ms"]["threads"] == 1
        assert m["latency_ms"]["median"] > 0
    assert doc["run"]["name"] == "tiny_e2e"
    assert (run_dir / "report.html").stat().st_size > 0
    assert (run_dir / "baseline" / "last.pt").exists()
    assert (run_dir / "stage0_ghost" / "last.pt").exists()
