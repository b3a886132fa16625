"""Winograd AdderNet (Li et al., ICML 2021, arXiv 2105.05530) on ResNet-20 / CIFAR-10: which
transform trains, whether ℓ2-to-ℓ1 annealing helps, how many additions it saves, and how fast
its layer runs.

The transforms are our derivation (``shared/reference/winograd-adder.md``): the paper's
matrices could not be read. The note expects the balanced transforms with annealing to come
close to the direct AdderNet, and the standard transform (whose four outputs per tile have a
fixed pattern of means BatchNorm cannot remove) to do worse; this benchmark measures it.

    python benchmarks/winograd_adder_cifar10.py --threads 2 speed          # quiet machine
    for v in adder balanced_a_anneal balanced_a_p1 standard_anneal ...; do
        python benchmarks/winograd_adder_cifar10.py --threads 1 train --variant $v; done
    python benchmarks/winograd_adder_cifar10.py report

Every variant trains from the same random init with the same schedule (SGD lr 0.1 cosine,
wd 5e-4, batch 128, the adaptive learning rate η = 0.2; the AdderNet row of
``lowbit_cifar10.py`` trains 15 epochs on 45k images, the default here). ``--epochs`` and
``--max-train`` shorten it for every variant alike, the direct adder net ("adder") included,
and the report says which schedule ran. Each run resumes from
``runs/bench_winograd_adder/<variant>/last.pt``. ``speed`` times one 64→64 3×3 layer at 32×32,
batch 32: nn.Conv2d, the direct adder layer and the Winograd adder layer, side by side in one
process, and counts ResNet-20's additions.

A finished ``train`` tests its network on the 10k test images and writes one *part*,
``benchmarks/results/winograd_adder_cifar10/parts/<variant>_e<epochs>_n<images>.json`` (``part``
writes it again from a finished run); ``speed`` writes ``parts/speed.json``. Parts are committed:
the nine variants at the full schedule take about 20 CPU-hours, more than one machine's life
here, so they train in different sessions and ``report`` builds the tables from the parts, one
accuracy table per schedule. At the full schedule the direct AdderNet is ``lowbit_cifar10``'s
AdderNet row (the same recipe, seed and schedule) unless an ``adder`` part of its own exists.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import leanvision as lv
from leanvision.engine import evaluate, load_checkpoint, training_note, training_record
from leanvision.fileio import atomic_write_text
from leanvision.layers import AdderConv2d, WinogradAdderConv2d
from leanvision.layers.winograd_adder import (
    TRANSFORMS,
    cuda_backward_backend,
    winograd_adder_counts,
)
from leanvision.methods.lowbit import adderize, winograd_adderize
from leanvision.pipeline import cpu_info
from leanvision.profiling import compare, count_ops
from leanvision.provenance import git_state
from leanvision.report import check_results_target, write_results

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10"
RUNS = ROOT / "runs" / "bench_winograd_adder"
OUT = ROOT / "benchmarks" / "results" / "winograd_adder_cifar10"
SMOKE = False  # tests set it: tiny layer shapes, one timing session

TRAIN = {"lr": 0.1, "weight_decay": 5e-4, "opt": "sgd", "eta": 0.2}
VARIANTS: dict[str, dict[str, Any]] = {"adder": {"method": "adder"}}
for _t in TRANSFORMS:
    VARIANTS[f"{_t}_anneal"] = {"method": "winograd_adder", "transform": _t, "p_schedule": "linear"}
    VARIANTS[f"{_t}_p1"] = {"method": "winograd_adder", "transform": _t, "p_schedule": "none"}
ADDER_OPS = (
    "adder2d",
    "winograd_adder_core",
    "winograd_input_transform",
    "winograd_output_transform",
)
FULL = (15, 45000)  # the AdderNet row's schedule (lowbit_cifar10): epochs, training images
LOWBIT = ROOT / "benchmarks" / "results" / "lowbit_cifar10" / "results.json"
PAPER = {"top1": 91.84, "source": "AdderNet paper Table 2, ResNet-20 ANN, CIFAR-10 (400 epochs)"}


def load(args: argparse.Namespace, batch_size: int = 128) -> Any:
    return lv.load_data(
        "cifar10", root=args.data, batch_size=batch_size, seed=0, max_train=args.max_train,
        max_val=args.max_val, max_test=args.max_test,
    )  # fmt: skip


def build(variant: str) -> torch.nn.Module:
    """The variant's untrained network (same seed for all: the same stem and classifier)."""
    torch.manual_seed(0)
    model = lv.create_model("resnet20_cifar", num_classes=10)
    spec = VARIANTS[variant]
    if spec["method"] == "adder":
        return adderize(model)[0]
    return winograd_adderize(model, spec["transform"])[0]


