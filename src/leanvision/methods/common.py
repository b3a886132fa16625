"""What every training method shares: the fine-tuning options and the call into the trainer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from leanvision.engine import Hook, TrainResult, train
from leanvision.errors import ConfigError


@dataclass
class FinetuneConfig:
    """Options of the (re)training stage every training method accepts.

    ``finetune_epochs=0`` skips training but the method still returns its finalized model;
    ``max_steps`` caps optimizer steps (smoke runs).
    """

    finetune_epochs: int = 0
    lr: float = 0.05
    opt: str = "sgd"
    weight_decay: float = 5e-4
    warmup_epochs: int = 0
    batch_size: int | None = None
    max_steps: int | None = None
    seed: int = 0
    out_dir: str | None = None
    resume: bool = False
    progress: bool = True
    log: bool = True


def finetune(
    model: nn.Module,
    data: Any,
    cfg: FinetuneConfig,
    hooks: list[Hook] | None = None,
    method: str = "",
    **train_options: Any,
) -> TrainResult | None:
    """Train ``model`` for ``cfg.finetune_epochs`` with the one trainer (None when 0 epochs).

    ``train_options`` are further :class:`~leanvision.engine.TrainConfig` fields a method sets
    itself (e.g. ``lr_scales``).
    """
    if cfg.finetune_epochs <= 0:
        return None
    if data is None:
        raise ConfigError(
            f"method {method!r} was asked for finetune_epochs={cfg.finetune_epochs} but got no "
            "data; pass data=lv.load_data(...) or finetune_epochs=0"
        )
    names = {f.name for f in dataclasses.fields(FinetuneConfig)} - {"finetune_epochs"}
    kwargs = {n: getattr(cfg, n) for n in names}
    return train(model, data, hooks=hooks, epochs=cfg.finetune_epochs, **kwargs, **train_options)
