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

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from leanvision.engine.hooks import Hook
from leanvision.layers.adder import AdderConv2d, adderize
from leanvision.layers.winograd_adder import WinogradAdderConv2d
from leanvision.methods.common import FinetuneConfig, finetune
from leanvision.methods.config import check_real
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
    layer's weight gradient g becomes ``η·√k·g / ‖g‖₂`` (k = number of weights); Winograd
    adder layers' too (their weight is the 3×3 filter)."""

    name = "adder_lr"

    def __init__(self, model: nn.Module, eta: float = 0.2) -> None:
        self.eta = float(eta)
        self.layers = [
            m for m in model.modules() if isinstance(m, (AdderConv2d, WinogradAdderConv2d))
        ]

    def before_optimizer_step(self, trainer: Any) -> None:
        rescale_adder_grads(self.layers, self.eta)


def rescale_adder_grads(layers: list[nn.Module], eta: float = 0.2) -> None:
    """Apply the adaptive learning rate to the layers' current weight gradients."""
    with torch.no_grad():
        for m in layers:
            g = m.weight.grad
            if g is not None:
                g.mul_(eta * math.sqrt(g.numel()) / g.norm().clamp_min(1e-12))


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
