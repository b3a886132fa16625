"""Smoke test of benchmarks/fedpu_cifar10.py: its three federations (two clients, two rounds of
one step each, in Flower's simulation engine) and the report, on a few CIFAR-10 images."""

from __future__ import annotations

import json

import pytest


@pytest.fixture()
def bench(smoke_benchmark):
    return smoke_benchmark("fedpu_cifar10")


@pytest.mark.timeout(900)
def test_fedpu_benchmark_smoke(bench):
    with pytest.raises(SystemExit, match="run `train --arm fedpu`"):
        bench.main(["report"])
    for arm in bench.ARMS:
        bench.main(["train", "--arm", arm])
    bench.main(["train", "--arm", "fedpu"])  # done: resumes, runs no round, same model
    bench.main(["report"])
    out = json.loads((bench.OUT / "results.json").read_text())
    rows = {r["name"]: r for r in out["models"]}
    assert list(rows) == list(bench.ARMS)
    assert rows["fedpu"]["baseline"] == "fedavg_positive"
    assert rows["fedpu"]["extra"]["rounds"] == 2
    assert "FedPU above FedAvg on the labelled positives" in out["run"]["notes"][1]