def cmd_train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    spec = dict(VARIANTS[args.variant])
    method = spec.pop("method")
    data = load(args)
    out = RUNS / args.variant
    common = {
        "seed": 0, "out_dir": str(out), "resume": True, "progress": sys.stderr.isatty(),
        "max_steps": args.max_steps, "device": args.device, "amp": False,  # fp32 everywhere
    }  # fmt: skip
    torch.manual_seed(0)
    model = lv.create_model("resnet20_cifar", num_classes=10)
    t0 = time.perf_counter()
    lv.compress(model, method, data, finetune_epochs=args.epochs, **TRAIN, **common, **spec)
    summary = {
        "variant": args.variant,
        "epochs": args.epochs,
        "max_train": args.max_train,
        "wall_s": time.perf_counter() - t0,
        "threads": args.threads,
        "device": args.device,
        "git": dataclasses.asdict(git_state()),  # a device run's copied tree: as declared
    }
    if args.device.startswith("cuda"):
        summary["device_name"] = torch.cuda.get_device_name(torch.device(args.device))
        summary["core_backward"] = cuda_backward_backend()
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    if args.max_steps is None and not args.no_part:  # a capped run is not the schedule it names
        print(f"wrote {write_part(args, args.variant, RUNS)}")


def parts_dir() -> Path:
    """The committed parts (see the module docstring)."""
    return OUT / "parts"


def write_part(args: argparse.Namespace, variant: str, runs: Path) -> Path:
    """Test a finished run's network and write its part: top-1 on the test images, its op
    counts, the training record (epochs, time, commits) and the commit that tested it."""
    summary = json.loads((runs / variant / "summary.json").read_text())
    ckpt = runs / variant / "last.pt"
    record = training_record(ckpt)
    if record["epochs"] != summary["epochs"]:
        raise SystemExit(f"{variant}: trained {record['epochs']} of {summary['epochs']} epochs")
    model = build(variant)
    model.load_state_dict(load_checkpoint(ckpt)["model"])
    metrics = evaluate(model, load(args, batch_size=256).test)
    counts = count_ops(model, (3, 32, 32))
    part = {
        "variant": variant, "epochs": summary["epochs"], "max_train": summary["max_train"],
        "test_images": metrics["n"], "top1": round(metrics["top1"], 2),
        "params": sum(p.numel() for p in model.parameters()), "macs": counts.macs,
        "adds": counts.adds, "muls": counts.muls,
        "adder_adds": sum(counts.by_op.get(k, 0) for k in ADDER_OPS),
        "note": _train_note(record, summary),
        "trained_git": summary["git"], "tested_git": dataclasses.asdict(git_state()),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }  # fmt: skip
    name = f"{variant}_e{part['epochs']}_n{part['max_train']}.json"
    return atomic_write_text(parts_dir() / name, json.dumps(part, indent=2) + "\n")


