"""Smoke test of benchmarks/ptq_vit_cifar10.py: a tiny random ViT is calibrated in three
variants, deployed on onnxruntime and timed; the results file has every row and the table."""

from __future__ import annotations

import json

import pytest


@pytest.fixture()
def bench(smoke_benchmark, monkeypatch):
    pytest.importorskip("onnxruntime")
    mod = smoke_benchmark("ptq_vit_cifar10")
    keep = ("w8a8", "w6a6_max", "mixed6")
    monkeypatch.setattr(mod, "VARIANTS", {k: mod.VARIANTS[k] for k in keep})
    return mod


def test_ptq_vit_benchmark_smoke(bench):
    bench.main(["calibrate"])
    for v in bench.VARIANTS:
        summary = json.loads((bench.RUNS / v / "summary.json").read_text())
        assert summary["config"]["num_images"] == 32
        assert abs(summary["top1_onnxruntime"] - summary["top1_fake_quant"]) <= 5.0  # 64 images
    bench.main(["calibrate"])  # resumable: done variants are skipped
    bench.main(["report"])
    res = json.loads((bench.OUT / "results.json").read_text())
    names = {r["name"] for r in res["models"]}
    assert names == {"vit_fp32"} | {f"vit_{v}" for v in bench.VARIANTS}
    rows = {r["name"]: r for r in res["models"]}
    assert rows["vit_fp32"]["extra"]["int8_macs"] == 0
    assert rows["vit_w8a8"]["extra"]["int8_macs"] > 0
    (table,) = res["run"]["tables"]
    assert {r[1] for r in table["rows"]} == {1, 8} and all(r[5] > 0 for r in table["rows"])
    assert any("Acceptance, W8A8" in n for n in res["run"]["notes"])
