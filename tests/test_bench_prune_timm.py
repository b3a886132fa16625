"""benchmarks/prune_timm_cpu.py: notes from its rows (median of speed-up / MACs gain per
runtime, the bar on leanvision's), and a smoke run on two small timm CNNs."""

from __future__ import annotations

import json

import pytest


@pytest.fixture()
def bench(benchmark_module):
    return benchmark_module("prune_timm_cpu")


def test_notes_take_the_median_per_runtime(bench):
    def row(model, rt, frac):
        return [model, 2.0, rt, 10.0, 10.0 / (2 * frac), 2 * frac, 2 * frac, "b", frac]

    rows = [row("a", "leanvision", 0.95), row("b", "leanvision", 0.7),
            row("c", "leanvision", 0.91), row("a", "torch", 0.5)]  # fmt: skip
    out = bench.notes(rows)
    assert out[0] == (
        "leanvision: speed-up / MACs gain, median 0.91 over 3 models (a 0.95, b 0.70, "
        "c 0.91); bar 0.9: **met**."
    )
    assert out[1].startswith("torch: speed-up / MACs gain, median 0.50") and "bar" not in out[1]
    rows[2][8] = 0.85
    assert "**not met**" in bench.notes(rows)[0]


def test_smoke_run_prunes_and_times_each_runtime(bench, monkeypatch):
    monkeypatch.setattr(bench, "SMOKE", True)
    bench.main(["--allow-dirty", "--threads", "1", "--models", "resnet18", "mobilenetv3_small_050"])
    res = json.loads((bench.OUT / "results.json").read_text())
    (table,) = res["run"]["tables"]
    assert len(table["rows"]) == 2 * len(bench.RUNTIMES)
    for r in table["rows"]:
        assert r[1] > 1.5  # about half the MACs
        assert r[3] > 0 and r[4] > 0 and r[8] == pytest.approx(r[5] / r[1], abs=2e-3)
    assert res["run"]["notes"][0].startswith("leanvision:")
