"""``shot_im``: source-free adaptation by information maximisation, SHOT's IM loss.

Liang, Hu, Feng, "Do We Really Need to Access the Source Data? Source Hypothesis Transfer for
Unsupervised Domain Adaptation", ICML 2020 (arXiv 2002.08546): with the source classifier frozen,
the feature extractor is trained on the unlabelled target data to make each prediction confident
(the mean per-sample entropy, minimised) and the predictions diverse over the batch (the entropy
of the mean prediction, maximised). This is SHOT-IM, the paper's ablation without its
self-supervised pseudo-labels: the simple source-free baseline SFDA-DE is compared with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from leanvision.engine import StepContext
from leanvision.methods.common import FinetuneConfig
from leanvision.methods.config import check_real
from leanvision.methods.registry import register_method

from .common import FeatureHook, adapt

__all__ = ["IMConfig", "IMHook", "information_maximisation"]


def information_maximisation(logits: torch.Tensor, diversity_weight: float = 1.0) -> tuple:
    """(mean per-sample entropy, − entropy of the mean prediction) of (B, K) logits."""
    p = logits.float().softmax(1)
    entropy = -(p * torch.log(p + 1e-5)).sum(1).mean()
    mean = p.mean(0)
    return entropy, diversity_weight * (mean * torch.log(mean + 1e-5)).sum()


class IMHook(FeatureHook):
    """Adds ``ctx.losses`` ``"entropy"`` and ``"diversity"`` (the target labels unused)."""

    name = "shot_im"

    def __init__(self, diversity_weight: float = 1.0) -> None:
        super().__init__()
        self.diversity_weight = diversity_weight

    def on_loss(self, trainer: Any, ctx: StepContext) -> None:
        super().on_loss(trainer, ctx)
        ent, div = information_maximisation(ctx.logits, self.diversity_weight)
        ctx.losses["entropy"], ctx.losses["diversity"] = ent, div


@dataclass
class IMConfig(FinetuneConfig):
    """SHOT-IM: ``diversity_weight`` of the diversity term (SHOT: 1); the fine-tuning options
    (SHOT: SGD, lr 0.01 for the feature extractor)."""

    diversity_weight: float = 1.0
    finetune_epochs: int = 10
    lr: float = 0.01

    def validate(self) -> None:
        """The fine-tuning checks; ``diversity_weight`` ≥ 0."""
        super().validate()
        check_real("diversity_weight", self.diversity_weight, 0.0)


@register_method(
    "shot_im",
    family="adaptation",
    paper="Liang et al. (SHOT), ICML 2020, arXiv 2002.08546",
    config=IMConfig,
)
def apply_shot_im(model: nn.Module, data: Any, cfg: IMConfig) -> nn.Module:
    """Adapt a source model to unlabelled target data by information maximisation."""
    return adapt(model, data, cfg, IMHook(cfg.diversity_weight), "shot_im")