def _train_note(record: dict[str, Any], summary: dict[str, Any]) -> str:
    """The training sentence of a part; a GPU run (on a lent machine) adds the core backward
    that ran there."""
    cpu = summary.get("device", "cpu") == "cpu"
    note = f"{training_note(record, summary['threads'] if cpu else None)} on "
    note += f"{summary['max_train']} images"
    if not cpu:
        note += f" (fp32; core backward: {summary['core_backward']}); tested here, on the CPU"
    return note


def cmd_part(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    print(f"wrote {write_part(args, args.variant, Path(args.runs) if args.runs else RUNS)}")


class FixedInput:
    """``layer(x)`` on one channels-last input built outside the timed call; the profiler
    appends the native kernels it sees running to ``backend``."""

    backend = "torch-eager-cpu-channels_last"

    def __init__(self, layer: torch.nn.Module, x: torch.Tensor) -> None:
        self.layer, self.x = layer.eval(), x

    def __call__(self) -> torch.Tensor:
        return self.layer(self.x)


def layer_speed(threads: int, sessions: int = 5) -> dict[str, Any]:
    """nn.Conv2d, AdderConv2d and WinogradAdderConv2d (balanced_a: every transform costs the
    same), 64→64 at 32×32, batch 32, channels-last, timed interleaved in one process."""
    shape = (32, 64, 32, 32) if not SMOKE else (2, 16, 8, 8)
    c = shape[1]
    torch.manual_seed(0)
    x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    layers = {
        "conv": conv,
        "adder": AdderConv2d(c, c, 3, padding=1),
        "winograd_adder": WinogradAdderConv2d(c, c),
    }
    runners = {k: FixedInput(m, x) for k, m in layers.items()}
    per: dict[str, list[float]] = {k: [] for k in layers}
    backends: dict[str, str] = {}
    for _ in range(sessions if not SMOKE else 1):
        with torch.inference_mode():
            lat = compare(runners, shape[1:], batch=shape[0], threads=threads, repeats=10)
        for k, v in lat.items():
            per[k].append(v.median_ms)
            backends[k] = v.backend
    med = {k: statistics.median(v) for k, v in per.items()}
    direct = count_ops(layers["adder"], shape[1:], batch=shape[0]).adds
    wino = count_ops(layers["winograd_adder"], shape[1:], batch=shape[0]).adds
    rows = [
        [k, round(med[k], 3), round(min(per[k]), 3), round(max(per[k]), 3),
         round(med[k] / med["conv"], 2), round(med[k] / med["adder"], 2), backends[k]]
        for k in layers
    ]  # fmt: skip
    return {
        "title": f"One 3×3 layer, {c}→{c} at {shape[2]}×{shape[3]}, batch {shape[0]}, "
        f"{threads} thread(s): side by side in one process",
        "columns": [
            "layer",
            "median ms",
            "min session",
            "max session",
            "÷ conv",
            "÷ direct adder",
            "backend (what ran)",
        ],  # fmt: skip
        "rows": rows,
        "notes": f"{len(per['conv'])} sessions, each timing the three layers interleaved (10 "
        "runs each) on the same channels-last input; median of the session medians. Additions "
        f"per forward: direct adder {direct:,}, Winograd adder {wino:,} "
        f"({wino / direct:.3f}×).",
        "_medians": med,
    }


def additions_table() -> dict[str, Any]:
    """ResNet-20's adder-layer additions, direct vs Winograd (core and transforms apart), from
    the profiler, beside the note's per-tile formula."""
    model = lv.create_model("resnet20_cifar", num_classes=10)
    direct = count_ops(adderize(model)[0], (3, 32, 32)).by_op
    wino = count_ops(winograd_adderize(model)[0], (3, 32, 32)).by_op
    formula = 0
    for m in model.modules():  # the note's count: 16·(32·C·O + 32·C + 24·O) per layer on
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) and m.stride == (1, 1):
            if m.in_channels == 3:
                continue  # the stem stays real
            hw = {16: 32, 32: 16, 64: 8}[m.out_channels]  # CIFAR ResNet stages
            formula += sum(winograd_adder_counts(1, m.in_channels, m.out_channels, hw, hw).values())
    formula += wino.get("adder2d", 0)  # stride-2 and 1×1 layers stay direct
    d_total = sum(direct.get(k, 0) for k in ADDER_OPS)
    w_total = sum(wino.get(k, 0) for k in ADDER_OPS)
    row = [
        round(d_total / 1e6, 2), round(wino.get("winograd_adder_core", 0) / 1e6, 2),
        round(wino.get("winograd_input_transform", 0) / 1e6, 2),
        round(wino.get("winograd_output_transform", 0) / 1e6, 2),
        round(wino.get("adder2d", 0) / 1e6, 2), round(w_total / 1e6, 2),
        round(formula / 1e6, 2), f"{100 * (1 - w_total / d_total):.1f} %",
    ]  # fmt: skip
    return {
        "title": "ResNet-20 adder-layer additions per image (M), from the profiler",
        "columns": [
            "direct AdderNet",
            "Winograd core",
            "input transform",
            "output transform",
            "direct layers left (stride 2, 1×1)",
            "Winograd AdderNet",
            "note's formula",
            "saved",
        ],  # fmt: skip
        "rows": [row],
        "notes": "Each |x − w| term is a subtraction and an accumulation (2 additions); per 4×4 "
        "tile: 32 per channel pair in the core, 32 per input channel (input transform), 24 per "
        "output channel (output transform). The note derives 80.7 M → 41.0 M (−49 %).",
    }


