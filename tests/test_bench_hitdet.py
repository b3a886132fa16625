"""Smoke test of benchmarks/hitdet_digits.py: the search, both retrainings on both seeds and the
report run a few steps each on a few canvases (the real runs take hours)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture()
def bench(smoke_benchmark):
    return smoke_benchmark("hitdet_digits")


def test_hitdet_benchmark_smoke(bench):
    with pytest.raises(SystemExit, match="run `search` first"):
        bench.main(["retrain", "--model", "found", "--seed", "0"])
    bench.main(["search"])
    for model in ("hand", "found"):
        for seed in bench.SEEDS:
            bench.main(["retrain", "--model", model, "--seed", str(seed)])
    bench.main(["report"])
    out = json.loads((bench.OUT / "results.json").read_text())
    rows = {r["name"]: r for r in out["models"]}
    assert list(rows) == [f"{m}_s{s}" for m in ("hand", "found") for s in bench.SEEDS]
    assert rows["found_s0"]["macs"] <= rows["hand_s0"]["macs"]
    assert rows["found_s1"]["baseline"] == "hand_s1"
    assert "Search cost:" in out["run"]["notes"][2]
