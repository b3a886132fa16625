"""Post-training quantization of our CIFAR-10 ViT (PTQ for ViT, Liu et al., NeurIPS 2021,
arXiv 2106.14156), and the int8 model's speed on onnxruntime against fp32 on the same runtime.

Claim (paper, Table 1 and 2): DeiT-B at about 8-bit mixed precision keeps 81.29 % top-1 of
81.8 % on ImageNet; 6-bit loses more; the ranking loss and the nuclear-norm bit allocation each
help. Here: the dense DeiT-Tiny-like ViT of the pruning benchmark (img 32, patch 4, 65 tokens,
12 blocks, width 192), calibrated on 1,024 validation images (never test), tested on all
10,000 test images.

    python benchmarks/prune_cifar10.py --threads 1 dense --arch vit  # the dense ViT (once)
    python benchmarks/ptq_vit_cifar10.py --threads 1 calibrate    # every variant, resumable
    python benchmarks/ptq_vit_cifar10.py --threads 2 report       # quiet machine: it times ORT

``calibrate`` writes ``runs/bench_ptq_vit_cifar10/<variant>/{model.pt,summary.json}`` and skips
variants already done. ``report`` exports the fp32 ViT and the W8A8 ViT to ONNX (QDQ), tests the
deployed int8 model on onnxruntime, times both side by side (and DeiT-Small at 224, whose
weights are random: speed does not depend on them), and writes the results JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import leanvision as lv
from leanvision.methods.lowbit.ptq_vit import PTQViTConfig, calibrate, quantize_vit
from leanvision.pipeline import cpu_info
from leanvision.profiling import compare, count_ops, energy_uj
from leanvision.report import check_results_target, write_results

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10"
DENSE = ROOT / "runs" / "bench_prune_cifar10" / "vit_dense_ft" / "model.pt"
RUNS = ROOT / "runs" / "bench_ptq_vit_cifar10"
OUT = ROOT / "benchmarks" / "results" / "ptq_vit_cifar10"
SMOKE = False  # tests set it: a tiny random ViT, few images, no 224 model

NO_RANK = {"ranking_weight": 0.0}
VARIANTS: dict[str, dict[str, Any]] = {
    "w8a8": {"bits": 8},
    "w8a8_no_rank": {"bits": 8, **NO_RANK},
    "w6a6": {"bits": 6},
    "w6a6_no_rank": {"bits": 6, **NO_RANK},
    # the baseline the paper improves on: Δ from the max, no search, no bias correction
    "w6a6_max": {"bits": 6, "rounds": 0, "bias_correction": False, **NO_RANK},
    "mixed6": {"bits": 6, "bit_budget": 6.0},
    "mixed6_no_rank": {"bits": 6, "bit_budget": 6.0, **NO_RANK},
    # 4 bits: where the choices should start to matter
    "w4a4": {"bits": 4},
    "w4a4_no_rank": {"bits": 4, **NO_RANK},
    "w4a4_max": {"bits": 4, "rounds": 0, "bias_correction": False, **NO_RANK},
}
PAPER = {
    "w8a8": {"top1": 81.29, "source": "paper Table 1: DeiT-B, 8-bit mixed, ImageNet (fp32 81.8)"},
    "mixed6": {
        "top1": 77.47,
        "source": "DeiT-B, 6-bit mixed, ImageNet: paper Table 1 as recalled in our notes, "
        "not checked against the text",
    },
}


def load_dense() -> torch.nn.Module:
    if SMOKE:
        torch.manual_seed(0)
        return lv.create_model(
            "deit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10, depth=2,
            embed_dim=64, num_heads=2,
        ).eval()  # fmt: skip
    if not DENSE.exists():
        raise SystemExit(
            f"{DENSE} is missing: run `python benchmarks/prune_cifar10.py --threads 1 dense "
            "--arch vit` first (it trains the dense CIFAR ViT)"
        )
    return lv.load(DENSE).eval()


def load(args: argparse.Namespace) -> Any:
    kw = {"max_train": 256, "max_val": 64, "max_test": 64} if SMOKE else {}
    return lv.load_data("cifar10", root=args.data, batch_size=256, seed=0, **kw)


def config(variant: str) -> PTQViTConfig:
    cfg = PTQViTConfig(**VARIANTS[variant])
    if SMOKE:
        cfg.num_images, cfg.nuclear_images, cfg.batch_size = 32, 8, 16
    return cfg


@torch.no_grad()
def top1(model: Any, loader: Any) -> float:
    hit = n = 0
    for x, y in loader:
        out = model(x)
        hit += int((torch.as_tensor(out).argmax(1) == y).sum())
        n += len(y)
    return 100.0 * hit / n


def cmd_calibrate(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    dense, data = load_dense(), load(args)
    for variant in args.variants or list(VARIANTS):
        out = RUNS / variant
        if (out / "summary.json").exists():
            summary = json.loads((out / "summary.json").read_text())
            if "top1_onnxruntime" not in summary:  # a run of the first version of this script
                summary["top1_onnxruntime"] = round(
                    _ort_top1(lv.load(out / "model.pt"), data, args), 2
                )
                (out / "summary.json").write_text(json.dumps(summary, indent=2))
            print(f"{variant}: done, skipped")
            continue
        cfg = config(variant)
        t0 = time.perf_counter()
        q = lv.compress(dense, "ptq_vit", data, **vars(cfg))
        wall = time.perf_counter() - t0
        out.mkdir(parents=True, exist_ok=True)
        lv.save(q, out / "model.pt")
        acc = _ort_top1(q, data, args)  # tested as deployed
        bits = [r["bits"] for r in q.ptq_record.values()]
        summary = {
            "variant": variant,
            "config": {k: v for k, v in vars(cfg).items()},
            "top1_onnxruntime": round(acc, 2),
            "calib_s": round(wall, 1),
            "threads": args.threads,
            "bits_histogram": {str(b): bits.count(b) for b in sorted(set(bits))},
        }
        if variant == "w8a8" or SMOKE:  # the simulated (fake-quant) model agrees with ORT
            summary["top1_fake_quant"] = round(top1(q.eval(), data.test), 2)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        print(f"{variant}: test top-1 {acc:.2f}% on onnxruntime (calibration {wall:.0f} s)")


def _ort_top1(model: torch.nn.Module, data: Any, args: argparse.Namespace) -> float:
    """Test top-1 of ``model`` exported to (QDQ) ONNX and run by onnxruntime."""
    with tempfile.TemporaryDirectory() as tmp:
        path = lv.export_onnx(model.eval(), Path(tmp) / "m.onnx", input_size=(3, 32, 32))
        return top1(_Session(path, args.threads), data.test)


class _Session:
    """An onnxruntime CPU session with fixed threads, callable on a numpy batch."""

    backend = "onnxruntime-cpu"

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        self.s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        return self.s.run(None, {"input": x.numpy()})[0]


def _ort_speed(
    fp: torch.nn.Module, q: torch.nn.Module, size: int, batches: list[int], threads: list[int]
) -> list[list[Any]]:
    """fp32 and QDQ-int8 ONNX of the same ViT on onnxruntime, side by side: per (threads,
    batch) the medians of 5 interleaved sessions and the median ratio."""
    rows = []
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ORT has its own thread pool; keep torch's idle
    with tempfile.TemporaryDirectory() as tmp:
        f32, i8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        lv.export_onnx(fp, f32, input_size=(3, size, size))
        lv.export_onnx(q, i8, input_size=(3, size, size))
        for t in threads:
            sf, sq = _Session(f32, t), _Session(i8, t)
            for b in batches:
                x = torch.randn(b, 3, size, size)
                ratios, ms = [], []
                for _ in range(3 if SMOKE else 5):
                    lat = compare(
                        {"fp32": lambda s=sf, x=x: s(x), "int8": lambda s=sq, x=x: s(x)},
                        x.shape[1:],
                        batch=b,
                        warmup=2,
                        repeats=3 if SMOKE else 10,
                        rounds=1 if SMOKE else 2,  # runs of one session back to back
                    )
                    ms.append((lat["fp32"].median_ms, lat["int8"].median_ms))
                    ratios.append(lat["fp32"].median_ms / lat["int8"].median_ms)
                f_ms = statistics.median(m[0] for m in ms)
                q_ms = statistics.median(m[1] for m in ms)
                rows.append(
                    [t, b, size, round(f_ms, 2), round(q_ms, 2),
                     round(statistics.median(ratios), 2), round(min(ratios), 2)]
                )  # fmt: skip
                print(f"ORT {size}px threads {t} batch {b}: fp32 {f_ms:.1f} ms, int8 {q_ms:.1f} ms")
    torch.set_num_threads(torch_threads)
    return rows


def _deit_small_224() -> tuple[torch.nn.Module, torch.nn.Module]:
    """DeiT-Small at 224 with random weights, W8A8 through the same pipeline (steps from the
    max over 16 random images, no search: only the speed is measured)."""
    torch.manual_seed(0)
    fp = lv.create_model("deit_small_patch16_224").eval()
    q = quantize_vit(fp, 8)
    cfg = PTQViTConfig(num_images=16, batch_size=8, rounds=0, ranking_weight=0.0)
    calibrate(q, torch.randn(16, 3, 224, 224), cfg)  # steps from the max: no search needed
    return fp, q


def _acceptance(drop: float, speed: list[list[Any]]) -> str:
    """The issue's bar: ≤ 0.5 pt drop at W8A8 and ≥ 2× fp32 on the same runtime, per setting."""
    groups: dict[tuple[int, int], list[float]] = {}
    for t, _b, px, _f, _q, ratio, _min in speed:
        groups.setdefault((px, t), []).append(ratio)
    parts, met, missed = [], [], []
    for (px, t), r in groups.items():
        parts.append(f"{px} px at {t} thread(s) {min(r):.2f}-{max(r):.2f}×")
        (met if min(r) >= 2.0 else missed).append(f"{px} px / {t} thread(s)")
    verdict = "; ".join(
        [f"**met** at every batch for {', '.join(met)}"] * bool(met)
        + [f"**below 2×** at some batch for {', '.join(missed)}"] * bool(missed)
    )
    return (
        f"Acceptance, W8A8: {drop:+.2f} pt top-1 drop deployed on onnxruntime (≤ 0.5): "
        f"{'**met**' if drop <= 0.5 else '**not met**'}. Speed-up over fp32 on onnxruntime "
        f"(≥ 2×), over the batches timed: {'; '.join(parts)}: {verdict}."
    )


