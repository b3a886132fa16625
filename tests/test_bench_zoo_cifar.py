"""Smoke test of benchmarks/zoo_cifar.py: a sanity run and a TinyNet pair train two steps, and
the reports name how each trained and a command that reproduces the runs (seconds; the real
runs are hours)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture()
def bench(smoke_benchmark):
    return smoke_benchmark("zoo_cifar")


def test_zoo_cifar_sanity_smoke(bench):
    with pytest.raises(SystemExit, match="no sanity runs"):
        bench.main(["report", "sanity"])
    with pytest.raises(SystemExit, match="unknown sanity run"):
        bench.main(["sanity", "--only", "resnet_nope"])
    bench.main(["sanity", "--only", "ptnt_ti", "--epochs", "1"])
    summary = json.loads((bench.RUNS / "sanity" / "ptnt_ti" / "summary.json").read_text())
    assert summary["threads"] == 1 and "commit" in summary["git"]
    bench.main(["report", "sanity"])
    out = json.loads((bench.OUT / "zoo_cifar_sanity" / "results.json").read_text())
    (row,) = out["models"]
    assert row["name"] == "ptnt_ti" and "1 epochs on 8000 training images" in row["notes"]
    assert "trained 1 epochs" in row["notes"] and "at commit" in row["notes"]
    assert out["run"]["command"].startswith(
        "python benchmarks/zoo_cifar.py sanity --only ptnt_ti --epochs 1 && "
    )


def test_zoo_cifar_train_and_tinynet_smoke(bench):
    bench.main(["train", "--tag", "sanity/r20", "--model", "resnet20_cifar", "--kwargs", "{}",
                "--opt", "sgd", "--epochs", "1", "--max-train", "64"])  # fmt: skip
    bench.main(["report", "sanity"])
    out = json.loads((bench.OUT / "zoo_cifar_sanity" / "results.json").read_text())
    # not one of SANITY's runs: the command names the run's own arguments
    command = out["run"]["command"]
    assert "train --tag sanity/r20 --model resnet20_cifar --kwargs '{}' --opt sgd" in command
    bench.main(["tinynet", "--budgets", "0.1", "--epochs", "1", "--max-train", "64"])
    bench.main(["report", "tinynet"])
    out = json.loads((bench.OUT / "zoo_tinynet" / "results.json").read_text())
    assert {r["name"] for r in out["models"]} == {"tiny_c0.1", "inverse_c0.1"}
    (table,) = out["run"]["tables"]
    assert len(table["rows"]) == 1 and "budgets" in table["notes"]
    assert all("trained 1 epochs" in r["notes"] for r in out["models"])
    assert out["run"]["command"].startswith(
        "python benchmarks/zoo_cifar.py tinynet --budgets 0.1 --epochs 1 --max-train 64 "
    )
