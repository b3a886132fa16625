"""What every training method shares: the fine-tuning options and the call into the trainer."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

from torch import nn

from leanvision.engine import Hook, TrainConfig, TrainResult, train
from leanvision.engine.trainer import check_optimizer
from leanvision.errors import ConfigError

from .config import MethodConfig, check_int

__all__ = [
    "FinetuneConfig",
    "cap_batches",
    "cap_steps",
    "check_optimizer",
    "finetune",
    "finetune_option_names",
]


#: The trainer's defaults. Every fine-tuning option below reads its default here, except ``lr``:
#: fine-tuning starts from trained weights, so its default (0.05) is half the trainer's
#: from-scratch 0.1. A method's config may set its paper's values (e.g. adamw for a ViT).
_TRAINER = TrainConfig()

#: Trainer options that are not fine-tuning options: ``epochs`` is ``finetune_epochs``; a method
#: sets ``lr_scales`` and ``eval_every`` itself when it needs them.
NOT_FINETUNE_OPTIONS = frozenset({"epochs", "lr_scales", "eval_every"})


@dataclass
class FinetuneConfig(MethodConfig):
    """Options of the (re)training stage every training method accepts: ``finetune_epochs`` and
    the trainer's options (:class:`~leanvision.engine.TrainConfig`, whose defaults these read;
    only ``lr`` has a fine-tuning default of its own). They are checked by the trainer's own
    rules (:meth:`TrainConfig.validate`) when the config is built.

    ``finetune_epochs=0`` skips training but the method still returns its finalized model.

    ``max_steps`` (smoke runs) caps every stage of the method: each training stage (the
    fine-tuning, and a method's own stages such as SCOP's control factors) takes at most
    ``max_steps`` optimizer steps, and each pass over data without optimizer steps (batch-norm
    recalibration, ManiDP's initial loss, patch slimming's attention calibration, SCOP's
    Gaussian knockoff fit) reads at most ``max_steps`` batches. ``None``: no cap. The
    validation split is still read whole after each trained epoch (once, when ``max_steps``
    ends a stage within its first epoch); keep it small in smoke runs (``max_val=``).
    """

    finetune_epochs: int = 0
    lr: float = 0.05
    opt: str = _TRAINER.opt
    momentum: float = _TRAINER.momentum
    opt_kwargs: dict[str, Any] | None = _TRAINER.opt_kwargs
    weight_decay: float = _TRAINER.weight_decay
    sched: str = _TRAINER.sched
    warmup_epochs: int = _TRAINER.warmup_epochs
    min_lr: float = _TRAINER.min_lr
    batch_size: int | None = _TRAINER.batch_size
    label_smoothing: float = _TRAINER.label_smoothing
    clip_grad: float | None = _TRAINER.clip_grad
    seed: int = _TRAINER.seed
    max_steps: int | None = _TRAINER.max_steps
    channels_last: bool | None = _TRAINER.channels_last
    amp: bool | None = _TRAINER.amp
    device: str | None = _TRAINER.device
    out_dir: str | None = _TRAINER.out_dir
    resume: bool = _TRAINER.resume
    progress: bool = _TRAINER.progress
    log: bool = _TRAINER.log
    num_threads: int | None = _TRAINER.num_threads

    def validate(self) -> None:
        """Types; ``finetune_epochs`` ≥ 0; the training options by the trainer's rules."""
        super().validate()
        check_int("finetune_epochs", self.finetune_epochs, 0)
        self.train_config()

    def train_options(self) -> dict[str, Any]:
        """The trainer options this config carries (all but ``finetune_epochs``)."""
        return {n: getattr(self, n) for n in sorted(finetune_option_names())}

    def train_config(self, **method_options: Any) -> TrainConfig:
        """The trainer's config of the fine-tuning stage (checked by the trainer's rules).

        ``method_options``: trainer options the method sets itself (``lr_scales``, ...); one
        that is also a fine-tuning option is an error, since it would override the user's.
        """
        clash = sorted(set(method_options) & finetune_option_names())
        if clash:
            raise ConfigError(f"a method may not override the fine-tuning option(s) {clash}")
        opts = {**self.train_options(), **method_options}
        return TrainConfig.from_kwargs(epochs=self.finetune_epochs, **opts)

    def check_inputs(self, data: Any) -> None:
        """Training needs data: ``finetune_epochs > 0`` with ``data=None`` is an error."""
        super().check_inputs(data)
        if self.finetune_epochs > 0 and data is None:
            raise ConfigError(
                f"finetune_epochs={self.finetune_epochs} trains on data but data=None; pass "
                "data=lv.load_data(...) or finetune_epochs=0"
            )


@functools.cache
def finetune_option_names() -> frozenset[str]:
    """The trainer options a :class:`FinetuneConfig` carries."""
    train = {f.name for f in dataclasses.fields(TrainConfig)}
    return frozenset(train - NOT_FINETUNE_OPTIONS)


def cap_steps(*caps: int | None) -> int | None:
    """The tightest of several optional step caps (None when none is set)."""
    given = [c for c in caps if c is not None]
    return min(given) if given else None


def cap_batches(batches: int, max_steps: int | None) -> int:
    """Batches a data pass without optimizer steps reads: ``batches``, capped by ``max_steps``."""
    return batches if max_steps is None else min(batches, max_steps)


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
    options = dataclasses.asdict(cfg.train_config(**train_options))
    return train(model, data, hooks=hooks, **options)
