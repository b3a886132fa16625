"""Pruning with real speed-up on CIFAR-10: channel methods on ResNet-56, token methods on a ViT.

Claims:
* SCOP (NeurIPS 2020): ResNet-56 about −56% MACs at −0.06 pt (beats ℓ1-filter pruning);
* ManiDP (CVPR 2021): per-sample dynamic pruning of ResNet-56 (README example, 0.6 remain);
* DynamicViT (NeurIPS 2021): DeiT-S 4.6 → 2.9 GFLOPs at −0.5 pt with ρ = 0.7;
* Patch slimming (CVPR 2022): DeiT-S about −45% FLOPs at −0.3…−0.4 pt.

Dense models are ours: the ResNet-56 of the distillation benchmark (10 epochs on CIFAR-10)
and its DeiT-Tiny-like student trained alone (``scratch``). Every pruned model is fine-tuned
for the same epochs on the same images. Latency: both models side by side in one process.

    python benchmarks/prune_cifar10.py --threads 1 channels --method l1_filter
    python benchmarks/prune_cifar10.py --threads 1 channels --method scop
    python benchmarks/prune_cifar10.py --threads 1 channels --method manidp
    python benchmarks/prune_cifar10.py --threads 1 tokens --method dynamicvit
    python benchmarks/prune_cifar10.py --threads 1 tokens --method patch_slimming
    python benchmarks/prune_cifar10.py --threads 2 report     # timings: run on a quiet machine
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import leanvision as lv
from leanvision.engine import load_checkpoint
from leanvision.pipeline import cpu_info, measure_models
from leanvision.profiling import compare, count_ops
from leanvision.report import write_results

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10"
DISTILL = ROOT / "runs" / "bench_distill_cifar10"
RUNS = ROOT / "runs" / "bench_prune_cifar10"
OUT = ROOT / "benchmarks" / "results" / "prune_cifar10"
VIT = {"img_size": 32, "patch_size": 4, "num_classes": 10}

CHANNEL = {
    # widths rounded to 8: odd widths (11 of 16) made the pruned net barely faster on CPU
    "l1_filter": {"target_macs_ratio": 0.5, "round_to": 8},
    "scop": {"target_macs_ratio": 0.5, "round_to": 8, "control_epochs": 2},
    "manidp": {"target_remain_rate": 0.6},
}
TOKEN = {
    "dynamicvit": {"keep_ratio": 0.7},
    "patch_slimming": {"target_macs_ratio": 0.6, "calib_images": 1024},
}
PAPER = {
    "scop": {"macs_cut": 56.0, "top1_delta": -0.06, "source": "SCOP, ResNet-56 CIFAR-10"},
    "dynamicvit": {"macs_cut": 37.0, "top1_delta": -0.5, "source": "DynamicViT, DeiT-S ImageNet"},
    "patch_slimming": {"macs_cut": 45.0, "top1_delta": -0.35, "source": "Patch slimming, DeiT-S"},
}


def load(args: argparse.Namespace, batch_size: int) -> Any:
    return lv.load_data(
        "cifar10",
        root=args.data,
        batch_size=batch_size,
        seed=0,
        max_train=args.max_train,
        max_val=2000,
    )


def dense_resnet() -> torch.nn.Module:
    model = lv.create_model("resnet56_cifar", num_classes=10)
    model.load_state_dict(load_checkpoint(DISTILL / "teacher" / "last.pt")["model"])
    return model.eval()


def dense_vit() -> torch.nn.Module:
    model = lv.create_model("deit_tiny_patch16_224", **VIT)
    model.load_state_dict(load_checkpoint(DISTILL / "scratch" / "last.pt")["model"])
    return model.eval()


def _run(args: argparse.Namespace, method: str, dense: torch.nn.Module, hp: dict, data: Any):
    out = RUNS / method
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = lv.compress(
        dense,
        method,
        data,
        finetune_epochs=args.epochs,
        max_steps=args.max_steps,
        seed=0,
        out_dir=str(out / "train"),
        resume=True,
        progress=sys.stderr.isatty(),
        **hp,
    )
    lv.save(model, out / "model.pt")
    summary = {"method": method, "epochs": args.epochs, "max_train": args.max_train}
    summary["wall_s"] = time.perf_counter() - t0
    summary.update(hyper=hp)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


def cmd_channels(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    hp = dict(CHANNEL[args.method], lr=0.05, weight_decay=5e-4)
    _run(args, args.method, dense_resnet(), hp, load(args, 128))


def cmd_tokens(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    hp = dict(TOKEN[args.method], lr=5e-4, opt="adamw", weight_decay=0.05)
    _run(args, args.method, dense_vit(), hp, load(args, 64))


def _images(data: Any, n: int) -> list[torch.Tensor]:
    out = []
    for x, _ in data.test:
        out.extend(x.split(1))
        if len(out) >= n:
            break
    return out[:n]


def _batch1_latency(models: dict[str, torch.nn.Module], images: list[torch.Tensor], threads: int):
    """Mean batch-1 latency over real test images, the models interleaved image by image."""
    runners = {}
    for name, m in models.items():
        cycle = itertools.cycle(images)
        runners[name] = lambda m=m, c=cycle: m(next(c))
    stats = compare(runners, (1, 3, 32, 32), threads=threads, repeats=len(images), warmup=10)
    return {k: v.mean_ms if hasattr(v, "mean_ms") else v.median_ms for k, v in stats.items()}


def cmd_report(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    data = load(args, 128)
    rows = []
    # channel methods: batch-32 latency side by side with the dense ResNet-56
    static = {"resnet56": dense_resnet()}
    for m in ("l1_filter", "scop"):
        if (RUNS / m / "model.pt").exists():
            static[f"resnet56_{m}"] = lv.load(RUNS / m / "model.pt")
    rows += measure_models(
        static,
        data,
        baseline="resnet56",
        method_chains={k: [k.split("_", 1)[1]] for k in static if k != "resnet56"},
        batch=args.batch,
        threads=args.threads,
        paper={f"resnet56_{k}": v for k, v in PAPER.items()},
    )
    tables = []
    if (RUNS / "manidp" / "model.pt").exists():
        from leanvision.methods.pruning.manidp import sample_macs

        gated = lv.load(RUNS / "manidp" / "model.pt")
        images = _images(data, args.batch1_images)
        macs = sample_macs(gated, torch.cat(images))
        dense_macs = count_ops(static["resnet56"], (1, 3, 32, 32)).macs
        lat = _batch1_latency({"dense": static["resnet56"], "manidp": gated}, images, args.threads)
        rows += measure_models(
            {"resnet56": static["resnet56"], "resnet56_manidp": gated},
            data,
            baseline="resnet56",
            method_chains={"resnet56_manidp": ["manidp"]},
            batch=1,
            threads=args.threads,
        )[1:]
        q = statistics.quantiles(macs, n=10)
        tables.append(
            {
                "title": "ManiDP: per-sample MACs and batch-1 latency on test images",
                "columns": [
                    "dense MMACs",
                    "mean MMACs",
                    "p10",
                    "p90",
                    "MACs gain ×",
                    "latency dense ms",
                    "latency manidp ms",
                    "latency gain ×",
                ],
                "rows": [
                    [
                        round(dense_macs / 1e6, 1),
                        round(statistics.mean(macs) / 1e6, 1),
                        round(q[0] / 1e6, 1),
                        round(q[-1] / 1e6, 1),
                        round(dense_macs / statistics.mean(macs), 2),
                        round(lat["dense"], 3),
                        round(lat["manidp"], 3),
                        round(lat["dense"] / lat["manidp"], 2),
                    ]
                ],
            }
        )
    token = {"vit": dense_vit()}
    for m in ("dynamicvit", "patch_slimming"):
        if (RUNS / m / "model.pt").exists():
            token[f"vit_{m}"] = lv.load(RUNS / m / "model.pt")
    if len(token) > 1:
        rows += measure_models(
            token,
            data,
            baseline="vit",
            method_chains={k: [k.split("_", 1)[1]] for k in token if k != "vit"},
            batch=args.batch,
            threads=args.threads,
            paper={f"vit_{k}": v for k, v in PAPER.items()},
        )
    run = {
        "name": "Pruning with real speed-up on CIFAR-10",
        "description": "Dense models trained by us; pruned models fine-tuned "
        f"{args.epochs} epochs on {args.max_train} images. Latency side by side in one process.",
        "command": "see benchmarks/prune_cifar10.py",
        "cpu": cpu_info(),
        "tables": tables,
    }
    print(f"wrote {write_results(OUT, rows, run_info=run)}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-train", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=3)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("channels")
    c.add_argument("--method", choices=list(CHANNEL), required=True)
    c.add_argument("--max-steps", type=int, default=None)
    t = sub.add_parser("tokens")
    t.add_argument("--method", choices=list(TOKEN), required=True)
    t.add_argument("--max-steps", type=int, default=None)
    r = sub.add_parser("report")
    r.add_argument("--batch", type=int, default=32)
    r.add_argument("--batch1-images", type=int, default=200)
    args = p.parse_args(argv)
    {"channels": cmd_channels, "tokens": cmd_tokens, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
