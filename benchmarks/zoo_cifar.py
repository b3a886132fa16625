"""Short CIFAR-10 training of the backbone zoo: sanity runs and the TinyNet formula comparison.

``train`` trains one model (any ``lv.create_model`` name and keyword arguments) for a few epochs
on a class-balanced subset of CIFAR-10's training set from ``../shared/data/cifar10`` and
records its top-1 on the full 10k test set; runs resume from their last checkpoint and a
finished run is not trained again. ``report`` collects the runs into results files:

    python benchmarks/zoo_cifar.py sanity            # each family's sanity run (SANITY below)
    python benchmarks/zoo_cifar.py report sanity     # -> benchmarks/results/zoo_cifar_sanity/
    python benchmarks/zoo_cifar.py tinynet           # both formulas at budgets 0.5 0.25 0.1
    python benchmarks/zoo_cifar.py report tinynet    # -> benchmarks/results/zoo_tinynet/
    python benchmarks/zoo_cifar.py train --tag sanity/cmt_ti --model cmt_ti --epochs 3  # one run

No ImageNet pre-training is possible here (no downloads), so every model starts from random
weights; a few epochs only show that the family learns (well above the 10 % of chance), not
its final accuracy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

import leanvision as lv
from leanvision.engine import training_note, training_record
from leanvision.fileio import atomic_write_text
from leanvision.pipeline import cpu_info
from leanvision.profiling import count_ops, count_params
from leanvision.provenance import git_state
from leanvision.report import check_results_target, write_results

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10"
RUNS = ROOT / "runs" / "bench_zoo_cifar"
OUT = ROOT / "benchmarks" / "results"

# Transformers train with AdamW and warm-up; convolutional families with SGD.
ADAMW = {"opt": "adamw", "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 1}
SGD = {"opt": "sgd", "lr": 0.1, "weight_decay": 5e-4, "warmup_epochs": 0}
SMOKE = False  # tests set it: small validation and test splits, a few steps per run

# The sanity runs: tag -> (model, keyword arguments, optimiser, training images). Each family's
# smallest variant in its CIFAR adaptation; the three heaviest see 4000 images per epoch, and
# ViT-ResNAS-Tiny runs with patch 4 (a quarter of its default CIFAR MACs) to fit the CPU budget.
SANITY: dict[str, tuple[str, dict, str, int]] = {
    "augvit_tiny": ("augvit_tiny", {"img_size": 32}, "adamw", 8000),
    "cmt_ti": ("cmt_ti", {"img_size": 32}, "adamw", 8000),
    "deit_tiny": ("deit_tiny_patch16_224", {"img_size": 32, "patch_size": 4}, "adamw", 8000),
    "ghost_resnet50": ("ghost_resnet50", {"img_size": 32}, "sgd", 4000),
    "ptnt_ti": ("ptnt_ti", {"img_size": 32}, "adamw", 8000),
    "vil_ls_medium": ("vil_ls_medium", {"img_size": 32}, "adamw", 4000),
    "vit_resnas_tiny": ("vit_resnas_tiny", {"img_size": 32, "patch_size": 4}, "adamw", 4000),
}
SANITY_EPOCHS = 2
TINYNET_BUDGETS = [0.5, 0.25, 0.1]
TINYNET_EPOCHS = 6


def run_dir(tag: str) -> Path:
    return RUNS / tag


def train_one(
    tag: str,
    model_name: str,
    model_kwargs: dict,
    *,
    epochs: int,
    max_train: int,
    opt: dict,
    threads: int,
    batch_size: int = 128,
    data_root: Path = DATA,
) -> dict:
    """Train (or resume) one run and write ``summary.json``; returns the summary."""
    out = run_dir(tag)
    summary_path = out / "summary.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = lv.create_model(model_name, num_classes=10, **model_kwargs)
    size = tuple(model.pretrained_cfg["input_size"])
    data = lv.load_data(
        "cifar10",
        root=data_root,
        batch_size=batch_size,
        seed=0,
        image_size=size[-1],
        max_train=max_train,
        max_val=2000 if not SMOKE else 32,
        max_test=None if not SMOKE else 32,
    )
    start = time.perf_counter()
    result = lv.train(
        model,
        data,
        epochs=epochs,
        seed=0,
        out_dir=str(out),
        resume=True,
        num_threads=threads,
        progress=sys.stderr.isatty(),
        max_steps=None if not SMOKE else 2,
        **opt,
    )
    test = lv.evaluate(result.model, data.loader("test"))
    summary = {
        "tag": tag,
        "model": model_name,
        "kwargs": model_kwargs,
        "input_size": list(size),
        "params": count_params(model),
        "macs": count_ops(model, size).macs,
        "epochs": epochs,
        "max_train": max_train,
        "opt": opt,
        "test_top1": test["top1"],
        "best_val_top1": result.best.get("val_top1"),
        "history": result.history,
        "train_time_s": time.perf_counter() - start,
        "threads": threads,
        "git": dataclasses.asdict(git_state()),  # at the end; the checkpoint has every stretch
    }
    atomic_write_text(summary_path, json.dumps(summary, indent=1))
    return summary


def cmd_train(args: argparse.Namespace) -> None:
    kwargs = json.loads(args.kwargs)
    opt = dict(ADAMW if args.opt == "adamw" else SGD)
    if args.lr is not None:
        opt["lr"] = args.lr
    s = train_one(
        args.tag,
        args.model,
        kwargs,
        epochs=args.epochs,
        max_train=args.max_train,
        opt=opt,
        threads=args.threads,
        batch_size=args.batch_size,
    )
    print(f"{args.tag}: test top-1 {s['test_top1']:.2f} % after {s['epochs']} epochs")


def cmd_sanity(args: argparse.Namespace) -> None:
    for tag in args.only or SANITY:
        if tag not in SANITY:
            raise SystemExit(f"unknown sanity run {tag!r}; choose from {sorted(SANITY)}")
        name, kwargs, opt, max_train = SANITY[tag]
        s = train_one(
            f"sanity/{tag}",
            name,
            kwargs,
            epochs=args.epochs,
            max_train=max_train,
            opt=dict(ADAMW if opt == "adamw" else SGD),
            threads=args.threads,
        )
        print(f"sanity/{tag}: test top-1 {s['test_top1']:.2f} % after {s['epochs']} epochs")


# -- TinyNet: tiny formula vs inverse compound scaling ------------------------------------------


def tinynet_tag(formula: str, budget: float) -> str:
    return f"tinynet/{formula}_c{budget:g}"


def cmd_tinynet(args: argparse.Namespace) -> None:
    from leanvision.analysis.tinynet_scaling import inverse_compound_scaling, tiny_formula

    for budget in args.budgets:
        for formula, fn in (("tiny", tiny_formula), ("inverse", inverse_compound_scaling)):
            s = fn(budget, base_size=32, num_classes=10)  # budget on the CIFAR layout
            kwargs = {"r": s.r, "d": s.d, "w": s.w, "base_size": 32}
            summary = train_one(
                tinynet_tag(formula, budget),
                "tinynet_custom",
                kwargs,
                epochs=args.epochs,
                max_train=args.max_train,
                opt=dict(SGD, lr=0.05),
                threads=args.threads,
            )
            print(
                f"c={budget:g} {formula:8s} r={s.r:.3f} d={s.d:.3f} w={s.w:.3f}: "
                f"{summary['macs'] / 1e6:.1f} MMACs, top-1 {summary['test_top1']:.2f} %",
                flush=True,
            )


# -- reports --------------------------------------------------------------------------------------


def _summaries(prefix: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((RUNS / prefix).glob("*/summary.json"))]


def _trained(s: dict) -> str:
    """How the run trained, from its checkpoint's stretch records (time, threads, commits)."""
    record = training_record(RUNS / s["tag"] / "last.pt")
    return training_note(record, s.get("threads"), s.get("git"))


