"""One table of defaults, checked at the door (issue 18 item 6).

The fine-tuning options of every training method are the trainer's options with the trainer's
defaults (only ``lr`` differs, on purpose); ``finetune`` hands all of them to the trainer;
``lv.compress`` takes a config instance; a compressed model's record carries its config's
version; a recipe repeats no library default.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import torch

import leanvision as lv
import leanvision.methods.common as common
from leanvision.data import load_data
from leanvision.engine import TrainConfig
from leanvision.errors import CheckpointError, ConfigError
from leanvision.methods import L1FilterConfig, ScopConfig, get_method, method_specs
from leanvision.methods.common import NOT_FINETUNE_OPTIONS, FinetuneConfig, finetune
from leanvision.methods.saving import rebuild
from leanvision.pipeline import measure_models
from leanvision.recipe import DataSpec, MeasureSpec, recipe_from_dict

TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
FT_FIELDS = {f.name: f for f in dataclasses.fields(FinetuneConfig)}
OWN_DEFAULTS = {"lr"}  # fine-tuning's own defaults (documented in methods/common.py)


def _default(f: dataclasses.Field) -> object:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def test_every_trainer_option_is_a_finetune_option_with_the_trainer_default():
    expected = set(TRAIN_FIELDS) - NOT_FINETUNE_OPTIONS
    assert expected <= set(FT_FIELDS), sorted(expected - set(FT_FIELDS))
    assert set(FT_FIELDS) == expected | {"finetune_epochs"}
    for name in expected - OWN_DEFAULTS:
        assert _default(FT_FIELDS[name]) == _default(TRAIN_FIELDS[name]), name
        assert FT_FIELDS[name].type == TRAIN_FIELDS[name].type, name
    assert FinetuneConfig().lr != TrainConfig().lr  # the one documented difference


def _non_default_options() -> dict[str, object]:
    """A value different from the default for every fine-tuning option."""
    return {
        "lr": 0.02,
        "opt": "adamw",
        "momentum": 0.8,
        "opt_kwargs": {"betas": (0.8, 0.99)},
        "weight_decay": 0.01,
        "sched": "step",
        "warmup_epochs": 1,
        "min_lr": 1e-5,
        "batch_size": 7,
        "label_smoothing": 0.1,
        "clip_grad": 1.5,
        "seed": 3,
        "max_steps": 2,
        "channels_last": False,
        "amp": False,
        "device": "cpu",
        "out_dir": "somewhere",
        "resume": True,
        "progress": False,
        "log": False,
        "num_threads": 1,
    }


def test_finetune_hands_every_option_to_the_trainer(monkeypatch):
    options = _non_default_options()
    assert set(options) == set(FT_FIELDS) - {"finetune_epochs"}
    cfg = FinetuneConfig(finetune_epochs=2, **options)
    seen: dict[str, object] = {}

    def fake_train(model, data, hooks=None, **kwargs):
        seen.update(kwargs)

    monkeypatch.setattr(common, "train", fake_train)
    finetune(torch.nn.Linear(2, 2), object(), cfg, lr_scales={"x": 2.0})
    assert seen.pop("epochs") == 2
    assert seen.pop("lr_scales") == {"x": 2.0}
    assert seen.pop("eval_every") == TrainConfig().eval_every
    assert seen == options


def test_a_method_may_not_override_a_users_finetune_option():
    with pytest.raises(ConfigError, match="may not override.*'sched'"):
        FinetuneConfig(finetune_epochs=1).train_config(sched="none")


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("finetune_epochs", -3, "finetune_epochs=-3.*>= 0"),
        ("sched", "plateau", "sched='plateau'.*one of"),
        ("clip_grad", 0.0, "clip_grad=0.0.*> 0"),
        ("label_smoothing", 1.0, r"label_smoothing=1.0.*\[0, 1\)"),
        ("num_threads", 0, "num_threads=0"),
        ("momentum", -0.1, "momentum=-0.1"),
        ("opt", "sgdd", "opt='sgdd'.*timm optimizer"),
    ],
)
def test_finetune_options_fail_at_the_door_by_the_trainers_rules(field, value, words):
    with pytest.raises(ConfigError, match=f"method 'l1_filter': {words}"):
        lv.compress(torch.nn.Linear(2, 2), "l1_filter", **{field: value})
    if field != "finetune_epochs":  # the trainer applies the same rule
        with pytest.raises(ConfigError, match=words):
            TrainConfig(**{field: value})


def test_every_training_method_config_accepts_the_new_options():
    for spec in method_specs():
        if issubclass(spec.config_cls, FinetuneConfig):
            cfg = spec.config_cls(sched="none", clip_grad=1.0, label_smoothing=0.1)
            assert cfg.train_config().clip_grad == 1.0


def test_train_config_checks_types():
    with pytest.raises(ConfigError, match="epochs='3'"):
        TrainConfig(epochs="3")
    with pytest.raises(ConfigError, match=r"lr_scales\['head'\]=-1"):
        TrainConfig(lr_scales={"head": -1.0})


def _data():
    return load_data("mnist5k", batch_size=16, max_train=64, max_val=32, max_test=32)


def test_compress_takes_a_config_instance_and_gives_the_same_model():
    torch.manual_seed(0)
    model = lv.create_model("resnet20_cifar")
    by_name = lv.compress(model, "l1_filter", pruning_ratio=0.3)
    by_cfg = lv.compress(model, L1FilterConfig(pruning_ratio=0.3))
    a, b = by_name.state_dict(), by_cfg.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert by_cfg.lv_history == by_name.lv_history


def test_compress_with_a_config_instance_checks_it_at_the_door():
    model = lv.create_model("resnet20_cifar")
    cfg = L1FilterConfig(pruning_ratio=0.3)
    with pytest.raises(ConfigError, match="hyper-parameters \\['max_steps'\\]"):
        lv.compress(model, cfg, max_steps=1)
    cfg.lr = -1.0  # changed after it was built
    with pytest.raises(ConfigError, match="method 'l1_filter': lr=-1.0"):
        lv.compress(model, cfg)
    with pytest.raises(ConfigError, match="method 'scop':.*data"):
        lv.compress(model, ScopConfig())  # the inputs are checked too
    with pytest.raises(ConfigError, match="FinetuneConfig is not the config of a registered"):
        lv.compress(model, FinetuneConfig())


def test_a_config_class_belongs_to_one_method():
    from leanvision.methods.registry import register_method

    with pytest.raises(ConfigError, match="already uses"):
        register_method("l1_filter_again", family="pruning", paper="-", config=L1FilterConfig)(
            lambda model, data, cfg: model
        )


def test_saved_record_carries_the_config_version(tmp_path: Path, monkeypatch):
    model = lv.create_model("resnet20_cifar")
    small = lv.compress(model, "l1_filter", pruning_ratio=0.3)
    assert small.lv_history[-1]["config_version"] == L1FilterConfig.version == 1
    lv.save(small, tmp_path / "m.pt")
    assert sum(p.numel() for p in lv.load(tmp_path / "m.pt").parameters()) == sum(
        p.numel() for p in small.parameters()
    )
    monkeypatch.setattr(get_method("l1_filter").config_cls, "version", 2)
    with pytest.raises(CheckpointError, match="config version 1.*'l1_filter' is version 2"):
        lv.load(tmp_path / "m.pt")
    arch = {"spec": small.lv_spec, "history": [{**small.lv_history[-1], "config_version": "1"}]}
    with pytest.raises(CheckpointError, match="config_version' must be an int"):
        rebuild(arch)


def test_a_recipe_repeats_no_library_default():
    load = inspect.signature(load_data).parameters
    for f in dataclasses.fields(DataSpec):
        if f.name in load and load[f.name].default is not inspect.Parameter.empty:
            assert f.default == load[f.name].default, f.name
    measure = inspect.signature(measure_models).parameters
    for f in dataclasses.fields(MeasureSpec):
        assert f.default == measure[f.name].default, f.name


def test_recipe_stage_with_negative_finetune_epochs_fails_at_the_door(tmp_path: Path):
    from leanvision.runner import run_recipe

    recipe = recipe_from_dict(
        {
            "data": {"name": "mnist5k", "max_train": 64},
            "train": {"epochs": 0},
            "stages": [{"method": "ghost", "finetune_epochs": -3}],
        }
    )
    with pytest.raises(ConfigError, match="method 'ghost': finetune_epochs=-3"):
        run_recipe(recipe, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # nothing made before the check


def test_the_cli_repeats_no_library_default():
    from leanvision.cli import _recipe_or_args, build_parser

    args = build_parser().parse_args(["train", "--model", "resnet20_cifar"])
    recipe = _recipe_or_args(args, None)
    assert recipe.train == {}  # the trainer's own epochs and lr apply
    assert recipe.data.batch_size == inspect.signature(load_data).parameters["batch_size"].default
    args = build_parser().parse_args(
        ["train", "--model", "resnet20_cifar", "--epochs", "2", "--lr", "0.01", "--batch-size", "8"]
    )
    recipe = _recipe_or_args(args, None)
    assert recipe.train == {"epochs": 2, "lr": 0.01} and recipe.data.batch_size == 8
