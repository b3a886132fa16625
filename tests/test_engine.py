"""The trainer: hooks, checkpoints, exact resume, DDP equivalence, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import leanvision as lv
from leanvision.engine import (
    FeatureRecorder,
    Hook,
    TrainConfig,
    load_checkpoint,
    save_checkpoint,
    training_note,
    training_record,
)
from leanvision.errors import CheckpointError, ConfigError, UnknownNameError

SCRIPT = Path(__file__).parent / "scripts" / "train_tiny.py"


def _run(args: list[str], env_extra: dict | None = None, check: bool = True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, check=check, timeout=240
    )


def test_train_learns_and_records_history(mnist_small, tmp_path):
    torch.manual_seed(0)  # the init must not depend on which tests ran before (it did)
    model = lv.create_model("resnet20_cifar", in_chans=1, width=0.25)
    res = lv.train(model, mnist_small, epochs=4, lr=0.05, out_dir=str(tmp_path), progress=False)
    assert [row["epoch"] for row in res.history] == [1.0, 2.0, 3.0, 4.0]
    assert res.history[-1]["train_loss"] < 0.95 * res.history[0]["train_loss"]
    assert res.history[-1]["train_top1"] > 20.0  # 10 classes: chance is 10%
    assert res.steps == 4 * 8  # 256 images / batch 32
    assert (tmp_path / "last.pt").exists()


def test_max_steps_caps_training(mnist_small):
    model = lv.create_model("resnet20_cifar", in_chans=1, width=0.25)
    res = lv.train(model, mnist_small, epochs=5, max_steps=3, progress=False, log=False)
    assert res.steps == 3 and len(res.history) == 1


def test_hooks_are_called_and_add_loss_terms(mnist_small):
    calls: list[str] = []

    class Probe(Hook):
        name = "probe"

        def on_train_start(self, trainer):
            calls.append("start")

        def on_epoch_start(self, trainer, epoch):
            calls.append(f"epoch{epoch}")

        def on_loss(self, trainer, ctx):
            ctx.losses["zero"] = 0.0 * ctx.logits.sum()
            calls.append("loss")

        def before_optimizer_step(self, trainer):
            # gradient rule: gradients exist here and are the ones the optimizer will use
            assert any(p.grad is not None for p in trainer.model.parameters())
            calls.append("grad")

        def on_epoch_end(self, trainer, epoch, metrics):
            assert "val_top1" in metrics
            calls.append("end")

    model = lv.create_model("resnet20_cifar", in_chans=1, width=0.25)
    lv.train(model, mnist_small, epochs=1, max_steps=2, hooks=[Probe()], progress=False, log=False)
    assert calls == ["start", "epoch0", "loss", "grad", "loss", "grad", "end"]


def test_gradient_rule_hook_changes_training(mnist_small):
    class ZeroGrad(Hook):
        def before_optimizer_step(self, trainer):
            for p in trainer.model.parameters():
                p.grad = None

    model = lv.create_model("resnet20_cifar", in_chans=1, width=0.25)
    before = {k: v.clone() for k, v in model.state_dict().items() if "weight" in k}
    lv.train(
        model,
        mnist_small,
        epochs=1,
        max_steps=2,
        hooks=[ZeroGrad()],
        progress=False,
        log=False,
        weight_decay=0.0,
    )
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if "bn" not in k)


def test_unknown_train_option_names_allowed():
    with pytest.raises(ConfigError, match="unknown training option.*'epoch'.*allowed:.*epochs"):
        TrainConfig.from_kwargs(epoch=3)


def test_bad_train_values():
    with pytest.raises(ConfigError, match="lr"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ConfigError, match="resume"):
        TrainConfig(resume=True)


def test_checkpoint_round_trip_and_atomic(tmp_path):
    path = save_checkpoint({"model": {"w": torch.ones(3)}, "epoch": 2}, tmp_path / "c.pt")
    state = load_checkpoint(path)
    assert state["epoch"] == 2 and torch.equal(state["model"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt.*corrupt"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_foreign_checkpoint_is_a_clear_error(tmp_path):
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}}, foreign)
    with pytest.raises(CheckpointError, match="not a leanvision checkpoint"):
        load_checkpoint(foreign)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "leanvision.checkpoint/1", "x": Evil()}, evil)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(evil)


def test_resume_with_checkpoint_of_other_model_is_clear(mnist_small, tmp_path):
    a = lv.create_model("resnet20_cifar", in_chans=1, width=0.25)
    lv.train(
        a, mnist_small, epochs=1, max_steps=1, out_dir=str(tmp_path), progress=False, log=False
    )
    b = lv.create_model("resnet20_cifar", in_chans=1, width=0.5)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        lv.train(b, mnist_small, epochs=2, out_dir=str(tmp_path), resume=True, progress=False)


def test_a_checkpoint_from_before_stretches_says_what_it_leaves_out(mnist_small, tmp_path):
    """Epochs trained before stretches were recorded are counted apart, with their history time."""
    model = lv.create_model("resnet20_cifar", in_chans=1, width=0.25)
    opts = dict(max_steps=None, out_dir=str(tmp_path), progress=False, log=False, lr=0.05)
    res = lv.train(model, mnist_small, epochs=1, **opts)
    assert [(r["after_epoch"], r["to_epoch"]) for r in res.stretches] == [(0, 1)]
    assert res.stretches[0]["device"] == "cpu"
    state = load_checkpoint(tmp_path / "last.pt")
    del state["stretches"]  # as an older leanvision wrote it
    state.pop("format")
    save_checkpoint(state, tmp_path / "last.pt")
    model = lv.create_model("resnet20_cifar", in_chans=1, width=0.25)
    res = lv.train(model, mnist_small, epochs=2, resume=True, **opts)
    assert [(r["after_epoch"], r["to_epoch"]) for r in res.stretches] == [(1, 2)]
    record = training_record(tmp_path / "last.pt")
    assert record["unrecorded_epochs"] == 1
    assert record["unrecorded_train_s"] == pytest.approx(res.history[0]["time_s"])
    assert record["wall_s"] == pytest.approx(res.stretches[0]["wall_s"])
    assert record["cpu_s"] == pytest.approx(res.stretches[0]["cpu_s"]) and record["cpu_s"] > 0
    assert "epoch 1 predates the stretch records" in training_note(record)
    assert "last stretch ran at commit abcdefabcd (dirty" in training_note(
        record, finished_at={"commit": "abcdefabcdef", "dirty": True}
    )
    state = load_checkpoint(tmp_path / "last.pt")
    state.pop("format")
    state["stretches"] = ["not a record"]
    save_checkpoint(state, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match="'stretches' must hold dicts"):
        training_record(tmp_path / "last.pt")


def test_feature_recorder_collects_by_name():
    model = lv.create_model("resnet20_cifar", width=0.25)
    with FeatureRecorder(model, ["layer1", "layer3.2.conv2"]) as rec:
        model(torch.randn(2, 3, 32, 32))
        assert rec.features["layer1"].shape == (2, 4, 32, 32)
        assert rec.features["layer3.2.conv2"].shape == (2, 16, 8, 8)
    with pytest.raises(UnknownNameError, match="layer9"):
        FeatureRecorder(model, ["layer9"])


def test_killed_run_resumes_to_the_same_result(tmp_path):
    """A run killed mid-epoch (os._exit after step 11 of 24) and resumed ends identical."""
    common = ["--model", "resnet", "--epochs", "3", "--augment", "--max-train", "256"]
    full = tmp_path / "full.pt"
    _run([str(SCRIPT), *common, "--out", str(tmp_path / "a"), "--result", str(full)])
    killed = _run(
        [
            str(SCRIPT),
            *common,
            "--out",
            str(tmp_path / "b"),
            "--exit-at-step",
            "11",
            "--result",
            str(tmp_path / "never.pt"),
        ],
        check=False,
    )
    assert killed.returncode == 17, killed.stderr
    assert load_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    resumed = tmp_path / "resumed.pt"
    _run([str(SCRIPT), *common, "--out", str(tmp_path / "b"), "--resume", "--result", str(resumed)])
    a = torch.load(full, weights_only=True)
    b = torch.load(resumed, weights_only=True)
    assert a["final"] == b["final"]
    one, two = (
        training_record(tmp_path / "a" / "last.pt"),
        training_record(tmp_path / "b" / "last.pt"),
    )
    assert [(r["after_epoch"], r["to_epoch"]) for r in one["stretches"]] == [(0, 3)]
    assert [(r["after_epoch"], r["to_epoch"]) for r in two["stretches"]] == [(0, 1), (1, 3)]
    assert two["epochs"] == 3 and two["unrecorded_epochs"] == 0
    assert two["wall_s"] == pytest.approx(sum(r["wall_s"] for r in two["stretches"]))
    assert all(r["wall_s"] > 0 for r in two["stretches"])
    assert len(two["commits"]) == 1  # both stretches ran this checkout
    note = training_note(two, threads=1)
    assert note.startswith("3 epochs, ") and "at 1 thread(s) in 2 stretches (resumed)" in note
    assert two["commits"][0][0][:10] in note and "predate" not in note
    for k, v in a["state"].items():
        torch.testing.assert_close(b["state"][k], v, rtol=0, atol=1e-6)


@pytest.mark.timeout(300)
def test_ddp_two_processes_match_one_process_with_double_batch(tmp_path):
    """torchrun, 2 CPU processes (gloo) × batch 16 = 1 process × batch 32.

    Tolerance: atol 1e-5 on every weight after 2 epochs (16 steps); the only difference is the
    order of float additions in the gradient all-reduce.
    """
    one = tmp_path / "one.pt"
    two = tmp_path / "two.pt"
    _run([str(SCRIPT), "--batch", "32", "--result", str(one)])
    _run(
        [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(SCRIPT),
            "--batch",
            "16",
            "--result",
            str(two),
        ]
    )
    a = torch.load(one, weights_only=True)["state"]
    b = torch.load(two, weights_only=True)["state"]
    assert a.keys() == b.keys()
    init = torch.load(one, weights_only=True)  # weights moved away from init: a real check
    assert any(v.abs().sum() > 0 for v in init["state"].values())
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5)


def test_frozen_model_trains_only_hook_parameters_with_opt_kwargs(mnist_small):
    """A hook's parameters train alone when the model is frozen; opt_kwargs reach the optimizer."""
    from leanvision.engine import Hook, TrainConfig, Trainer

    model = lv.create_model("resnet20_cifar", in_chans=1, width=0.25)
    for p in model.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in model.named_parameters()}

    class Scale(Hook):
        name = "scale"

        def __init__(self) -> None:
            self.s = torch.nn.Parameter(torch.ones(()))

        def on_loss(self, trainer, ctx) -> None:
            ctx.losses["task"] = torch.nn.functional.cross_entropy(ctx.logits * self.s, ctx.targets)

        def parameters(self):
            return [self.s]

    hook = Scale()
    cfg = TrainConfig(
        epochs=1,
        max_steps=3,
        opt="adam",
        lr=0.01,
        opt_kwargs={"betas": (0.5, 0.9)},
        progress=False,
        log=False,
    )
    trainer = Trainer(model, mnist_small, cfg, [hook])
    trainer.fit()
    assert trainer.optimizer.param_groups[0]["betas"] == (0.5, 0.9)
    assert hook.s.item() != 1.0
    after = dict(model.named_parameters())
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    with pytest.raises(ConfigError, match="nothing to train"):
        lv.train(model, mnist_small, epochs=1, max_steps=1, progress=False, log=False)