def _row(s: dict, name: str, note: str) -> dict:
    return {
        "name": name,
        "dataset": "cifar10",
        "split": "test",
        "top1": s["test_top1"],
        "params": s["params"],
        "macs": s["macs"],
        "seed": 0,
        "notes": f"{note}; trained {_trained(s)}",
        "extra": {
            "epochs": s["epochs"],
            "train_images": s["max_train"],
            "input_size": s["input_size"],
            "kwargs": s["kwargs"],
            "best_val_top1": s["best_val_top1"],
            "train_time_s": round(s["train_time_s"], 1),
        },
    }


def _flag(values: list, name: str, default: Any) -> str:
    """``--name v`` when the runs used one value other than the default (else nothing)."""
    distinct = sorted(set(values))
    if not distinct or distinct == [default]:
        return ""
    if len(distinct) > 1:
        raise SystemExit(f"the runs used different {name} values {distinct}: report them apart")
    return f" --{name} {distinct[0]}"


def report_sanity(allow_dirty: bool | None = None) -> Path:
    check_results_target(OUT / "zoo_cifar_sanity", allow_dirty=allow_dirty)
    rows, runs = [], _summaries("sanity")
    if not runs:
        raise SystemExit(f"no sanity runs under {RUNS / 'sanity'}: run the sanity training first")
    for s in runs:
        note = (
            f"{s['epochs']} epochs on {s['max_train']} training images from random init, "
            f"{s['opt']['opt']} lr {s['opt']['lr']}; input {s['input_size'][-1]}x"
            f"{s['input_size'][-1]} (the model's CIFAR adaptation)"
        )
        extra = {k: v for k, v in s["kwargs"].items() if k != "img_size"}
        if extra:
            note += f"; built with {extra}"
        rows.append(_row(s, s["model"], note))
    return write_results(
        OUT / "zoo_cifar_sanity",
        rows,
        run_info={
            "name": "Backbone zoo: CIFAR-10 sanity training",
            "description": "Each family's smallest variant in its CIFAR adaptation "
            "(img_size=32), trained from scratch for a few epochs on a class-balanced subset "
            "of CIFAR-10 and tested on the full 10k test set. Chance is 10 %; these runs only "
            "show that each family learns, not its accuracy at a full schedule. The heavier "
            "models (ViL-LS-Medium, Ghost-ResNet-50, ViT-ResNAS-Tiny) saw 4000 images per "
            "epoch, the others 8000; ViT-ResNAS-Tiny ran with patch 4 (8x8 tokens, a quarter "
            "of its default CIFAR MACs) to fit the CPU budget. DeiT-Ti (timm, patch 4) is "
            "the reference ViT and the Aug-ViT diversity baseline.",
            "command": _sanity_command(runs),
            "cpu": cpu_info(),
        },
        allow_dirty=allow_dirty,
    )


