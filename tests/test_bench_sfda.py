"""Smoke test of benchmarks/sfda_mnist_usps.py: the source model, both adaptations on both seeds
and the report run a few steps each on a few images (the real runs take an hour)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture()
def bench(smoke_benchmark):
    return smoke_benchmark("sfda_mnist_usps")


def test_sfda_benchmark_smoke(bench):
    with pytest.raises(SystemExit, match="run `source` first"):
        bench.main(["adapt", "--method", "sfda_de", "--seed", "0"])
    bench.main(["source"])
    for method in bench.METHODS:
        for seed in bench.SEEDS:
            bench.main(["adapt", "--method", method, "--seed", str(seed)])
    bench.main(["report"])
    out = json.loads((bench.OUT / "results.json").read_text())
    rows = {r["name"]: r for r in out["models"]}
    # the paper's numbers ride on the method's row, once
    assert rows["sfda_de_s0"]["paper"]["source"].startswith("SFDA-DE paper")
    assert sum(bool(r.get("paper")) for r in out["models"]) == 1
    assert list(rows) == ["source"] + [f"{m}_s{s}" for m in bench.METHODS for s in bench.SEEDS]
    assert rows["sfda_de_s1"]["baseline"] == "source" and rows["sfda_de_s1"]["seed"] == 1
    assert "mnist5k_test_top1" in rows["source"]["extra"]
    assert "SFDA-DE above the source model" in out["run"]["notes"][2]
