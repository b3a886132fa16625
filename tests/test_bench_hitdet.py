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
    # the paper's numbers ride on the method's row, once
    assert rows["found_s0"]["paper"]["source"].startswith("Hit-Detector paper")
    assert sum(bool(r.get("paper")) for r in out["models"]) == 1
    assert list(rows) == [f"{m}_s{s}" for m in ("hand", "found") for s in bench.SEEDS]
    assert rows["found_s0"]["macs"] <= rows["hand_s0"]["macs"]
    assert rows["found_s1"]["baseline"] == "hand_s1"
    assert "Search cost:" in out["run"]["notes"][2]
    assert not any("Sensitivity" in n for n in out["run"]["notes"])
    with pytest.raises(SystemExit, match="run `search --variant hinge` first"):
        bench.main(["retrain", "--model", "found_hinge", "--seed", "0"])
    bench.main(["search", "--variant", "hinge"])  # the MACs term zero within the budget
    summary = json.loads((bench.RUNS / "search_hinge" / "summary.json").read_text())
    assert summary["settings"]["cost_form"] == "hinge"
    for seed in bench.SEEDS:
        bench.main(["retrain", "--model", "found_hinge", "--seed", str(seed)])
    bench.main(["report"])
    out = json.loads((bench.OUT / "results.json").read_text())
    rows = {r["name"]: r for r in out["models"]}
    assert rows["found_hinge_s1"]["baseline"] == "hand_s1"
    assert "Sensitivity (not the paper's cost" in out["run"]["notes"][-1]
    assert [r[0] for r in out["run"]["tables"][0]["rows"]] == ["hand", "found", "found_hinge"]