def _is_sanity(s: dict) -> bool:
    """Whether a run trained as SANITY says (so ``sanity`` reproduces it)."""
    spec = SANITY.get(s["tag"].split("/", 1)[1])
    if spec is None:
        return False
    name, kwargs, opt, max_train = spec
    want = ADAMW if opt == "adamw" else SGD
    return (s["model"], s["kwargs"], s["max_train"], s["opt"]) == (name, kwargs, max_train, want)


def _sanity_command(runs: list[dict]) -> str:
    """The command that reproduces these runs: ``sanity`` when they are SANITY's, else each."""
    steps = []
    standard = all(_is_sanity(s) for s in runs)
    if standard:
        tags = sorted(s["tag"].split("/", 1)[1] for s in runs)
        only = "" if tags == sorted(SANITY) else " --only " + " ".join(tags)
        epochs = _flag([s["epochs"] for s in runs], "epochs", SANITY_EPOCHS)
        threads = _flag([s.get("threads", 1) for s in runs], "threads", 1)
        steps.append(f"python benchmarks/zoo_cifar.py sanity{only}{epochs}{threads}")
    else:
        for s in runs:
            steps.append(
                f"python benchmarks/zoo_cifar.py train --tag {s['tag']} --model {s['model']} "
                f"--kwargs '{json.dumps(s['kwargs'])}' --opt {s['opt']['opt']} "
                f"--lr {s['opt']['lr']} --epochs {s['epochs']} --max-train {s['max_train']} "
                f"--threads {s.get('threads', 1)}"
            )
    return " && ".join([*steps, "python benchmarks/zoo_cifar.py report sanity"])


def _tinynet_note(table: list[list[Any]]) -> str:
    """What the budget table shows, computed from it, then the interpretation (labelled)."""
    if not table:
        return ""
    wins = sum(r[5] > 0 for r in table)
    macs = [100 * (r[2] - r[1]) / r[1] for r in table]
    return (
        "Paper (ImageNet, full training): the tiny formula beats inverse compound scaling at "
        f"every budget it reports. Here the tiny formula wins at {wins} of {len(table)} "
        f"budgets; inverse scaling got {min(macs):+.1f} to {max(macs):+.1f} % of the tiny "
        "model's MACs (its steps in depth and resolution are coarse). Interpretation (not "
        "tested here): at a few epochs accuracy follows how fast a net trains, which favours "
        "the shallower nets of inverse scaling, not capacity; this is not a test of the "
        "paper's claim at its training length."
    )


