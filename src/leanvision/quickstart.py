"""The main job: train a baseline on the embedded data, compress it two ways, measure, report.

1. ResNet-20 (CIFAR layout, 1 input channel) trained on ``mnist5k`` (ships with the install).
2. Ghost-ResNet-20 (s=2, d=3) trained with Hinton KD from the baseline.
3. A half-width ResNet-20 trained with Hinton KD from the baseline.
4. A ResNet-8 (one block per stage) trained with Hinton KD from the baseline.
All four are evaluated on the held-out test split and timed side by side in one process; the
results land in ``runs/quickstart/`` (results.json, report.md, report.html, plots).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console

from leanvision.data import load_data
from leanvision.engine import train
from leanvision.methods import compress
from leanvision.methods.saving import save
from leanvision.models import create_model
from leanvision.pipeline import cpu_info, measure_models
from leanvision.report import rich_table, write_report, write_results

_probe = Console()
# Logs and CI have no terminal width: keep the results table readable there.
console = _probe if _probe.is_terminal else Console(width=160)


def run_quickstart(
    out_dir: str | Path = "runs/quickstart",
    epochs: int = 5,
    threads: int = 2,
    seed: int = 0,
    max_steps: int | None = None,
    progress: bool = True,
) -> Path:
    """Run the main job; returns the run folder.

    Args:
        out_dir: where results.json and the report go.
        epochs: training epochs of each model.
        threads: CPU threads for training and timing.
        seed: the one seed of the run.
        max_steps: cap of optimizer steps per model (smoke runs).
        progress: show progress bars.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    torch.set_num_threads(threads)
    common = dict(seed=seed, max_steps=max_steps, progress=progress)
    data = load_data("mnist5k", batch_size=64, seed=seed)
    console.rule("[bold]leanvision quickstart")
    console.print(f"data: {data.describe()}")

    console.print("[bold]1/5[/] training the baseline: resnet20_cifar")
    base = create_model("resnet20_cifar", in_chans=1, num_classes=data.num_classes)
    train(base, data, epochs=epochs, lr=0.1, out_dir=str(out / "baseline"), **common)

    console.print("[bold]2/5[/] Ghost-ResNet-20 (s=2, d=3) with KD from the baseline")
    ghost = compress(
        base,
        "ghost",
        data=data,
        ratio=2,
        dw_size=3,
        distill=True,
        finetune_epochs=epochs,
        lr=0.1,
        out_dir=str(out / "ghost_kd"),
        **common,
    )

    console.print("[bold]3/5[/] half-width ResNet-20 with KD from the baseline")
    half = create_model("resnet20_cifar", in_chans=1, num_classes=data.num_classes, width=0.5)
    half = compress(
        half,
        "kd",
        data=data,
        teacher=base,
        finetune_epochs=epochs,
        lr=0.1,
        out_dir=str(out / "half_kd"),
        **common,
    )

    console.print("[bold]4/5[/] ResNet-8 (depth 20 → 8) with KD from the baseline")
    shallow = compress(
        base,
        "kd",
        data=data,
        teacher=base,
        student={"name": "resnet8_cifar"},
        finetune_epochs=epochs,
        lr=0.1,
        out_dir=str(out / "resnet8_kd"),
        **common,
    )

    console.print("[bold]5/5[/] measuring all four side by side (test split, batch 32)")
    models = {
        "resnet20": base,
        "ghost_resnet20_kd": ghost,
        "resnet20_w0.5_kd": half,
        "resnet8_kd": shallow,
    }
    for name, model in models.items():  # reloadable with lv.load / `leanvision eval --checkpoint`
        save(model, out / "models" / f"{name}.pt")
    rows = measure_models(
        models,
        data,
        baseline="resnet20",
        threads=threads,
        batch=32,
        seed=seed,
        method_chains={
            "ghost_resnet20_kd": ["ghost", "kd"],
            "resnet20_w0.5_kd": ["kd"],
            "resnet8_kd": ["kd"],
        },
        notes={
            "ghost_resnet20_kd": "Ghost modules (s=2, d=3) in place of the 3×3 convs, retrained "
            "with KD; half the MACs, but depthwise convs and the concat run slowly on CPU",
            "resnet20_w0.5_kd": "width 0.5 ResNet-20 trained from scratch with KD",
            "resnet8_kd": "ResNet-8 (one block per stage) trained from scratch with KD",
        },
    )
    write_results(
        out,
        rows,
        run_info={
            "name": "quickstart",
            "description": f"ResNet-20 on the embedded mnist5k digits ({epochs} epochs each), "
            "compressed with Ghost+KD, half width+KD and depth 8+KD.",
            "command": "leanvision quickstart",
            "cpu": cpu_info(),
        },
    )
    paths = write_report(out)
    from leanvision.report import load_results

    console.print(rich_table(load_results(out), title="quickstart"))
    console.print(f"report: {paths['html']}  ({time.perf_counter() - t0:.0f} s)")
    return out
