"""What the channel-pruning methods share: the target options, removal, record, fine-tuning."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from leanvision.errors import ConfigError
from leanvision.kernels import vector_width
from leanvision.methods.common import FinetuneConfig, cap_batches, finetune
from leanvision.methods.config import check_int, check_real, field_error
from leanvision.methods.distillation.kd import KDHook
from leanvision.methods.registry import record_transform
from leanvision.shapes import recorded_input_size

from .channels import TargetUnreachableError, prune_channels, replay

__all__ = [
    "ChannelPruneConfig",
    "finish_channel_pruning",
    "input_size_of",
    "rebuild_pruned",
    "recalibrate_bn",
]


@dataclass
class ChannelPruneConfig(FinetuneConfig):
    """The pruning target (one of three) and the fine-tuning after removal.

    ``target_macs_ratio``: fraction of MACs kept (default 0.5 when no target is given);
    ``pruning_ratio``: fraction of channels removed from every prunable layer;
    ``layer_ratios``: ``{module name: ratio}``. ``round_to``: keep widths multiples of it;
    None (default): this CPU's float32 vector width (:func:`leanvision.kernels.vector_width`,
    16 with AVX-512), halved until a ``target_macs_ratio`` is reachable; 1: any width. Odd
    widths fall off the vector lanes: a pruned net with them gains far less speed than MACs.
    ``input_size``: (C, H, W), one image without the batch (:mod:`leanvision.shapes`); default
    the data's, else the model's ``pretrained_cfg``.
    ``distill``: fine-tune with KD from the unpruned model (``kd_T``, ``kd_alpha``).
    ``recalibrate_batches``: training batches used to re-estimate BatchNorm statistics of the
    pruned model before fine-tuning (0: keep the old ones; needs ``data``; at most
    ``max_steps`` when that is set).
    """

    target_macs_ratio: float | None = None
    pruning_ratio: float | None = None
    layer_ratios: dict[str, float] | None = None
    round_to: int | None = None
    input_size: list[int] | None = None
    distill: bool = False
    kd_T: float = 4.0
    kd_alpha: float = 0.9
    recalibrate_batches: int = 20

    def validate(self) -> None:
        """The fine-tuning checks; at most one target; kept MACs share in (0, 1], removed
        channel shares in [0, 1); round_to ≥ 1; input_size (C, H, W) ≥ 1; kd_T > 0,
        kd_alpha in [0, 1]; recalibrate_batches ≥ 0."""
        super().validate()
        given = [
            n for n in ("target_macs_ratio", "pruning_ratio", "layer_ratios")
            if getattr(self, n) is not None
        ]  # fmt: skip
        if len(given) > 1:
            raise ConfigError(
                f"give one pruning target, got {given}; allowed: one of target_macs_ratio, "
                "pruning_ratio, layer_ratios (default target_macs_ratio=0.5)"
            )
        check_real("target_macs_ratio", self.target_macs_ratio, 0.0, 1.0, lo_open=True,
                   none_ok=True)  # fmt: skip
        check_real("pruning_ratio", self.pruning_ratio, 0.0, 1.0, hi_open=True, none_ok=True)
        for name, ratio in (self.layer_ratios or {}).items():
            check_real(f"layer_ratios[{name!r}]", ratio, 0.0, 1.0, hi_open=True)
        check_int("round_to", self.round_to, 1, none_ok=True)
        if self.input_size is not None and (
            len(self.input_size) != 3 or any(v < 1 for v in self.input_size)
        ):
            raise field_error("input_size", self.input_size, "(C, H, W), each >= 1, or None")
        check_real("kd_T", self.kd_T, 0.0, lo_open=True)
        check_real("kd_alpha", self.kd_alpha, 0.0, 1.0)
        check_int("recalibrate_batches", self.recalibrate_batches, 0)


def input_size_of(model: nn.Module, data: Any, cfg: ChannelPruneConfig) -> tuple[int, ...]:
    """(C, H, W) for tracing: the config's, the data's, or the model's recorded input size."""
    if cfg.input_size is not None:
        return tuple(int(v) for v in cfg.input_size)
    if data is not None:
        return tuple(int(v) for v in data.input_size)
    recorded = recorded_input_size(model)
    if recorded is not None:
        return recorded
    raise ConfigError("pass input_size=(C, H, W) or data=: the pruner traces one forward")


def finish_channel_pruning(
    model: nn.Module,
    data: Any,
    cfg: ChannelPruneConfig,
    scores: Mapping[str, torch.Tensor],
    method: str,
) -> nn.Module:
    """Remove channels by ``scores`` to the configured target, record, fine-tune, return."""
    targets = {
        "target_macs_ratio": cfg.target_macs_ratio,
        "pruning_ratio": cfg.pruning_ratio,
        "layer_ratios": cfg.layer_ratios,
    }
    given = {k: v for k, v in targets.items() if v is not None}
    if len(given) > 1:
        raise ConfigError(f"{method}: give one pruning target, got {sorted(given)}")
    if not given:
        given = {"target_macs_ratio": 0.5}
    was_training = model.training
    pruned, arch = _prune_rounded(model, scores, input_size_of(model, data, cfg), cfg, given)
    model.train(was_training)
    record_transform(pruned, model, method, arch)
    batches = cap_batches(cfg.recalibrate_batches, cfg.max_steps)
    if data is not None and batches > 0:
        recalibrate_bn(pruned, data.loader("train", shuffle=True), batches)
    hooks = [KDHook(copy.deepcopy(model), cfg.kd_T, cfg.kd_alpha)] if cfg.distill else []
    finetune(pruned, data, cfg, hooks, method=method)
    return pruned.eval()


def _prune_rounded(
    model: nn.Module,
    scores: Mapping[str, torch.Tensor],
    input_size: tuple[int, ...],
    cfg: ChannelPruneConfig,
    target: dict[str, Any],
) -> tuple[nn.Module, dict[str, Any]]:
    """Prune with ``cfg.round_to``, or by default with the widest vector-width multiple (16,
    8, ... 1) that reaches the target; the arch records the multiple used and why."""
    if cfg.round_to is not None:
        pruned, arch = prune_channels(model, scores, input_size, round_to=cfg.round_to, **target)
        return pruned, {**arch, "round_to": cfg.round_to, "round_to_from": "given"}
    width = vector_width()
    while True:
        try:
            pruned, arch = prune_channels(
                model, scores, input_size, round_to=width if width > 1 else None, **target
            )
        except TargetUnreachableError:
            if width == 1:
                raise
            width //= 2  # the target needs finer widths than the vector lanes
            continue
        why = f"default: this CPU's float32 vector width {vector_width()}"
        if width < vector_width():
            why += f", halved to {width} to reach the MACs target"
        return pruned, {**arch, "round_to": width, "round_to_from": why}


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Any, batches: int) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics as the average over ``batches``."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or batches <= 0:
        return model
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    device = next(model.parameters()).device
    model.train()
    for x, _ in itertools.islice(loader, batches):  # no batch read past the last one used
        model(x.to(device))
    for m, mom in zip(norms, momenta):
        m.momentum = mom
    return model.eval()


def rebuild_pruned(model: nn.Module, arch: dict[str, Any]) -> nn.Module:
    """``leanvision.load``'s rebuild step for every channel-pruning method."""
    return replay(model, arch)
