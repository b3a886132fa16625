"""Train a tiny model on a slice of mnist5k; used by the DDP and resume tests (run as a script).

Writes the final weights and metrics to ``--result`` (a torch file). ``--exit-at-step K`` kills
the process (``os._exit``, no clean-up) right after optimizer step K, like a power cut.
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn

import leanvision as lv
from leanvision.engine import Hook, train


class TinyNet(nn.Module):
    """A small CNN without BatchNorm (so per-process statistics cannot differ under DDP)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 3, 2, 1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, 2, 1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


class ExitAt(Hook):
    name = "exit_at"

    def __init__(self, step: int) -> None:
        self.step = step

    def after_optimizer_step(self, trainer) -> None:
        if trainer.global_step == self.step:
            os._exit(17)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="tiny", choices=["tiny", "resnet"])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-train", type=int, default=256)
    p.add_argument("--augment", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--exit-at-step", type=int, default=None)
    p.add_argument("--result", required=True)
    a = p.parse_args()
    torch.set_num_threads(1)
    data = lv.load_data(
        "mnist5k",
        batch_size=a.batch,
        max_train=a.max_train,
        max_val=64,
        max_test=64,
        augment=a.augment,
    )
    torch.manual_seed(0)
    if a.model == "tiny":
        model = TinyNet()
    else:
        model = lv.create_model("resnet20_cifar", in_chans=1, width=0.25)
    hooks = [ExitAt(a.exit_at_step)] if a.exit_at_step else []
    res = train(
        model,
        data,
        epochs=a.epochs,
        lr=0.05,
        weight_decay=1e-4,
        seed=0,
        hooks=hooks,
        out_dir=a.out,
        resume=a.resume,
        progress=False,
        log=False,
    )
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        torch.save(
            {
                "state": {k: v.contiguous() for k, v in res.model.state_dict().items()},
                "final": res.final,
                "history": res.history,
            },
            a.result,
        )


if __name__ == "__main__":
    main()
