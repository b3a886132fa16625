"""Smoke test of benchmarks/defeat_digits.py: the teacher, the three student arms on both seeds
and the report run a few steps each on a few canvases (the real runs take hours)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture()
def bench(smoke_benchmark):
    return smoke_benchmark("defeat_digits")


def test_defeat_benchmark_smoke(bench):
    with pytest.raises(SystemExit, match="run `teacher` first"):
        bench.main(["student", "--arm", "defeat", "--seed", "0"])
    bench.main(["teacher"])
    for arm in bench.ARMS:
        for seed in bench.SEEDS:
            bench.main(["student", "--arm", arm, "--seed", str(seed)])
    bench.main(["report"])
    out = json.loads((bench.OUT / "defeat_digits" / "results.json").read_text())
    rows = {r["name"]: r for r in out["models"]}
    # the paper's numbers ride on the method's row, once
    assert rows["defeat_s0"]["paper"]["source"].startswith("DeFeat paper")
    assert sum(bool(r.get("paper")) for r in out["models"]) == 1
    assert list(rows) == ["teacher"] + [f"{a}_s{s}" for a in bench.ARMS for s in bench.SEEDS]
    assert all(set(r["metrics"]) == {"map", "map50", "map75"} for r in rows.values())
    assert rows["defeat_s1"]["baseline"] == "alone_s1"
    assert rows["alone_s0"]["macs"] < rows["teacher"]["macs"]
    assert "DeFeat > foreground-only > alone" in out["run"]["notes"][1]
    assert not any("Sensitivity" in n for n in out["run"]["notes"])
    for seed in bench.SEEDS:  # a sensitivity arm joins the report once all its seeds ran
        bench.main(["student", "--arm", "defeat_bg3", "--seed", str(seed)])
    bench.main(["report"])
    out = json.loads((bench.OUT / "defeat_digits" / "results.json").read_text())
    rows = {r["name"]: r for r in out["models"]}
    assert rows["defeat_bg3_s1"]["extra"]["weights"] == {"feat_bg_weight": 3.0}
    assert rows["defeat_bg3_s1"]["method_chain"] == ["defeat"]
    assert "Sensitivity (not the paper's weights" in out["run"]["notes"][-1]
    assert [r[0] for r in out["run"]["tables"][0]["rows"]][-2:] == ["defeat_bg3", "teacher"]


def test_defeat_benchmark_runs_on_coco128(bench, monkeypatch):
    monkeypatch.setattr(bench, "SEEDS", (0,))  # one seed: the digits run covers the seeds
    for step in [["teacher"]] + [["student", "--arm", a, "--seed", str(s)] for a in bench.ARMS
                                 for s in bench.SEEDS] + [["report"]]:  # fmt: skip
        bench.main(["--data", "coco128", *step])
    out = json.loads((bench.OUT / "defeat_coco128" / "results.json").read_text())
    assert {r["dataset"] for r in out["models"]} == {"coco128"}
    assert "coco128: 115 training images" in out["run"]["notes"][-1]
