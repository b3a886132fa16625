"""Smoke test of benchmarks/winograd_adder_cifar10.py: the direct adder net and two Winograd
variants train two steps, the layers are timed, and the report names what ran (seconds; the
real runs are hours)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture()
def bench(smoke_benchmark):
    return smoke_benchmark("winograd_adder_cifar10")


def test_winograd_adder_benchmark_smoke(bench):
    small = ["--max-train", "64", "--max-val", "64", "--max-test", "64"]
    with pytest.raises(SystemExit, match="speed"):
        bench.main([*small, "report"])  # the layer timing comes first
    bench.main(["speed"])
    for variant in ("adder", "balanced_a_anneal", "standard_p1"):
        bench.main([*small, "train", "--variant", variant, "--epochs", "1", "--max-steps", "2"])
        assert "commit" in json.loads((bench.RUNS / variant / "summary.json").read_text())["git"]
    bench.main([*small, "report"])
    out = json.loads((bench.OUT / "results.json").read_text())
    assert {r["name"] for r in out["models"]} == {
        "resnet20_adder", "resnet20_balanced_a_anneal", "resnet20_standard_p1",
    }  # fmt: skip
    acc, adds, speed = out["run"]["tables"]
    by = {r[0]: r for r in acc["rows"]}
    assert by["adder"][-1] == 0.0 and "1 epochs on 64 images" in acc["title"]
    assert by["balanced_a_anneal"][1] == "balanced_a" and by["standard_p1"][2] == "1 throughout"
    # the Winograd variants need about half the direct net's adder-layer additions
    assert by["balanced_a_anneal"][4] < 0.55 * by["adder"][4]
    assert adds["rows"][0][-3] == adds["rows"][0][-2]  # the profiler agrees with the formula
    layers = {r[0]: r for r in speed["rows"]}
    assert "winograd_adder_forward" in layers["winograd_adder"][-1]  # the kernel ran
    assert any(n.startswith("Acceptance, layer speed") for n in out["run"]["notes"])
    # the command reproduces the schedule that ran
    assert "--max-train 64 train --variant standard_p1 --epochs 1" in out["run"]["command"]
