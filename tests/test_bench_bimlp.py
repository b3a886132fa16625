"""Smoke test of benchmarks/bimlp_cifar10.py: both variants train a few steps and the report
writes a results file with OPs-matched rows (seconds; the real runs are hours)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture()
def bench(smoke_benchmark):
    return smoke_benchmark("bimlp_cifar10")


def test_bimlp_benchmark_smoke(bench):
    small = ["--max-train", "64", "--max-val", "32", "--max-test", "64"]
    for variant in bench.VARIANTS:
        bench.main([*small, "train", "--variant", variant, "--epochs", "1", "--max-steps", "2"])
        assert (bench.RUNS / variant / "last.pt").exists()
    bench.main([*small, "report"])
    rows = json.loads((bench.OUT / "results.json").read_text())["models"]
    by_variant = {r["name"].rsplit("_", 1)[-1]: r for r in rows}
    assert set(by_variant) == set(bench.VARIANTS)
    a, b = by_variant["bimlp"], by_variant["plain"]
    assert abs(b["extra"]["ops"] / a["extra"]["ops"] - 1) <= bench.OPS_TOLERANCE
    assert a["bitops"] > 0 and a["baseline"] == b["name"]
    for r in rows:
        assert 0.0 <= r["top1"] <= 100.0 and r["energy_uj"] > 0
    res = json.loads((bench.OUT / "results.json").read_text())
    (table,) = res["run"]["tables"]
    assert table["rows"][0][0] == "torch" and table["rows"][0][1] > 0 and table["rows"][0][2] > 0
    assert any(n.startswith("Acceptance, BiMLP's batch-1 latency") for n in res["run"]["notes"])
