"""Distillation methods: logit KD, the DeiT distillation token, manifold KD, FitNets hints,
DeFeat for detectors."""

from .defeat import DeFeatConfig, DeFeatHook
from .feature_kd import FeatureKDConfig, FeatureKDHook, build_adapters
from .kd import DeiTConfig, KDConfig, KDHook, TeacherHook, kd_loss
from .manifold import manifold_loss, manifold_terms
from .manifold_kd import ManifoldKDConfig, ManifoldKDHook
from .pairing import block_names, default_pairs, pair_layers
from .tokens import align_tokens, as_tokens

__all__ = [
    "DeFeatConfig",
    "DeFeatHook",
    "DeiTConfig",
    "FeatureKDConfig",
    "FeatureKDHook",
    "KDConfig",
    "KDHook",
    "ManifoldKDConfig",
    "ManifoldKDHook",
    "TeacherHook",
    "align_tokens",
    "as_tokens",
    "block_names",
    "build_adapters",
    "default_pairs",
    "kd_loss",
    "manifold_loss",
    "manifold_terms",
    "pair_layers",
]
