"""benchmarks/zoo_sizes.py without timing the zoo: which models it measures, and a report that
refuses to pass a partial zoo off as the whole one."""

from __future__ import annotations

import json

import pytest


@pytest.fixture()
def bench(benchmark_module):
    return benchmark_module("zoo_sizes")


def test_cifar_models_are_left_to_the_cifar_table(bench):
    names = bench.zoo_models()
    for cifar in ("resnet20_cifar", "resnet20_adder", "vgg_small", "resnet56_cifar"):
        assert bench.is_cifar_model(cifar) and cifar not in names
    assert "cmt_ti" in names and "deit_tiny_patch16_224" in names
    assert "edsr_baseline" not in names and bench.is_image_to_image("srnet_custom")


def _row(name: str, median_ms: float, threads: int = 2) -> dict:
    return {
        "name": name,
        "input_size": [3, 32, 32],
        "params": 1000,
        "macs": 10_000,
        "peak_mem_mb": 1.0,
        "latency_ms": {"median": median_ms, "batch": 8, "threads": threads},
    }


def test_report_refuses_missing_or_mixed_measurements(bench, monkeypatch, tmp_path):
    monkeypatch.setattr(bench, "zoo_models", lambda: ["a", "a_circulant2"])
    monkeypatch.setattr(bench, "RUNS", tmp_path / "runs")
    bench.RUNS.mkdir()
    (bench.RUNS / "a.json").write_text(json.dumps(_row("a", 100.0)))
    with pytest.raises(SystemExit, match="not measured yet.*a_circulant2"):
        bench.main(["report"])
    (bench.RUNS / "a_circulant2.json").write_text(json.dumps(_row("a_circulant2", 80.0, 1)))
    with pytest.raises(SystemExit, match="different"):
        bench.main(["report"])
    (bench.RUNS / "a_circulant2.json").write_text(json.dumps(_row("a_circulant2", 80.0)))
    bench.main(["report"])
    out = json.loads((bench.OUT / "results.json").read_text())["run"]
    # the noise note is computed from this run's two names of one network (8 images / 100 ms)
    assert "a 80.0 vs a_circulant2 100.0 img/s" in out["notes"]
    assert out["command"].startswith("python benchmarks/zoo_sizes.py measure --batch 8 --threads 2")
