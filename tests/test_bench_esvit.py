"""Smoke test of benchmarks/esvit_cifar10.py: both pre-training arms (two steps on a few CIFAR-10
images) and the report (k-NN and linear probe of them and of the random initialisation)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture()
def bench(smoke_benchmark):
    return smoke_benchmark("esvit_cifar10")


def test_esvit_benchmark_smoke(bench):
    with pytest.raises(SystemExit, match="run `pretrain --arm view_region`"):
        bench.main(["report"])
    for arm in bench.ARMS:
        bench.main(["pretrain", "--arm", arm])
    bench.main(["report"])
    out = json.loads((bench.OUT / "results.json").read_text())
    rows = {r["name"]: r for r in out["models"]}
    # the paper's numbers ride on the method's row, once
    assert rows["view_region"]["paper"]["source"].startswith("EsViT paper")
    assert sum(bool(r.get("paper")) for r in out["models"]) == 1
    assert list(rows) == ["random_init", "view_region", "view"]
    assert rows["view_region"]["baseline"] == "view"
    assert rows["view"]["extra"]["region_weight"] == 0.0
    assert 0.0 <= rows["view_region"]["extra"]["knn_top1"] <= 100.0
    assert "view + region above view only" in out["run"]["notes"][1]
