"""The chain of issue 19 as a recipe: dense -> ghost -> l1_filter -> kd -> int8, every step
measured side by side on its deployed runtime; and a recipe that starts from trained weights."""

from __future__ import annotations

import json

import pytest
import torch

import leanvision as lv
from leanvision.errors import RecipeError
from leanvision.recipe import recipe_from_dict
from leanvision.runner import run_recipe

SMALL = {"name": "mnist5k", "batch_size": 32, "max_train": 256, "max_val": 64, "max_test": 64}


def test_chain_recipe_measures_every_step_deployed(tmp_path):
    torch.manual_seed(0)
    base = lv.create_model("resnet20_cifar", num_classes=10, in_chans=1, width=0.5)
    lv.train(base, lv.load_data(**SMALL), epochs=1, max_steps=4, progress=False, log=False,
             out_dir=str(tmp_path / "base"))  # fmt: skip
    raw = {
        "name": "chain",
        "data": SMALL,
        "model": {"name": "resnet20_cifar", "kwargs": {"width": 0.5},
                  "weights": str(tmp_path / "base" / "last.pt")},
        "train": {"epochs": 0},
        "stages": [
            {"method": "ghost", "finetune_epochs": 1, "max_steps": 2},
            {"method": "l1_filter", "target_macs_ratio": 0.5, "finetune_epochs": 0},
            {"method": "kd", "teacher": "baseline", "finetune_epochs": 1, "max_steps": 2},
            {"method": "int8", "calib_batches": 2, "backend": "onnxruntime"},
        ],
        "measure": {"batch": 4, "threads": 1, "repeats": 3, "backend": "onnxruntime"},
    }  # fmt: skip
    run = run_recipe(recipe_from_dict(raw), tmp_path / "run", progress=False)
    rows = json.loads((run / "results.json").read_text())["models"]
    assert [r["method_chain"] for r in rows] == [
        [], ["ghost"], ["ghost", "l1_filter"], ["ghost", "l1_filter", "kd"],
        ["ghost", "l1_filter", "kd", "int8"],
    ]  # fmt: skip
    backends = [r["latency_ms"]["backend"] for r in rows]
    assert all(b.startswith("onnxruntime-") for b in backends)
    assert backends[-1].endswith("int8") and all(b.endswith("fp32") for b in backends[:-1])
    # torch's allocator sees the PyTorch models' memory, not onnxruntime's: not made up
    assert rows[-1]["peak_mem_mb"] is None and rows[0]["peak_mem_mb"] > 0
    macs = [r["macs"] for r in rows]
    assert macs[1] < macs[0] and macs[2] < macs[1] and macs[3] == macs[2] == macs[4]
    assert rows[0]["top1"] == pytest.approx(lv.evaluate(base, lv.load_data(**SMALL).test)["top1"])
    assert (run / "models" / "resnet20_cifar_ghost_l1_filter_kd_int8.onnx").is_file()
    assert (run / "models" / "resnet20_cifar_ghost_l1_filter_kd.pt").is_file()


def test_recipe_weights_and_measure_backend_are_checked_at_the_door(tmp_path):
    with pytest.raises(RecipeError, match="model.weights"):
        recipe_from_dict({"model": {"name": "resnet20_cifar", "weights": str(tmp_path / "no")}})
    with pytest.raises(RecipeError, match="measure.backend"):
        recipe_from_dict({"measure": {"backend": "tensorrt"}})


def test_an_int8_step_on_inductor_keeps_what_it_was_deployed_from(tmp_path):
    """An int8 model compiled in memory (torchao + Inductor) has no ONNX graph to save: the
    run keeps the float model it was deployed from, to deploy again."""
    raw = {
        "name": "int8_inductor",
        "data": SMALL,
        "model": {"name": "resnet8_cifar", "kwargs": {"width": 0.5}},
        "train": {"epochs": 1, "max_steps": 2},
        "stages": [{"method": "int8", "calib_batches": 2, "backend": "inductor"}],
        "measure": {"batch": 4, "threads": 1, "repeats": 3, "backend": "torch"},
    }  # fmt: skip
    run = run_recipe(recipe_from_dict(raw), tmp_path / "run", progress=False)
    rows = json.loads((run / "results.json").read_text())["models"]
    assert "inductor" in rows[-1]["latency_ms"]["backend"] and rows[-1]["top1"] >= 0
    source = run / "models" / "resnet8_cifar_int8_source.pt"
    assert source.is_file() and not (run / "models" / "resnet8_cifar_int8.onnx").exists()
    assert isinstance(lv.load(source), torch.nn.Module)


def test_step_notes_compare_each_stage_with_the_one_before():
    from leanvision.runner import step_notes

    def row(name, chain, ms, macs, top1):
        lat = {"median": ms, "batch": 32, "threads": 2, "backend": f"rt-{name}[x]"}
        return {"name": name, "method_chain": chain, "latency_ms": lat, "macs": macs,
                "top1": top1}  # fmt: skip

    rows = [row("base", [], 40.0, 100, 80.0), row("g", ["ghost"], 20.0, 50, 75.0),
            row("k", ["ghost", "kd"], 25.0, 50, 78.0)]  # fmt: skip
    notes = step_notes(rows)
    assert notes[0] == (
        "ghost: 2.00x the speed of the step before (40.00 -> 20.00 ms, rt-g), 2.00x the "
        "baseline's; MACs 2.00x fewer than the baseline; top-1 75.00 % (-5.00 pt on the step "
        "before)."
    )
    assert notes[1].startswith("kd: 0.80x the speed of the step before")
    assert "weights only" not in notes[1]  # another runtime: a measured difference
    assert notes[-1] == (
        "Every step faster than the one before (batch 32, 2 threads): no (kd not faster); the "
        "last model 1.60x the baseline's speed."
    )
    rows[2]["latency_ms"]["backend"] = "rt-g[y]"  # the ghost model's network and runtime
    notes = step_notes(rows)
    assert notes[1].endswith("(weights only): the speed ratio is timing noise.")
    assert "no (kd not faster (weights only))" in notes[-1]
    assert step_notes(rows[:1]) == []
