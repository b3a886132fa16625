"""Smoke test of benchmarks/winograd_adder_cifar10.py: the direct adder net and two Winograd
variants train two steps, the layers are timed, and the report names what ran (seconds; the
real runs are hours)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture()
def bench(smoke_benchmark):
    return smoke_benchmark("winograd_adder_cifar10")


def test_winograd_adder_benchmark_smoke(bench):
    small = ["--max-train", "64", "--max-val", "64", "--max-test", "64"]
    with pytest.raises(SystemExit, match="speed"):
        bench.main([*small, "report"])  # the layer timing comes first
    bench.main(["speed"])
    for variant in ("adder", "balanced_a_anneal", "standard_p1"):
        bench.main([*small, "train", "--variant", variant, "--epochs", "1"])
        assert "commit" in json.loads((bench.RUNS / variant / "summary.json").read_text())["git"]
    # a finished run leaves its part (the tested network's row), written again by `part`
    part_file = bench.parts_dir() / "adder_e1_n64.json"
    part = json.loads(part_file.read_text())
    assert part["test_images"] == 64 and part["trained_git"]["commit"] and part["adder_adds"] > 0
    part_file.unlink()
    bench.main([*small, "part", "--variant", "adder"])
    assert json.loads(part_file.read_text())["top1"] == part["top1"]
    # a capped run writes no part: it is not the schedule it names
    bench.main([*small, "train", "--variant", "window_sum_p1", "--epochs", "2", "--max-steps", "1"])
    assert not list(bench.parts_dir().glob("window_sum_p1_*"))
    bench.main([*small, "report"])
    out = json.loads((bench.OUT / "results.json").read_text())
    assert {r["name"] for r in out["models"]} == {
        "resnet20_adder", "resnet20_balanced_a_anneal", "resnet20_standard_p1",
    }  # fmt: skip
    acc, adds, speed = out["run"]["tables"]
    by = {r[0]: r for r in acc["rows"]}
    assert by["adder"][-1] == 0.0 and "1 epochs on 64 images" in acc["title"]
    assert by["balanced_a_anneal"][1] == "balanced_a" and by["standard_p1"][2] == "1 throughout"
    # the Winograd variants need about half the direct net's adder-layer additions
    assert by["balanced_a_anneal"][4] < 0.55 * by["adder"][4]
    assert adds["rows"][0][-3] == adds["rows"][0][-2]  # the profiler agrees with the formula
    layers = {r[0]: r for r in speed["rows"]}
    assert "winograd_adder_forward" in layers["winograd_adder"][-1]  # the kernel ran
    assert any(n.startswith("Acceptance, layer speed") for n in out["run"]["notes"])
    # the command reproduces the schedule that ran
    assert "--max-train 64 train --variant standard_p1 --epochs 1" in out["run"]["command"]


def test_winograd_adder_findings_at_the_full_schedule(bench):
    """At the AdderNet row's schedule the report names the variants still to train, and takes
    lowbit_cifar10's AdderNet row (trained at that schedule) as the direct reference."""
    rows = [["balanced_a_p1", "balanced_a", "1 throughout", 80.0, 41.5],
            ["standard_p1", "standard", "1 throughout", 70.0, 41.5]]  # fmt: skip
    notes = bench._findings([[bench.LOWBIT_ROW, "—", "—", 81.0, 81.2], *rows], *bench.FULL)
    assert "6 of 8 Winograd variants not trained yet" in notes[0]
    assert "balanced_a_anneal" in notes[0] and "balanced_a_p1" not in notes[0]
    assert any("(direct AdderNet 81.00 %)" in n for n in notes)
    assert any("balanced beats standard (p1): confirmed" in n for n in notes)
    assert not any("(anneal)" in n for n in notes)  # no standard_anneal row: nothing to compare
    lowbit = bench._lowbit_adder()
    if lowbit is not None:  # the committed lowbit results hold the full-schedule row
        assert lowbit["notes"].startswith("15 epochs on 45000 images")


def test_winograd_adder_part_note_names_a_device_run(bench):
    """A run trained on a lent GPU is named as such in its part: the device (from the
    checkpoint's record) and the core backward that ran there."""
    record = {"epochs": 15, "wall_s": 300.0, "stretches": [{"device": "NVIDIA H100"}],
              "commits": [("0123456789abcdef", None)], "devices": ["NVIDIA H100"],
              "unrecorded_epochs": 0, "unrecorded_train_s": 0.0}  # fmt: skip
    summary = {"max_train": 45000, "device": "cuda", "threads": 2,
               "core_backward": "torch.compile(inductor)"}  # fmt: skip
    note = bench._train_note(record, summary)
    assert note.startswith("15 epochs, 5 min on NVIDIA H100, at commit 0123456789 on 45000")
    assert note.endswith("(fp32; core backward: torch.compile(inductor)); tested here, on the CPU")
