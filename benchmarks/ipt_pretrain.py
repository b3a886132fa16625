"""IPT pre-training on CIFAR-sized compute: a CPU-sized IPT pre-trained on T91 for five tasks,
then fine-tuned, against the same model trained from scratch as long, on Set5 x2 and on BSD100
denoising at sigma 30, with the contrastive term on and off.

    python benchmarks/ipt_pretrain.py pretrain --contrastive on     # each step resumes
    python benchmarks/ipt_pretrain.py pretrain --contrastive off
    python benchmarks/ipt_pretrain.py finetune --target sr2 --contrastive on
    python benchmarks/ipt_pretrain.py finetune --target sr2 --contrastive off
    python benchmarks/ipt_pretrain.py finetune --target noise30 --contrastive on
    python benchmarks/ipt_pretrain.py finetune --target noise30 --contrastive off
    python benchmarks/ipt_pretrain.py scratch --target sr2
    python benchmarks/ipt_pretrain.py scratch --target noise30
    python benchmarks/ipt_pretrain.py report     # -> benchmarks/results/ipt_pretrain/

IPT's claim (CVPR 2021): pre-training on many corrupted images, then fine-tuning, beats training
for the target task alone, and the contrastive loss on patch features helps. Here ``ipt_cpu``
(16 features, 24x24 crops, 2 + 2 transformer layers) is pre-trained for ``PRE_EPOCHS`` on T91's
clean 96x96 crops, each step one of x2/x3/x4 bicubic super-resolution and Gaussian denoising at
sigma 30/50 (``lv.compress(..., "ipt")``), then fine-tuned ``FT_EPOCHS`` on the target task's
data; the scratch model trains ``PRE_EPOCHS + FT_EPOCHS`` on the target task alone (the same
steps, reported). Tests: Set5 x2 (Y PSNR, 2-pixel border) and BSD100 with fixed sigma-30 noise
(RGB PSNR), whole images chopped into overlapping crops. T91 stands in for ImageNet.
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
from leanvision.engine.checkpoint import load_checkpoint
from leanvision.pipeline import cpu_info
from leanvision.profiling import count_ops
from leanvision.provenance import git_state
from leanvision.report import check_results_target, write_results

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sr"
DATA_MARKER = "T91"  # what the smoke test needs to find under DATA
RUNS = ROOT / "runs" / "bench_ipt_pretrain"
OUT = ROOT / "benchmarks" / "results" / "ipt_pretrain"
SMOKE = False  # tests set it: a few steps everywhere

MODEL = "ipt_cpu"
PRE_EPOCHS, FT_EPOCHS = 10, 10
OPT = {"lr": 2e-4, "opt": "adam", "weight_decay": 0.0}
CROP = 24  # ipt_cpu's
TARGETS = {
    "sr2": ("sr", {"scale": 2, "patch_size": CROP, "test_set": "Set5"}),
    "noise30": ("denoise", {"sigma": 30, "patch_size": CROP, "test_set": "BSD100"}),
}
RUN_NAMES = [f"{kind}_{t}" for t in TARGETS for kind in ("scratch", "pre_con", "pre_nocon")]
COMMAND = " && ".join(
    [f"python benchmarks/ipt_pretrain.py pretrain --contrastive {c}" for c in ("on", "off")]
    + [f"python benchmarks/ipt_pretrain.py finetune --target {t} --contrastive {c}"
       for t in TARGETS for c in ("on", "off")]
    + [f"python benchmarks/ipt_pretrain.py scratch --target {t}" for t in TARGETS]
    + ["python benchmarks/ipt_pretrain.py report"]
)  # fmt: skip


def _smoke_model() -> Any:
    return lv.create_model(MODEL, n_feats=4, crop=12, num_heads=2, enc_layers=1, dec_layers=1)


def _model() -> Any:
    torch.manual_seed(0)
    return _smoke_model() if SMOKE else lv.create_model(MODEL)


def _crop() -> int:
    return 12 if SMOKE else CROP


def _limits() -> dict[str, Any]:
    return {"repeat": 1, "max_val": 1, "max_test": 2} if SMOKE else {"repeat": 16}


def _target_data(args: argparse.Namespace, target: str) -> Any:
    name, opts = TARGETS[target]
    opts = {**opts, "patch_size": _crop()}
    return lv.load_data(name, root=args.data, batch_size=16, seed=0, **opts, **_limits())


def _pretrain_data(args: argparse.Namespace) -> Any:
    """Clean crops of 4 x the crop (96): room for every task's target."""
    return lv.load_data("sr", root=args.data, scale=4, patch_size=_crop(), batch_size=16, seed=0,
                        **_limits())  # fmt: skip


def _options(out: Path, args: argparse.Namespace) -> dict[str, Any]:
    return {"seed": 0, "out_dir": str(out), "resume": True, "num_threads": args.threads,
            "progress": sys.stderr.isatty(), "max_steps": 2 if SMOKE else None,
            "device": args.device, "amp": False, **OPT}  # fmt: skip


def _epochs(n: int) -> int:
    return 1 if SMOKE else n


