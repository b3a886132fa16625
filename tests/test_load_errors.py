"""Every malformed, foreign, corrupt or truncated file given to ``lv.load`` or to a resume is a
CheckpointError naming the file and what is wrong with it (never a bare KeyError/TypeError)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import leanvision as lv
from leanvision.engine import save_checkpoint
from leanvision.errors import CheckpointError


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = lv.create_model("resnet20_cifar", width=0.25, num_classes=10)
    return lv.save(model, tmp_path_factory.mktemp("saved") / "model.pt")


def _setter(*keys: str, value: Any) -> Callable[[dict], None]:
    def edit(state: dict) -> None:
        target = state
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value

    return edit


def _dropper(*keys: str) -> Callable[[dict], None]:
    def edit(state: dict) -> None:
        target = state
        for k in keys[:-1]:
            target = target[k]
        del target[keys[-1]]

    return edit


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        # missing keys
        (_dropper("arch", "spec"), "'arch.spec'"),
        (_dropper("arch", "spec", "name"), "'arch.spec.name'"),
        (_dropper("model"), "no weights"),
        (_setter("arch", "history", value=[{"arch": {}}]), "'arch.history[0]'"),
        # wrong types
        (_setter("arch", value="resnet20_cifar"), "'arch' must be a dict"),
        (_setter("arch", "spec", "name", value=3), "'arch.spec.name'"),
        (_setter("arch", "spec", "kwargs", value=[1, 2]), "'arch.spec.kwargs'"),
        (_setter("arch", "history", value={"method": "ghost"}), "'arch.history' must be a list"),
        (_setter("arch", "history", value=[{"method": "ghost", "arch": 5}]), "history[0].arch"),
        (_setter("model", value=[1, 2]), "'model' must be a state dict"),
        (_setter("model", "fc.weight", value=[0.0]), "names to tensors"),
        # names this leanvision does not know, records a method cannot rebuild from
        (_setter("arch", "spec", "name", value="no_such_net"), "'no_such_net'"),
        (
            _setter("arch", "history", value=[{"method": "no_such_method", "arch": {}}]),
            "method 'no_such_method'",
        ),
        (
            _setter("arch", "history", value=[{"method": "ghost", "arch": {"bogus": 1}}]),
            "'ghost' (arch.history[0]) cannot rebuild",
        ),
    ],
)
def test_malformed_saved_model(
    saved: Path, tmp_path: Path, edit: Callable[[dict], None], words: str
) -> None:
    state = torch.load(saved, weights_only=True)
    edit(state)
    path = tmp_path / "edited.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        lv.load(path)
    msg = str(err.value)
    assert str(path) in msg and words in msg, msg


def test_unreadable_files(saved: Path, tmp_path: Path) -> None:
    noise = tmp_path / "noise.pt"
    noise.write_bytes(bytes(range(256)) * 8)
    plain = tmp_path / "plain.pt"
    torch.save(lv.create_model("resnet20_cifar", width=0.25).state_dict(), plain)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    cases = [(noise, "corrupt"), (plain, "not a leanvision checkpoint"), (truncated, "corrupt")]
    cases += [(tmp_path, "not a file")]
    for path, words in cases:
        with pytest.raises(CheckpointError) as err:
            lv.load(path)
        assert str(path) in str(err.value) and words in str(err.value), str(err.value)


# -- resume -------------------------------------------------------------------------------------


def _resume(out_dir: Path, data: Any) -> None:
    model = lv.create_model("resnet20_cifar", in_chans=1, width=0.25)
    lv.train(
        model, data, epochs=1, max_steps=1, out_dir=str(out_dir), resume=True,
        progress=False, log=False,
    )  # fmt: skip


def _weights() -> dict:
    return lv.create_model("resnet20_cifar", in_chans=1, width=0.25).state_dict()


@pytest.mark.parametrize(
    ("state", "words"),
    [
        (lambda: {"model": _weights()}, "no 'epoch'"),
        (lambda: {"epoch": 1, "global_step": 3}, "no 'model'"),
        (lambda: {"model": _weights(), "epoch": "one", "global_step": 3}, "'epoch' must be"),
        (lambda: {"model": [1], "epoch": 1, "global_step": 3}, "'model' must be a state dict"),
        (lambda: {"model": _weights(), "epoch": 1, "global_step": -2}, "'global_step' is -2"),
        (
            lambda: {"model": _weights(), "epoch": 1, "global_step": 3, "optimizer": {"x": 1}},
            "optimizer, scheduler or hook state",
        ),
        (
            lambda: {"model": _weights(), "epoch": 1, "global_step": 3, "history": "all"},
            "'history' must be a list",
        ),
    ],
)
def test_resume_from_malformed_checkpoint(
    tmp_path: Path, mnist_small: Any, state: Callable[[], dict], words: str
) -> None:
    path = save_checkpoint(state(), tmp_path / "last.pt")
    with pytest.raises(CheckpointError) as err:
        _resume(tmp_path, mnist_small)
    assert str(path) in str(err.value) and words in str(err.value), str(err.value)


def test_resume_from_unreadable_checkpoint(tmp_path: Path, mnist_small: Any) -> None:
    last = tmp_path / "last.pt"
    good = save_checkpoint({"model": _weights(), "epoch": 1, "global_step": 3}, tmp_path / "g.pt")
    for content, words in [
        (bytes(range(256)) * 8, "corrupt"),
        (good.read_bytes()[:1000], "corrupt"),
    ]:
        last.write_bytes(content)
        with pytest.raises(CheckpointError, match=words):
            _resume(tmp_path, mnist_small)
    torch.save(_weights(), last)  # a plain state dict
    with pytest.raises(CheckpointError, match="not a leanvision checkpoint"):
        _resume(tmp_path, mnist_small)


@pytest.mark.parametrize(
    ("state", "words"),
    [
        ({"epoch": 3}, "holds no model weights"),
        ({"model": {"no.such.key": torch.zeros(1)}}, "does not fit --model resnet20_cifar"),
    ],
)
def test_cli_eval_of_a_checkpoint_without_fitting_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], state: dict, words: str
) -> None:
    from leanvision.cli import main

    path = tmp_path / "ckpt.pt"
    save_checkpoint(state, path)
    argv = ["eval", "--model", "resnet20_cifar", "--checkpoint", str(path), "--data", "mnist5k"]
    assert main(argv) == 2  # a leanvision error, reported, not a traceback
    assert words in capsys.readouterr().err


def test_load_never_downloads_pretrained_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import timm

    model = lv.create_model("resnet18", num_classes=10)
    model.lv_spec = {"name": "resnet18", "kwargs": {"num_classes": 10, "pretrained": True}}
    path = lv.save(model, tmp_path / "m.pt")
    real = timm.create_model

    def no_download(name: str, pretrained: bool = False, **kw: Any) -> torch.nn.Module:
        assert not pretrained, "lv.load asked timm for pretrained weights it then overwrites"
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", no_download)
    loaded = lv.load(path)
    assert torch.equal(loaded.fc.weight, model.fc.weight)
