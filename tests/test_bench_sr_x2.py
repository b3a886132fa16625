"""Smoke test of benchmarks/sr_x2.py: the EDSR, GhostSR and FADN trainings and the report run a
few steps each on a few T91 crops and two test images a set (the real runs are hours)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture()
def bench(smoke_benchmark):
    return smoke_benchmark("sr_x2")


def test_sr_x2_benchmark_smoke(bench):
    with pytest.raises(SystemExit, match="run `train --model edsr` first"):
        bench.main(["report"])
    for model in ("edsr", "ghostsr", "fadn"):
        bench.main(["train", "--model", model])
    bench.main(["report"])
    out = json.loads((bench.OUT / "results.json").read_text())
    rows = {r["name"]: r for r in out["models"]}
    assert list(rows) == ["edsr", "ghostsr", "fadn"]
    assert set(rows["fadn"]["metrics"]) == {f"{k}@{s}" for k in ("psnr", "ssim")
                                            for s in ("Set5", "Set14", "BSD100")}  # fmt: skip
    assert rows["ghostsr"]["macs"] < rows["edsr"]["macs"]
    assert 0.0 <= rows["fadn"]["extra"]["expensive_share"]["Set14"] <= 1.0
    assert rows["edsr"]["extra"]["expensive_share"]["Set14"] is None
    notes = out["run"]["notes"]
    assert notes[0].startswith("GhostSR") and "FADN on Set14" in notes[1]
    # half of each replaced conv's outputs come from a real conv, the rest are shifts
    assert rows["ghostsr"]["extra"]["replaced_macs_share"] == pytest.approx(0.5, abs=0.01)
    assert "replaced convolutions' MACs" in notes[0]
    assert all(r["latency_ms"]["runs"] == 2 for r in out["models"])
