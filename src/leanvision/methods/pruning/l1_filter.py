"""``l1_filter``: ℓ1-norm filter pruning, the baseline of the channel-pruning methods.

Pruning Filters for Efficient ConvNets, Li et al., ICLR 2017 (arXiv 1608.08710): a filter's
importance is the ℓ1 norm of its weights; the smallest filters of each layer are removed
(with the channels coupled to them, through the dependency graph) and the network is
fine-tuned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from leanvision.methods.registry import register_method

from .common import ChannelPruneConfig, finish_channel_pruning, rebuild_pruned

__all__ = ["L1FilterConfig", "l1_scores"]


@dataclass
class L1FilterConfig(ChannelPruneConfig):
    """ℓ1-filter pruning: only the shared target and fine-tuning options."""


def l1_scores(model: nn.Module) -> dict[str, torch.Tensor]:
    """ℓ1 norm of every conv filter (grouped/depthwise convs included), by module name."""
    return {
        name: m.weight.detach().abs().flatten(1).sum(1)
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
    }


@register_method(
    "l1_filter",
    family="pruning",
    paper="Li et al., ICLR 2017, arXiv 1608.08710",
    config=L1FilterConfig,
    rebuild=rebuild_pruned,
)
def apply_l1_filter(model: nn.Module, data: Any, cfg: L1FilterConfig) -> nn.Module:
    """Remove the filters with the smallest ℓ1 norms, then fine-tune."""
    return finish_channel_pruning(model, data, cfg, l1_scores(model), "l1_filter")
