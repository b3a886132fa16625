"""Weight-sharing supernets: single-path uniform sampling, BN recalibration, candidate scoring.

Single-path one-shot NAS (Guo et al., ECCV 2020, arXiv 1904.00420): the supernet holds every
member of a space; each training step activates one member drawn uniformly
(:class:`UniformPathHook`, trained by the one trainer), so every operator trains about equally
and a member's accuracy with the shared weights ranks it. Batch-norm statistics belong to the
path that collected them, so a member is scored after its statistics are recomputed on a few
training batches (:func:`recalibrate_bn`, as the paper does).
"""

from __future__ import annotations

import random
from typing import Any

import torch
from torch import nn

from leanvision.engine import Hook, StepContext, evaluate, model_device
from leanvision.engine.trainer import resolve_task
from leanvision.errors import ConfigError
from leanvision.search.space import SearchSpace
from leanvision.tasks import move_to

__all__ = ["UniformPathHook", "member_outputs", "recalibrate_bn", "score_member"]


class UniformPathHook(Hook):
    """Before every training step, activate a member drawn uniformly from ``space`` (its own
    seeded generator: a resumed run draws the same sequence). ``fixed``: choices held at one
    value; ``members``: draw from these samples only (a cluster of the space);
    ``archs_per_step`` > 1: that many members share each batch, one part each (ViT-ResNAS's
    multi-architecture sampling; the space's supernet must support it)."""

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        fixed: dict[str, Any] | None = None,
        members: list[dict[str, Any]] | None = None,
        archs_per_step: int = 1,
    ) -> None:
        self.space, self.rng = space, random.Random(seed)
        if not isinstance(archs_per_step, int) or archs_per_step < 1:
            raise ConfigError(f"archs_per_step must be an integer >= 1, got {archs_per_step!r}")
        if archs_per_step > 1 and not space.can_share_batches:
            raise ConfigError(
                f"archs_per_step={archs_per_step}: space {space.name!r}'s supernet runs one "
                "member per batch (use 1)"
            )
        self.archs_per_step = archs_per_step
        self.fixed = dict(fixed or {})  # choices held at one value (a stage of a search)
        if self.fixed:
            space.check({**space.sample(random.Random(0)), **self.fixed})
        self.members = [space.check(m) for m in members] if members is not None else None
        if self.members is not None and not self.members:
            raise ConfigError("UniformPathHook: members is empty")

    def before_forward(self, trainer: Any, ctx: StepContext) -> None:
        if not trainer.model.training:
            return
        samples = [self._draw() for _ in range(self.archs_per_step)]
        if self.archs_per_step == 1:
            self.space.activate(trainer.model, samples[0])
        else:
            self.space.activate_group(trainer.model, samples)

    def _draw(self) -> dict[str, Any]:
        if self.members is not None:
            return {**self.rng.choice(self.members), **self.fixed}
        return {**self.space.sample(self.rng), **self.fixed}

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "rng" in state:
            self.rng.setstate(_as_state(state["rng"]))


def _as_state(value: Any) -> Any:
    """random's state after a round trip through a checkpoint (lists back to tuples)."""
    if isinstance(value, list):
        return tuple(_as_state(v) for v in value)
    return value


@torch.no_grad()
def recalibrate_bn(model: nn.Module, loader: Any, batches: int, task: Any = None) -> None:
    """Recompute every batch norm's running statistics over ``batches`` training batches
    (a cumulative average, not a momentum one); the model is left in eval mode. ``task``
    splits a batch into inputs and targets (default: classification's ``(x, y)``); the
    batches go to the model's device."""
    device = model_device(model)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for i, batch in enumerate(loader):
            if i >= batches:
                break
            x = task.split_batch(batch)[0] if task is not None else batch[0]
            model(move_to(x, device))
    finally:
        for m, momentum in zip(norms, saved, strict=True):
            m.momentum = momentum
        model.eval()


def score_member(
    net: nn.Module, space: SearchSpace, sample: dict[str, Any], data: Any, bn_batches: int
) -> dict[str, float]:
    """The member's validation metrics with the supernet's weights (``val_<metric>``), after
    its batch-norm statistics are recalibrated."""
    task = resolve_task(None, data)
    space.activate(net, sample)
    recalibrate_bn(net, data.loader("train"), bn_batches, task)
    metrics = evaluate(net, data.loader("val"), task=task)
    return {f"val_{k}": v for k, v in metrics.items()}


@torch.no_grad()
def member_outputs(
    net: nn.Module, space: SearchSpace, sample: dict[str, Any], data: Any, probe: torch.Tensor,
    bn_batches: int,
) -> torch.Tensor:  # fmt: skip
    """The member's softmax outputs on a fixed probe batch, flattened, on the CPU: what it
    computes, as a vector (DC-NAS clusters members by it)."""
    space.activate(net, sample)
    recalibrate_bn(net, data.loader("train"), bn_batches, resolve_task(None, data))
    return torch.softmax(net(move_to(probe, model_device(net))), dim=-1).flatten().cpu()
