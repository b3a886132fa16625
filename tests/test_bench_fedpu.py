"""Smoke test of benchmarks/fedpu_cifar10.py: its three federations (two clients, two rounds of
one step each, in Flower's simulation engine) and the report, on a few CIFAR-10 images."""

from __future__ import annotations

import json
import re

import pytest


@pytest.fixture()
def bench(smoke_benchmark):
    return smoke_benchmark("fedpu_cifar10")


@pytest.mark.timeout(900)
def test_fedpu_benchmark_smoke(bench):
    bench.SEEDS = (0,)  # one seed is enough for the plumbing
    with pytest.raises(SystemExit, match="run `train --arm fedpu --seed 0`"):
        bench.main(["report"])
    for arm in bench.ARMS:
        bench.main(["train", "--arm", arm, "--seed", "0"])
    bench.main(["train", "--arm", "fedpu", "--seed", "0"])  # done: resumes, no round run
    bench.main(["report"])
    out = json.loads((bench.OUT / "results.json").read_text())
    rows = {r["name"]: r for r in out["models"]}
    # the paper's numbers ride on the method's row, once
    assert rows["fedpu_s0"]["paper"]["source"].startswith("FedPU paper")
    assert sum(bool(r.get("paper")) for r in out["models"]) == 1
    assert list(rows) == [f"{a}_s0" for a in bench.ARMS]
    assert rows["fedpu_s0"]["baseline"] == "fedavg_positive_s0"
    assert rows["fedpu_s0"]["extra"]["rounds"] == 2
    assert "FedPU above FedAvg on the labelled positives" in out["run"]["notes"][1]
    assert re.search(r"FedPU above at [01] of 1 seeds", out["run"]["notes"][1])
