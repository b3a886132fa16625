"""Distillation of a DeiT-Tiny-like ViT on CIFAR-10: logit KD, DeiT token, manifold KD.

Claim (Hao et al., NeurIPS 2022, arXiv 2107.01378): fine-grained manifold distillation lifts
DeiT-Tiny on ImageNet from 72.2% (trained alone) to 76.4% (CaiT-S24 teacher), more than logit
KD. Here the teacher is a ResNet-56 we train on CIFAR-10 (the GhostNet benchmark's schedule),
the student ``deit_tiny_patch16_224`` built at 32×32 with patch 4 (64 patch tokens, 12 blocks,
width 192). Every variant trains from the same random init for the same epochs on the same
images; only the loss differs:

* ``scratch``: cross-entropy only;
* ``kd``: soft logit KD as the paper's run sets it (α = 1, τ = 1: no label term);
* ``deit``: the DeiT distillation token, hard distillation, α = 0.5 (DeiT's defaults);
* ``manifold``: ``kd`` + the three manifold terms (w_patch 4, w_sample 0.1, w_rand 0.2, K 192,
  β 1) on student blocks 0 1 2 3 8 9 10 11;
* ``manifold_no_{patch,sample,rand}``: ``manifold`` with one term's weight set to 0.

    python benchmarks/distill_cifar10.py --threads 2 teacher
    python benchmarks/distill_cifar10.py --threads 1 train --variant scratch &
    python benchmarks/distill_cifar10.py --threads 1 train --variant kd &
    ...; python benchmarks/distill_cifar10.py report

Each run resumes from ``runs/bench_distill_cifar10/<variant>/last.pt`` when re-run.
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
from leanvision.engine import load_checkpoint, save_checkpoint, training_note, training_record
from leanvision.methods.registry import get_method
from leanvision.pipeline import cpu_info
from leanvision.provenance import git_state
from leanvision.report import check_results_target, write_results

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10"
RUNS = ROOT / "runs" / "bench_distill_cifar10"
OUT = ROOT / "benchmarks" / "results" / "distill_cifar10"
# The teacher is the ghost benchmark's ResNet-56 (same model, init, data order and schedule):
# its trained weights and training record are committed (`keep-teacher`), so the students
# train without two hours of teacher training first; `teacher` retrains it into RUNS.
TEACHER_FILE = ROOT / "benchmarks" / "teachers" / "resnet56_cifar10_seed0.pt"

STUDENT = {"img_size": 32, "patch_size": 4, "num_classes": 10, "drop_path_rate": 0.0}
# Student blocks of the paper's command; teacher blocks at the same relative depth of
# ResNet-56's 27 residual blocks (the paper pairs DeiT-Tiny 0-3, 8-11 with CaiT-S24 0-3, 20-23).
STUDENT_LAYERS = [0, 1, 2, 3, 8, 9, 10, 11]
TEACHER_LAYERS = [
    "layer1.1",
    "layer1.3",
    "layer1.5",
    "layer1.8",
    "layer3.1",
    "layer3.3",
    "layer3.5",
    "layer3.8",
]
MANIFOLD = {
    "T": 1.0,
    "alpha": 1.0,
    "beta": 1.0,
    "w_patch": 4.0,
    "w_sample": 0.1,
    "w_rand": 0.2,
    "num_samples": 192,
    "student_layers": STUDENT_LAYERS,
    "teacher_layers": TEACHER_LAYERS,
}
VARIANTS: dict[str, dict[str, Any]] = {
    "scratch": {},
    "kd": {"method": "kd", "T": 1.0, "alpha": 1.0},
    "deit": {"method": "deit_kd", "distilled": True},
    "manifold": {"method": "manifold_kd", **MANIFOLD},
    "manifold_no_patch": {"method": "manifold_kd", **MANIFOLD, "w_patch": 0.0},
    "manifold_no_sample": {"method": "manifold_kd", **MANIFOLD, "w_sample": 0.0},
    "manifold_no_rand": {"method": "manifold_kd", **MANIFOLD, "w_rand": 0.0},
}
# Interpretation, not measured by the run (labelled so in the notes); the numbers in the
# notes are computed by _findings() from the same run's table.
INTERPRETATION = (
    "Interpretation (hypotheses, not tested here): with few epochs, the DeiT token's class "
    "head and distillation head each get half the supervision; the CNN teacher's patch "
    "relations, dense targets at several layers, may hand a short-trained ViT the locality "
    "structure it would otherwise need many epochs to learn (a ViT teacher would separate "
    "the two). 'Agrees with teacher' is the share of test images where the student predicts "
    "the teacher's class."
)


def _findings(rows: list[dict[str, Any]]) -> str:
    """Sentences built from the table's rows (no typed numbers)."""
    by = {r["variant"]: r for r in rows}
    key, delta = "test top-1 % (mean)", "Δ vs scratch (pts)"
    out = []
    for v in rows:
        if v["variant"] == "scratch" or v[delta] is None:
            continue
        out.append(f"{v['variant']} {v[delta]:+.2f} pts ({v['seeds']} seed(s))")
    text = ("Against the student trained alone: " + ", ".join(out) + ".") if out else ""
    if "manifold" in by and "kd" in by:
        gap = by["manifold"][key] - by["kd"][key]
        text += f" Manifold KD over logit KD: {gap:+.2f} pts."
    spreads = [
        f"{r['variant']} {max(vals) - min(vals):.2f}"
        for r in rows
        if r["seeds"] > 1 and (vals := [float(v) for v in r["per seed"].split(" / ")])
    ]
    if spreads:
        text += " Seed spread (max − min, pts): " + ", ".join(spreads) + "."
    return text.strip()


