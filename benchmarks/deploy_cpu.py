"""ResNet-56, dense and compressed with default arguments, on every CPU runtime lv.deploy has.

Issue 19's bars, on the machine this runs on (2 threads, batch 32 and 1):

* with default arguments, ℓ1 and SCOP pruning at 50 % MACs give a model whose speed-up on the
  default deploy path is >= 0.9 x its MACs gain (widths now default to multiples of the
  CPU's vector width; the same cut with ``round_to=1`` is timed beside it);
* the default deploy path is at least as fast as OpenVINO in the same precision, for the
  dense and the compressed model, with leanvision's own runtime shown apart;
* bf16 and int8 where the CPU has them (int8: static, per-channel weights, activations
  calibrated on 4 batches of CIFAR-10 validation images).

Latency only: the models are randomly initialised (speed does not depend on the weights;
accuracy is measured in the ghost, prune and low-bit benchmarks). Every model of one runtime
and precision is timed side by side in one process (``compare``).

    python benchmarks/deploy_cpu.py --threads 2     # on a quiet machine
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

import leanvision as lv
from leanvision.deploy import deploy, supported
from leanvision.methods.ghost import ghostify
from leanvision.pipeline import cpu_info
from leanvision.profiling import compare, count_ops
from leanvision.report import check_results_target, write_results

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10"
OUT = ROOT / "benchmarks" / "results" / "deploy_cpu"
SIZE = (3, 32, 32)
SCOP_STEPS = 20
DESCRIPTION = (
    "ResNet-56 (random init: latency only) dense; l1 and SCOP at 50 % MACs with default "
    "arguments (widths rounded to the CPU's vector width; SCOP's factors trained {steps} "
    "steps); l1 with round_to=1 (any width); Ghost-ResNet-56 (s 2, d 3). Each deployed with "
    "lv.deploy on every runtime and precision this machine runs (fp32: torch, leanvision, "
    "TorchInductor, onnxruntime, OpenVINO; bf16: OpenVINO; int8: leanvision's runtime (VNNI), "
    "torchao PT2E on Inductor, onnxruntime and OpenVINO, static, calibrated on 4 CIFAR-10 "
    "validation batches), one "
    "runtime's models timed side by side in one process, {threads} threads, batch 32 and 1. "
    "Issue 19's bars: a pruned model's speed-up >= 0.9 x its MACs gain, Ghost's >= 0.8 x, each "
    "model on its fastest runtime of the precision; the default deploy path (backend 'auto') is"
    " the fastest runtime."
)
RUNTIMES = [
    ("torch", "fp32"),
    ("leanvision", "fp32"),
    ("inductor", "fp32"),
    ("onnxruntime", "fp32"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("leanvision", "int8"),
    ("inductor", "int8"),
    ("onnxruntime", "int8"),
    ("openvino", "int8"),
]


def build_models(data: Any) -> dict[str, torch.nn.Module]:
    """Dense ResNet-56; ℓ1 and SCOP at 50 % MACs with default arguments; ℓ1 with any width
    (``round_to=1``); Ghost-ResNet-56 (s = 2, d = 3). SCOP's control factors train for
    ``SCOP_STEPS`` steps on ``data`` (its widths, not its accuracy, matter here)."""
    torch.manual_seed(0)
    dense = lv.create_model("resnet56_cifar", num_classes=10).eval()
    common = {"input_size": list(SIZE), "finetune_epochs": 0, "recalibrate_batches": 0}
    l1 = lv.compress(dense, "l1_filter", target_macs_ratio=0.5, **common)
    scop = lv.compress(
        dense, "scop", data, target_macs_ratio=0.5, max_steps=SCOP_STEPS, progress=False,
        **common,
    )  # fmt: skip
    odd = lv.compress(dense, "l1_filter", target_macs_ratio=0.5, round_to=1, **common)
    ghost = ghostify(dense, ratio=2, dw_size=3)[0]
    return {"resnet56": dense, "l1_default": l1.eval(), "scop_default": scop.eval(),
            "l1_any_width": odd.eval(), "ghost": ghost.eval()}  # fmt: skip


def widths(model: torch.nn.Module) -> list[int]:
    return sorted({m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)})


def measure(models: dict, calib: Any, threads: int, batches: tuple[int, ...], repeats: int):
    rows = []
    for backend, precision in RUNTIMES:
        if backend not in supported(precision):
            print(f"skip {backend} {precision}: not on this machine")
            continue
        for batch in batches:
            deployed = {
                n: deploy(m, backend, precision, SIZE, batch=batch, threads=threads, calib=calib)
                for n, m in models.items()
            }
            with torch.inference_mode():
                stats = compare(deployed, SIZE, batch=batch, threads=threads, repeats=repeats)
            row = [backend, precision, batch] + [round(stats[n].median_ms, 3) for n in models]
            labels = {n: stats[n].backend for n in models}
            same = len(set(labels.values())) == 1
            row.append(next(iter(labels.values())) if same else
                       "; ".join(f"{n}: {b}" for n, b in labels.items()))  # fmt: skip
            rows.append(row)
            print(row)
    return rows


def notes(rows: list[list[Any]], names: list[str], gains: dict[str, float]) -> list[str]:
    """Acceptance lines computed from the table."""
    col = {n: 3 + i for i, n in enumerate(names)}
    out = []
    for batch in sorted({r[2] for r in rows}, reverse=True):
        for precision in ("fp32", "bf16", "int8"):
            at = [r for r in rows if r[2] == batch and r[1] == precision]
            if not at:
                continue
            for name in names:
                fastest = min(at, key=lambda r: r[col[name]])
                line = (
                    f"Batch {batch}, {precision}, {name}: fastest on {fastest[0]} "
                    f"({fastest[col[name]]:.2f} ms)"
                )
                ov = [r for r in at if r[0] == "openvino"]
                own = [r for r in at if r[0] == "leanvision"]
                if ov and own:
                    ratio = ov[0][col[name]] / own[0][col[name]]
                    line += f"; leanvision's runtime {ratio:.2f}x OpenVINO's speed"
                out.append(line + ".")
            base = min(r[col["resnet56"]] for r in at)
            for name in names[1:]:
                best = min(r[col[name]] for r in at)
                speed = base / best
                bar = 0.8 if name == "ghost" else 0.9
                out.append(
                    f"Batch {batch}, {precision}: {name} {speed:.2f}x faster than ResNet-56, "
                    f"each on its fastest runtime ({speed / gains[name]:.2f} of its "
                    f"{gains[name]:.2f}x MACs gain; bar {bar}: "
                    f"{'met' if speed / gains[name] >= bar else 'not met'})."
                )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--allow-dirty", action="store_true", default=None, help="see write_results")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    check_results_target(Path(args.out), allow_dirty=args.allow_dirty)
    torch.set_num_threads(args.threads)
    data = lv.load_data("cifar10", root=args.data, batch_size=32, seed=0, max_train=1000)
    calib = [b for _, b in zip(range(4), data.loader("val"))]
    models = build_models(data)
    names = list(models)
    macs = {n: count_ops(m, SIZE).macs for n, m in models.items()}
    gains = {n: macs["resnet56"] / macs[n] for n in names}
    rows = measure(models, calib, args.threads, (32, 1), args.repeats)
    table = {
        "title": f"ResNet-56 and compressed variants (ms per batch, {args.threads} threads), "
        "each runtime's models timed side by side",
        "columns": ["runtime", "precision", "batch", *[f"{n} ms" for n in names], "backends"],
        "rows": rows,
    }
    sizes = {
        "title": "The models (random init; latency only)",
        "columns": ["model", "MACs (M)", "MACs gain", "conv widths"],
        "rows": [
            [n, round(macs[n] / 1e6, 2), round(gains[n], 3), str(widths(models[n]))] for n in names
        ],
    }
    run = {
        "name": "CPU runtimes: ResNet-56 dense and compressed with default arguments",
        "description": DESCRIPTION.format(threads=args.threads, steps=SCOP_STEPS),
        "command": f"python benchmarks/deploy_cpu.py --threads {args.threads}",
        "cpu": cpu_info(),
        "tables": [sizes, table],
        "notes": notes(rows, names, gains),
    }
    print("\n".join(run["notes"]))
    print(f"wrote {write_results(Path(args.out), [], run_info=run, allow_dirty=args.allow_dirty)}")


if __name__ == "__main__":
    main()
