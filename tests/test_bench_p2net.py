"""Smoke test of benchmarks/p2net_proxy.py: both models on both seeds (two steps on a few COCO128
person identities) and the report (CMC and mAP on the proxy's test identities)."""

from __future__ import annotations

import json
import re

import pytest


@pytest.fixture()
def bench(smoke_benchmark):
    return smoke_benchmark("p2net_proxy")


def test_p2net_benchmark_smoke(bench):
    bench.SEEDS = (0, 1)  # two are enough for the plumbing
    with pytest.raises(SystemExit, match="run `train --model p2net --seed 0`"):
        bench.main(["report"])
    for model in bench.MODELS:
        for seed in bench.SEEDS:
            bench.main(["train", "--model", model, "--seed", str(seed)])
    bench.main(["report"])
    out = json.loads((bench.OUT / "results.json").read_text())
    rows = {r["name"]: r for r in out["models"]}
    # the paper's numbers ride on the method's row, once
    assert rows["p2net_s0"]["paper"]["source"].startswith("P2Net paper")
    assert sum(bool(r.get("paper")) for r in out["models"]) == 1
    assert list(rows) == [f"{m}_s{s}" for m in bench.MODELS for s in bench.SEEDS]
    assert rows["p2net_s1"]["baseline"] == "global_s1"
    assert rows["global_s0"]["extra"]["queries"] == 12  # 6 identities x 2 camera-0 views
    assert "on this COCO128 person proxy" in out["run"]["notes"][1]
    assert re.search(r"rank-1 at [012] and in mAP at [012] of 2 seeds", out["run"]["notes"][1])
