"""Smoke test of benchmarks/search_cifar10.py: each search, its retraining, the DC-NAS ranking
and the report run a few steps each on a few CIFAR-10 images (the real runs are hours)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture()
def bench(smoke_benchmark):
    return smoke_benchmark("search_cifar10")


def test_search_benchmark_smoke(bench):
    with pytest.raises(SystemExit, match="run `search --method hournas`"):
        bench.main(["report"])
    for method in ("hournas", "oneshot", "random"):  # random matches HourNAS's CPU-hours
        bench.main(["search", "--method", method])
        bench.main(["retrain", "--method", method])
    found = json.loads((bench.RUNS / "random" / "summary.json").read_text())
    assert found["trials"] >= 1 and found["best"]["values"]["macs"] <= bench.BUDGET
    bench.main(["rank"])
    bench.main(["report"])
    out = json.loads((bench.OUT / "results.json").read_text())
    assert {r["name"] for r in out["models"]} == {"hournas_found", "oneshot_found", "random_found"}
    found_table, rank_table = out["run"]["tables"]
    assert [r[0] for r in found_table["rows"]] == ["hournas", "oneshot", "random"]
    assert len(rank_table["rows"]) == 2 and "Kendall" in rank_table["columns"][1]
    assert "the claim" in out["run"]["notes"][0] and "DC-NAS tau" in out["run"]["notes"][1]
