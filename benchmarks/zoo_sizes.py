"""Sizes and CPU speed of every architecture in the backbone zoo, beside the published numbers.

For each model of ``lv.list_models()`` except the CIFAR baselines (our families and the timm
architectures leanvision verifies), at its default ImageNet input size: parameters, MACs
(ours beside the paper's/official numbers of ``leanvision.models.reference``), CPU throughput
(img/s at batch 8, 2 threads, eager PyTorch, NCHW) and peak activation memory of one forward at
batch 8. A second table gives the CIFAR adaptation (``img_size=32``) of our families.

    python benchmarks/zoo_sizes.py measure            # resumable: one JSON per model
    python benchmarks/zoo_sizes.py report             # -> benchmarks/results/zoo_sizes/

Throughput is only meaningful when nothing else runs on the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from timm.models import get_pretrained_cfg

import leanvision as lv
from leanvision.fileio import atomic_write_text
from leanvision.models import PAPER_NUMBERS, TIMM_VERIFIED
from leanvision.pipeline import cpu_info
from leanvision.profiling import count_ops, count_params, measure_latency, peak_memory_mb
from leanvision.report import write_results

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "bench_zoo_sizes"
OUT = ROOT / "benchmarks" / "results" / "zoo_sizes"
# Where our count differs from the published one, why.
# Interpretation of a row's distance from the paper (the distance itself is computed per run)
NOTES = {
    "augvit_small": "Interpretation: the default forward materialises the block-circulant "
    "weights and runs a dense product (as the official code does); the paper's MACs assume "
    "the FFT product (`CirculantLinear(use_fft=True)`, see its `fft_macs()` estimate).",
    "augvit_base": "Interpretation: as augvit_small, the dense circulant product against the "
    "paper's FFT count.",
    "cmt_s": "Interpretation: the official cmt.py builds the same parameter count as ours, "
    "tensor for tensor; no counting convention gives the paper's while keeping the Ti/XS/B "
    "matches.",
    "cmt_ti": "Interpretation: the paper's MACs have one significant digit.",
    "ghost_resnet50": "Interpretation: the official ghost_resnet.py also allocates parameters "
    "its forward never uses (not reproduced here).",
    "vit_res_tiny": "The hand-designed ViT-Res-Tiny reference of the official scripts; its "
    "MACs equal the MAC budget of the official tiny search.",
}


def _row_note(name: str, m: dict[str, Any], ref: Any) -> str:
    """The row's measured distance from the paper's counts, then its interpretation."""
    parts = []
    if ref is not None:
        for key, theirs in (("params", ref.params), ("MACs", ref.macs)):
            ours = m["params" if key == "params" else "macs"]
            pct = _pct(ours, theirs)
            if pct is not None and abs(pct) >= 1.0:
                parts.append(f"{key} {pct:+.1f} % against the paper")
    text = "; ".join(parts)
    return " ".join(x for x in (f"{text}." if text else "", NOTES.get(name, "")) if x)


def is_cifar_model(name: str) -> bool:
    """A CIFAR-only architecture (ResNet-20, its adder form, VGG-Small): its default input is
    32x32, so it has no ImageNet size to compare (read from its config, nothing built)."""
    cfg = get_pretrained_cfg(name)
    return cfg is not None and max(cfg.input_size[1:]) <= 32


def is_image_to_image(name: str) -> bool:
    """A super-resolution network (no classifier: its config has no classes), not a backbone."""
    cfg = get_pretrained_cfg(name)
    return cfg is not None and cfg.num_classes == 0


def zoo_models() -> list[str]:
    """Our ImageNet-sized families first (alphabetical), then the verified timm architectures
    (classifiers only: the SR networks are measured by their own benchmark)."""
    ours = [
        n for n in lv.list_models()
        if n not in TIMM_VERIFIED and not is_cifar_model(n) and not is_image_to_image(n)
    ]  # fmt: skip
    return sorted(ours) + list(TIMM_VERIFIED)


def measure_one(name: str, batch: int, threads: int) -> dict:
    """Params, MACs, throughput and peak memory at the default size; sizes at 32x32."""
    torch.manual_seed(0)
    model = lv.create_model(name).eval()
    size = tuple(model.pretrained_cfg["input_size"])
    row: dict = {"name": name, "input_size": list(size)}
    row["params"] = count_params(model)
    row["macs"] = count_ops(model, size).macs
    row["peak_mem_mb"] = peak_memory_mb(model, size, batch=batch)
    lat = measure_latency(
        model, size, batch=batch, threads=threads, warmup=3, repeats=10, min_time_s=6
    )
    row["latency_ms"] = lat.as_result()
    if name not in TIMM_VERIFIED:
        small = lv.create_model(name, img_size=32, num_classes=10).eval()
        row["cifar"] = {
            "params": count_params(small),
            "macs": count_ops(small, (3, 32, 32)).macs,
        }
    return row


def cmd_measure(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    RUNS.mkdir(parents=True, exist_ok=True)
    names = args.only or zoo_models()
    for name in names:
        path = RUNS / f"{name}.json"
        if path.exists() and not args.force:
            continue
        start = time.perf_counter()
        row = measure_one(name, args.batch, args.threads)
        atomic_write_text(path, json.dumps(row, indent=1))
        thr = args.batch * 1000 / row["latency_ms"]["median"]
        took = time.perf_counter() - start
        print(
            f"{name:28s} {row['params'] / 1e6:7.2f} M  {row['macs'] / 1e9:7.3f} GMACs  "
            f"{thr:8.1f} img/s  {row['peak_mem_mb']:8.1f} MiB  ({took:.0f} s)",
            flush=True,
        )


def _pct(ours: float, theirs: float | None) -> float | None:
    return None if not theirs else round(100.0 * (ours - theirs) / theirs, 2)


def _alias_note(rows: list[dict], batch: int) -> str:
    """How far apart two names of one network were timed in this run: the timing noise."""
    by = {r["name"]: batch * 1000 / r["latency_ms"]["median"] for r in rows}
    pairs = [(n, f"{n}_circulant2") for n in sorted(by) if f"{n}_circulant2" in by]
    if not pairs:
        return ""
    spread = ", ".join(f"{a} {by[a]:.1f} vs {b} {by[b]:.1f} img/s" for a, b in pairs)
    return (
        "Timing noise, measured: aliases of one network (the same architecture registered "
        f"under two names) were timed in this run at {spread}."
    )


def cmd_report(args: argparse.Namespace) -> None:
    rows, cifar_rows, size_rows, missing = [], [], [], []
    for name in zoo_models():
        path = RUNS / f"{name}.json"
        if not path.exists():
            missing.append(name)
            continue
        m = json.loads(path.read_text())
        ref = PAPER_NUMBERS.get(name)
        paper = None
        if ref is not None:
            paper = {
                "params": None if ref.params is None else round(ref.params),
                "macs": None if ref.macs is None else round(ref.macs),
                "top1": ref.top1,
                "source": f"{ref.source} [{ref.tag}]",
            }
            paper = {k: v for k, v in paper.items() if v is not None}
        rows.append(
            {
                "name": name,
                "dataset": f"random input {m['input_size'][1]}x{m['input_size'][2]}",
                "split": "-",
                "params": m["params"],
                "macs": m["macs"],
                "latency_ms": m["latency_ms"],
                "peak_mem_mb": m["peak_mem_mb"],
                "paper": paper,
                "notes": _row_note(name, m, ref),
                "extra": {"input_size": m["input_size"]},
            }
        )
        if ref is not None:
            within = None
            if ref.binding:
                ok_p = ref.params is None or math.isclose(m["params"], ref.params, rel_tol=0.01)
                ok_m = ref.macs is None or math.isclose(m["macs"], ref.macs, rel_tol=0.03)
                within = "yes" if ok_p and ok_m else "NO"
            size_rows.append(
                [
                    name,
                    m["input_size"][1],
                    round(m["params"] / 1e6, 2),
                    None if ref.params is None else round(ref.params / 1e6, 2),
                    _pct(m["params"], ref.params),
                    round(m["macs"] / 1e9, 3),
                    None if ref.macs is None else round(ref.macs / 1e9, 3),
                    _pct(m["macs"], ref.macs),
                    ref.tag,
                    within or "recorded",
                ]
            )
        if "cifar" in m:
            cifar_rows.append(
                [name, round(m["cifar"]["params"] / 1e6, 3), round(m["cifar"]["macs"] / 1e6, 1)]
            )
    if missing:  # a partial table would pass for the whole zoo
        raise SystemExit(f"not measured yet (run `measure`): {', '.join(missing)}")
    timed_at = {(r["latency_ms"]["batch"], r["latency_ms"]["threads"]) for r in rows}
    if len(timed_at) != 1:
        raise SystemExit(f"the models were timed at different (batch, threads): {timed_at}")
    ((batch, threads),) = timed_at
    tables = [
        {
            "title": "Published vs measured sizes",
            "columns": [
                "model",
                "input",
                "params (M)",
                "paper params (M)",
                "Δ params %",
                "GMACs",
                "paper GMACs",
                "Δ MACs %",
                "source tag",
                "within 1 % / 3 %",
            ],
            "rows": size_rows,
            "notes": "Tags: C official code, R official README, P paper table, M recalled from "
            "the paper (not verified). The 1 % params / 3 % MACs rule binds C/R numbers only.",
        },
        {
            "title": "CIFAR adaptation (img_size=32, 10 classes)",
            "columns": ["model", "params (M)", "MACs (M) at 32x32"],
            "rows": cifar_rows,
            "notes": "Each model file's docstring says how it adapts to 32x32 inputs.",
        },
    ]
    path = write_results(
        OUT,
        rows,
        run_info={
            "name": "Backbone zoo: sizes, throughput and memory",
            "description": "Every zoo architecture at its default ImageNet input size: params "
            "and MACs beside the published numbers, CPU throughput (eager PyTorch, NCHW, "
            f"batch {batch}, {threads} threads, nothing else running) and peak activation "
            f"memory of one forward at batch {batch}. Random weights and inputs (no ImageNet "
            "here), so there is no accuracy.",
            "command": f"python benchmarks/zoo_sizes.py measure --batch {batch} --threads "
            f"{threads} && python benchmarks/zoo_sizes.py report",
            "cpu": cpu_info(),
            "notes": _alias_note(rows, batch),
            "tables": tables,
        },
        allow_dirty=args.allow_dirty,
    )
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
    m = sub.add_parser("measure")
    m.add_argument("--only", nargs="*", help="model names (default: the whole zoo)")
    m.add_argument("--force", action="store_true", help="re-measure models already measured")
    m.add_argument("--batch", type=int, default=8)
    m.add_argument("--threads", type=int, default=2)
    sub.add_parser("report", help="the table from the measurements (batch and threads theirs)")
    args = p.parse_args(argv)
    {"measure": cmd_measure, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
