"""Smoke test of benchmarks/ptq_vit_cifar10.py: a tiny random ViT is calibrated in three
variants, deployed on onnxruntime and OpenVINO and timed; the results file has every row."""

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
    assert "int8" in rows["vit_w8a8"]["latency_ms"]["backend"]  # deployed, on its runtime
    assert rows["vit_fp32"]["latency_ms"]["median"] > 0
    (acc,) = [n for n in res["run"]["notes"] if "Acceptance, W8A8" in n]
    assert "onnxruntime" in acc and "openvino" in acc  # the deployed top-1 on each runtime
