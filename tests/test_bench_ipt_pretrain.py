"""Smoke test of benchmarks/ipt_pretrain.py: both pre-trainings, the four fine-tunings, the two
scratch runs and the report run a few steps each on a tiny IPT (the real runs are hours)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture()
def bench(smoke_benchmark):
    return smoke_benchmark("ipt_pretrain")


def test_ipt_benchmark_smoke(bench):
    with pytest.raises(SystemExit, match="run `pretrain --contrastive on`"):
        bench.main(["finetune", "--target", "sr2", "--contrastive", "on"])
    for c in ("on", "off"):
        bench.main(["pretrain", "--contrastive", c])
    for t in ("sr2", "noise30"):
        for c in ("on", "off"):
            bench.main(["finetune", "--target", t, "--contrastive", c])
        bench.main(["scratch", "--target", t])
    bench.main(["report"])
    out = json.loads((bench.OUT / "results.json").read_text())
    rows = {r["name"]: r for r in out["models"]}
    assert set(rows) == {f"{k}_{t}" for k in ("scratch", "pre_con", "pre_nocon")
                         for t in ("sr2", "noise30")}  # fmt: skip
    assert "psnr@Set5" in rows["pre_con_sr2"]["metrics"]
    assert "psnr@BSD100" in rows["scratch_noise30"]["metrics"]
    # equal steps: the pre-trained runs count their pre-training
    assert rows["pre_con_sr2"]["extra"]["steps"] == 4 and rows["scratch_sr2"]["extra"]["steps"] == 2
    assert out["run"]["notes"][0].startswith("sr2:")
