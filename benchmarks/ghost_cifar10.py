"""ResNet-56 vs Ghost-ResNet-56 (s=2, d=3) on CIFAR-10.

Claim (GhostNet, CVPR 2020, Table 3): Ghost-ResNet-56 reaches 92.7% top-1 at ~63 MMACs
against ResNet-56's 93.0% at 125 MMACs. Both models are trained here from scratch with the
same schedule (SGD, cosine, wd 5e-4, crop+flip); the epoch budget is set by what 2 CPU cores
can do (the paper trains for ~200+ epochs), so absolute accuracies are lower; the comparison
is at equal budget.

    python benchmarks/ghost_cifar10.py train --which baseline --epochs 15 --threads 1 &
    python benchmarks/ghost_cifar10.py train --which ghost --epochs 15 --threads 1 &
    wait; python benchmarks/ghost_cifar10.py report --epochs 15

Training resumes from ``runs/bench_ghost_cifar10/<which>/last.pt`` when re-run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

import leanvision as lv
from leanvision.deploy import deploy, supported
from leanvision.engine import evaluate, load_checkpoint
from leanvision.methods.ghost import ghostify
from leanvision.pipeline import cpu_info, measure_models
from leanvision.profiling import compare
from leanvision.report import check_results_target, write_results

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10"
RUNS = ROOT / "runs" / "bench_ghost_cifar10"
OUT = ROOT / "benchmarks" / "results" / "ghost_cifar10"
PAPER = {
    "resnet56": {"top1": 93.0, "macs": 125e6, "source": "GhostNet (CVPR 2020) Table 3"},
    "ghost_resnet56_s2d3": {"top1": 92.7, "macs": 63e6, "source": "GhostNet (CVPR 2020) Table 3"},
}


def build(which: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = lv.create_model("resnet56_cifar", num_classes=10)
    if which == "ghost":
        model, _ = ghostify(model, ratio=2, dw_size=3)
    return model


def cmd_train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    data = lv.load_data("cifar10", root=args.data, batch_size=128, seed=0)
    model = build(args.which)
    lv.train(
        model,
        data,
        epochs=args.epochs,
        lr=0.1,
        weight_decay=5e-4,
        seed=0,
        out_dir=str(RUNS / args.which),
        resume=True,
        num_threads=args.threads,
        progress=sys.stderr.isatty(),
    )


def cmd_report(args: argparse.Namespace) -> None:
    check_results_target(OUT, allow_dirty=args.allow_dirty)  # fail now, not after hours
    torch.set_num_threads(args.threads)
    data = lv.load_data("cifar10", root=args.data, batch_size=128, seed=0)
    models, epochs, bests = {}, {}, {}
    for which, name in (("baseline", "resnet56"), ("ghost", "ghost_resnet56_s2d3")):
        state = load_checkpoint(RUNS / which / "last.pt")
        model = build(which)
        model.load_state_dict(state["model"])
        models[name], epochs[name] = model, int(state["epoch"])
        best = bests[name] = state["best"].get("val_top1")
        print(f"{name}: {state['epoch']} epochs, best val top-1 {best}")
    rows = measure_models(
        models,
        data,
        baseline="resnet56",
        method_chains={"ghost_resnet56_s2d3": ["ghost"]},
        batch=args.batch,
        threads=args.threads,
        seed=0,
        paper=PAPER,
        notes={
            n: f"trained {e} epochs from scratch on 45k CIFAR-10 images (5k held out for "
            f"validation); top-1 on the 10k test set"
            for n, e in epochs.items()
        },
    )
    base, ghost = rows
    lat_ratio = ghost["latency_ms"]["median"] / base["latency_ms"]["median"]
    mac_ratio = ghost["macs"] / base["macs"]
    share = (1 / lat_ratio) / (1 / mac_ratio)  # speed-up over MACs gain
    ghost["notes"] += (
        f". MACs ×{mac_ratio:.2f} and latency ×{lat_ratio:.2f} of ResNet-56 in eager PyTorch "
        f"(channels-last) on this CPU: {share:.2f} of the MAC cut turns into speed"
        + (
            "."
            if share >= 0.8
            else ". Interpretation (not measured here): the cheap depthwise 3×3 convs and the "
            "concat move as much memory as the MACs they save, and the narrow primary convs "
            "underfill the CPU's vector lanes; the deployed table below times the fused Ghost "
            "kernel and the other runtimes."
        )
    )
    for row, name in zip(rows, ("resnet56", "ghost_resnet56_s2d3")):
        row["extra"] = {"epochs": epochs[name], "best_val_top1": bests[name]}
    table = deploy_table(models, data, args, mac_gain=base["macs"] / ghost["macs"])
    path = write_results(
        OUT,
        rows,
        run_info={
            "name": "Ghost-ResNet-56 vs ResNet-56 on CIFAR-10",
            "description": "GhostNet's CIFAR-10 claim at a 2-CPU-core training budget: same "
            f"schedule for both ({max(epochs.values())} epochs, SGD lr 0.1 cosine, "
            "batch 128, wd 5e-4). Latency: batch "
            f"{args.batch}, {args.threads} threads, both timed interleaved in one "
            "process.",
            "command": "python benchmarks/ghost_cifar10.py train --which baseline|ghost --epochs "
            f"{max(epochs.values())} && python benchmarks/ghost_cifar10.py report",
            "cpu": cpu_info(),
            "tables": [table],
            "notes": deploy_notes(table, base["macs"] / ghost["macs"]),
        },
    )
    print(f"wrote {path}")


# (backend, precision) pairs of the deploy table, where this machine runs them
DEPLOYS = [
    ("torch", "fp32"),
    ("leanvision", "fp32"),
    ("inductor", "fp32"),
    ("onnxruntime", "fp32"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
]
BATCHES = (32, 1)


def deploy_table(models: dict, data: Any, args: argparse.Namespace, mac_gain: float) -> dict:
    """Both models on every runtime, batch 32 and 1: deployed test top-1, and latency with
    the two models of a runtime timed side by side in one process (issue 19's bar: speed-up
    >= 0.8 x the MACs gain)."""
    size = tuple(data.input_size)
    rows = []
    for backend, precision in DEPLOYS:
        if backend not in supported(precision):
            continue
        for batch in BATCHES:
            pair = {
                name: deploy(m, backend, precision, size, batch=batch, threads=args.threads)
                for name, m in models.items()
            }
            with torch.inference_mode():
                stats = compare(pair, size, batch=batch, threads=args.threads, repeats=30)
            tops = {}
            if batch == BATCHES[0]:
                test = data.loader("test")
                tops = {n: round(evaluate(d, test)["top1"], 2) for n, d in pair.items()}
            dense, ghost = (stats[n] for n in ("resnet56", "ghost_resnet56_s2d3"))
            speedup = dense.median_ms / ghost.median_ms
            rows.append(
                [
                    backend,
                    precision,
                    batch,
                    round(dense.median_ms, 3),
                    round(ghost.median_ms, 3),
                    round(speedup, 3),
                    round(speedup / mac_gain, 3),
                    tops.get("resnet56"),
                    tops.get("ghost_resnet56_s2d3"),
                    ghost.backend,
                ]
            )
            print(rows[-1])
    return {
        "title": "Deployed: ResNet-56 and Ghost-ResNet-56 on each CPU runtime (lv.deploy), "
        f"the two timed side by side per runtime, {args.threads} threads",
        "columns": [
            "runtime",
            "precision",
            "batch",
            "ResNet-56 ms",
            "Ghost ms",
            "speed-up",
            "speed-up / MACs gain",
            "ResNet-56 test top-1 %",
            "Ghost test top-1 %",
            "Ghost backend (what ran)",
        ],
        "rows": rows,
    }


def deploy_notes(table: dict, mac_gain: float) -> list[str]:
    """The acceptance lines, computed from the table, per batch: the speed-up on the runtime
    where it is largest, and the fairest one, each model on its own fastest fp32 runtime (the
    bar: >= 0.8 x the MACs gain, judged on the fairest)."""
    notes = []
    for batch in BATCHES:
        at = [r for r in table["rows"] if r[2] == batch]
        if not at:
            continue
        best = max(at, key=lambda r: r[5])
        fp32 = [r for r in at if r[1] == "fp32"]  # the fairest pair: one precision
        dense = min(fp32, key=lambda r: r[3])
        ghost = min(fp32, key=lambda r: r[4])
        fair = dense[3] / ghost[4]
        met = fair / mac_gain >= 0.8
        notes.append(
            f"Batch {batch}: on one runtime, Ghost-ResNet-56 is at most {best[5]:.2f}x as fast "
            f"as ResNet-56 ({best[0]} {best[1]}); each on its fastest fp32 runtime (ResNet-56 "
            f"{dense[3]:.2f} ms on {dense[0]} {dense[1]}, Ghost {ghost[4]:.2f} ms on "
            f"{ghost[0]} {ghost[1]}) {fair:.2f}x, {fair / mac_gain:.2f} of the {mac_gain:.2f}x "
            f"MACs gain (bar 0.8: {'met' if met else 'not met'})."
        )
    return notes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--allow-dirty",
        action="store_true",
        default=None,
        help="write committed results from a tree with uncommitted changes (recorded as dirty)",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--which", choices=["baseline", "ghost"], required=True)
    t.add_argument("--epochs", type=int, default=15)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--data", default=str(DATA))
    r = sub.add_parser("report")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--batch", type=int, default=32)
    r.add_argument("--data", default=str(DATA))
    args = p.parse_args()
    {"train": cmd_train, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