def cmd_report(args: argparse.Namespace) -> None:
    check_results_target(OUT, allow_dirty=args.allow_dirty)  # fail now, not after hours
    # ORT timing first, with torch at 1 thread: after torch's multi-threaded work in this
    # process, 2-thread ORT sessions ran 1.5× slower (measured), so nothing heavy runs before
    torch.set_num_threads(1)
    dense, data = load_dense(), load(args)
    size = 32
    threads = sorted({1, args.threads})
    speed: list[list[Any]] = []
    if (RUNS / "w8a8" / "model.pt").exists():
        q8 = lv.load(RUNS / "w8a8" / "model.pt").eval()
        fp224, q224 = (None, None) if SMOKE else _deit_small_224()
        speed = _ort_speed(dense, q8, size, [1, 8] if SMOKE else [1, 8, 32], threads)
        if fp224 is not None:
            speed += _ort_speed(fp224, q224, 224, [1, 8], threads)
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    fp_top1 = top1(dense, data.test)

    def row(name: str, model: torch.nn.Module, chain: list[str], acc: float, notes: str):
        counts = count_ops(model, (3, size, size))
        return {
            "name": name,
            "method_chain": chain,
            "baseline": "vit_fp32",
            "params": sum(p.numel() for p in model.parameters()),
            "macs": counts.macs,
            "extra": {"int8_macs": counts.int8_macs},
            "energy_uj": round(energy_uj(counts), 3),
            "dataset": "cifar10",
            "split": "test",
            "top1": round(acc, 2),
            "notes": notes,
        }

    rows.append(row("vit_fp32", dense, [], fp_top1, "the dense ViT (pruning benchmark)"))
    done = {}
    for variant in VARIANTS:
        path = RUNS / variant / "summary.json"
        if not path.exists():
            print(f"{variant}: not calibrated, skipped")
            continue
        s = json.loads(path.read_text())
        q = lv.load(RUNS / variant / "model.pt").eval()
        done[variant] = q
        note = (
            f"bits {s['bits_histogram']} (ops per width), calibration {s['calib_s']:.0f} s on "
            f"{s['config']['num_images']} val images at {s['threads']} thread(s); tested as "
            "deployed: QDQ ONNX on onnxruntime"
        )
        if "top1_fake_quant" in s:
            note += f" (the simulated fake-quant model: {s['top1_fake_quant']:.2f} %)"
        cfg = s["config"]
        note += "; " + ", ".join(  # the fidelity choices this run made (README: ptq_vit)
            f"{k}={cfg.get(k, 'not recorded: before issue 17')}"
            for k in ("softmax_grid", "rank_norm", "bit_groups", "ranking_weight")
        )
        rows.append(row(f"vit_{variant}", q, ["ptq_vit"], s["top1_onnxruntime"], note))
        if variant in PAPER:
            rows[-1]["paper"] = dict(PAPER[variant])
    tables, notes = [], []
    if "w8a8" in done and speed:
        deployed = next(r["top1"] for r in rows if r["name"] == "vit_w8a8")
        tables.append(
            {
                "title": "onnxruntime: fp32 ONNX vs W8A8 QDQ ONNX of the same ViT, side by side",
                "columns": [
                    "threads",
                    "batch",
                    "image px",
                    "fp32 ms",
                    "int8 ms",
                    "speed-up × (median of 5 sessions)",
                    "min",
                ],  # fmt: skip
                "rows": speed,
                "notes": (
                    "32 px: our CIFAR ViT (65 tokens, width 192). 224 px: DeiT-Small "
                    "(197 tokens, width 384) with random weights, quantized by the same "
                    "pipeline: speed only. Both graphs get onnxruntime's default optimizations "
                    "(ORT_ENABLE_ALL); the int8 one runs MatMulIntegerToFloat / QLinearMatMul "
                    "for every linear layer and both attention matmuls. LayerNorm, GELU, "
                    "softmax and residual additions stay fp32. Each round runs one session's "
                    "calls back to back, then the other's (ORT's idle workers spin: single "
                    "calls of two 2-thread sessions interleaved fought for the second core)."
                ),
            }
        )
        by_name = {r["name"]: r for r in rows}
        for t, b, px, f_ms, q_ms, *_ in speed:  # the rows' latency: ORT, batch 8, 32 px
            if px == size and b == 8 and t == args.threads:
                for name, ms in (("vit_fp32", f_ms), ("vit_w8a8", q_ms)):
                    by_name[name]["latency_ms"] = {
                        "median": ms, "p90": None, "batch": b, "threads": t,
                        "backend": "onnxruntime-cpu",
                    }  # fmt: skip
        drop = fp_top1 - deployed
        notes.append(_acceptance(drop, speed))
    run = {
        "name": "PTQ for ViT on CIFAR-10, and int8 on onnxruntime",
        "description": __doc__.split("\n\n")[1].replace("\n", " "),
        "command": (
            f"python benchmarks/ptq_vit_cifar10.py --threads 1 calibrate\n"
            f"python benchmarks/ptq_vit_cifar10.py --threads {args.threads} report"
        ),
        "cpu": cpu_info(),
        "tables": tables,
        "notes": notes + _findings({r["name"]: r for r in rows}, speed) + INTERPRETATION,
    }
    print(f"wrote {write_results(OUT, rows, run_info=run, allow_dirty=args.allow_dirty)}")


