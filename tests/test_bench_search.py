"""Smoke test of benchmarks/search_cifar10.py: each search, its retraining, the DC-NAS ranking
and the report run a few steps each on a few CIFAR-10 images (the real runs are hours); every
stage leaves a part, and the report reads only the parts."""

from __future__ import annotations

import json
import shutil

import pytest


@pytest.fixture()
def bench(smoke_benchmark):
    return smoke_benchmark("search_cifar10")


def test_search_benchmark_smoke(bench):
    with pytest.raises(SystemExit, match="run `search --method hournas`"):
        bench.main(["report"])
    with pytest.raises(SystemExit, match="search_hournas.json"):  # random needs HourNAS's cost
        bench.main(["search", "--method", "random"])
    bench.main(["search", "--method", "hournas"])
    bench.main(["retrain", "--method", "hournas"])
    bench.main(["report"])  # one stage's row; the rest named as still to run
    out = json.loads((bench.OUT / "results.json").read_text())
    assert [r["name"] for r in out["models"]] == ["hournas_found"]
    assert "retrain --method oneshot" in out["run"]["notes"][-1]
    assert "the claim" not in " ".join(out["run"]["notes"])  # nothing judged on one stage
    for method in ("oneshot", "random", "vit_resnas"):  # random: HourNAS's CPU-h
        bench.main(["search", "--method", method])
        bench.main(["retrain", "--method", method])
    bench.main(["retrain", "--method", "vit_hand"])
    found = bench.read_part("search_random")
    assert found["trials"] >= 1 and found["best"]["values"]["macs"] <= bench.BUDGET
    bench.main(["rank"])
    # the parts are all a later session needs: the runs folder lost, nothing runs again
    shutil.rmtree(bench.RUNS)
    before = {p.name: p.stat().st_mtime_ns for p in bench.parts_dir().iterdir()}
    bench.main(["search", "--method", "hournas"])
    bench.main(["rank"])
    assert {p.name: p.stat().st_mtime_ns for p in bench.parts_dir().iterdir()} == before
    assert bench.still_to_run() == []
    # the ranking resumes member by member: one without its stand-alone part trains again
    members, scored = bench.rank_members()
    assert scored == len(members) == 4
    last = bench.parts_dir() / f"rank_alone_{members[-1]['number']}.json"
    last.unlink()
    assert bench.still_to_run() == ["rank (3 of 4 members trained alone)"]
    bench.main(["rank"])
    assert last.exists() and bench.still_to_run() == []
    assert {p.name: p.stat().st_mtime_ns for p in bench.parts_dir().iterdir()
            if p != last} == {k: v for k, v in before.items() if k != last.name}  # fmt: skip
    bench.main(["report"])
    out = json.loads((bench.OUT / "results.json").read_text())
    names = {"hournas_found", "oneshot_found", "random_found", "vit_resnas_found", "vit_hand"}
    assert {r["name"] for r in out["models"]} == names
    assert all(r["latency_ms"]["runs"] == 5 for r in out["models"])  # timed side by side
    assert all("commit" in r["notes"] for r in out["models"])  # how each trained
    vit = bench.read_part("search_vit_resnas")
    assert vit["best"]["values"]["macs"] <= bench.vit_budget()  # at most the hand design's
    found_table, vit_table, rank_table = out["run"]["tables"]
    assert [r[0] for r in found_table["rows"]] == ["hournas", "oneshot", "random"]
    assert vit_table["rows"][0][0] == "vit_resnas" and len(vit_table["rows"]) == 2
    assert len(rank_table["rows"]) == 2 and "Kendall" in rank_table["columns"][1]
    notes = out["run"]["notes"]
    assert "the claim" in notes[0] and "ViT-ResNAS" in notes[1] and "DC-NAS tau" in notes[2]
    assert len(notes) == 3  # nothing left to run
