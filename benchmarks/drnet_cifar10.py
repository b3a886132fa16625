"""DRNet on CIFAR-10: ResNet-20 with a resolution predictor (32/24/16) against the same network
trained and tested at a fixed resolution, 32 and 24.

    python benchmarks/drnet_cifar10.py train --model fixed32   # each resumes
    python benchmarks/drnet_cifar10.py train --model fixed24
    python benchmarks/drnet_cifar10.py train --model drnet
    python benchmarks/drnet_cifar10.py report    # -> benchmarks/results/drnet_cifar10/

DRNet's claim (NeurIPS 2021): at matched average MACs it is more accurate than the fixed-resolution
network, or at matched accuracy it needs fewer MACs and less measured time. The three train with
one schedule (``SCHEDULE``, from scratch); ``fixed24`` trains and tests on the images resized to
24×24 (bilinear, antialiased), a fixed-resolution network near DRNet's MACs target. DRNet's MACs
depend on the image: its mean over the 10k test images is the predictor's plus each resolution's
MACs times the share of images sent there (the shares are reported). Latency: every model timed
side by side in one process, batch 1, on the first ``TIME_IMAGES`` test images (each at the
resolution its model reads).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch

import leanvision as lv
from leanvision.engine import training_note, training_record
from leanvision.methods.drnet import resolution_macs
from leanvision.pipeline import cpu_info
from leanvision.profiling import OnInputs, compare, count_ops
from leanvision.provenance import git_state
from leanvision.report import check_results_target, write_results

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10"
RUNS = ROOT / "runs" / "bench_drnet_cifar10"
OUT = ROOT / "benchmarks" / "results" / "drnet_cifar10"
SMOKE = False  # tests set it: a few steps everywhere

MODEL = "resnet20_cifar"
SCHEDULE = {"epochs": 10, "lr": 0.1, "weight_decay": 5e-4, "opt": "sgd"}
SIZES = {"fixed32": 32, "fixed24": 24, "drnet": 32}
DRNET = {"resolutions": [32, 24, 16], "flops_target": 0.6, "eta": 1.0}
TIME_IMAGES = 64
COMMAND = " && ".join([f"python benchmarks/drnet_cifar10.py train --model {m}" for m in SIZES]
                      + ["python benchmarks/drnet_cifar10.py report"])  # fmt: skip


def _data(args: argparse.Namespace, size: int) -> Any:
    limits = {"max_train": 64, "max_val": 32, "max_test": 32} if SMOKE else {}
    return lv.load_data("cifar10", root=args.data, batch_size=128, seed=0,
                        image_size=None if size == 32 else size, **limits)  # fmt: skip


def cmd_train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = RUNS / args.model
    data = _data(args, SIZES[args.model])
    torch.manual_seed(0)
    model = lv.create_model(MODEL, num_classes=10)
    options = {"lr": SCHEDULE["lr"], "weight_decay": SCHEDULE["weight_decay"],
               "opt": SCHEDULE["opt"], "seed": 0, "out_dir": str(out), "resume": True,
               "num_threads": args.threads, "progress": sys.stderr.isatty(),
               "max_steps": 2 if SMOKE else None, "device": args.device,
               "amp": False}  # fmt: skip
    epochs = 1 if SMOKE else SCHEDULE["epochs"]
    if args.model == "drnet":
        model = lv.compress(model, "drnet", data=data, finetune_epochs=epochs, **DRNET, **options)
    else:
        model = lv.train(model, data, epochs=epochs, **options).model
    lv.save(model.eval(), out / "model.pt")
    print(f"{args.model}: saved {out / 'model.pt'}")


@torch.no_grad()
def _shares(net: Any, loader: Any) -> list[float]:
    """The share of the images DRNet sent to each resolution."""
    counts = torch.zeros(len(net.resolutions))
    for x, _ in loader:
        net(x)
        counts += torch.bincount(net.last_resolutions, minlength=len(counts)).float()
    return (counts / counts.sum()).tolist()


def cmd_report(args: argparse.Namespace) -> None:
    check_results_target(OUT, allow_dirty=args.allow_dirty)
    for m in SIZES:
        if not (RUNS / m / "model.pt").exists():
            raise SystemExit(f"{RUNS / m / 'model.pt'} is missing: run `train --model {m}` first")
    torch.set_num_threads(args.threads)
    models = {m: lv.load(RUNS / m / "model.pt").eval() for m in SIZES}
    data = {m: _data(args, s) for m, s in SIZES.items()}
    inputs = {m: [x[None] for x, _ in list(data[m].test_set)[:TIME_IMAGES]] for m in SIZES}
    with torch.inference_mode():
        lat = compare({m: OnInputs(models[m], inputs[m]) for m in SIZES}, batch=1,
                      threads=args.threads, warmup=1, repeats=3 if SMOKE else 20)  # fmt: skip
    net = models["drnet"]
    shares = _shares(net, data["drnet"].test)
    per_res = resolution_macs(net)
    pred_macs = int(count_ops(net.predictor, (3, 32, 32)).macs)
    rows, table = [], []
    for m, model in models.items():
        acc = lv.evaluate(model, data[m].test)
        if m == "drnet":
            macs = pred_macs + sum(s * c for s, c in zip(shares, per_res, strict=True))
        else:
            macs = count_ops(model, (3, SIZES[m], SIZES[m])).macs
        how = training_note(training_record(RUNS / m / "last.pt"), args.threads)
        per_image_ms = lat[m].median_ms / TIME_IMAGES
        rows.append({
            "name": m, "dataset": "cifar10", "split": "test", "top1": acc["top1"],
            "top5": acc["top5"], "params": sum(p.numel() for p in model.parameters()),
            "macs": round(macs), "latency_ms": lat[m].as_result(), "seed": 0,
            "method_chain": ["drnet"] if m == "drnet" else [],
            **({"baseline": "fixed32"} if m != "fixed32" else {}),
            "notes": f"trained {how}; latency: {TIME_IMAGES} test images one by one per call",
            "extra": {"resolution_shares": dict(zip(map(str, DRNET["resolutions"]), shares,
                                                    strict=True)) if m == "drnet" else None,
                      "macs_per_resolution": per_res if m == "drnet" else None},
        })  # fmt: skip
        table.append([m, round(acc["top1"], 2), round(macs / 1e6, 2), round(per_image_ms, 3)])
    by = {r["name"]: r for r in rows}
    d, f32, f24 = by["drnet"], by["fixed32"], by["fixed24"]
    matched_macs = d["macs"] <= f24["macs"] and d["top1"] > f24["top1"]
    matched_acc = (d["top1"] >= f32["top1"] and d["macs"] < f32["macs"]
                   and lat["drnet"].median_ms < lat["fixed32"].median_ms)  # fmt: skip
    notes = [
        "DRNet sent " + ", ".join(f"{100 * s:.1f} % of the test images to {r}x{r}"
                                  for r, s in zip(DRNET["resolutions"], shares, strict=True))
        + f"; mean MACs {d['macs'] / 1e6:.2f} M (predictor {pred_macs / 1e6:.2f} M).",
        f"Against fixed 24x24 ({f24['macs'] / 1e6:.2f} M MACs): DRNet {d['top1']:.2f} % vs "
        f"{f24['top1']:.2f} % at {d['macs'] / f24['macs']:.2f}x its MACs; against fixed 32x32: "
        f"{d['top1']:.2f} % vs {f32['top1']:.2f} % at {d['macs'] / f32['macs']:.2f}x its MACs "
        f"and {lat['fixed32'].median_ms / lat['drnet'].median_ms:.2f}x its speed. The claim "
        + ("holds" if matched_macs or matched_acc else "does not hold")
        + " here (higher accuracy at <= fixed-24's MACs: " + ("yes" if matched_macs else "no")
        + "; >= fixed-32's accuracy with fewer MACs and less time: "
        + ("yes" if matched_acc else "no") + ").",
    ]  # fmt: skip
    run = {
        "name": "DRNet on CIFAR-10 (ResNet-20, resolutions 32/24/16)",
        "description": __doc__.split("\n\n")[2].replace("\n", " "), "command": COMMAND,
        "cpu": cpu_info(), "notes": notes,
        "tables": [{"title": "Fixed resolution and DRNet, one schedule",
                    "columns": ["model", "test top-1 %", "mean MMACs", "ms per image"],
                    "rows": table}],
        "settings": {"schedule": SCHEDULE, "drnet": DRNET, "threads": args.threads,
                     "git": dataclasses.asdict(git_state())},
    }  # fmt: skip
    print(f"wrote {write_results(OUT, rows, run_info=run, allow_dirty=args.allow_dirty)}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--allow-dirty", action="store_true", default=None, help="see write_results")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--device", default="cpu", help="training device: cpu, or cuda on a lent GPU (fp32; "
        "the report tests and times here, on the CPU)",
    )  # fmt: skip
    p.add_argument("--smoke", action="store_true", help="a few steps of tiny models: a dry run")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--model", choices=list(SIZES), required=True)
    sub.add_parser("report")
    args = p.parse_args(argv)
    if args.smoke:
        global SMOKE
        SMOKE = True
    {"train": cmd_train, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
