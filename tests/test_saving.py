"""leanvision.save / leanvision.load: compressed models come back without pickled modules."""

from __future__ import annotations

import pytest
import torch

import leanvision as lv
from leanvision.engine import save_checkpoint
from leanvision.errors import CheckpointError, ConfigError


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, shape=(2, 3, 32, 32)) -> bool:
    x = torch.randn(*shape)
    return torch.allclose(a.eval()(x), b.eval()(x), atol=1e-6)


def test_plain_model_round_trip(tmp_path):
    m = lv.create_model("resnet20_cifar", width=0.5, num_classes=7)
    torch.nn.init.normal_(m.fc.weight)  # not the init: the weights must really be loaded
    back = lv.load(lv.save(m, tmp_path / "m.pt"))
    assert back.fc.out_features == 7 and _same_outputs(m, back)


def test_ghost_model_is_rebuilt_before_weights_load(tmp_path):
    g = lv.compress(lv.create_model("resnet20_cifar", width=0.5), "ghost", ratio=3, dw_size=5)
    back = lv.load(lv.save(g, tmp_path / "g.pt"))
    assert type(back.layer2[0].conv1).__name__ == "GhostConv2d"
    assert back.layer2[0].conv1.ratio == 3 and back.layer2[0].conv1.dw_size == 5
    assert back.lv_history[-1]["method"] == "ghost"
    assert _same_outputs(g, back)


def test_kd_student_spec_round_trip(tmp_path, mnist_small):
    teacher = lv.create_model("resnet20_cifar", in_chans=1, width=0.5)
    student = lv.compress(
        teacher,
        "kd",
        data=mnist_small,
        teacher=teacher,
        student={"name": "resnet20_cifar", "width": 0.25},
        finetune_epochs=1,
        max_steps=1,
        progress=False,
        log=False,
    )
    back = lv.load(lv.save(student, tmp_path / "s.pt"))
    assert back.layer1[0].conv1.out_channels == 4
    assert _same_outputs(student, back, (2, 1, 28, 28))


def test_save_needs_an_architecture_record(tmp_path):
    with pytest.raises(ConfigError, match="no architecture record"):
        lv.save(torch.nn.Linear(2, 2), tmp_path / "x.pt")


def test_load_rejects_training_checkpoints_and_mismatched_weights(tmp_path):
    ckpt = save_checkpoint({"model": {}}, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="not a saved model"):
        lv.load(ckpt)
    m = lv.create_model("resnet20_cifar")
    path = lv.save(m, tmp_path / "m.pt")
    state = torch.load(path, weights_only=True)
    state["arch"]["spec"]["kwargs"] = {"width": 0.5}  # architecture no longer fits the weights
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        lv.load(path)