def test_lr_scales_give_modules_their_own_learning_rate(mnist_small):
    """lr_scales={"layer1": 0.01}: layer1's groups follow the schedule at 1/100 of the rest."""
    from leanvision.engine import TrainConfig, Trainer

    model = lv.create_model("resnet20_cifar", in_chans=1, width=0.25)
    cfg = TrainConfig(
        epochs=3, max_steps=3, lr=0.1, lr_scales={"layer1": 0.01}, progress=False, log=False
    )
    trainer = Trainer(model, mnist_small, cfg)
    trainer.fit()
    groups = trainer.optimizer.param_groups
    layer1 = {id(p) for p in model.layer1.parameters()}
    for g in groups:
        ids = {id(p) for p in g["params"]}
        assert ids <= layer1 or not ids & layer1  # no group mixes scaled and unscaled params
    lrs = {bool({id(p) for p in g["params"]} & layer1): g["lr"] for g in groups}
    assert lrs[True] == pytest.approx(0.01 * lrs[False]) and lrs[False] > 0
    with pytest.raises(ConfigError, match="lr_scales"):
        lv.train(model, mnist_small, epochs=1, max_steps=1, lr_scales={"nope": 0.1}, log=False)


def test_training_note_names_a_gpu_in_place_of_the_threads():
    """A run trained on a GPU is named by the GPU, not by CPU threads that did not set its pace."""
    record = {"epochs": 15, "wall_s": 300.0, "stretches": [{"device": "NVIDIA H100"}],
              "commits": [("a" * 40, None)], "devices": ["NVIDIA H100"],
              "unrecorded_epochs": 0, "unrecorded_train_s": 0.0}  # fmt: skip
    assert (
        training_note(record, threads=2) == "15 epochs, 5 min on NVIDIA H100, at commit aaaaaaaaaa"
    )
    record["devices"] = ["cpu", "NVIDIA H100"]
    assert "on NVIDIA H100 and the CPU," in training_note(record, threads=2)
    record["devices"] = ["cpu"]
    assert "at 2 thread(s)" in training_note(record, threads=2)
