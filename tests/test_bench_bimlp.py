"""Smoke test of benchmarks/bimlp_cifar10.py: both variants train a few steps and the report
writes a results file with OPs-matched rows (seconds; the real runs are hours)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bimlp_cifar10.py"


@pytest.fixture()
def bench(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_bimlp_cifar10", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not (mod.DATA / "train.zip").exists():
        pytest.skip(f"CIFAR-10 not found at {mod.DATA}")
    monkeypatch.setattr(mod, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(mod, "OUT", tmp_path / "out")
    monkeypatch.setattr(mod, "SMOKE", True)
    yield mod
    torch.set_num_threads(1)


def test_bimlp_benchmark_smoke(bench):
    small = ["--max-train", "64", "--max-val", "32", "--max-test", "64"]
    for variant in bench.VARIANTS:
        bench.main([*small, "train", "--variant", variant, "--epochs", "1", "--max-steps", "2"])
        assert (bench.RUNS / variant / "last.pt").exists()
    bench.main([*small, "report"])
    rows = json.loads((bench.OUT / "results.json").read_text())["models"]
    by_variant = {r["name"].rsplit("_", 1)[-1]: r for r in rows}
    assert set(by_variant) == set(bench.VARIANTS)
    a, b = by_variant["bimlp"], by_variant["plain"]
    assert abs(b["extra"]["ops"] / a["extra"]["ops"] - 1) <= bench.OPS_TOLERANCE
    assert a["bitops"] > 0 and a["baseline"] == b["name"]
    for r in rows:
        assert 0.0 <= r["top1"] <= 100.0 and r["energy_uj"] > 0
