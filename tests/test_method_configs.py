"""Method configs are checked at the door: bad values fail in milliseconds, before data is read.

``lv.compress`` and recipe stages build the config through the registry
(``MethodSpec.make_config`` → ``MethodConfig.validate``) and check what the call needs
(``MethodSpec.check_inputs``) before the method reads data or trains.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn

import leanvision as lv
import leanvision.runner as runner
from leanvision.errors import ConfigError
from leanvision.methods import get_method, method_specs
from leanvision.methods.common import FinetuneConfig
from leanvision.recipe import recipe_from_dict

SPECS = method_specs()
TRAINING = [s for s in SPECS if issubclass(s.config_cls, FinetuneConfig)]

# One bad value per registered method, in one of the method's own fields.
BAD = {
    "adder": ("eta", 0.0),
    "adder_quant": ("bits", 1),
    "winograd_adder": ("p_reach", 0.0),
    "bnn_ste": ("exclude", "conv1"),
    "deit_kd": ("kind", "medium"),
    "defeat": ("feat_bg_weight", -1.0),
    "dynamicvit": ("keep_ratio", 1.5),
    "fda": ("terms_end", 3),
    "feature_kd": ("beta", -1.0),
    "ghost": ("dw_size", 2),
    "ipt": ("temperature", 0.0),
    "drnet": ("flops_target", 0.0),
    "fadn": ("density", 0.0),
    "ghostsr": ("noise_decay", 1.5),
    "int8": ("calib_split", "test"),
    "kd": ("alpha", 1.5),
    "l1_filter": ("pruning_ratio", 1.0),
    "lns": ("rho", 0.5),
    "manidp": ("target_remain_rate", 0.0),
    "manifold_kd": ("num_samples", 1),
    "patch_slimming": ("tolerance", 1.0),
    "pkkd": ("T", 0.0),
    "ptq_vit": ("calib_split", "test"),
    "scop": ("target_macs_ratio", 1.5),
    "sfda_de": ("shrinkage", 1.5),
    "shot_im": ("diversity_weight", -1.0),
    "fedpu": ("pu_weight", -1.0),
    "fedavg": ("labels", "unlabelled"),
    "esvit": ("teacher_temp", 0.0),
}

# Bad values of the fine-tuning options every training method shares.
COMMON_BAD = [
    ("finetune_epochs", -1),
    ("finetune_epochs", 1.5),
    ("lr", 0.0),
    ("lr", float("nan")),
    ("opt", "sgdd"),
    ("weight_decay", -1e-4),
    ("batch_size", 0),
    ("max_steps", 0),
    ("max_steps", True),
    ("seed", -1),
]


class UntouchableData:
    """A stand-in data bundle: any use of it (attribute, iteration, len) fails the test."""

    def __getattr__(self, name: str):
        raise AssertionError(f"data.{name} was touched before the config was checked")

    def __iter__(self):
        raise AssertionError("data was iterated before the config was checked")

    def __len__(self) -> int:
        raise AssertionError("len(data) was taken before the config was checked")


class UntouchableModel(nn.Module):
    """A model whose forward, copy or parameters fail the test if reached."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the model ran before the config was checked")

    def __deepcopy__(self, memo: dict) -> UntouchableModel:
        raise AssertionError("the model was copied before the config was checked")

    def named_modules(self, *args, **kwargs):
        raise AssertionError("the model was traversed before the config was checked")


def _refused(method: str, data, **hparams) -> ConfigError:
    """Run ``lv.compress`` and return its ConfigError; fails unless it came in under a second."""
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        lv.compress(UntouchableModel(), method, data=data, **hparams)
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, f"{method}: the ConfigError took {elapsed:.2f} s"
    return info.value


def test_every_method_has_a_bad_value_case():
    assert set(BAD) == set(lv.list_methods())


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_bad_value_fails_at_the_door_naming_method_field_and_value(spec):
    field, value = BAD[spec.name]
    msg = str(_refused(spec.name, UntouchableData(), **{field: value}))
    assert f"method {spec.name!r}" in msg
    assert f"{field}={value!r}" in msg
    assert "allowed" in msg


@pytest.mark.parametrize("field,value", COMMON_BAD, ids=[f"{f}={v!r}" for f, v in COMMON_BAD])
@pytest.mark.parametrize("spec", TRAINING, ids=[s.name for s in TRAINING])
def test_bad_finetune_option_fails_at_the_door(spec, field, value):
    msg = str(_refused(spec.name, UntouchableData(), **{field: value}))
    assert f"method {spec.name!r}" in msg and f"{field}=" in msg


@pytest.mark.parametrize("spec", TRAINING, ids=[s.name for s in TRAINING])
def test_training_without_data_fails_at_the_door(spec):
    hp = {"teacher": nn.Linear(2, 2)} if "teacher" in spec.config_cls.__dataclass_fields__ else {}
    if spec.name == "patch_slimming":
        hp["target_macs_ratio"] = 0.5
    msg = str(_refused(spec.name, None, finetune_epochs=2, **hp))
    assert f"method {spec.name!r}" in msg and "data" in msg


@pytest.mark.parametrize(
    "method,hparams",
    [
        ("scop", {"finetune_epochs": 0}),  # its control factors train on data
        ("patch_slimming", {"tolerance": 0.1, "finetune_epochs": 0}),  # calibration
        ("ptq_vit", {}),
        ("adder_quant", {}),
        ("int8", {}),
    ],
)
def test_methods_that_always_read_data_refuse_data_none(method, hparams):
    assert "data" in str(_refused(method, None, **hparams))


