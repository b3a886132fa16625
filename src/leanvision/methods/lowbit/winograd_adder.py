"""Winograd AdderNet (Li et al., ICML 2021, arXiv 2105.05530): AdderNet whose 3×3, stride-1
layers run on F(2×2, 3×3) Winograd tiles, trained with the ℓ2-to-ℓ1 strategy.

Every eligible convolution (3×3, stride 1; not the stem) becomes a
:class:`~leanvision.layers.WinogradAdderConv2d`, the others direct adder layers as ``adder``
does, each followed by batch norm; then the network trains with AdderNet's adaptive learning
rate and :class:`PScheduleHook`, which anneals the core's exponent p from 2 to 1.

Where ours departs from the paper (whose text past the abstract could not be read):

* the transforms are our derivation (``shared/reference/winograd-adder.md``), chosen by name:
  ``"balanced_a"`` (default), ``"balanced_b"``, ``"standard"``, or the non-exact
  ``"window_sum"``; the paper's own "optimal" matrices are unknown;
* the p schedule is ours: linear from 2 to 1, reaching 1 at ``p_reach`` of training (0.6 by
  default) and held there; ``"cosine"`` and ``"step"`` (2 until ``p_reach``, then 1) are the
  alternatives, ``"none"`` trains at p = 1 throughout. The paper ablates several schedules
  without (in what we could read) naming them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from leanvision.checks import check_choice, check_real
from leanvision.engine.hooks import Hook
from leanvision.layers.adder import AdderConv2d, adderize
from leanvision.layers.winograd_adder import TRANSFORMS, WinogradAdderConv2d, winograd_eligible
from leanvision.methods.common import finetune
from leanvision.methods.lowbit.adder import AdderConfig, AdderLRHook
from leanvision.methods.registry import record_transform, register_method

__all__ = ["P_SCHEDULES", "PScheduleHook", "WinogradAdderConfig", "p_at", "winograd_adderize"]

P_SCHEDULES = ("linear", "cosine", "step", "none")


def p_at(progress: float, schedule: str = "linear", reach: float = 0.6) -> float:
    """The exponent p at ``progress`` ∈ [0, 1] of training: from 2 down to 1 at ``reach``
    (a fraction of training), then 1; ``"none"``: always 1."""
    check_choice("p_schedule", schedule, P_SCHEDULES)
    if schedule == "none":
        return 1.0
    t = min(1.0, max(0.0, progress) / reach)
    if schedule == "linear":
        return 2.0 - t
    if schedule == "cosine":
        return 1.5 + 0.5 * math.cos(math.pi * t)
    return 2.0 if t < 1.0 else 1.0  # step


class PScheduleHook(Hook):
    """Sets every Winograd adder layer's p before each training step from the run's progress
    (optimizer steps done / steps the run will take, ``max_steps`` included), and p = 1 when
    training ends (inference always runs the ℓ1 layer)."""

    name = "p_schedule"

    def __init__(self, model: nn.Module, schedule: str = "linear", reach: float = 0.6) -> None:
        check_choice("p_schedule", schedule, P_SCHEDULES)
        check_real("p_reach", reach, 0.0, 1.0, lo_open=True)
        self.schedule, self.reach = schedule, float(reach)
        self.layers = [m for m in model.modules() if isinstance(m, WinogradAdderConv2d)]

    def _set(self, p: float) -> None:
        for m in self.layers:
            m.set_p(p)

    def before_forward(self, trainer: Any, ctx: Any) -> None:
        total = trainer.config.epochs * trainer.steps_per_epoch
        if trainer.config.max_steps is not None:
            total = min(total, trainer.config.max_steps)
        self._set(p_at(trainer.global_step / max(1, total), self.schedule, self.reach))

    def on_train_end(self, trainer: Any) -> None:
        self._set(1.0)


@dataclass
class WinogradAdderConfig(AdderConfig):
    """AdderNet's options plus the transform (see :data:`TRANSFORMS`) and the p schedule."""

    transform: str = "balanced_a"
    p_schedule: str = "linear"
    p_reach: float = 0.6

    def validate(self) -> None:
        """AdderNet's checks; a known transform and schedule; 0 < p_reach ≤ 1."""
        super().validate()
        check_choice("transform", self.transform, TRANSFORMS)
        check_choice("p_schedule", self.p_schedule, P_SCHEDULES)
        check_real("p_reach", self.p_reach, 0.0, 1.0, lo_open=True)


def winograd_adderize(
    model: nn.Module,
    transform: str = "balanced_a",
    keep_first: bool = True,
    exclude: list[str] | None = None,
    add_bn: list[str] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` whose 3×3 stride-1 convolutions (not the stem, not ``exclude``) are
    Winograd adder layers and whose other convolutions are direct adder layers, each followed
    by batch norm; returns it and its architecture record (``adderize``'s plus the
    transform)."""
    check_choice("transform", transform, TRANSFORMS)

    def make(conv: nn.Conv2d) -> nn.Module:
        if winograd_eligible(conv):
            return WinogradAdderConv2d.from_conv(conv, transform)
        return AdderConv2d.from_conv(conv)

    new, arch = adderize(model, keep_first, exclude, add_bn, make_layer=make)
    return new, {**arch, "transform": transform}


def _rebuild(model: nn.Module, arch: dict[str, Any]) -> nn.Module:
    return winograd_adderize(model, **arch)[0]


@register_method(
    "winograd_adder",
    family="lowbit",
    paper="Winograd Algorithm for AdderNet, ICML 2021, arXiv 2105.05530",
    config=WinogradAdderConfig,
    rebuild=_rebuild,
)
def apply_winograd_adder(model: nn.Module, data: Any, cfg: WinogradAdderConfig) -> nn.Module:
    """3×3 stride-1 convolutions → Winograd adder layers, the rest → adder layers (+ BN); then
    train with the adaptive learning rate and the ℓ2-to-ℓ1 schedule."""
    new, arch = winograd_adderize(
        model, cfg.transform, keep_first=cfg.keep_first, exclude=list(cfg.exclude)
    )
    record_transform(new, model, "winograd_adder", arch)
    hooks = [AdderLRHook(new, cfg.eta), PScheduleHook(new, cfg.p_schedule, cfg.p_reach)]
    finetune(new, data, cfg, hooks, method="winograd_adder")
    for m in new.modules():  # inference is the ℓ1 layer, trained or not
        if isinstance(m, WinogradAdderConv2d):
            m.set_p(1.0)
    return new.eval()
