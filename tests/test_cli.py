"""The ``leanvision`` command line, called in-process through ``leanvision.cli.main``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from leanvision.cli import main
from leanvision.report import load_results, write_results

SUBCOMMANDS = ["quickstart", "train", "compress", "eval", "profile", "export", "list", "report"]


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    """One torch thread: on a loaded 2-core machine two spinning OpenMP threads are far slower."""
    torch.set_num_threads(1)


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def test_list_models(capsys):
    """`list models` prints our architectures one per line."""
    assert main(["list", "models"]) == 0
    names = _lines(capsys.readouterr().out)
    assert "resnet20_cifar" in names and "vgg_small" in names
    assert "resnet18" not in names  # timm's only with --all
    assert main(["list", "models", "resnet5*"]) == 0
    assert _lines(capsys.readouterr().out) == ["resnet56_cifar"]


def test_list_methods(capsys):
    """`list methods` prints each method with its family and paper."""
    assert main(["list", "methods"]) == 0
    rows = {line.split()[0]: line for line in _lines(capsys.readouterr().out)}
    assert "ghost" in rows and "kd" in rows
    assert "1911.11907" in rows["ghost"] and "architecture" in rows["ghost"]


def test_list_datasets(capsys):
    """`list datasets` prints mnist5k and cifar10."""
    assert main(["list", "datasets"]) == 0
    names = _lines(capsys.readouterr().out)
    assert "mnist5k" in names and "cifar10" in names


def test_profile_resnet20(capsys):
    """`profile resnet20_cifar` prints 0.272 M params and 40.81 M MACs per image."""
    code = main(["profile", "resnet20_cifar", "--input-size", "3", "32", "32", "--threads", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "resnet20_cifar" in out
    assert "params  0.272 M" in out
    assert "MACs    40.81 M per image" in out
    assert "(1 threads" in out


def test_profile_input_size_is_one_image_and_defaults_to_the_models_own(capsys):
    """`--input-size C H W` is one image, `--batch N` the batch; without --input-size the
    model's recorded size (resnet8_cifar: 3×32×32); a bad batch is a clear error."""
    code = main(["profile", "resnet8_cifar", "--batch", "2", "--threads", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "resnet8_cifar @ (3, 32, 32) batch 2" in out
    assert "MACs    12.50 M per image, 25.00 M per batch" in out
    assert main(["profile", "resnet8_cifar", "--input-size", "3", "16", "16", "--batch", "0"]) == 2
    assert "batch must be an int >= 1" in capsys.readouterr().err


def _row(name: str, chain: list[str], top1: float, macs: int, median: float) -> dict:
    return dict(
        name=name,
        method_chain=chain,
        dataset="mnist5k",
        split="test",
        top1=top1,
        params=272_474 if not chain else 140_000,
        macs=macs,
        latency_ms={
            "median": median,
            "p90": median * 1.1,
            "batch": 1,
            "threads": 1,
            "backend": "torch-eager-cpu",
        },
        baseline="resnet20",
        seed=0,
    )


def test_export_writes_onnx_of_a_saved_quantized_vit(mnist_small, tmp_path, capsys):
    """`export` turns a model saved by leanvision.save (here a ptq_vit model) into ONNX that
    onnxruntime runs with the same outputs."""
    ort = pytest.importorskip("onnxruntime")
    import leanvision as lv

    torch.manual_seed(0)
    vit = lv.create_model(
        "deit_tiny_patch16_224", img_size=28, patch_size=7, in_chans=1, num_classes=10,
        depth=1, embed_dim=32, num_heads=2,
    ).eval()  # fmt: skip
    q = lv.compress(vit, "ptq_vit", mnist_small, num_images=16)
    lv.save(q, tmp_path / "q.pt")
    assert main(["export", str(tmp_path / "q.pt"), str(tmp_path / "q.onnx"),
                 "--input-size", "1", "28", "28"]) == 0  # fmt: skip
    assert "q.onnx" in capsys.readouterr().out
    sess = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    x = next(iter(mnist_small.test))[0]
    with torch.no_grad():
        ref = q(x)
    got = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
    torch.testing.assert_close(got, ref, rtol=0.05, atol=0.05)
    assert (got.argmax(1) == ref.argmax(1)).float().mean() >= 0.95


def test_report_writes_markdown(tmp_path, capsys):
    """`report RUN_DIR -o R.md` writes one markdown file holding the models' rows."""
    run = tmp_path / "run"
    rows = [
        _row("resnet20", [], 98.5, 40_813_184, 2.0),
        _row("ghost_resnet20", ["ghost"], 97.9, 21_270_000, 1.5),
    ]
    write_results(run, rows, run_info={"name": "handmade", "command": "pytest"})
    assert [m.name for m in load_results(run)] == ["resnet20", "ghost_resnet20"]
    out_md = tmp_path / "R.md"
    assert main(["report", str(run), "-o", str(out_md)]) == 0
    assert str(out_md) in capsys.readouterr().out
    text = out_md.read_text()
    assert "handmade" in text
    assert "resnet20" in text and "ghost_resnet20" in text
    assert "98.5" in text


def test_error_exit_code_and_message(capsys):
    """A leanvision error returns exit code 2 and names the bad model on stderr."""
    code = main(["eval", "--model", "nope_model"])
    assert code == 2
    err = capsys.readouterr().err
    assert "nope_model" in err and "error" in err
    assert "resnet20_cifar" in err  # lists what is allowed


def test_missing_recipe_exit_code(tmp_path, capsys):
    """A missing recipe file is exit code 2 with the path on stderr."""
    missing = tmp_path / "gone.yaml"
    assert main(["train", "--recipe", str(missing)]) == 2
    assert "gone.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", [[], *[[c] for c in SUBCOMMANDS]], ids=["top", *SUBCOMMANDS])
def test_help_exits_zero(cmd, capsys):
    """`--help` of the program and of each subcommand exits 0 and prints usage."""
    with pytest.raises(SystemExit) as info:
        main([*cmd, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: leanvision" in out
    if cmd:
        assert cmd[0] in out


def test_bad_arguments_exit_nonzero(capsys):
    """An unknown subcommand is an argparse error (exit code 2)."""
    with pytest.raises(SystemExit) as info:
        main(["no-such-command"])
    assert info.value.code == 2


def _console_script() -> str:
    found = Path(sys.executable).parent / "leanvision"
    if found.exists():
        return str(found)
    which = shutil.which("leanvision")
    assert which, "the leanvision console script is not installed"
    return which


def test_console_script_runs():
    """The installed `leanvision` console script runs `list methods`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [_console_script(), "list", "methods"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    names = [line.split()[0] for line in _lines(proc.stdout)]
    assert "ghost" in names and "kd" in names