# Interpretation, not measured by the run.
INTERPRETATION = [
    "Interpretation: annealing reaches p = 1 at 60 % of training, so a short schedule leaves "
    "little time at the ℓ1 form the network is tested in; the comparison of annealed and p = 1 "
    "runs needs the full schedule before it says anything about the paper's strategy.",
    "Interpretation: while p moves, BatchNorm's running statistics lag the layers' changing "
    "scale, so validation during annealing is low (10–19 % after epoch 1 here) and recovers "
    "once p is held at 1.",
]


P_LABEL = {"linear": "2 → 1 (linear, 1 at 60 %)", "none": "1 throughout"}


def _findings(acc_rows: list[list[Any]], epochs: int, images: int) -> list[str]:
    """What one schedule's parts measured, in sentences built from their own rows."""
    by = {r[0]: r[3] for r in acc_rows}
    direct = by.get("adder", by.get(LOWBIT_ROW))
    at = f"At {epochs} epochs on {images:,} images"
    notes = []
    if (epochs, images) == FULL:
        missing = [v for v in VARIANTS if v != "adder" and v not in by]
        notes.append(
            "Acceptance, accuracy at the AdderNet row's schedule (15 epochs on 45,000 images): "
            + ("every Winograd variant trained." if not missing else
               f"**{len(missing)} of 8 Winograd variants not trained yet** "
               f"({', '.join(missing)}); each trains in its own session (see the module "
               "docstring).")
        )  # fmt: skip
    for t in TRANSFORMS:
        parts = [f"{v.split('_')[-1]} {by[v]:.2f} %" for v in (f"{t}_anneal", f"{t}_p1")
                 if v in by]  # fmt: skip
        if parts:
            ref = f" (direct AdderNet {direct:.2f} %)" if direct is not None else ""
            notes.append(f"{at}, {t}: " + ", ".join(parts) + ref + ".")
    for p in ("anneal", "p1"):
        bal = [by[v] for v in (f"balanced_a_{p}", f"balanced_b_{p}") if v in by]
        std = by.get(f"standard_{p}")
        if bal and std is not None:
            notes.append(
                f"{at}, the note's expectation, balanced beats standard ({p}): "
                f"{'confirmed' if min(bal) > std else 'refuted'} ({min(bal):.2f}–{max(bal):.2f} "
                f"vs {std:.2f} %)."
            )
    return notes


