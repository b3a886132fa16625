"""Channel pruning of the timm CNN families users prune, timed as deployed: speed-up against
the MACs gain, at 224 px, batch 8.

Issue 19's bar: ℓ1 filter pruning to 50 % MACs with default arguments (widths rounded to the
CPU's vector width) gives, on leanvision's runtime (``lv.deploy(m, "leanvision")``: BN folded,
channels-last, the fused kernels where measured faster), a speed-up of at least 0.9 × the
MACs gain at the median over ResNet, MobileNetV3, EfficientNet, RegNet and ConvNeXt. The same
pairs on eager PyTorch (BN folded, channels-last) and OpenVINO are timed beside it, each
runtime's dense and pruned model side by side in one process (``compare``, interleaved, in
sessions; the ratio is the median over sessions).

Latency only: random weights (timm's init; no pretrained weights here); pruning by ℓ1 norm
does not need trained ones to give the widths it gives.

    python benchmarks/prune_timm_cpu.py --threads 2     # on a quiet machine, ~10 minutes
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import torch

import leanvision as lv
from leanvision.pipeline import cpu_info
from leanvision.profiling import compare, count_ops
from leanvision.report import check_results_target, write_results

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "prune_timm_cpu"
MODELS = (
    "resnet50",
    "mobilenetv3_large_100",
    "efficientnet_b0",
    "regnety_016",
    "convnext_tiny",
)
RUNTIMES = ("leanvision", "torch", "openvino")
BAR = 0.9
SMOKE = False  # tests set it: two small models at 64 px, batch 2, one session


def pair(name: str, size: tuple[int, ...]) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The dense timm model (random init) and its ℓ1-pruned copy at 50 % MACs, defaults."""
    torch.manual_seed(0)
    dense = lv.create_model(name, num_classes=1000).eval()
    pruned = lv.compress(
        dense, "l1_filter", target_macs_ratio=0.5, input_size=list(size), finetune_epochs=0,
        recalibrate_batches=0,
    )  # fmt: skip
    return dense, pruned.eval()


def time_pair(dense: Any, pruned: Any, size: tuple[int, ...], batch: int, threads: int,
              sessions: int) -> dict[str, list[Any]]:  # fmt: skip
    """Per runtime: dense ms, pruned ms, median and min of the per-session speed-ups, and
    the backend that ran."""
    out = {}
    for rt in RUNTIMES:
        d = {
            "dense": lv.deploy(dense, rt, "fp32", size, batch=batch, threads=threads),
            "pruned": lv.deploy(pruned, rt, "fp32", size, batch=batch, threads=threads),
        }
        probe = compare(d, size, batch=batch, threads=threads, warmup=1, repeats=1)
        repeats = 3 if SMOKE else max(5, min(30, int(3000 / probe["dense"].median_ms)))
        ms: dict[str, list[float]] = {"dense": [], "pruned": []}
        for _ in range(sessions):
            st = compare(d, size, batch=batch, threads=threads, warmup=2, repeats=repeats)
            for k in ms:
                ms[k].append(st[k].median_ms)
        ratios = [a / b for a, b in zip(ms["dense"], ms["pruned"])]
        out[rt] = [
            round(statistics.median(ms["dense"]), 3), round(statistics.median(ms["pruned"]), 3),
            round(statistics.median(ratios), 3), round(min(ratios), 3),
            f"{probe['dense'].backend} | {probe['pruned'].backend}",
        ]  # fmt: skip
    return out


def notes(rows: list[list[Any]]) -> list[str]:
    """The median over the models of speed-up / MACs gain, per runtime; the bar on
    leanvision's runtime."""
    out = []
    for rt in RUNTIMES:
        fr = [r[8] for r in rows if r[2] == rt]
        if not fr:
            continue
        med = statistics.median(fr)
        per = ", ".join(f"{r[0]} {r[8]:.2f}" for r in rows if r[2] == rt)
        line = f"{rt}: speed-up / MACs gain, median {med:.2f} over {len(fr)} models ({per})"
        if rt == "leanvision":
            line += f"; bar {BAR}: {'**met**' if med >= BAR else '**not met**'}"
        out.append(line + ".")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--sessions", type=int, default=3)
    p.add_argument("--models", nargs="*", default=list(MODELS))
    p.add_argument("--allow-dirty", action="store_true", default=None, help="see write_results")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    check_results_target(Path(args.out), allow_dirty=args.allow_dirty)
    torch.set_num_threads(args.threads)
    size = (3, 64, 64) if SMOKE else (3, 224, 224)
    batch = 2 if SMOKE else args.batch
    rows = []
    for name in args.models:
        dense, pruned = pair(name, size)
        gain = count_ops(dense, size).macs / count_ops(pruned, size).macs
        timed = time_pair(dense, pruned, size, batch, args.threads, 1 if SMOKE else args.sessions)
        for rt, (d_ms, p_ms, speed, worst, backends) in timed.items():
            rows.append([name, round(gain, 3), rt, d_ms, p_ms, speed, worst, backends,
                         round(speed / gain, 3)])  # fmt: skip
            print(rows[-1], flush=True)
    table = {
        "title": f"ℓ1 at 50 % MACs (default arguments), {size[1]} px, batch {batch}, "
        f"{args.threads} threads: dense and pruned timed side by side per runtime",
        "columns": ["model", "MACs gain", "runtime", "dense ms", "pruned ms",
                    "speed-up × (median of sessions)", "min", "backends (dense | pruned)",
                    "speed-up / MACs gain"],
        "rows": rows,
    }  # fmt: skip
    run = {
        "name": "Channel pruning of timm CNNs on CPU runtimes",
        "description": " ".join(__doc__.split("\n\n")[1].split()),
        "command": f"python benchmarks/prune_timm_cpu.py --threads {args.threads}",
        "cpu": cpu_info(),
        "tables": [table],
        "notes": notes(rows),
    }
    print("\n".join(run["notes"]))
    print(f"wrote {write_results(Path(args.out), [], run_info=run, allow_dirty=args.allow_dirty)}")


if __name__ == "__main__":
    main()
