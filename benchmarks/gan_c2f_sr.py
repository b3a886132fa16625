"""Coarse-to-fine generator search (gan_c2f) on x2 super-resolution: a teacher EDSR trained by
us on T91, compressed to a quarter of its MACs, measured on Set5 and Set14.

    python benchmarks/gan_c2f_sr.py teacher    # edsr_cpu x2 on T91 crops (resumes)
    python benchmarks/gan_c2f_sr.py search     # path, operators, widths under teacher MACs / 4
    python benchmarks/gan_c2f_sr.py retrain    # the found generator from scratch, distilled
    python benchmarks/gan_c2f_sr.py report     # -> benchmarks/results/gan_c2f_sr/

The claim measured (issue 21's acceptance): the searched generator has <= 1/4 of the teacher's
MACs, runs >= 2x faster (both timed side by side in one process, batch 1, one 128x128 LR
image), and its PSNR/SSIM on the test sets stays within ``MARGIN_DB`` of the teacher's. The
teacher and the found generator train with the same schedule (``TRAIN``: L1, Adam); the found
one adds the teacher's L1 distillation. PSNR/SSIM: Y channel, ``scale`` border pixels cropped,
scikit-image's (:class:`leanvision.tasks.SuperResolution`); LR by PIL bicubic, so the bicubic row
is ours, not the published MATLAB-resize one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch

import leanvision as lv
from leanvision.engine import training_note, training_record
from leanvision.engine.checkpoint import load_checkpoint
from leanvision.methods.search.gan_c2f import OutputDistillHook
from leanvision.pipeline import cpu_info
from leanvision.profiling import compare, count_ops
from leanvision.provenance import git_state
from leanvision.report import check_results_target, write_results

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sr"
DATA_MARKER = "T91"  # what the smoke test needs to find under DATA
RUNS = ROOT / "runs" / "bench_gan_c2f_sr"
OUT = ROOT / "benchmarks" / "results" / "gan_c2f_sr"
SMOKE = False  # tests set it: a few steps everywhere

SCALE, TEACHER = 2, "edsr_cpu"
DATA_ARGS = {"scale": SCALE, "patch_size": 32, "repeat": 16, "batch_size": 16}
TRAIN = {"epochs": 30, "lr": 5e-4, "opt": "adam", "weight_decay": 0.0}
SEARCH = {"n_trials": 12, "epochs": 2, "distill_weight": 1.0, "sampler": "tpe"}
TEST_SETS = ("Set5", "Set14")
TIME_LR = (3, 128, 128)  # the LR image the latencies are timed on
MARGIN_DB = 0.5  # the PSNR margin the acceptance states
COMMAND = " && ".join(f"python benchmarks/gan_c2f_sr.py {c}" for c in
                      ("teacher", "search", "retrain", "report"))  # fmt: skip


def _data(args: argparse.Namespace, test_set: str = "Set5") -> Any:
    kw = dict(DATA_ARGS)
    if SMOKE:
        kw.update(patch_size=16, repeat=1, max_val=2, max_test=2)
    return lv.load_data("sr", root=args.data, test_set=test_set, seed=0, **kw)


def _train(model: Any, out: Path, args: argparse.Namespace, hooks: list | None = None) -> Any:
    torch.manual_seed(0)
    return lv.train(
        model, _data(args), epochs=1 if SMOKE else TRAIN["epochs"], lr=TRAIN["lr"],
        opt=TRAIN["opt"], weight_decay=TRAIN["weight_decay"], seed=0, out_dir=str(out),
        resume=True, num_threads=args.threads, progress=sys.stderr.isatty(),
        max_steps=2 if SMOKE else None, hooks=hooks,
    ).model  # fmt: skip


def _load(name: str, kwargs: dict[str, Any], ckpt: Path) -> Any:
    model = lv.create_model(name, **kwargs)
    model.load_state_dict(load_checkpoint(ckpt)["model"])
    return model.eval()


def teacher_model() -> Any:
    return _load(TEACHER, {"scale": SCALE}, RUNS / "teacher" / "last.pt")


def cmd_teacher(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    _train(lv.create_model(TEACHER, scale=SCALE), RUNS / "teacher", args)


def teacher_macs(args: argparse.Namespace) -> int:
    """The teacher's MACs on one LR training patch (the search's budget is a quarter)."""
    size = tuple(_data(args).input_size)
    return int(count_ops(lv.create_model(TEACHER, scale=SCALE).eval(), size).macs)


def cmd_search(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    hp = dict(SEARCH)
    n_trials = 2 if SMOKE else hp.pop("n_trials")
    hp.pop("n_trials", None)
    if SMOKE:
        hp.update(epochs=1, max_steps=1)
    result = lv.search(
        "sr_generator", _data(args), "gan_c2f", teacher=teacher_model(), n_trials=n_trials,
        budget=teacher_macs(args) / 4, out_dir=RUNS / "search", progress=sys.stderr.isatty(),
        num_threads=args.threads, **hp,
    )  # fmt: skip
    summary = {
        "cpu_hours": result.cpu_hours, "chosen": result.extra["chosen"],
        "spec": result.best.spec.as_dict(), "values": result.best.values,
        "steps": {g: len(r.candidates) for g, r in result.extra["steps"].items()},
        "budget_macs": teacher_macs(args) / 4, "settings": hp, "threads": args.threads,
        "git": dataclasses.asdict(git_state()),
    }  # fmt: skip
    (RUNS / "search" / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"gan_c2f: {result.best.values} in {result.cpu_hours:.2f} CPU-h")


def cmd_retrain(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    spec = json.loads((RUNS / "search" / "summary.json").read_text())["spec"]
    hook = OutputDistillHook(teacher_model(), SEARCH["distill_weight"])
    _train(lv.create_model(spec["name"], **spec["kwargs"]), RUNS / "found", args, [hook])


class _Bicubic(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = torch.nn.functional.interpolate(x, scale_factor=SCALE, mode="bicubic")
        return up.clamp(0, 1)


def cmd_report(args: argparse.Namespace) -> None:
    check_results_target(OUT, allow_dirty=args.allow_dirty)
    for need in (RUNS / "teacher" / "last.pt", RUNS / "search" / "summary.json",
                 RUNS / "found" / "last.pt"):  # fmt: skip
        if not need.exists():
            raise SystemExit(f"{need} is missing: run teacher, search and retrain first")
    torch.set_num_threads(args.threads)
    found = json.loads((RUNS / "search" / "summary.json").read_text())
    spec = found["spec"]
    models = {
        "teacher": teacher_model(),
        "gan_c2f_found": _load(spec["name"], spec["kwargs"], RUNS / "found" / "last.pt"),
        "bicubic": _Bicubic(),
    }
    timed = compare(models, TIME_LR, batch=1, threads=args.threads, warmup=2,
                    repeats=5 if SMOKE else 30)  # fmt: skip
    rows, table = [], []
    for name, model in models.items():
        scores = {t: lv.evaluate(model, _data(args, t).test) for t in TEST_SETS}
        macs = int(count_ops(model, TIME_LR).macs)
        how = {"teacher": RUNS / "teacher", "gan_c2f_found": RUNS / "found"}.get(name)
        note = training_note(training_record(how / "last.pt"), args.threads) if how else ""
        rows.append({
            "name": name, "dataset": "sr", "split": "test", "macs": macs,
            "params": sum(p.numel() for p in model.parameters()),
            "latency_ms": timed[name].as_result(), "seed": 0,
            "metrics": {f"{k}@{t}": scores[t][k] for t in TEST_SETS for k in ("psnr", "ssim")},
            "method_chain": ["search:gan_c2f"] if name == "gan_c2f_found" else [],
            **({"baseline": "teacher"} if name != "teacher" else {}),
            "notes": f"trained {note}" if note else "PIL-bicubic down, torch-bicubic up",
            "extra": {"scores": scores, **({"spec": spec} if name == "gan_c2f_found" else {})},
        })  # fmt: skip
        table.append([name, round(macs / 1e9, 3), round(timed[name].median_ms, 2)]
                     + [round(scores[t][k], 4 if k == "ssim" else 2) for t in TEST_SETS
                        for k in ("psnr", "ssim")])  # fmt: skip
    by = {r["name"]: r for r in rows}
    t, f = by["teacher"], by["gan_c2f_found"]
    macs_ok = f["macs"] <= t["macs"] / 4
    speed = t["latency_ms"]["median"] / f["latency_ms"]["median"]
    drops = {s: t["extra"]["scores"][s]["psnr"] - f["extra"]["scores"][s]["psnr"]
             for s in TEST_SETS}  # fmt: skip
    notes = [
        f"Found generator: {f['macs'] / t['macs']:.3f} of the teacher's MACs (claim <= 0.25: "
        + ("holds" if macs_ok else "does not hold") + f"), {speed:.2f}x faster (claim >= 2x: "
        + ("holds" if speed >= 2 else "does not hold") + "), PSNR "
        + ", ".join(f"{s} {-d:+.2f} dB" for s, d in drops.items())
        + f" against the teacher (margin {MARGIN_DB} dB: "
        + ("holds" if all(d <= MARGIN_DB for d in drops.values()) else "does not hold") + ").",
        f"Search: {found['cpu_hours']:.2f} CPU-hours, trials per step {found['steps']}.",
    ]  # fmt: skip
    columns = ["model", f"GMACs ({TIME_LR[1]}x{TIME_LR[2]} LR)", "latency ms"] + [
        f"{s} {k}" for s in TEST_SETS for k in ("PSNR", "SSIM")]  # fmt: skip
    run = {
        "name": "Coarse-to-fine generator search, x2 super-resolution",
        "description": __doc__.split("\n\n")[2].replace("\n", " "), "command": COMMAND,
        "cpu": cpu_info(), "notes": notes,
        "tables": [{"title": "Teacher, found generator and bicubic", "columns": columns,
                    "rows": table}],
    }  # fmt: skip
    print(f"wrote {write_results(OUT, rows, run_info=run, allow_dirty=args.allow_dirty)}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--allow-dirty", action="store_true", default=None, help="see write_results")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--threads", type=int, default=1)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("teacher", "search", "retrain", "report"):
        sub.add_parser(name)
    args = p.parse_args(argv)
    {"teacher": cmd_teacher, "search": cmd_search, "retrain": cmd_retrain,
     "report": cmd_report}[args.cmd](args)  # fmt: skip


if __name__ == "__main__":
    main()