TRAIN = {"opt": "adamw", "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 1}
PAPER = {
    "scratch": {
        "top1": 72.2,
        "source": "DeiT-Ti alone, ImageNet (DeiT paper; ManifoldKD baseline)",
    },
    "deit": {"top1": 74.5, "source": "DeiT-Ti with distillation token, RegNetY-16GF teacher"},
    "manifold": {"top1": 76.4, "source": "ManifoldKD README, CaiT-S24 teacher, ImageNet"},
}


def load(args: argparse.Namespace, batch_size: int = 64) -> Any:
    return lv.load_data(
        "cifar10",
        root=args.data,
        batch_size=batch_size,
        seed=0,
        max_train=args.max_train,
        max_val=2000,
    )


def build_teacher() -> torch.nn.Module:
    torch.manual_seed(0)
    return lv.create_model("resnet56_cifar", num_classes=10)


def build_student(distilled: bool, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    name = "deit_tiny_distilled_patch16_224" if distilled else "deit_tiny_patch16_224"
    return lv.create_model(name, **STUDENT)


def teacher_path() -> Path:
    """The teacher this run trained (``RUNS/teacher/last.pt``), else the committed copy."""
    run = RUNS / "teacher" / "last.pt"
    return run if run.exists() or not TEACHER_FILE.exists() else TEACHER_FILE


def trained_teacher() -> torch.nn.Module:
    path = teacher_path()
    if not path.exists():
        sys.exit(f"no teacher at {path}: run `python {Path(__file__).name} teacher` first")
    model = build_teacher()
    model.load_state_dict(load_checkpoint(path)["model"])
    return model.eval()


def cmd_keep_teacher(args: argparse.Namespace) -> None:
    """Copy a trained ResNet-56 (weights, history, stretch records; no optimizer state) to
    ``TEACHER_FILE``, after checking it is the teacher's model, seed and schedule."""
    state = load_checkpoint(args.source)
    cfg = state.get("config") or {}
    want = {"epochs": 10, "lr": 0.1, "weight_decay": 5e-4, "seed": 0}
    wrong = {k: cfg.get(k) for k, v in want.items() if cfg.get(k) != v}
    if wrong or int(state["epoch"]) != 10:
        sys.exit(f"{args.source} is not the teacher's schedule ({want}, 10 epochs): {wrong}")
    build_teacher().load_state_dict(state["model"])  # the architecture matches, strictly
    keep = ("format", "model", "epoch", "global_step", "history", "best", "config", "stretches")
    TEACHER_FILE.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({k: state[k] for k in keep if k in state}, TEACHER_FILE)
    print(f"wrote {TEACHER_FILE}")


def run_dir(variant: str, seed: int) -> Path:
    return RUNS / (variant if seed == 0 else f"{variant}_seed{seed}")


def cmd_teacher(args: argparse.Namespace) -> None:
    """ResNet-56, 10 epochs on all 45k training images: the GhostNet benchmark's schedule."""
    torch.set_num_threads(args.threads)
    data = lv.load_data("cifar10", root=args.data, batch_size=128, seed=0)
    lv.train(
        build_teacher(),
        data,
        epochs=10,
        lr=0.1,
        weight_decay=5e-4,
        seed=0,
        out_dir=str(RUNS / "teacher"),
        resume=True,
        num_threads=args.threads,
        progress=sys.stderr.isatty(),
    )


def cmd_train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    spec = dict(VARIANTS[args.variant])
    method = spec.pop("method", None)
    student = build_student(spec.pop("distilled", False), args.seed)
    data = load(args)
    out = run_dir(args.variant, args.seed)
    common = {
        "seed": args.seed,
        "out_dir": str(out),
        "resume": True,
        "progress": sys.stderr.isatty(),
    }
    t0 = time.perf_counter()
    if method is None:
        lv.train(student, data, epochs=args.epochs, num_threads=args.threads, **TRAIN, **common)
    else:
        teacher = trained_teacher()
        student = lv.compress(
            student,
            method,
            data,
            teacher=teacher,
            finetune_epochs=args.epochs,
            max_steps=args.max_steps,
            **TRAIN,
            **common,
            **spec,
        )
    pred, labels = predictions(student, data.test)
    torch.save({"pred": pred, "labels": labels}, out / "test_predictions.pt")
    summary = {
        "variant": args.variant,
        "epochs": args.epochs,
        "max_train": args.max_train,
        "wall_s": time.perf_counter() - t0,
        "threads": args.threads,
        "seed": args.seed,
        "git": dataclasses.asdict(git_state()),  # the code that trained it
    }
    if method is not None:  # every hyper-parameter it ran with, defaults included
        cfg = get_method(method).make_config(
            finetune_epochs=args.epochs, max_steps=args.max_steps, **TRAIN, **common, **spec
        )
        summary["config"] = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "teacher"}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


@torch.no_grad()
def predictions(model: torch.nn.Module, loader: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted classes and labels over a loader."""
    model.eval()
    preds, labels = [], []
    for x, y in loader:
        preds.append(model(x).argmax(1))
        labels.append(y)
    return torch.cat(preds), torch.cat(labels)


def _trained_note(trained: list[str]) -> str:
    """What trained each run (from its checkpoint: every stretch of a resumed run)."""
    return (
        "Training of each run (train min / run sums every stretch of a resumed run; epochs "
        "from before stretches were recorded count their training time without validation): "
        + "; ".join(trained)
        + "."
    )


def cmd_report(args: argparse.Namespace) -> None:
    check_results_target(OUT, allow_dirty=args.allow_dirty)  # fail now, not after hours
    torch.set_num_threads(args.threads)
    data = load(args, batch_size=256)
    teacher_cache = RUNS / "teacher" / "test_predictions.pt"
    teacher_cache.parent.mkdir(parents=True, exist_ok=True)
    if teacher_cache.exists():
        saved = torch.load(teacher_cache, weights_only=True)
        t_pred, labels = saved["pred"], saved["labels"]
    else:
        t_pred, labels = predictions(trained_teacher(), data.test)
        torch.save({"pred": t_pred, "labels": labels}, teacher_cache)
    t_top1 = 100.0 * (t_pred == labels).float().mean().item()
    rows, epochs = [], set()
    trained = [f"teacher: {training_note(training_record(teacher_path()), 1)}"]
    for variant, spec in VARIANTS.items():
        runs = sorted(RUNS.glob(f"{variant}"), key=str) + sorted(RUNS.glob(f"{variant}_seed*"))
        runs = [r for r in runs if (r / "summary.json").exists()]
        if not runs:
            print(f"{variant}: not trained, skipped")
            continue
        tops, agree, vals, minutes = [], [], [], []
        for run in runs:
            state = load_checkpoint(run / "last.pt")
            summary = json.loads((run / "summary.json").read_text())
            cached = run / "test_predictions.pt"
            if cached.exists():
                saved = torch.load(cached, weights_only=True)
                assert torch.equal(saved["labels"], labels), "test labels changed"
                pred = saved["pred"]
            else:
                student = build_student(spec.get("distilled", False))
                student.load_state_dict(state["model"])
                pred, _ = predictions(student, data.test)
                torch.save({"pred": pred, "labels": labels}, cached)
            tops.append(100.0 * (pred == labels).float().mean().item())
            agree.append(100.0 * (pred == t_pred).float().mean().item())
            vals.append(state["history"][-1]["val_top1"])
            record = training_record(run / "last.pt")  # every stretch of a resumed run
            minutes.append((record["wall_s"] + record["unrecorded_train_s"]) / 60)
            trained.append(
                f"{run.name}: {training_note(record, summary['threads'], summary.get('git'))}"
            )
            epochs.add(int(state["epoch"]))
            print(f"{run.name}: test top-1 {tops[-1]:.2f}%, agrees with teacher {agree[-1]:.1f}%")
        paper = PAPER.get(variant, {}).get("top1")
        rows.append(
            {
                "variant": variant,
                "method": spec.get("method", "-"),
                "seeds": len(runs),
                "test top-1 % (mean)": round(sum(tops) / len(tops), 2),
                "per seed": " / ".join(f"{v:.2f}" for v in tops),
                "Δ vs scratch (pts)": None,
                "paper top-1 % (ImageNet)": paper,
                "paper Δ (pts)": None
                if paper is None
                else round(paper - PAPER["scratch"]["top1"], 1),
                "agrees with teacher %": round(sum(agree) / len(agree), 1),
                "val top-1 %": round(sum(vals) / len(vals), 2),
                "train min / run": round(sum(minutes) / len(minutes), 1),
            }
        )
    base = next((r for r in rows if r["variant"] == "scratch"), None)
    for r in rows:
        if base is not None:
            delta = r["test top-1 % (mean)"] - base["test top-1 % (mean)"]
            r["Δ vs scratch (pts)"] = round(delta, 2)
    n_params = sum(p.numel() for p in build_student(False).parameters())
    n_epochs = "/".join(str(e) for e in sorted(epochs)) or "?"
    run = {
        "name": "Distillation of a DeiT-Tiny-like ViT on CIFAR-10",
        "description": (
            "Student deit_tiny_patch16_224 built at 32x32 with patch 4 (12 blocks, width 192, "
            f"{n_params / 1e6:.2f}M params), from random init, {n_epochs} epochs on "
            f"{args.max_train} training images, AdamW lr 1e-3 wd 0.05, 1 warm-up epoch, "
            "cosine, batch 64, 1 CPU thread per run. Every variant of a seed starts from the "
            "same init and sees the training images in the same order. Teacher ResNet-56 "
            "trained by us (10 epochs on the 45k training images), test top-1 "
            f"{t_top1:.2f}%. Test set: all 10,000 CIFAR-10 test images. Paper numbers are "
            "DeiT-Tiny on ImageNet (300 epochs, 1.28M images; CaiT-S24 teacher for manifold "
            "KD, RegNetY-16GF for the DeiT token): compare the direction, not the level. Manifold "
            "KD's logit term: the KL summed over classes and averaged over the batch "
            f"(kd_reduction={MANIFOLD.get('kd_reduction', 'batchmean')!r}, as the official "
            "ManifoldKD losses.py)."
        ),
        "command": "python benchmarks/distill_cifar10.py teacher && "
        "python benchmarks/distill_cifar10.py train --variant <v> [--seed 1] (each) && "
        "python benchmarks/distill_cifar10.py report",
        "cpu": cpu_info(),
        "tables": [
            {
                "title": "Student test top-1 by distillation variant (equal epochs)",
                "columns": list(rows[0]) if rows else [],
                "rows": [list(r.values()) for r in rows],
                "notes": " ".join(
                    filter(None, [_findings(rows), INTERPRETATION, _trained_note(trained)])
                ),
            }
        ],
    }
    path = write_results(OUT, [], run_info=run, allow_dirty=args.allow_dirty)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument(
        "--allow-dirty",
        action="store_true",
        default=None,
        help="write committed results from a tree with uncommitted changes (recorded as dirty)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-train", type=int, default=6000)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("teacher")
    t = sub.add_parser("train")
    t.add_argument("--variant", choices=list(VARIANTS), required=True)
    t.add_argument("--epochs", type=int, default=5)
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--seed", type=int, default=0, help="student init and data order")
    sub.add_parser("report")
    k = sub.add_parser("keep-teacher", help="commit a trained teacher: see TEACHER_FILE")
    k.add_argument(
        "--source", default=str(ROOT / "runs" / "bench_ghost_cifar10" / "baseline" / "last.pt")
    )
    args = p.parse_args(argv)
    cmds = {"teacher": cmd_teacher, "train": cmd_train, "report": cmd_report}
    cmds["keep-teacher"] = cmd_keep_teacher
    cmds[args.cmd](args)


if __name__ == "__main__":
    main()
