"""What every training method shares: the fine-tuning options and the call into the trainer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from timm.optim import list_optimizers
from torch import nn

from leanvision.engine import Hook, TrainResult, train
from leanvision.errors import ConfigError

from .config import MethodConfig, check_int, check_real, field_error

__all__ = ["FinetuneConfig", "cap_batches", "cap_steps", "check_optimizer", "finetune"]


@dataclass
class FinetuneConfig(MethodConfig):
    """Options of the (re)training stage every training method accepts.

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

    def validate(self) -> None:
        """Types; epochs ≥ 0, lr > 0, a timm optimizer, weight decay ≥ 0, batch size and
        max_steps ≥ 1 (or None), seed ≥ 0, resume only with out_dir."""
        super().validate()
        check_int("finetune_epochs", self.finetune_epochs, 0)
        check_real("lr", self.lr, 0.0, lo_open=True)
        check_optimizer("opt", self.opt)
        check_real("weight_decay", self.weight_decay, 0.0)
        check_int("warmup_epochs", self.warmup_epochs, 0)
        check_int("batch_size", self.batch_size, 1, none_ok=True)
        check_int("max_steps", self.max_steps, 1, none_ok=True)
        check_int("seed", self.seed, 0)
        if self.resume and not self.out_dir:
            raise field_error("resume", self.resume, "True only with out_dir= (the folder "
                              "holding last.pt)")  # fmt: skip

    def check_inputs(self, data: Any) -> None:
        """Training needs data: ``finetune_epochs > 0`` with ``data=None`` is an error."""
        super().check_inputs(data)
        if self.finetune_epochs > 0 and data is None:
            raise ConfigError(
                f"finetune_epochs={self.finetune_epochs} trains on data but data=None; pass "
                "data=lv.load_data(...) or finetune_epochs=0"
            )


def check_optimizer(name: str, opt: str) -> None:
    """``opt`` names a timm optimizer (``create_optimizer_v2``'s ``[lookahead_]<name>``)."""
    known = list_optimizers()
    parts = opt.lower().split("_") if isinstance(opt, str) else []
    prefix_ok = len(parts) == 1 or (len(parts) == 2 and parts[0] == "lookahead")
    if not parts or not prefix_ok or parts[-1] not in known:
        raise field_error(
            name, opt, f"a timm optimizer name, e.g. sgd, adam, adamw, lamb ({len(known)} in "
            "timm.optim.list_optimizers()), optionally prefixed 'lookahead_'",
        )  # fmt: skip


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
    names = {f.name for f in dataclasses.fields(FinetuneConfig)} - {"finetune_epochs"}
    kwargs = {n: getattr(cfg, n) for n in names}
    return train(model, data, hooks=hooks, epochs=cfg.finetune_epochs, **kwargs, **train_options)