def report_tinynet(allow_dirty: bool | None = None) -> Path:
    check_results_target(OUT / "zoo_tinynet", allow_dirty=allow_dirty)
    rows, table, runs = [], [], _summaries("tinynet")
    if not runs:
        raise SystemExit(f"no TinyNet runs under {RUNS / 'tinynet'}: run `tinynet` first")
    by_budget: dict[float, dict[str, dict]] = {}
    for s in runs:
        formula, budget = s["tag"].split("/")[-1].split("_c")
        by_budget.setdefault(float(budget), {})[formula] = s
    for budget in sorted(by_budget, reverse=True):
        pair = by_budget[budget]
        for formula in ("tiny", "inverse"):
            if formula not in pair:
                continue
            s = pair[formula]
            k = s["kwargs"]
            label = "tiny formula" if formula == "tiny" else "inverse compound scaling"
            note = (
                f"FLOPs budget c={budget:g} of the B0 base at 32x32: r={k['r']:.3f} "
                f"d={k['d']:.3f} w={k['w']:.3f}; {s['epochs']} epochs on {s['max_train']} images"
            )
            row = _row(s, f"{formula}_c{budget:g}", note)
            row["method_chain"] = [label]
            rows.append(row)
        if len(pair) == 2:
            t, i = pair["tiny"], pair["inverse"]
            table.append(
                [
                    budget,
                    round(t["macs"] / 1e6, 1),
                    round(i["macs"] / 1e6, 1),
                    round(t["test_top1"], 2),
                    round(i["test_top1"], 2),
                    round(t["test_top1"] - i["test_top1"], 2),
                ]
            )
    return write_results(
        OUT / "zoo_tinynet",
        rows,
        run_info={
            "name": "TinyNet: tiny formula vs inverse compound scaling on CIFAR-10",
            "description": "TinyNet's claim (NeurIPS 2020): at small FLOPs budgets, shrinking "
            "resolution and depth less and width more (the tiny formula) beats inverting "
            "EfficientNet's compound scaling. EfficientNet-B0 base in its CIFAR adaptation "
            "(base resolution 32), both schedules equal (SGD, cosine).",
            "command": "python benchmarks/zoo_cifar.py tinynet --budgets "
            + " ".join(f"{b:g}" for b in sorted(by_budget, reverse=True))
            + _flag([s["epochs"] for s in runs], "epochs", None)
            + _flag([s["max_train"] for s in runs], "max-train", None)
            + _flag([s.get("threads", 1) for s in runs], "threads", None)
            + " && python benchmarks/zoo_cifar.py report tinynet",
            "cpu": cpu_info(),
            "tables": [
                {
                    "title": "Top-1 at equal FLOPs budget",
                    "columns": [
                        "budget c",
                        "tiny MMACs",
                        "inverse MMACs",
                        "tiny top-1 %",
                        "inverse top-1 %",
                        "tiny − inverse (pts)",
                    ],
                    "rows": table,
                    "notes": _tinynet_note(table),
                }
            ],
        },
        allow_dirty=allow_dirty,
    )


def cmd_report(args: argparse.Namespace) -> None:
    path = {"sanity": report_sanity, "tinynet": report_tinynet}[args.which](args.allow_dirty)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--allow-dirty",
        action="store_true",
        default=None,
        help="write committed results from a tree with uncommitted changes (recorded as dirty)",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--tag", required=True, help="run name, e.g. sanity/cmt_ti")
    t.add_argument("--model", required=True)
    t.add_argument("--kwargs", default='{"img_size": 32}', help="JSON model keyword arguments")
    t.add_argument("--opt", choices=["adamw", "sgd"], default="adamw")
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--max-train", type=int, default=10000)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--threads", type=int, default=1)
    a = sub.add_parser("sanity", help="each family's sanity run (the SANITY table)")
    a.add_argument("--only", nargs="*", help=f"some of {', '.join(SANITY)}")
    a.add_argument("--epochs", type=int, default=SANITY_EPOCHS)
    a.add_argument("--threads", type=int, default=1)
    n = sub.add_parser("tinynet")
    n.add_argument("--budgets", type=float, nargs="+", default=TINYNET_BUDGETS)
    n.add_argument("--epochs", type=int, default=TINYNET_EPOCHS)
    n.add_argument("--max-train", type=int, default=10000)
    n.add_argument("--threads", type=int, default=1)
    r = sub.add_parser("report")
    r.add_argument("which", choices=["sanity", "tinynet"])
    args = p.parse_args(argv)
    commands = {"train": cmd_train, "sanity": cmd_sanity, "tinynet": cmd_tinynet}
    commands["report"] = cmd_report
    commands[args.cmd](args)


if __name__ == "__main__":
    main()