@pytest.mark.parametrize(
    "method,hparams,words",
    [
        ("kd", {"finetune_epochs": 0}, "teacher"),
        ("manifold_kd", {"finetune_epochs": 0}, "teacher"),
        ("scop", {"pruning_ratio": 0.3, "target_macs_ratio": 0.5}, "one pruning target"),
        ("patch_slimming", {"finetune_epochs": 0}, "exactly one of tolerance"),
        ("manifold_kd", {"teacher_layers": [0, 1]}, "student_layers"),
        ("manifold_kd", {"student_layers": [0], "teacher_layers": [0, 1]}, "same length"),
        ("fda", {"terms_start": 9, "terms_end": 4}, "terms_end=4"),
        ("ptq_vit", {"bit_budget": 3.0}, "bit_budget=3.0"),
        ("scop", {"knockoff": "gan"}, "knockoff='gan'"),
        ("scop", {"control_max_steps": 0}, "control_max_steps=0"),
        ("scop", {"resume": True}, "out_dir"),
        ("dynamicvit", {"prune_locs": [6, 3]}, "prune_locs=[6, 3]"),
        ("l1_filter", {"input_size": [32, 32]}, "input_size"),
    ],
)
def test_combinations_and_choices_fail_at_the_door(method, hparams, words):
    assert words in str(_refused(method, UntouchableData(), **hparams))


def test_wrong_types_name_the_field_and_hint_at_yaml():
    msg = str(_refused("ghost", UntouchableData(), lr="1e-3"))
    assert "lr='1e-3'" in msg and "1.0e-3" in msg  # YAML 1.1 reads 1e-3 as a string
    assert "exclude=" in str(_refused("ghost", UntouchableData(), exclude=[1]))
    assert "layer_ratios=" in str(_refused("l1_filter", None, layer_ratios=[0.5]))


def test_valid_values_pass_and_lenient_types_are_accepted():
    cfg = get_method("scop").make_config(lr=1, input_size=(3, 32, 32), max_steps=5)
    assert cfg.lr == 1 and cfg.max_steps == 5
    cfg = get_method("ptq_vit").make_config(bit_choices=[4, 8], bit_budget=6)
    assert list(cfg.bit_choices) == [4, 8]
    cfg = get_method("fda").make_config(opt="lookahead_adam")
    assert cfg.opt == "lookahead_adam"


def test_configs_built_directly_are_validated_too():
    from leanvision.methods.pruning.scop import ScopConfig

    with pytest.raises(ConfigError, match="control_lr"):
        ScopConfig(control_lr=-1.0)


# ------------------------------------------------------------------------------ recipes


def _recipe(stages: list[dict]) -> dict:
    return {
        "name": "door",
        "data": {
            "name": "mnist5k",
            "batch_size": 16,
            "max_train": 32,
            "max_val": 16,
            "max_test": 16,
        },  # fmt: skip
        "model": {"name": "resnet20_cifar", "kwargs": {"in_chans": 1, "width": 0.25}},
        "train": {"epochs": 1, "max_steps": 1},
        "stages": stages,
    }


def _no_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("trained before every stage's config was checked")

    monkeypatch.setattr(runner, "train", refuse)
    monkeypatch.setattr(runner, "compress", refuse)


def test_recipe_bad_value_in_a_late_stage_fails_before_data_and_training(
    monkeypatch, tmp_path: Path
):
    _no_training(monkeypatch)

    def no_data(**kwargs):
        raise AssertionError("data loaded before every stage's config was checked")

    monkeypatch.setattr(runner, "load_data", no_data)
    recipe = recipe_from_dict(
        _recipe(
            [
                {"method": "ghost", "finetune_epochs": 1},
                {"method": "kd", "teacher": "baseline", "finetune_epochs": 1},
                {"method": "l1_filter", "pruning_ratio": 1.5, "finetune_epochs": 1},
            ]
        )
    )
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"method 'l1_filter': pruning_ratio=1\.5"):
        runner.run_recipe(recipe, tmp_path / "run", progress=False)
    assert time.perf_counter() - t0 < 1.0
    assert not (tmp_path / "run").exists()


def test_recipe_stage_missing_a_teacher_fails_before_the_baseline_trains(
    monkeypatch, tmp_path: Path
):
    _no_training(monkeypatch)
    recipe = recipe_from_dict(
        _recipe([{"method": "ghost", "finetune_epochs": 1}, {"method": "kd", "max_steps": 1}])
    )
    with pytest.raises(ConfigError, match="method 'kd': teacher=None"):
        runner.run_recipe(recipe, tmp_path / "run", progress=False)


def test_recipe_bad_baseline_training_value_fails_before_data(monkeypatch, tmp_path: Path):
    _no_training(monkeypatch)
    monkeypatch.setattr(runner, "load_data", lambda **kw: pytest.fail("data loaded"))
    raw = _recipe([{"method": "ghost", "finetune_epochs": 1}])
    raw["train"]["lr"] = -0.1
    with pytest.raises(ConfigError, match="lr"):
        runner.run_recipe(recipe_from_dict(raw), tmp_path / "run", progress=False)
