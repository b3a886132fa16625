"""benchmarks/deploy_cpu.py's notes: computed from its table, each model against the dense one
on the fastest runtime of the same precision and batch (the fairest pair), bar by method."""

from __future__ import annotations

import pytest


@pytest.fixture()
def bench(benchmark_module):
    return benchmark_module("deploy_cpu")


def test_notes_judge_each_model_on_its_fastest_runtime(bench):
    names = ["resnet56", "l1_default", "ghost"]
    gains = {"resnet56": 1.0, "l1_default": 2.0, "ghost": 2.0}
    rows = [  # runtime, precision, batch, ms per model, backends
        ["leanvision", "fp32", 32, 40.0, 21.0, 30.0, "lv"],
        ["openvino", "fp32", 32, 36.0, 22.0, 26.0, "ov"],
        ["openvino", "bf16", 32, 20.0, 10.0, 20.0, "ov"],
    ]
    out = bench.notes(rows, names, gains)
    text = "\n".join(out)
    # l1: fastest dense 36 ms (OpenVINO) / fastest l1 21 ms = 1.71x, 0.86 of 2x: below 0.9
    assert "fp32: l1_default 1.71x faster than ResNet-56" in text
    assert "(0.86 of its 2.00x MACs gain; bar 0.9: not met)" in text
    # ghost: 36 / 26 = 1.38x, 0.69 of 2x; bar 0.8
    assert "fp32: ghost 1.38x faster" in text and "bar 0.8: not met" in text
    # bf16 has only OpenVINO: 20 / 10 = 2x, met
    assert "bf16: l1_default 2.00x faster" in text and "bar 0.9: met" in text
    # the own runtime against OpenVINO, model by model
    own = "Batch 32, fp32, resnet56: fastest on openvino (36.00 ms); leanvision's runtime"
    assert f"{own} 0.90x OpenVINO's speed." in out
