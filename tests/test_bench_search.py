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
    for method in ("hournas", "oneshot", "random", "vit_resnas"):  # random: HourNAS's CPU-h
        bench.main(["search", "--method", method])
        bench.main(["retrain", "--method", method])
    bench.main(["retrain", "--method", "vit_hand"])
    found = json.loads((bench.RUNS / "random" / "summary.json").read_text())
    assert found["trials"] >= 1 and found["best"]["values"]["macs"] <= bench.BUDGET
    bench.main(["rank"])
    bench.main(["report"])
    out = json.loads((bench.OUT / "results.json").read_text())
    names = {"hournas_found", "oneshot_found", "random_found", "vit_resnas_found", "vit_hand"}
    assert {r["name"] for r in out["models"]} == names
    assert all(r["latency_ms"]["runs"] == 5 for r in out["models"])  # timed side by side
    vit = json.loads((bench.RUNS / "vit_resnas" / "summary.json").read_text())
    assert vit["best"]["values"]["macs"] <= bench.vit_budget()  # at most the hand design's
    found_table, vit_table, rank_table = out["run"]["tables"]
    assert [r[0] for r in found_table["rows"]] == ["hournas", "oneshot", "random"]
    assert vit_table["rows"][0][0] == "vit_resnas" and len(vit_table["rows"]) == 2
    assert len(rank_table["rows"]) == 2 and "Kendall" in rank_table["columns"][1]
    notes = out["run"]["notes"]
    assert "the claim" in notes[0] and "ViT-ResNAS" in notes[1] and "DC-NAS tau" in notes[2]
