"""benchmarks/int8_vit_cpu.py: its notes judge each setting against the fairer fp32, and a
smoke run (a tiny ViT) deploys and times every runtime's pair."""

from __future__ import annotations

import json

import pytest


@pytest.fixture()
def bench(benchmark_module):
    return benchmark_module("int8_vit_cpu")


def test_notes_judge_against_the_fairer_fp32(bench):
    rows = [  # px, threads, batch, runtime, fp32 ms, int8 ms, ratio, min, backends
        [32, 2, 8, "onnxruntime", 60.0, 40.0, 1.5, 1.4, "ort"],
        [32, 2, 8, "openvino", 50.0, 20.0, 2.5, 2.3, "ov"],
        [32, 2, 8, "inductor", 80.0, 30.0, 2.67, 2.5, "ind"],
        [32, 1, 8, "openvino", 100.0, 40.0, 2.5, 2.4, "ov"],
    ]
    out = bench.notes(rows)
    text = "\n".join(out)
    # 2 threads: int8 fastest on OpenVINO (20 ms): 2.5x its fp32, 50 / 20 = 2.5x the fastest
    assert "32 px, 2 thread(s), batch 8: int8 fastest on openvino (20.00 ms), 2.50x" in text
    assert "2.50x the fastest fp32 (openvino, 50.00 ms)" in text
    assert out[0].startswith("Acceptance") and "**met**: 2 of 2" in out[0]
    rows[1][5] = 35.0  # OpenVINO int8 slower: 30 ms inductor is fastest, 50 / 30 = 1.67x
    out = bench.notes(rows)
    assert "int8 fastest on inductor" in "\n".join(out)
    assert "**not met**: 1 of 2" in out[0] and "32 px / 2 thr / batch 8" in out[0]


def test_smoke_run_times_every_runtime(bench, monkeypatch):
    monkeypatch.setattr(bench, "SMOKE", True)
    bench.main(["--allow-dirty"])
    res = json.loads((bench.OUT / "results.json").read_text())
    (table,) = res["run"]["tables"]
    assert {r[3] for r in table["rows"]} == set(bench.RUNTIMES)
    for r in table["rows"]:
        assert r[4] > 0 and r[5] > 0 and "int8" in r[8]
    assert res["run"]["notes"][0].startswith("Acceptance")