def cmd_speed(args: argparse.Namespace) -> None:
    """Time the layers and write ``parts/speed.json`` for the report (a quiet machine)."""
    table = layer_speed(args.threads)
    table["git"] = dataclasses.asdict(git_state())
    atomic_write_text(parts_dir() / "speed.json", json.dumps(table, indent=2) + "\n")
    for r in table["rows"]:
        print(r)


LOWBIT_ROW = "adder (lowbit_cifar10's row)"


def _lowbit_adder() -> dict[str, Any] | None:
    """``lowbit_cifar10``'s AdderNet row when it was trained at the full schedule."""
    if not LOWBIT.exists():
        return None
    rows = [m for m in json.loads(LOWBIT.read_text())["models"] if m["name"] == "resnet20_adder"]
    e, n = FULL
    if rows and rows[0]["notes"].startswith(f"{e} epochs on {n} images"):
        return rows[0]
    return None


def _read_parts() -> dict[tuple[int, int], dict[str, dict[str, Any]]]:
    """The parts by schedule (epochs, images), longest first, each by variant."""
    out: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
    for f in sorted(parts_dir().glob("*_e*_n*.json")):
        part = json.loads(f.read_text())
        if part["variant"] in VARIANTS:
            out.setdefault((part["epochs"], part["max_train"]), {})[part["variant"]] = part
    return dict(sorted(out.items(), reverse=True))


def _tested_at(part: dict[str, Any]) -> str:
    """Where a part's test top-1 was measured (the report's own commit is another)."""
    git = part["tested_git"]
    return f"; tested at commit {git['commit'][:10]}{' (dirty tree)' if git.get('dirty') else ''}"


