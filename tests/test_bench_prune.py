"""Smoke test of the ManiDP part of benchmarks/prune_cifar10.py's report: a small gated
ResNet on real test images, MACs and latency of both batch-1 rows on the same images, and the
acceptance judged against the fairest dense baseline (seconds; the real run is hours)."""

from __future__ import annotations

import argparse
import copy

import pytest
import torch

import leanvision as lv


@pytest.fixture()
def bench(smoke_benchmark):
    return smoke_benchmark("prune_cifar10")


def test_manidp_rows_and_acceptance_use_the_same_images_and_the_fairest_baseline(
    bench, monkeypatch
):
    from leanvision.layers import gated_blocks
    from leanvision.methods.pruning.manidp import calibrate_thresholds, gate_model

    torch.manual_seed(0)
    dense = lv.create_model("resnet20_cifar", num_classes=10, width=0.5).eval()
    monkeypatch.setattr(bench, "dense_resnet", lambda: copy.deepcopy(dense))
    gated = gate_model(copy.deepcopy(dense)).eval()
    for blk in gated_blocks(gated):
        for g in (blk.gate1, blk.gate2):
            torch.nn.init.normal_(g.fc2.weight, std=0.01)
    calibrate_thresholds(gated, torch.randn(8, 3, 32, 32), remain_rate=0.6)
    data = lv.load_data(
        "cifar10", root=bench.DATA, batch_size=8, max_train=16, max_val=8, max_test=8
    )
    args = argparse.Namespace(batch1_images=6, threads=1)
    rows, tables = bench._manidp(args, data, gated)
    dense_row, gated_row = rows
    assert dense_row["name"] == "resnet56_batch1" and gated_row["name"] == "resnet56_manidp"
    for r in rows:  # both timed on the MACs' images, not on one random input
        assert "mean over 6 test images" in r["latency_ms"]["backend"]
    table = tables[1]
    cols = table["columns"]
    for row in table["rows"]:
        fairest = row[cols.index("fairest gain ÷ MACs gain")]
        kept = row[cols.index("gain over all kept ×")]
        fastest = row[cols.index("gain over fastest dense ×")]
        aten = row[cols.index("gain over ATen dense ×")]
        macs_gain = tables[0]["rows"][0][-1]
        # the verdict reads the smaller gain: the fairest baseline, never the kindest
        assert fairest == pytest.approx(min(kept, fastest) / macs_gain, abs=0.02)
        assert fastest <= aten + 0.01  # the fastest dense path is at least as fast as ATen's
    notes = bench._acceptance(rows, tables)
    assert any("judged against the fairest dense baseline" in n for n in notes)
