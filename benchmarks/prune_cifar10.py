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
import copy
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import leanvision as lv
from leanvision.deploy import fold_batchnorm
from leanvision.engine import load_checkpoint, training_note, training_record
from leanvision.methods.registry import get_method
from leanvision.pipeline import cpu_info, measure_models
from leanvision.profiling import compare, count_ops
from leanvision.provenance import git_state
from leanvision.report import check_results_target, write_results

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10"
DISTILL = ROOT / "runs" / "bench_distill_cifar10"
# the distillation benchmark's teacher: trained there, else its committed copy
TEACHER_FILE = ROOT / "benchmarks" / "teachers" / "resnet56_cifar10_seed0.pt"


def teacher_path() -> Path:
    run = DISTILL / "teacher" / "last.pt"
    return run if run.exists() or not TEACHER_FILE.exists() else TEACHER_FILE


RUNS = ROOT / "runs" / "bench_prune_cifar10"
OUT = ROOT / "benchmarks" / "results" / "prune_cifar10"
SMOKE = False  # tests set it (the fixture that loads a benchmark in smoke mode)
VIT = {"img_size": 32, "patch_size": 4, "num_classes": 10}

CHANNEL = {
    # widths rounded to 16, one AVX-512 fp32 vector: with warm allocators, widths 8/24/56
    # (round_to=8) ran 1.36x faster at 1.92x fewer MACs, widths 16/16/32 1.66x at 1.96x
    "l1_filter": {"target_macs_ratio": 0.5, "round_to": 16},
    "scop": {"target_macs_ratio": 0.5, "round_to": 16, "control_epochs": 2},
    "manidp": {"target_remain_rate": 0.6},
}
TOKEN = {
    "dynamicvit": {"keep_ratio": 0.7},
    "patch_slimming": {"target_macs_ratio": 0.6, "calib_images": 1024},
}
PAPER = {
    "l1_filter": {"macs_cut": 27.6, "top1_delta": 0.02, "source": "Li et al. 2017, ResNet-56-B"},
    "manidp": {"macs_cut": 55.3, "top1_delta": -0.57, "source": "ManiDP, ResNet-34 ImageNet"},
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
        max_test=args.max_test,
    )


def dense_resnet() -> torch.nn.Module:
    model = lv.create_model("resnet56_cifar", num_classes=10)
    model.load_state_dict(load_checkpoint(teacher_path())["model"])
    return model.eval()


def dense_vit() -> torch.nn.Module:
    model = lv.create_model("deit_tiny_patch16_224", **VIT)
    model.load_state_dict(load_checkpoint(DISTILL / "scratch" / "last.pt")["model"])
    return model.eval()


# the fine-tuning recipe of each family: dense model, batch size, optimizer options
RECIPE = {
    "resnet56": (dense_resnet, 128, {"lr": 0.05, "weight_decay": 5e-4}),
    "vit": (dense_vit, 64, {"lr": 5e-4, "opt": "adamw", "weight_decay": 0.05}),
}