def cmd_report(args: argparse.Namespace) -> None:
    check_results_target(OUT, allow_dirty=args.allow_dirty)
    speed_file = parts_dir() / "speed.json"
    if not speed_file.exists():
        sys.exit("run `speed` first (on a quiet machine)")
    speed = json.loads(speed_file.read_text())
    med = speed.pop("_medians")
    git = speed.pop("git")
    speed["notes"] += f" Timed at commit {git['commit'][:10]}{' (dirty)' if git['dirty'] else ''}."
    by_schedule = _read_parts()
    if not by_schedule:
        sys.exit("no variant trained (no parts)")
    rows, tables, findings, commands = [], [], [], []
    for k, ((epochs, images), parts) in enumerate(by_schedule.items()):
        suffix = "" if k == 0 else f"_{epochs}ep" + ("" if images == 45000 else f"_{images}")
        acc_rows = []
        base_name = f"resnet20_adder{suffix}" if "adder" in parts else None
        for variant in (v for v in VARIANTS if v in parts):
            part, spec = parts[variant], VARIANTS[variant]
            name = f"resnet20_{variant}{suffix}"
            print(f"{name}: test top-1 {part['top1']:.2f} %")
            rows.append({
                "name": name, "method_chain": [spec["method"]], "baseline": base_name,
                "params": part["params"], "macs": part["macs"], "adds": part["adds"],
                "muls": part["muls"], "bitops": 0, "dataset": "cifar10", "split": "test",
                "top1": part["top1"], "notes": part["note"] + part.get("source", _tested_at(part)),
                **({"paper": dict(PAPER)} if variant == "adder" else {}),
            })  # fmt: skip
            acc_rows.append([
                variant, spec.get("transform", "— (direct)"),
                P_LABEL.get(spec.get("p_schedule", ""), "—"), part["top1"],
                round(part["adder_adds"] / 1e6, 1),
            ])  # fmt: skip
            commands.append(
                f"python benchmarks/winograd_adder_cifar10.py --threads 1 --max-train {images} "
                f"train --variant {variant} --epochs {epochs}"
            )
        lowbit = _lowbit_adder() if (epochs, images) == FULL and "adder" not in parts else None
        if lowbit is not None:
            adds = count_ops(build("adder"), (3, 32, 32)).by_op
            acc_rows.insert(0, [
                LOWBIT_ROW, "— (direct)", "—", lowbit["top1"],
                round(sum(adds.get(op, 0) for op in ADDER_OPS) / 1e6, 1),
            ])  # fmt: skip
        base = next((r for r in acc_rows if r[0] in ("adder", LOWBIT_ROW)), None)
        for r in acc_rows:
            r.append(round(r[3] - base[3], 2) if base else None)
        tables.append({
            "title": f"ResNet-20 on CIFAR-10, {epochs} epochs on {images:,} images: every "
            "variant from the same init and schedule",
            "columns": [
                "variant", "transform", "p", "test top-1 %", "adder-layer additions (M)",
                "vs direct AdderNet (pts)",
            ],
            "rows": acc_rows,
            **({"notes": f"{LOWBIT_ROW}: lowbit_cifar10's AdderNet, {lowbit['notes']}; the same "
                "recipe, init seed and data, trained by that benchmark."} if lowbit else {}),
        })  # fmt: skip
        findings += _findings(acc_rows, epochs, images)
    ratio = med["winograd_adder"] / med["adder"]
    notes = [
        f"Acceptance, layer speed: the Winograd adder layer took {ratio:.2f}× the direct adder "
        f"layer's time and {med['winograd_adder'] / med['conv']:.2f}× nn.Conv2d's "
        f"({'**met**' if ratio < 1 else '**not met**'}: faster than the direct layer).",
        *findings,
        *INTERPRETATION,
    ]
    run = {
        "name": "Winograd AdderNet on CIFAR-10",
        "description": (
            "ResNet-20: the direct AdderNet (every conv but the stem an adder layer + BN) and "
            "the Winograd AdderNet (its 3×3 stride-1 layers on F(2×2, 3×3) tiles, the others "
            "direct) with each transform — standard, our balanced_a / balanced_b derivation, "
            "the non-exact window_sum — trained at p = 1 throughout or annealed from p = 2 "
            "(linear, reaching 1 at 60 % of training). The transforms are our derivation, not "
            "the paper's matrices (which could not be read). SGD lr 0.1 cosine, wd 5e-4, "
            "batch 128, adaptive learning rate η = 0.2; test on all 10,000 test images. Each "
            "variant's row comes from its committed part (one per schedule), written when its "
            "training finished."
        ),
        "command": "\n".join(
            [
                "python benchmarks/winograd_adder_cifar10.py --threads 2 speed",
                *commands,
                "python benchmarks/winograd_adder_cifar10.py report",
            ]
        ),  # fmt: skip
        "cpu": cpu_info(),
        "tables": [*tables, additions_table(), speed],
        "notes": notes,
    }
    print(f"wrote {write_results(OUT, rows, run_info=run, allow_dirty=args.allow_dirty)}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--allow-dirty", action="store_true", default=None, help="see write_results")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-train", type=int, default=45000)
    p.add_argument("--max-val", type=int, default=None, help="validation images (default: all)")
    p.add_argument("--max-test", type=int, default=None, help="test images (default: all)")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--variant", choices=list(VARIANTS), required=True)
    t.add_argument("--epochs", type=int, default=15)
    t.add_argument("--max-steps", type=int, default=None)
    t.add_argument("--device", default="cpu", help="cpu, or cuda on a lent GPU (fp32)")
    t.add_argument(
        "--no-part", action="store_true", help="leave the part to `part` (a device run: the "
        "test images stay here)",
    )  # fmt: skip
    pt = sub.add_parser("part", help="write a finished run's part again")
    pt.add_argument("--variant", choices=list(VARIANTS), required=True)
    pt.add_argument("--runs", default=None, help=f"the runs folder (default {RUNS})")
    sub.add_parser("speed")
    sub.add_parser("report")
    args = p.parse_args(argv)
    cmds = {"train": cmd_train, "part": cmd_part, "speed": cmd_speed, "report": cmd_report}
    cmds[args.cmd](args)


if __name__ == "__main__":
    main()
