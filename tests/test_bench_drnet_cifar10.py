"""Smoke test of benchmarks/drnet_cifar10.py: the fixed-resolution and DRNet trainings and the
report run a few steps each on a few CIFAR-10 images (the real runs are hours)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture()
def bench(smoke_benchmark):
    return smoke_benchmark("drnet_cifar10")


def test_drnet_benchmark_smoke(bench):
    with pytest.raises(SystemExit, match="run `train --model fixed32` first"):
        bench.main(["report"])
    for model in ("fixed32", "fixed24", "drnet"):
        bench.main(["train", "--model", model])
    bench.main(["report"])
    out = json.loads((bench.OUT / "results.json").read_text())
    rows = {r["name"]: r for r in out["models"]}
    assert list(rows) == ["fixed32", "fixed24", "drnet"]
    shares = rows["drnet"]["extra"]["resolution_shares"]
    assert set(shares) == {"32", "24", "16"} and sum(shares.values()) == pytest.approx(1.0)
    per_res = rows["drnet"]["extra"]["macs_per_resolution"]
    assert per_res[0] > per_res[1] > per_res[2]
    assert rows["fixed24"]["macs"] < rows["fixed32"]["macs"]
    assert "test images to 32x32" in out["run"]["notes"][0]
    assert all(r["latency_ms"]["runs"] == 3 for r in out["models"])