# Interpretation, not measured by the run (labelled so in the notes). The numbers in the notes
# are computed by _findings() from the same run's rows and tables.
INTERPRETATION = [
    "Interpretation: a short-trained CIFAR ViT lacks the activation outliers of "
    "ImageNet-trained ViTs, so 8 and 6 bits may already suffice and the paper's refinements "
    "have little to recover at those widths; differences of a few tenths are below what one "
    "10k-image test set separates.",
    "Interpretation: in the int8 graph, LayerNorm, GELU, softmax, residual adds and the "
    "quantize steps stay fp32 on onnxruntime, which caps the whole model's gain below the "
    "integer matmuls' own (an ORT profile shows where the time goes).",
]


def _findings(by: dict[str, dict[str, Any]], speed: list[list[Any]]) -> list[str]:
    """Sentences built from the run's own rows and speed table (no typed numbers)."""
    notes = []
    fp = by.get("vit_fp32")
    if fp is None:
        return notes
    wide = [k for k in by if k != "vit_fp32" and not k.startswith("vit_w4a4")]
    if wide:
        parts = ", ".join(f"{k.removeprefix('vit_')} {by[k]['top1']:.2f}" for k in wide)
        spread = max(abs(by[k]["top1"] - fp["top1"]) for k in wide)
        notes.append(
            f"At 8 and 6 bits (fp32 {fp['top1']:.2f} %): {parts} %; the largest distance from "
            f"fp32 is {spread:.2f} pt."
        )
    pairs = [
        ("vit_w4a4", "vit_w4a4_max", "the interval search and bias correction over steps "
         "from the max at 4 bits"),
        ("vit_w4a4", "vit_w4a4_no_rank", "the ranking loss at 4 bits"),
        ("vit_w6a6", "vit_w6a6_no_rank", "the ranking loss at 6 bits"),
        ("vit_mixed6", "vit_w6a6", "nuclear-norm mixed precision over uniform 6 bits"),
    ]  # fmt: skip
    for a, b, what in pairs:
        if a in by and b in by:
            notes.append(
                f"{what[0].upper()}{what[1:]}: {by[a]['top1']:.2f} vs {by[b]['top1']:.2f} % "
                f"({by[a]['top1'] - by[b]['top1']:+.2f} pt)."
            )
    groups: dict[tuple[int, int], list[float]] = {}
    for t, _b, px, _f, _q, ratio, _min in speed:
        groups.setdefault((px, t), []).append(ratio)
    if groups:
        notes.append(
            "int8 over fp32 on onnxruntime, over the batches timed: "
            + "; ".join(
                f"{px} px at {t} thread(s) {min(r):.2f}-{max(r):.2f}×"
                for (px, t), r in sorted(groups.items())
            )
            + "."
        )
    return notes


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
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("calibrate")
    c.add_argument("--variants", nargs="*", choices=list(VARIANTS))
    sub.add_parser("report")
    args = p.parse_args(argv)
    {"calibrate": cmd_calibrate, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