def _train_options(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """What every run here shares: epochs, seed, resumable output folder."""
    out.mkdir(parents=True, exist_ok=True)
    return {
        "finetune_epochs": args.epochs,
        "max_steps": args.max_steps,
        "seed": 0,
        "out_dir": str(out / "train"),
        "resume": True,
        "progress": sys.stderr.isatty(),
    }


def _run(args: argparse.Namespace, method: str, arch: str, hp: dict) -> None:
    out = Path(args.runs) / method
    build, batch, opt = RECIPE[arch]
    hp = {**hp, **opt}
    t0 = time.perf_counter()
    model = lv.compress(build(), method, load(args, batch), **_train_options(args, out), **hp)
    lv.save(model, out / "model.pt")
    summary = {"method": method, "epochs": args.epochs, "max_train": args.max_train}
    summary["wall_s"] = time.perf_counter() - t0
    summary.update(hyper=hp)
    # every hyper-parameter the method ran with (defaults included), and the code that ran it
    cfg = get_method(method).make_config(**_train_options(args, out), **hp)
    summary["config"] = dataclasses.asdict(cfg)
    summary["git"] = dataclasses.asdict(git_state())
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


def cmd_channels(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    _run(args, args.method, "resnet56", CHANNEL[args.method])


def cmd_tokens(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    _run(args, args.method, "vit", TOKEN[args.method])


def cmd_dense(args: argparse.Namespace) -> None:
    """The control: the dense model fine-tuned with the pruned models' recipe and epochs."""
    from leanvision.methods.common import FinetuneConfig, finetune

    torch.set_num_threads(args.threads)
    build, batch, opt = RECIPE[args.arch]
    model = build()
    out = Path(args.runs) / f"{args.arch}_dense_ft"
    cfg = FinetuneConfig(**_train_options(args, out), **opt)
    finetune(model.train(), load(args, batch), cfg, method="dense fine-tuning")
    lv.save(model.eval(), out / "model.pt")


def _controls(args: argparse.Namespace, data: Any, rows: list[dict[str, Any]]) -> dict | None:
    """Test top-1 of the dense models fine-tuned like the pruned ones (if trained)."""
    from leanvision.engine import evaluate

    out = []
    for arch, base in (("resnet56", "resnet56"), ("vit", "vit")):
        path = Path(args.runs) / f"{arch}_dense_ft" / "model.pt"
        dense = next((r for r in rows if r["name"] == base), None)
        if not path.exists() or dense is None:
            continue
        top1 = evaluate(lv.load(path), data.loader("test"), device="cpu")["top1"]
        out.append(
            [f"{arch} + {args.epochs} epochs", round(top1, 2), round(top1 - dense["top1"], 2)]
        )
    if not out:
        return None
    return {
        "title": "Control: the dense models fine-tuned with the same recipe and epochs",
        "columns": ["model", "test top-1 %", "Δ vs dense (pts)"],
        "rows": out,
        "notes": "The dense models are short-trained, so extra epochs alone move accuracy; a "
        "pruned model's Δ is best read against this row.",
    }


def _training(args: argparse.Namespace) -> dict | None:
    """What trained each model in this report, read from its checkpoint (every stretch of a
    resumed run, and the commits they ran at)."""
    runs = Path(args.runs)
    found = [("resnet56 (dense)", teacher_path()),
             ("vit (dense)", DISTILL / "scratch" / "last.pt")]  # fmt: skip
    found += [(m, runs / m / "train" / "last.pt") for m in (*CHANNEL, *TOKEN)]
    found += [(f"{a} + {args.epochs} epochs", runs / f"{a}_dense_ft" / "train" / "last.pt")
              for a in ("resnet56", "vit")]  # fmt: skip
    rows = []
    for name, path in found:
        if path.exists():
            # the summary a run wrote when it ended names the commit of its last stretch
            summaries = [d / "summary.json" for d in (path.parent, path.parent.parent)]
            summary = next((f for f in summaries if f.exists()), None)
            git = json.loads(summary.read_text()).get("git") if summary else None
            rows.append([name, training_note(training_record(path), finished_at=git)])
    if not rows:
        return None
    return {
        "title": "Training of each model (from its checkpoint)",
        "columns": ["model", "training"],
        "rows": rows,
        "notes": "Wall time of every stretch of a run (training and validation; a run killed "
        "and resumed trains in stretches) and the commits they ran at. The pruned models' "
        "time is their fine-tuning; pruning itself is not in it.",
    }


def _images(data: Any, n: int) -> list[torch.Tensor]:
    out = []
    for x, _ in data.test:
        out.extend(x.split(1))
        if len(out) >= n:
            break
    return out[:n]


class ImageCycle(torch.nn.Module):
    """Runs ``model`` on the next of a fixed list of images at every call (the input the timer
    passes is ignored): a dynamic network's cost depends on the image, so it is timed on the
    same real images its MACs are counted on."""

    def __init__(self, model: torch.nn.Module, images: list[torch.Tensor], fmt: Any) -> None:
        super().__init__()
        self.model = model
        self.images = [x.contiguous(memory_format=fmt) for x in images]
        self.i = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = self.images[self.i % len(self.images)]
        self.i += 1
        return self.model(image)


def _batch1_latency(models: dict[str, torch.nn.Module], images: list[torch.Tensor], threads: int):
    """Mean batch-1 latency over real test images, the models interleaved image by image;
    returns name → LatencyStats (``mean_ms`` is the figure used).

    A model whose name ends in ``_cl`` gets its images in channels_last."""
    runners = {}
    for name, m in models.items():
        fmt = torch.channels_last if name.endswith("_cl") else torch.contiguous_format
        runners[name] = ImageCycle(m, images, fmt)
    with torch.inference_mode():
        return compare(runners, (3, 32, 32), threads=threads, repeats=len(images), warmup=10)


def _layouts(
    dense: torch.nn.Module, gated: torch.nn.Module, image_hw: tuple[int, int]
) -> dict[str, torch.nn.Module]:
    """Both models in both memory formats (``_cl``: channels_last; each keeps its best), the
    dense model on leanvision's CPU runtime (``lv.optimize_for_cpu``), and the gated model with
    every channel kept: the same kernels without the pruning."""
    from leanvision.layers import gated_blocks

    cl = torch.channels_last
    dense, _ = fold_batchnorm(dense)  # as deployed; ManiDP's batch-1 path folds BN itself
    open_ = copy.deepcopy(gated)
    for blk in gated_blocks(open_):
        blk.gate1.thre.fill_(-1e4)
        blk.gate2.thre.fill_(-1e4)
    # BN folded, each 3×3 conv on the fused kernel where it times faster
    dense_lv, _ = lv.optimize_for_cpu(dense, (3, *image_hw))
    return {
        "dense": dense,
        "dense_cl": copy.deepcopy(dense).to(memory_format=cl),
        "dense_lv_cl": dense_lv,
        "manidp": gated,
        "manidp_cl": copy.deepcopy(gated).to(memory_format=cl),
        "manidp_all_kept": open_,
    }


DENSE_LAYOUTS = ("dense", "dense_cl", "dense_lv_cl")


def _batch1_rows(
    models: dict[str, torch.nn.Module], images: list[torch.Tensor], threads: list[int]
) -> tuple[list[list[Any]], list[dict[str, float]], dict[str, Any]]:
    """Per thread count: the latencies and ManiDP's gain (its faster layout) over the dense
    model on its fastest path, over the dense model on ATen, and over its own kernel with
    every channel kept. Also the stats of the last thread count (for the rows)."""
    rows, gains, last = [], [], {}
    for t in threads:
        last = _batch1_latency(models, images, t)
        lat = {k: v.mean_ms for k, v in last.items()}
        gated = min(lat["manidp"], lat["manidp_cl"])
        dense_best = min(lat[k] for k in DENSE_LAYOUTS)
        aten = min(lat["dense"], lat["dense_cl"])
        g = {
            "dense": dense_best / gated,
            "aten": aten / gated,
            "all_kept": lat["manidp_all_kept"] / gated,
        }
        g["fairest"] = min(g["dense"], g["all_kept"])
        gains.append(g)
        rows.append(
            [t]
            + [round(lat[k], 3) for k in models]
            + [round(g["aten"], 2), round(g["dense"], 2), round(g["all_kept"], 2)]
        )
    return rows, gains, last


_B1_NOTES = (
    "Mean latency over the images, the models interleaved image by image in one process (cl: "
    "channels_last). Dense baselines: ATen (BN folded, the faster of NCHW and cl), and "
    "leanvision's CPU runtime (lv.optimize_for_cpu: BN folded, each eligible 3×3 conv on the "
    "fused direct kernel where it timed faster). ManiDP runs its fused batch-1 kernel "
    "(kernels/csrc/gated_block.cpp) where it beats ATen; its gain is taken in its faster "
    "layout. 'All kept': the same gated model and kernel with every threshold off, a dense "
    "net on the same kernel, so the gain over it is what the pruning alone buys. Acceptance "
    "(gain ≥ 0.8 × MACs gain) is judged against the fairest dense baseline: the faster of "
    "leanvision's dense runtime and 'all kept'."
)
_B1_COLUMNS = [
    "threads",
    "dense ms",
    "dense ms (cl)",
    "dense ms (lv runtime)",
    "manidp ms",
    "manidp ms (cl)",
    "all kept ms",
    "gain over ATen dense ×",
    "gain over fastest dense ×",
    "gain over all kept ×",
]


def _manidp(args: argparse.Namespace, data: Any, gated: torch.nn.Module):
    """Rows (dense and ManiDP, both at batch 1, MACs and latency on the same test images) and
    the per-sample MACs / latency tables."""
    from leanvision.methods.pruning.manidp import sample_macs

    images = _images(data, args.batch1_images)
    macs = sample_macs(gated, torch.cat(images))
    dense = dense_resnet()
    dense_macs = count_ops(dense, (3, 32, 32)).macs
    threads = sorted({1, args.threads})
    layouts = _layouts(dense, gated, tuple(images[0].shape[2:]))
    lat_rows, gains, stats = _batch1_rows(layouts, images, threads)
    rows = measure_models(
        {"resnet56_batch1": dense, "resnet56_manidp": gated},
        data,
        baseline="resnet56_batch1",
        method_chains={"resnet56_manidp": ["manidp"]},
        batch=1,
        threads=args.threads,
        fold_bn=True,
        paper={"resnet56_manidp": PAPER["manidp"]},
        notes={
            "resnet56_batch1": "latency: the dense ResNet-56 on its fastest measured path "
            f"(of {', '.join(DENSE_LAYOUTS)}), mean over the same {len(images)} test images "
            "as ManiDP's, side by side",
            "resnet56_manidp": "MACs: mean per-sample MACs of the batch-1 sparse path over "
            f"{len(images)} test images; latency: mean over the same images, side by side with "
            "the dense model; fx cannot trace the gated net, but its batch-1 path folds BN itself",
        },
    )
    # latency of both rows on the same images as the MACs (measure_models times one random
    # input): the dense net on its fastest path, ManiDP in its faster layout
    dense_key = min(DENSE_LAYOUTS, key=lambda k: stats[k].mean_ms)
    gated_key = min(("manidp", "manidp_cl"), key=lambda k: stats[k].mean_ms)
    for row, key in zip(rows, (dense_key, gated_key)):
        s = stats[key]
        row["latency_ms"] = {
            "median": s.mean_ms,  # the mean over the images: each image once
            "p90": s.p90_ms,
            "batch": 1,
            "threads": s.threads,
            "backend": f"{s.backend} ({key}, mean over {len(images)} test images)",
        }
    rows[1]["macs"] = round(statistics.mean(macs))
    q = statistics.quantiles(macs, n=10)
    mean_gain = dense_macs / statistics.mean(macs)
    mm = [dense_macs, min(macs), q[0], statistics.mean(macs), q[-1], max(macs)]
    tables = [
        {
            "title": f"ManiDP ResNet-56: per-sample MACs over {len(images)} test images",
            "columns": ["dense MMACs", "min", "p10", "mean", "p90", "max", "MACs gain ×"],
            "rows": [[round(v / 1e6, 1) for v in mm] + [round(mean_gain, 2)]],
        },
        {
            "title": "ManiDP ResNet-56: batch-1 latency on the same test images",
            "columns": _B1_COLUMNS + ["fairest gain ÷ MACs gain", "over ATen dense ÷ MACs gain"],
            "rows": [
                r + [round(g["fairest"] / mean_gain, 2), round(g["aten"] / mean_gain, 2)]
                for r, g in zip(lat_rows, gains)
            ],
            "notes": _B1_NOTES,
        },
    ]
    return rows, tables


def _manidp_224_speed(args: argparse.Namespace) -> dict[str, Any]:
    """ManiDP's batch-1 path on timm resnet34 at 224 (the paper's ImageNet network).

    Speed depends on how many channels each sample keeps, not on trained weights: random
    init, gates perturbed so saliencies differ per sample, thresholds calibrated to the
    README's remain rate 0.6 with the same rule training uses."""
    from leanvision.layers import gated_blocks
    from leanvision.methods.pruning.manidp import calibrate_thresholds, gate_model, sample_macs

    torch.manual_seed(0)
    dense = lv.create_model("resnet34").eval()
    for m in dense.modules():  # BN statistics of a trained net's scale, not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.2, 0.5)  # larger scales overflow to inf within 16 blocks
            m.bias.data.uniform_(-0.2, 0.2)
    gated = gate_model(copy.deepcopy(dense)).eval()
    for blk in gated_blocks(gated):
        for g in (blk.gate1, blk.gate2):
            torch.nn.init.normal_(g.fc2.weight, std=0.01)
    calibrate_thresholds(gated, torch.randn(16, 3, 224, 224), remain_rate=0.6)
    images = list(torch.randn(args.speed_images, 1, 3, 224, 224))
    with torch.inference_mode():
        if not torch.isfinite(gated(images[0])).all():
            raise RuntimeError("the random resnet34 overflowed; timings would be meaningless")
    macs = statistics.mean(sample_macs(gated, torch.cat(images)))
    dense_macs = count_ops(dense, (3, 224, 224)).macs
    layouts = _layouts(dense, gated, (224, 224))
    lat_rows, gains, _ = _batch1_rows(layouts, images, [1])
    mac_gain = dense_macs / macs
    return {
        "title": "ManiDP batch-1 path on resnet34 at 224×224 (random init, remain rate 0.6)",
        "columns": ["dense GMACs", "manidp mean GMACs", "MACs gain ×"]
        + _B1_COLUMNS
        + ["fairest gain ÷ MACs gain", "over ATen dense ÷ MACs gain"],
        "rows": [
            [round(dense_macs / 1e9, 2), round(macs / 1e9, 2), round(mac_gain, 2)]
            + lat_rows[0]
            + [round(gains[0]["fairest"] / mac_gain, 2), round(gains[0]["aten"] / mac_gain, 2)]
        ],
        "notes": f"{len(images)} random images. " + _B1_NOTES,
    }


def untrained_l1(dense: torch.nn.Module, size: int, **target: Any) -> torch.nn.Module:
    """A pruned copy of ``dense`` by ℓ1-filter, without fine-tuning: for latency studies
    (latency depends on the widths, not on trained weights)."""
    return lv.compress(
        copy.deepcopy(dense),
        "l1_filter",
        data=None,
        input_size=[3, size, size],
        finetune_epochs=0,
        recalibrate_batches=0,
        **target,
    ).eval()


def _timm_l1_speed(args: argparse.Namespace) -> dict[str, Any]:
    """ℓ1-filter pruning of timm resnet18 at 224, batch 8: the setting in which
    ``perf-notes.md`` measured Torch-Pruning 1.6.1 (0.92 of the MACs gain), for comparison
    with the CIFAR ResNet-56 numbers. Latency does not depend on trained weights: random
    init, no fine-tuning."""
    torch.manual_seed(0)
    dense = lv.create_model("resnet18").eval()
    pruned = untrained_l1(dense, 224, target_macs_ratio=0.5)
    size = (3, 224, 224)
    gain = count_ops(dense, size).macs / count_ops(pruned, size).macs
    rows = []
    table = _repeated_speedups({"resnet18": dense, "resnet18_l1": pruned}, "resnet18", 8,
                               sorted({1, args.threads}), size=224)  # fmt: skip
    for _, threads, speed, low, high in table["rows"]:
        rows.append([round(gain, 2), threads, speed, low, high, round(speed / gain, 3)])
    return {
        "title": "ℓ1-filter pruning of timm resnet18 at 224×224, batch 8 (Torch-Pruning's "
        "setting in perf-notes)",
        "columns": [
            "MACs gain ×",
            "threads",
            "median speed-up ×",
            "min",
            "max",
            "speed-up ÷ MACs gain",
        ],  # fmt: skip
        "rows": rows,
        "notes": "Random init, target_macs_ratio 0.5, no width rounding (as Torch-Pruning's "
        "resnet18 row), channels_last, BN folded, 5 sessions. Torch-Pruning 1.6.1 measured "
        "0.92 of the MACs gain on resnet18 in this setting (perf-notes.md, batch 8, 224).",
    }


def _claims(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each method's measured cut, accuracy change and speed-up beside its paper's claim."""
    by_name = {r["name"]: r for r in rows}
    out = []
    for r in rows:
        base = by_name.get(r.get("baseline") or "")
        if base is None or r is base:
            continue
        macs_gain = base["macs"] / r["macs"]
        speedup = base["latency_ms"]["median"] / r["latency_ms"]["median"]
        paper = r.get("paper") or {}
        out.append(
            [
                r["name"],
                round(100 * (1 - r["macs"] / base["macs"]), 1),
                round(r["top1"] - base["top1"], 2),
                round(speedup, 2),
                round(speedup / macs_gain, 2),
                r["latency_ms"]["batch"],
                paper.get("macs_cut"),
                paper.get("top1_delta"),
                paper.get("source", "-"),
            ]
        )
    return {
        "title": "Measured beside the papers' claims",
        "columns": [
            "model",
            "MACs cut %",
            "Δ top-1 (pts)",
            "speed-up ×",
            "speed-up ÷ MACs gain",
            "batch",
            "paper MACs cut %",
            "paper Δ top-1",
            "paper setting",
        ],
        "rows": out,
        "notes": "Speed-up: median latency of the dense model over the pruned one, side by side "
        "in one process. Papers train hundreds of epochs at full scale; ours fine-tune "
        "briefly, so compare the direction and the speed, not the accuracy level.",
    }


def _deit_small_speed(args: argparse.Namespace) -> dict[str, Any]:
    """DynamicViT ρ = 0.7 on deit_small at 224 against the dense model (the acceptance check).

    Speed does not depend on the weights (top-k keeps a fixed count), so both use random init.
    """
    from leanvision.layers import DynamicViT

    torch.manual_seed(0)
    dense = lv.create_model("deit_small_patch16_224").eval()
    dyn = DynamicViT(copy.deepcopy(dense), keep_ratio=0.7).eval()
    size, batch = (3, 224, 224), args.speed_batch
    with torch.inference_mode():
        lat = compare(
            {"dense": dense, "dynamicvit": dyn}, size, batch=batch, threads=args.threads, repeats=20
        )
        dyn(torch.randn(1, 3, 224, 224))
    macs = {k: count_ops(m, (3, 224, 224)).macs for k, m in (("dense", dense), ("dyn", dyn))}
    ips = {k: args.speed_batch * 1000 / v.median_ms for k, v in lat.items()}
    gain = ips["dynamicvit"] / ips["dense"]
    return {
        "title": f"DynamicViT ρ=0.7 on deit_small_patch16_224 at 224×224, batch {args.speed_batch}",
        "columns": [
            "dense GMACs",
            "dynamicvit GMACs",
            "paper GMACs",
            "tokens per block",
            "dense img/s",
            "dynamicvit img/s",
            "throughput gain ×",
        ],
        "rows": [
            [
                round(macs["dense"] / 1e9, 2),
                round(macs["dyn"] / 1e9, 2),
                "4.6 → 2.9",
                " ".join(str(n) for n in sorted(set(dyn.last_tokens_per_block), reverse=True)),
                round(ips["dense"], 1),
                round(ips["dynamicvit"], 1),
                round(gain, 2),
            ]
        ],
        "notes": "Median latency of the two models timed side by side in one process, "
        f"{args.threads} threads. Acceptance: throughput gain ≥ 1.3×.",
    }


def _repeated_speedups(
    models: dict[str, torch.nn.Module],
    baseline: str,
    batch: int,
    threads: list[int],
    size: int = 32,
    runtime: str = "aten",
) -> dict[str, Any]:
    """Speed-ups over ``baseline`` in 5 separate side-by-side sessions per thread count.

    ``runtime="aten"``: every model BN-folded and channels-last, ATen's (oneDNN's)
    convolutions. ``runtime="leanvision"``: every model through ``lv.optimize_for_cpu``,
    autotuned at each thread count (each 3×3 conv on our kernel or ATen, whichever is faster
    for that layer). On this shared 2-core machine one session's ratio moves by ±10%; the
    median of five is what the acceptance check reads, and the range is shown."""
    cl = torch.channels_last
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=cl)
    rows, on_kernel, old_threads = [], {}, torch.get_num_threads()
    for t in threads:
        torch.set_num_threads(t)
        runners = {}
        for k, m in models.items():
            if runtime == "leanvision":
                m, choices = lv.optimize_for_cpu(m, (3, size, size), batch=batch)
                on_kernel[(k, t)] = f"{sum(c.used == 'kernel' for c in choices)}/{len(choices)}"
            else:
                m = fold_batchnorm(m)[0].to(memory_format=cl)
            runners[k] = lambda m=m: m(x)
        gains: dict[str, list[float]] = {k: [] for k in models if k != baseline}
        for _ in range(5):
            with torch.inference_mode():
                lat = compare(runners, (3, size, size), batch=batch, threads=t, repeats=10)
            for k in gains:
                gains[k].append(lat[baseline].median_ms / lat[k].median_ms)
        for k, g in gains.items():
            rows.append([k, t, round(statistics.median(g), 2), round(min(g), 2), round(max(g), 2)])
    torch.set_num_threads(old_threads)
    notes = (
        "Each session times all models side by side (10 runs each, median); the "
        "acceptance check reads the median over sessions."
    )
    if runtime == "leanvision":
        title = (
            f"Channel pruning on leanvision's CPU runtime: speed-up at batch {batch} over 5 "
            "sessions (lv.optimize_for_cpu on every model)"
        )
        used = "; ".join(f"{k} at {t} thread(s) {v}" for (k, t), v in on_kernel.items())
        notes += (
            " Every model, the dense one included, goes through lv.optimize_for_cpu: BN "
            "folded, channels-last, each eligible 3×3 conv fused with its ReLU / residual add "
            "and run on leanvision's direct kernel where that was faster than ATen for the "
            f"layer at that thread count. Convs on the kernel / eligible: {used}."
        )
    else:
        title = (
            f"Channel pruning: speed-up at batch {batch} over 5 sessions (channels_last, BN folded)"
        )
    return {
        "title": title,
        "columns": ["model", "threads", "median speed-up ×", "min", "max"],
        "rows": rows,
        "notes": notes,
    }


# Interpretation, not measured by this run (each note says so). Every number in the notes
# comes from _acceptance() and the tables, computed from the same run.
INTERPRETATION = [
    "Interpretation: SCOP's control factors train only `control_epochs` with BN on running "
    "statistics; longer control training and batch statistics (`bn_batch_stats=True`) were "
    "not tried, so its ranking at this scale may not be the paper's.",
    "Interpretation: the dense models are short-trained, so extra epochs alone move accuracy; "
    "read each pruned model's Δ against the dense-fine-tuned control. DynamicViT's backbone "
    "trains at lr × 0.01 as in the paper, so it barely moves in a few epochs.",
    "Interpretation: widths are rounded to 16 (one AVX-512 fp32 vector); oneDNN's "
    "convolution slows per MAC on narrow layers, which is why the ATen speed-up falls short "
    "of the MACs gain and leanvision's direct 3×3 kernel (lv.optimize_for_cpu, both models) "
    "closes part of the gap (`python benchmarks/prune_channel_diag.py` measures per-layer "
    "rates).",
    "Interpretation: ManiDP's batch-1 path through ATen ops runs ~45 small ops per block, and "
    "ATen's batch-1 convolution on 32×32 maps is im2col + GEMM, which barely speeds up with "
    "fewer channels; the fused kernel runs gates, thresholds and direct convolutions over the "
    "kept filters in one op. Part of its gain over an ATen dense net is the kernel itself, "
    "which is why the acceptance is judged against the same kernel with every channel kept.",
    "Interpretation: timing is taken with a warmed allocator; in a cold process glibc "
    "page-faults fresh memory for every large activation, which flatters the smaller model.",
]


def _acceptance(rows: list[dict[str, Any]], tables: list[dict[str, Any]]) -> list[str]:
    """The issue's latency acceptance checks, stated from the measured numbers."""
    notes = []
    by_name = {r["name"]: r for r in rows}

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    for t in tables:
        title, cols = t["title"], t["columns"]
        if title.startswith("Channel pruning"):
            base = by_name["resnet56"]
            ours = "leanvision" in title
            where = (
                "on leanvision's CPU runtime (lv.optimize_for_cpu on both models)"
                if ours
                else "with ATen's (oneDNN) convolutions"
            )
            for name, threads, speed, *_ in t["rows"]:
                gain = base["macs"] / by_name[name]["macs"]
                ratio = speed / gain
                notes.append(
                    f"Acceptance, {name.split('_', 1)[1]} ({threads} thread(s)) {where}: "
                    f"{speed:.2f}× faster at batch 32 (median of 5 sessions) for {gain:.2f}× "
                    f"fewer MACs = {ratio:.3f} of the MACs gain (needs ≥ 0.85): "
                    + (verdict(ratio >= 0.85) if ours else ("≥ 0.85" if ratio >= 0.85 else "below"))
                    + "."
                )
        if title.startswith("ManiDP ResNet-56: batch-1") or title.startswith("ManiDP batch-1"):
            for row in t["rows"]:
                ratio = row[cols.index("fairest gain ÷ MACs gain")]
                aten = row[cols.index("over ATen dense ÷ MACs gain")]
                cifar = "ResNet-56" in title
                threads = row[cols.index("threads")]
                head = (
                    f"Acceptance, manidp (ResNet-56 CIFAR, {threads} thread(s))"
                    if cifar
                    else "Beyond the acceptance (set on CIFAR), manidp on timm resnet34 at 224 "
                    f"({threads} thread(s))"
                )
                bar = verdict(ratio >= 0.8) if cifar else ("≥ 0.8" if ratio >= 0.8 else "below")
                notes.append(
                    f"{head}, judged against the fairest dense baseline: batch-1 latency gain "
                    f"{ratio:.2f} of the MACs gain (bar 0.8): {bar}. Gains: "
                    f"{row[cols.index('gain over fastest dense ×')]}× over the dense net on its "
                    f"fastest path, {row[cols.index('gain over all kept ×')]}× over its own "
                    f"kernel with every channel kept, {row[cols.index('gain over ATen dense ×')]}× "
                    f"over the dense net on ATen ({aten:.2f} of the MACs gain: the kinder "
                    "baseline, shown, not judged)."
                )
        if title.startswith("ℓ1-filter pruning of timm resnet18"):
            for gain, threads, speed, *_, ratio in t["rows"]:
                notes.append(
                    f"For comparison, ℓ1-filter on timm resnet18 at 224 (batch 8, {threads} "
                    f"thread(s)): {speed:.2f}× for {gain:.2f}× fewer MACs = {ratio:.2f} of the "
                    "MACs gain (Torch-Pruning 1.6.1 in perf-notes: 0.92)."
                )
        if title.startswith("DynamicViT"):
            gain = t["rows"][0][cols.index("throughput gain ×")]
            notes.append(
                f"Acceptance, dynamicvit ρ=0.7 on deit_small at 224: {gain}× throughput "
                f"(needs ≥ 1.3×): {verdict(gain >= 1.3)}."
            )
    return notes


def _warm_allocator() -> None:
    """Run and free one large batch before any timing.

    glibc serves large blocks with mmap until a large block has been freed; until then every
    activation of a timed forward is fresh, page-faulting memory. That cost grows with the
    activations, so a cold process flatters the pruned model (measured: dense/ℓ1 1.85x cold,
    1.38x warm). One large forward raises the thresholds, and every model is timed warm."""
    with torch.inference_mode():
        dense_resnet()(torch.randn(256, 3, 32, 32))
        dense_vit()(torch.randn(256, 3, 32, 32))


def _family(
    args: argparse.Namespace, data: Any, base: str, dense: torch.nn.Module, methods: tuple
) -> tuple[dict[str, torch.nn.Module], list[dict[str, Any]]]:
    """The dense model and its pruned versions that were trained, measured side by side
    (BN folded for timing where there is BN)."""
    runs = Path(args.runs)
    models = {base: dense}
    for m in methods:
        if (runs / m / "model.pt").exists():
            models[f"{base}_{m}"] = lv.load(runs / m / "model.pt")
    if len(models) == 1:
        return models, []
    rows = measure_models(
        models,
        data,
        baseline=base,
        method_chains={k: [k.split("_", 1)[1]] for k in models if k != base},
        batch=args.batch,
        threads=args.threads,
        fold_bn=any(isinstance(x, torch.nn.BatchNorm2d) for x in dense.modules()),
        paper={f"{base}_{k}": v for k, v in PAPER.items()},
    )
    return models, rows


def cmd_report(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    check_results_target(args.out, allow_dirty=args.allow_dirty)  # fail now, not later
    _warm_allocator()
    data = load(args, 128)
    runs = Path(args.runs)
    rows = []
    # channel methods: batch-32 latency side by side with the dense ResNet-56
    static, family = _family(args, data, "resnet56", dense_resnet(), ("l1_filter", "scop"))
    rows += family
    tables = []
    if len(static) > 1:
        threads = sorted({1, args.threads})
        tables.append(_repeated_speedups(static, "resnet56", args.batch, threads))
        tables.append(
            _repeated_speedups(static, "resnet56", args.batch, threads, runtime="leanvision")
        )
    if (runs / "manidp" / "model.pt").exists():
        gated = lv.load(runs / "manidp" / "model.pt")
        manidp_rows, manidp_tables = _manidp(args, data, gated)
        rows += manidp_rows
        tables += manidp_tables
    rows += _family(args, data, "vit", dense_vit(), ("dynamicvit", "patch_slimming"))[1]
    tables.insert(0, _claims(rows))
    control = _controls(args, data, rows)
    if control:
        tables.insert(1, control)
    training = _training(args)
    if training:
        tables.append(training)
    tables.append(_manidp_224_speed(args))
    tables.append(_timm_l1_speed(args))
    tables.append(_deit_small_speed(args))
    run = {
        "name": "Pruning with real speed-up on CIFAR-10",
        "description": "Dense models trained by us (the distillation benchmark's ResNet-56, "
        "10 epochs on 45k images, and its DeiT-Tiny-like ViT at 32x32 / patch 4 trained alone, 5 "
        f"epochs on 6k images). Each pruned model is fine-tuned {args.epochs} epochs on "
        f"{args.max_train} training images (channel methods SGD lr 0.05; token methods AdamW "
        "lr 5e-4 with KD from the dense ViT) and scored on all 10,000 test images. Latency: "
        f"models side by side in one process, median, {args.threads} threads, batch "
        f"{args.batch} (ManiDP at batch 1). Papers train hundreds of epochs at full scale: "
        "compare directions and speed-ups, not accuracy levels.",
        "command": "\n".join(
            [f"python benchmarks/prune_cifar10.py channels --method {m}" for m in CHANNEL]
            + [f"python benchmarks/prune_cifar10.py tokens --method {m}" for m in TOKEN]
            + [f"python benchmarks/prune_cifar10.py dense --arch {a}" for a in ("resnet56", "vit")]
            + [f"python benchmarks/prune_cifar10.py --threads {args.threads} report"]
        ),
        "cpu": cpu_info(),
        "tables": tables,
        "notes": _acceptance(rows, tables) + INTERPRETATION,
    }
    print(
        f"wrote {write_results(Path(args.out), rows, run_info=run, allow_dirty=args.allow_dirty)}"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--allow-dirty", action="store_true", default=None, help="see write_results")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-train", type=int, default=10000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--max-test", type=int, default=None, help="test images (default: all)")
    p.add_argument("--runs", default=str(RUNS), help="folder of the pruned models")
    p.add_argument("--out", default=str(OUT), help="folder of results.json")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("channels")
    c.add_argument("--method", choices=list(CHANNEL), required=True)
    c.add_argument("--max-steps", type=int, default=None)
    t = sub.add_parser("tokens")
    t.add_argument("--method", choices=list(TOKEN), required=True)
    t.add_argument("--max-steps", type=int, default=None)
    d = sub.add_parser("dense")
    d.add_argument("--arch", choices=["resnet56", "vit"], required=True)
    d.add_argument("--max-steps", type=int, default=None)
    r = sub.add_parser("report")
    r.add_argument("--batch", type=int, default=32)
    r.add_argument("--batch1-images", type=int, default=200)
    r.add_argument("--speed-batch", type=int, default=8, help="batch of the deit_small timing")
    r.add_argument("--speed-images", type=int, default=10, help="images of the resnet34 timing")
    args = p.parse_args(argv)
    commands = {"channels": cmd_channels, "tokens": cmd_tokens, "dense": cmd_dense}
    commands["report"] = cmd_report
    commands[args.cmd](args)


if __name__ == "__main__":
    main()
