"""Channel and token pruning methods (they end in smaller, measured-faster models)."""

from . import dynamicvit, l1_filter, manidp, patch_slimming, scop
from .channels import ScoreImportance, mask_channels, prune_channels, replay
from .common import ChannelPruneConfig

__all__ = [
    "ChannelPruneConfig",
    "ScoreImportance",
    "dynamicvit",
    "l1_filter",
    "manidp",
    "mask_channels",
    "patch_slimming",
    "prune_channels",
    "replay",
    "scop",
]
