"""Trainer overhead: ResNet-20 on CIFAR-10 batches, leanvision's Trainer vs a bare PyTorch loop.

Both loops train the same model, on the same loader, with the same optimizer settings, for the
same number of steps, in one process; they alternate for several rounds so machine noise hits
both equally. The acceptance bar: the trainer's throughput within 5% of the bare loop's.

    python benchmarks/trainer_overhead.py --steps 40 --rounds 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import leanvision as lv
from leanvision.pipeline import cpu_info
from leanvision.provenance import check_committable, git_state
from leanvision.report.writer import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10"
OUT = ROOT / "benchmarks" / "perf" / "trainer_overhead.json"  # not a model results file


def bare_loop(data, steps: int, batch: int) -> float:
    """A plain loop: same SGD/momentum/wd, channels_last, cosine lr per step. Returns img/s."""
    torch.manual_seed(0)
    model = lv.create_model("resnet20_cifar").to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loader = data.loader("train", batch_size=batch, shuffle=True)
    seen, t0 = 0, time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if i >= steps:
            break
        x = x.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        seen += y.shape[0]
    return seen / (time.perf_counter() - t0)


def trainer_loop(data, steps: int, batch: int) -> float:
    """The same work through ``lv.train`` (one epoch capped at ``steps``). Returns img/s."""
    torch.manual_seed(0)
    model = lv.create_model("resnet20_cifar")
    res = lv.train(
        model,
        data,
        epochs=1,
        max_steps=steps,
        lr=0.1,
        batch_size=batch,
        progress=False,
        log=False,
        eval_every=10**9,
    )
    return res.history[-1]["img_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", default=str(DATA))
    p.add_argument(
        "--allow-dirty",
        action="store_true",
        default=None,
        help="write committed results from a tree with uncommitted changes (recorded as dirty)",
    )
    a = p.parse_args()
    code = git_state()  # the committed perf JSON names clean code unless --allow-dirty
    check_committable(code, str(OUT), allow_dirty=a.allow_dirty)
    torch.set_num_threads(a.threads)
    # val_fraction small: the trainer's end-of-run evaluation is not part of the timing.
    data = lv.load_data("cifar10", root=a.data, batch_size=a.batch, max_val=256)
    bare, ours = [], []
    bare_loop(data, 5, a.batch)  # warm-up (oneDNN primitive caches)
    for r in range(a.rounds):
        order = (bare_loop, trainer_loop) if r % 2 == 0 else (trainer_loop, bare_loop)
        for fn in order:
            (bare if fn is bare_loop else ours).append(fn(data, a.steps, a.batch))
        print(f"round {r + 1}: bare {bare[-1]:.0f} img/s, trainer {ours[-1]:.0f} img/s")
    b, o = statistics.median(bare), statistics.median(ours)
    result = {
        "benchmark": "trainer_overhead",
        "model": "resnet20_cifar",
        "dataset": "cifar10",
        "batch": a.batch,
        "steps": a.steps,
        "rounds": a.rounds,
        "threads": a.threads,
        "bare_img_per_s": bare,
        "trainer_img_per_s": ours,
        "median_bare": b,
        "median_trainer": o,
        "trainer_over_bare": o / b,
        "within_5pct": o >= 0.95 * b,
        "git_commit": code.commit,
        "git_dirty": code.dirty,
        "git_diff_sha256": code.diff_sha256,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": cpu_info(),
        "command": f"python benchmarks/trainer_overhead.py --steps {a.steps} --rounds {a.rounds} "
        f"--threads {a.threads}",
    }
    atomic_write_text(OUT, json.dumps(result, indent=2) + "\n")
    print(f"trainer / bare = {o / b:.3f} (median img/s {o:.0f} vs {b:.0f}); wrote {OUT}")


if __name__ == "__main__":
    main()