def cmd_pretrain(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = RUNS / f"pretrain_{args.contrastive}"
    weight = 0.1 if args.contrastive == "on" else 0.0
    model = lv.compress(_model(), "ipt", data=_pretrain_data(args), contrastive_weight=weight,
                        finetune_epochs=_epochs(PRE_EPOCHS), **_options(out, args))  # fmt: skip
    lv.save(model, out / "model.pt")


def _train_target(model: Any, args: argparse.Namespace, target: str, out: Path, epochs: int):
    model.set_task(target)
    res = lv.train(model, _target_data(args, target), epochs=_epochs(epochs),
                   **_options(out, args))  # fmt: skip
    lv.save(res.model.eval(), out / "model.pt")


def cmd_finetune(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    pre = RUNS / f"pretrain_{args.contrastive}" / "model.pt"
    if not pre.exists():
        raise SystemExit(f"{pre} is missing: run `pretrain --contrastive {args.contrastive}`")
    name = f"pre_{'con' if args.contrastive == 'on' else 'nocon'}_{args.target}"
    _train_target(lv.load(pre), args, args.target, RUNS / name, FT_EPOCHS)


def cmd_scratch(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    _train_target(_model(), args, args.target, RUNS / f"scratch_{args.target}",
                  PRE_EPOCHS + FT_EPOCHS)  # fmt: skip


def _steps(run: Path) -> int:
    return int(load_checkpoint(run / "last.pt").get("global_step", 0))


def cmd_report(args: argparse.Namespace) -> None:
    check_results_target(OUT, allow_dirty=args.allow_dirty)
    for name in RUN_NAMES:
        if not (RUNS / name / "model.pt").exists():
            raise SystemExit(f"{RUNS / name / 'model.pt'} is missing: run its step first")
    torch.set_num_threads(args.threads)
    rows, table, scores = [], [], {}
    for name in RUN_NAMES:
        target = name.rsplit("_", 1)[1]
        model = lv.load(RUNS / name / "model.pt").eval()
        data = _target_data(args, target)
        s = lv.evaluate(model, data.test)
        pre = None if name.startswith("scratch") else (
            RUNS / f"pretrain_{'on' if '_con_' in name else 'off'}")  # fmt: skip
        steps = _steps(RUNS / name) + (_steps(pre) if pre else 0)
        scores[name] = s["psnr"]
        how = training_note(training_record(RUNS / name / "last.pt"), args.threads)
        test_set = TARGETS[target][1]["test_set"]
        rows.append({
            "name": name, "dataset": TARGETS[target][0], "split": "test", "seed": 0,
            "params": sum(p.numel() for p in model.parameters()),
            "macs": int(count_ops(model, (3, _crop(), _crop())).macs),
            "metrics": {f"psnr@{test_set}": s["psnr"], f"ssim@{test_set}": s["ssim"]},
            "method_chain": [] if pre is None else ["ipt"],
            "baseline": f"scratch_{target}",
            "notes": f"{steps} steps in all; trained {how}",
            "extra": {"target": target, "steps": steps},
        })  # fmt: skip
        table.append([name, target, test_set, steps, round(s["psnr"], 2), round(s["ssim"], 4)])
    notes = []
    for t in TARGETS:
        sc, con, nocon = (scores[f"{k}_{t}"] for k in ("scratch", "pre_con", "pre_nocon"))
        notes.append(
            f"{t}: pre-trained with contrastive {con:.2f} dB, without {nocon:.2f} dB, from "
            f"scratch {sc:.2f} dB. Pre-training beats scratch: "
            + ("yes" if con > sc else "no") + f" ({con - sc:+.2f} dB); the contrastive term "
            + ("helps" if con > nocon else "does not help") + f" ({con - nocon:+.2f} dB)."
        )  # fmt: skip
    run = {
        "name": "IPT pre-training (ipt_cpu on T91): Set5 x2 and BSD100 sigma-30 denoising",
        "description": __doc__.split("\n\n")[2].replace("\n", " "), "command": COMMAND,
        "cpu": cpu_info(), "notes": notes,
        "tables": [{"title": "Pre-trained then fine-tuned vs from scratch, same steps",
                    "columns": ["run", "target", "test set", "steps", "PSNR dB", "SSIM"],
                    "rows": table}],
        "settings": {"pre_epochs": PRE_EPOCHS, "ft_epochs": FT_EPOCHS, "opt": OPT,
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
    pre = sub.add_parser("pretrain")
    pre.add_argument("--contrastive", choices=("on", "off"), required=True)
    ft = sub.add_parser("finetune")
    ft.add_argument("--target", choices=list(TARGETS), required=True)
    ft.add_argument("--contrastive", choices=("on", "off"), required=True)
    sc = sub.add_parser("scratch")
    sc.add_argument("--target", choices=list(TARGETS), required=True)
    sub.add_parser("report")
    args = p.parse_args(argv)
    if args.smoke:
        global SMOKE
        SMOKE = True
    {"pretrain": cmd_pretrain, "finetune": cmd_finetune, "scratch": cmd_scratch,
     "report": cmd_report}[args.cmd](args)  # fmt: skip


if __name__ == "__main__":
    main()
