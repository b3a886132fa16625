"""Smoke test of benchmarks/gan_c2f_sr.py: the teacher, the search, the retraining and the
report run a few steps each on a few T91 crops and two test images (the real runs are hours)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture()
def bench(smoke_benchmark):
    return smoke_benchmark("gan_c2f_sr")


def test_gan_c2f_benchmark_smoke(bench):
    with pytest.raises(SystemExit, match="run teacher, search and retrain first"):
        bench.main(["report"])
    for cmd in ("teacher", "search", "retrain", "report"):
        bench.main([cmd])
    found = json.loads((bench.RUNS / "search" / "summary.json").read_text())
    assert found["steps"] == {"path": 2, "operator": 2, "channel": 2}
    assert found["values"]["macs"] <= found["budget_macs"]
    out = json.loads((bench.OUT / "results.json").read_text())
    assert [r["name"] for r in out["models"]] == ["teacher", "gan_c2f_found", "bicubic"]
    assert all(r["latency_ms"]["runs"] == 5 for r in out["models"])
    scores = out["models"][1]["extra"]["scores"]
    assert set(scores) == {"Set5", "Set14"} and scores["Set5"]["n"] == 2
    assert out["models"][1]["metrics"]["psnr@Set5"] == scores["Set5"]["psnr"]
    assert "claim <= 0.25" in out["run"]["notes"][0] and "CPU-hours" in out["run"]["notes"][1]
