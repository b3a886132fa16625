"""Smoke test of benchmarks/lowbit_cifar10.py: three variants train two steps and the report
times every network side by side, the CNN on the adder nets' path and on its fastest path
(seconds; the real runs are hours)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture()
def bench(smoke_benchmark):
    return smoke_benchmark("lowbit_cifar10")


def test_lowbit_benchmark_smoke(bench):
    small = ["--max-train", "64", "--max-test", "64"]
    for variant in ("cnn", "adder", "bnn_ste"):
        bench.main([*small, "train", "--variant", variant, "--epochs", "1", "--max-steps", "2"])
        summary = json.loads((bench.RUNS / variant / "summary.json").read_text())
        assert "commit" in summary["git"]  # the code that trained it is named
        assert ("config" in summary) == (variant != "cnn")
    bench.main([*small, "report"])
    out = json.loads((bench.OUT / "results.json").read_text())
    rows = {r["name"]: r for r in out["models"]}
    assert set(rows) == {
        "resnet20_cnn", "resnet20_cnn_optimized", "resnet20_adder", "resnet20_adder_int8",
        "resnet20_adder_int16", "resnet20_bnn_ste",
    }  # fmt: skip
    lat_table = out["run"]["tables"][0]
    assert lat_table["title"].startswith("Batch-1 latency of every network, side by side")
    cols = lat_table["columns"]
    by_model = {r[0]: r for r in lat_table["rows"]}
    assert set(by_model) == set(rows)
    cnn = rows["resnet20_cnn"]["latency_ms"]["median"]
    fast = rows["resnet20_cnn_optimized"]["latency_ms"]["median"]
    for name, r in rows.items():
        assert r["baseline"] == "resnet20_cnn"
        # every row's latency is the side-by-side measurement, the ratios computed from it
        assert r["latency_ms"]["median"] == pytest.approx(
            by_model[name][cols.index("median ms")], abs=1e-3
        )
        same = by_model[name][cols.index("× CNN, same path")]
        best = by_model[name][cols.index("× CNN, optimized")]
        assert same == pytest.approx(r["latency_ms"]["median"] / cnn, abs=0.01)
        assert best == pytest.approx(r["latency_ms"]["median"] / fast, abs=0.01)
        assert r["latency_ms"]["backend"] == by_model[name][cols.index("backend")]
    notes = out["run"]["notes"]
    assert any(n.startswith("Acceptance, AdderConv2d") for n in notes)
    assert any("× the CNN's time on the same path" in n for n in notes)


def test_a_resumed_training_says_its_time_and_commit_are_the_last_stretch(bench):
    summary = {"max_train": 45000, "wall_s": 600.0, "threads": 1, "git": {"commit": "a" * 40}}
    fresh = bench._train_note("cnn", {"epoch": 15}, {**summary, "resumed_after_epoch": 0})
    resumed = bench._train_note("cnn", {"epoch": 15}, {**summary, "resumed_after_epoch": 5})
    assert "resumed" not in fresh
    assert "resumed after epoch 5" in resumed and "10 min" in resumed
    stretch = {"after_epoch": 0, "to_epoch": 5, "wall_s": 300.0, "git": {"commit": "b" * 40}}
    record = {
        "epochs": 15,
        "wall_s": 900.0,
        "stretches": [stretch, {**stretch, "after_epoch": 5, "to_epoch": 15, "wall_s": 600.0}],
        "commits": [("b" * 40, False)],
        "unrecorded_epochs": 0,
        "unrecorded_train_s": 0.0,
    }
    both = bench._train_note("cnn", {"epoch": 15}, summary, record)
    assert "15 min at 1 thread(s) in 2 stretches" in both and "b" * 10 in both
