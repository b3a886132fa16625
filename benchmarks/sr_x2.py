"""x2 super-resolution: an EDSR against its GhostSR and FADN versions, trained alike on T91
crops, tested on Set5, Set14 and BSD100.

    python benchmarks/sr_x2.py train --model edsr      # each resumes
    python benchmarks/sr_x2.py train --model ghostsr
    python benchmarks/sr_x2.py train --model fadn
    python benchmarks/sr_x2.py report                  # -> benchmarks/results/sr_x2/

The claims measured (issue 22's acceptance). GhostSR (arXiv 2101.08525): about half the MACs of
the replaced convolutions, PSNR within 0.15 dB of the same-size EDSR on Set5, and lower measured
batch-1 latency. FADN (ICCV 2021): MACs cut by at least 40 % on Set14 and BSD100 at PSNR within
0.15 dB, with the measured latency gain at least 0.7 times the MACs gain. The EDSR is CPU-sized:
``ARCH`` (8 conv blocks of 64 channels; EDSR-baseline has 16). The three train from scratch with
one schedule (``TRAIN``: L1, Adam, the same steps); GhostSR's and FADN's layers are put into the
untrained EDSR (GhostSR with the official layout, ``intrinsic="first"``: there is no trained
filter to cluster). FADN's MACs depend on the image: they are counted on every test image and
averaged per set; every model is timed side by side in one process on the first ``TIME_IMAGES``
images of Set14 and of BSD100, batch 1. PSNR/SSIM: Y channel, 2 border pixels cropped,
scikit-image's; LR by PIL bicubic (the data's README).
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
from leanvision.models.edsr import edsr_arch
from leanvision.pipeline import cpu_info
from leanvision.profiling import OnInputs, compare, count_ops
from leanvision.provenance import git_state
from leanvision.report import check_results_target, write_results

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sr"
DATA_MARKER = "T91"  # what the smoke test needs to find under DATA
RUNS = ROOT / "runs" / "bench_sr_x2"
OUT = ROOT / "benchmarks" / "results" / "sr_x2"
SMOKE = False  # tests set it: a few steps everywhere

SCALE = 2
ARCH = edsr_arch(8, 64)
DATA_ARGS = {"scale": SCALE, "patch_size": 48, "repeat": 16, "batch_size": 16}
TRAIN = {"epochs": 30, "lr": 5e-4, "opt": "adam", "weight_decay": 0.0}
METHODS: dict[str, dict[str, Any]] = {
    "edsr": {},
    "ghostsr": {"method": "ghostsr", "intrinsic": "first"},
    "fadn": {"method": "fadn", "density": 0.35},
}
TEST_SETS = ("Set5", "Set14", "BSD100")
TIMED_SETS, TIME_IMAGES = ("Set14", "BSD100"), 4
MARGIN_DB, FADN_CUT, LATENCY_SHARE = 0.15, 0.40, 0.7
COMMAND = " && ".join([f"python benchmarks/sr_x2.py train --model {m}" for m in METHODS]
                      + ["python benchmarks/sr_x2.py report"])  # fmt: skip


def _data(args: argparse.Namespace, test_set: str = "Set5") -> Any:
    kw = dict(DATA_ARGS)
    if SMOKE:
        kw.update(patch_size=16, repeat=1, max_val=2, max_test=2)
    return lv.load_data("sr", root=args.data, test_set=test_set, seed=0, **kw)


def _edsr() -> Any:
    arch = edsr_arch(2, 16) if SMOKE else ARCH  # smoke runs: a tiny net on whole test images
    return lv.create_model("srnet_custom", arch=arch, scale=SCALE)


def cmd_train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = RUNS / args.model
    torch.manual_seed(0)
    options = {"seed": 0, "out_dir": str(out), "resume": True, "num_threads": args.threads,
               "progress": sys.stderr.isatty(), "max_steps": 2 if SMOKE else None,
               "device": args.device, "amp": False}  # fmt: skip
    epochs = 1 if SMOKE else TRAIN["epochs"]
    hp = dict(METHODS[args.model])
    if not hp:  # the baseline: the trainer alone
        model = lv.train(_edsr(), _data(args), epochs=epochs, lr=TRAIN["lr"], opt=TRAIN["opt"],
                         weight_decay=TRAIN["weight_decay"], **options).model  # fmt: skip
    else:
        method = hp.pop("method")
        model = lv.compress(_edsr(), method, data=_data(args), finetune_epochs=epochs,
                            lr=TRAIN["lr"], opt=TRAIN["opt"],
                            weight_decay=TRAIN["weight_decay"], **hp, **options)  # fmt: skip
    lv.save(model.eval(), out / "model.pt")
    print(f"{args.model}: saved {out / 'model.pt'}")


def _images(args: argparse.Namespace, test_set: str) -> list[torch.Tensor]:
    data = _data(args, test_set)
    return [lr[None] for lr, _ in data.test_set]


@torch.no_grad()
def _mean_macs(model: Any, images: list[torch.Tensor]) -> float:
    """MACs per image averaged over the images (FADN's depend on each image)."""
    return sum(count_ops(model, inputs=x).macs for x in images) / len(images)


def _fadn_density(model: Any, images: list[torch.Tensor]) -> float | None:
    """The share of tiles FADN's blocks sent to the expensive path, over the images."""
    from leanvision.layers import FrequencyAwareBlock

    blocks = [m for m in model.modules() if isinstance(m, FrequencyAwareBlock)]
    if not blocks:
        return None
    shares = []
    with torch.no_grad():
        for x in images:
            model(x)
            shares += [b.last_density for b in blocks]
    return sum(shares) / len(shares)


def replaced_macs_share(base: Any, ghost: Any, size: int = 32) -> float:
    """The MACs of GhostSR's layers over those of the convolutions they replaced (the same
    names in the EDSR), each counted alone on a ``size``×``size`` map (the share does not
    depend on the size: every replaced layer runs at the LR resolution)."""
    from leanvision.layers import ShiftGhostConv2d

    base_modules = dict(base.named_modules())
    ghost_macs = base_macs = 0
    for name, layer in ghost.named_modules():
        if isinstance(layer, ShiftGhostConv2d):
            shape = (layer.in_channels, size, size)
            ghost_macs += count_ops(layer, shape).macs
            base_macs += count_ops(base_modules[name], shape).macs
    if not base_macs:
        raise SystemExit("the GhostSR model holds no ShiftGhostConv2d layer")
    return ghost_macs / base_macs


def cmd_report(args: argparse.Namespace) -> None:
    check_results_target(OUT, allow_dirty=args.allow_dirty)
    for m in METHODS:
        if not (RUNS / m / "model.pt").exists():
            raise SystemExit(f"{RUNS / m / 'model.pt'} is missing: run `train --model {m}` first")
    torch.set_num_threads(args.threads)
    models = {m: lv.load(RUNS / m / "model.pt").eval() for m in METHODS}
    images = {s: _images(args, s) for s in TEST_SETS}
    timed_images = {s: images[s][:TIME_IMAGES] for s in TIMED_SETS}
    runners = {f"{m}@{s}": OnInputs(model, timed_images[s])
               for s in TIMED_SETS for m, model in models.items()}  # fmt: skip
    with torch.inference_mode():
        lat = compare(runners, batch=1, threads=args.threads, warmup=1,
                      repeats=2 if SMOKE else 5)  # fmt: skip
    rows, table = [], []
    for name, model in models.items():
        scores = {s: lv.evaluate(model, _data(args, s).test) for s in TEST_SETS}
        macs = {s: _mean_macs(model, images[s]) for s in TEST_SETS}
        density = {s: _fadn_density(model, images[s]) for s in TEST_SETS}
        how = training_note(training_record(RUNS / name / "last.pt"), args.threads)
        rows.append({
            "name": name, "dataset": "sr", "split": "test",
            "macs": round(macs["Set14"]), "params": sum(p.numel() for p in model.parameters()),
            "latency_ms": lat[f"{name}@Set14"].as_result(), "seed": 0,
            "metrics": {f"{k}@{s}": scores[s][k] for s in TEST_SETS for k in ("psnr", "ssim")},
            "method_chain": [name] if name != "edsr" else [],
            **({"baseline": "edsr"} if name != "edsr" else {}),
            "notes": f"trained {how}; MACs and latency on Set14 (per image, mean; latency: "
                     f"the first {TIME_IMAGES} images)",
            "extra": {"macs_per_set": macs, "expensive_share": density,
                      "latency_ms_per_set": {s: lat[f"{name}@{s}"].as_result()
                                             for s in TIMED_SETS}},
        })  # fmt: skip
        table.append([name] + [round(scores[s]["psnr"], 2) for s in TEST_SETS]
                     + [round(macs[s] / 1e9, 3) for s in TEST_SETS]
                     + [round(lat[f"{name}@{s}"].median_ms, 1) for s in TIMED_SETS])  # fmt: skip
    by = {r["name"]: r for r in rows}
    base, ghost, fadn = by["edsr"], by["ghostsr"], by["fadn"]

    def psnr(r: dict, s: str) -> float:
        return r["metrics"][f"psnr@{s}"]

    def gain(r: dict, s: str, key: str) -> float:
        if key == "macs":
            return base["extra"]["macs_per_set"][s] / r["extra"]["macs_per_set"][s]
        return (base["extra"]["latency_ms_per_set"][s]["median"]
                / r["extra"]["latency_ms_per_set"][s]["median"])  # fmt: skip

    g_drop = psnr(base, "Set5") - psnr(ghost, "Set5")
    g_speed = gain(ghost, "Set14", "latency")
    share = replaced_macs_share(models["edsr"], models["ghostsr"])
    ghost["extra"]["replaced_macs_share"] = share
    notes = [
        f"GhostSR: {share:.3f} of the replaced convolutions' MACs (claim about 1/2), "
        f"{1 / gain(ghost, 'Set5', 'macs'):.3f} of the whole EDSR's; Set5 PSNR "
        f"{-g_drop:+.2f} dB (claim within {MARGIN_DB} dB: "
        + ("holds" if g_drop <= MARGIN_DB else "does not hold")
        + f"); {g_speed:.2f}x the EDSR's speed on Set14 (claim faster: "
        + ("holds" if g_speed > 1 else "does not hold") + ").",
    ]  # fmt: skip
    for s in ("Set14", "BSD100"):
        cut = 1 - 1 / gain(fadn, s, "macs")
        drop = psnr(base, s) - psnr(fadn, s)
        ratio = gain(fadn, s, "latency") / gain(fadn, s, "macs")
        ok = cut >= FADN_CUT and drop <= MARGIN_DB and ratio >= LATENCY_SHARE
        notes.append(
            f"FADN on {s}: MACs cut {100 * cut:.1f} % (claim >= {100 * FADN_CUT:.0f} %), PSNR "
            f"{-drop:+.2f} dB (claim within {MARGIN_DB}), latency gain "
            f"{gain(fadn, s, 'latency'):.2f}x = {ratio:.2f} of the MACs gain "
            f"{gain(fadn, s, 'macs'):.2f}x (claim >= {LATENCY_SHARE}); expensive tiles "
            f"{100 * fadn['extra']['expensive_share'][s]:.1f} %: the claim "
            + ("holds" if ok else "does not hold") + " here."
        )  # fmt: skip
    columns = (["model"] + [f"{s} PSNR" for s in TEST_SETS] + [f"{s} GMACs" for s in TEST_SETS]
               + [f"{s} ms ({TIME_IMAGES} images)" for s in TIMED_SETS])  # fmt: skip
    run = {
        "name": "x2 super-resolution: EDSR, GhostSR, FADN",
        "description": __doc__.split("\n\n")[2].replace("\n", " "), "command": COMMAND,
        "cpu": cpu_info(), "notes": notes,
        "tables": [{"title": "Trained alike on T91; PSNR (dB), MACs per image (mean), latency",
                    "columns": columns, "rows": table}],
        "settings": {"arch": ARCH, "train": TRAIN, "methods": METHODS, "data": DATA_ARGS,
                     "threads": args.threads, "git": dataclasses.asdict(git_state())},
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
    t.add_argument("--model", choices=list(METHODS), required=True)
    sub.add_parser("report")
    args = p.parse_args(argv)
    if args.smoke:
        global SMOKE
        SMOKE = True
    {"train": cmd_train, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
