"""AdderNet: replace the inner convolutions of a CNN with adder layers (Chen et al., CVPR 2020,
arXiv 1912.13200).

Every convolution but the stem becomes a :class:`~leanvision.layers.AdderConv2d` followed by
batch norm (a BN is added where the convolution had none); the classifier stays real, as in the
official ResNet-20 (whose classifier is a real 1×1 conv + BN; ours keeps the model's Linear).
Adder layers start from N(0, 1) weights, so the network is trained again: the paper trains from
scratch with SGD (lr 0.1, cosine) and the adaptive learning rate of §3.3, which rescales each
adder layer's weight gradient to ``η·√k·g/‖g‖₂`` (k = its number of weights, η = 0.2):
:class:`AdderLRHook`.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from leanvision.engine.hooks import Hook
from leanvision.errors import UnsupportedModelError
from leanvision.layers.adder import AdderConv2d
from leanvision.methods.common import FinetuneConfig, finetune
from leanvision.methods.config import check_real
from leanvision.methods.ghost import _first_conv_name, _set_module
from leanvision.methods.registry import record_transform, register_method

__all__ = ["AdderConfig", "AdderLRHook", "adderize"]

log = logging.getLogger(__name__)


@dataclass
class AdderConfig(FinetuneConfig):
    """AdderNet hyper-parameters (paper: η = 0.2, SGD lr 0.1 with cosine decay, wd 5e-4)."""

    eta: float = 0.2
    keep_first: bool = True
    exclude: list[str] = field(default_factory=list)
    lr: float = 0.1

    def validate(self) -> None:
        """The fine-tuning checks; η > 0."""
        super().validate()
        check_real("eta", self.eta, 0.0, lo_open=True)


class AdderLRHook(Hook):
    """AdderNet's adaptive learning rate (§3.3): before each optimizer step, every adder
    layer's weight gradient g becomes ``η·√k·g / ‖g‖₂`` (k = number of weights)."""

    name = "adder_lr"

    def __init__(self, model: nn.Module, eta: float = 0.2) -> None:
        self.eta = float(eta)
        self.layers = [m for m in model.modules() if isinstance(m, AdderConv2d)]

    def before_optimizer_step(self, trainer: Any) -> None:
        rescale_adder_grads(self.layers, self.eta)


def rescale_adder_grads(layers: list[AdderConv2d], eta: float = 0.2) -> None:
    """Apply the adaptive learning rate to the layers' current weight gradients."""
    with torch.no_grad():
        for m in layers:
            g = m.weight.grad
            if g is not None:
                g.mul_(eta * math.sqrt(g.numel()) / g.norm().clamp_min(1e-12))


def _convs_with_bn(model: nn.Module) -> set[str] | None:
    """Names of the convolutions whose output goes straight (only) into a BatchNorm2d, or None
    when torch.fx cannot trace the model."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - untraceable: the caller assumes BN follows
        return None
    mods = dict(gm.named_modules())
    out = set()
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(mods.get(node.target), nn.Conv2d):
            users = list(node.users)
            if (
                len(users) == 1
                and users[0].op == "call_module"
                and isinstance(mods.get(users[0].target), nn.BatchNorm2d)
            ):
                out.add(node.target)
    return out


def adderize(
    model: nn.Module,
    keep_first: bool = True,
    exclude: list[str] | None = None,
    add_bn: list[str] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` with its convolutions (all but the stem and ``exclude``) replaced by
    adder layers, each followed by batch norm.

    Args:
        model: a CNN.
        keep_first: keep the stem convolution real.
        exclude: module names to keep real.
        add_bn: names of replaced convolutions that get a new BatchNorm2d after them; by default
            found with torch.fx (those not already feeding a BN; if fx cannot trace the model,
            none).

    Returns:
        (new model, the architecture record ``{"keep_first", "exclude", "add_bn"}``).

    Raises:
        UnsupportedModelError: a convolution an adder layer cannot stand in for (grouped,
            dilated, non-square, non-zero padding mode), naming it; or nothing to replace.
    """
    exclude_set = set(exclude or [])
    skip = {_first_conv_name(model)} if keep_first else set()
    targets = []
    for name, m in model.named_modules():
        if name in exclude_set or name in skip or not isinstance(m, nn.Conv2d):
            continue
        try:
            AdderConv2d.from_conv(m)
        except Exception as exc:
            raise UnsupportedModelError(
                f"adder: layer {name!r} ({m}) cannot become an adder layer ({exc}); pass "
                f"exclude=[{name!r}] to keep it real"
            ) from exc
        targets.append(name)
    if not targets:
        raise UnsupportedModelError(
            f"adder: {type(model).__name__} has no convolution to replace (the stem is kept)"
        )
    if add_bn is None:
        with_bn = _convs_with_bn(model)
        if with_bn is None:
            log.warning("adder: torch.fx cannot trace %s; assuming every conv feeds a BN",
                        type(model).__name__)  # fmt: skip
            add_bn = []
        else:
            add_bn = [n for n in targets if n not in with_bn]
    new = copy.deepcopy(model)
    for name in targets:
        conv = new.get_submodule(name)
        layer = AdderConv2d.from_conv(conv).to(dtype=conv.weight.dtype)
        if name in add_bn:
            layer = nn.Sequential(layer, nn.BatchNorm2d(conv.out_channels).to(conv.weight.device))
        _set_module(new, name, layer)
    arch = {"keep_first": keep_first, "exclude": sorted(exclude_set), "add_bn": list(add_bn)}
    return new, arch


def _rebuild(model: nn.Module, arch: dict[str, Any]) -> nn.Module:
    return adderize(model, **arch)[0]


@register_method(
    "adder",
    family="lowbit",
    paper="AdderNet, CVPR 2020, arXiv 1912.13200",
    config=AdderConfig,
    rebuild=_rebuild,
)
def apply_adder(model: nn.Module, data: Any, cfg: AdderConfig) -> nn.Module:
    """Turn inner convolutions into adder layers + BN, then train with the adaptive lr."""
    new, arch = adderize(model, keep_first=cfg.keep_first, exclude=list(cfg.exclude))
    record_transform(new, model, "adder", arch)
    finetune(new, data, cfg, [AdderLRHook(new, cfg.eta)], method="adder")
    return new.eval()
