"""MobileNetV2-style networks for architecture search on small inputs (CIFAR): ``mbnas_cifar``.

The search space of :mod:`leanvision.search.spaces` (``mbv2_cifar``) picks, per block, an
inverted-residual operator (kernel 3/5/7, expansion 3/6, as in ProxylessNAS and single-path
NAS) or a skip, and per stage a width multiplier; the result is an ``arch``: a list of stages,
each a list of timm block strings (``"ir_r1_k5_s2_e6_c32"``). ``mbnas_cifar(arch=...)`` builds it
on timm's EfficientNet builder (no SE, ReLU6 like MobileNetV2) with a stride-1 3x3 stem, so a
32x32 input ends at 8x8 after the two stride-2 stages. ``arch=None`` builds the space's
largest member.

Every spec a search hands back is ``("mbnas_cifar", {"arch": ...})``: ``lv.create_model``
rebuilds it, ``lv.save``/``lv.load`` keep it, and it is measured like any other model.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import get_act_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._efficientnet_builder import decode_arch_def, resolve_bn_args
from torch import nn

from leanvision.errors import ConfigError
from leanvision.models.tinynet import TinyNet

__all__ = ["MBNAS_STAGES", "default_arch", "mbnas_cifar"]

# (channels, max blocks, first stride) of the searchable stages; a fixed depthwise-separable
# 16-channel block follows the stem, a 1x1 conv to HEAD_CHS ends the body.
MBNAS_STAGES: tuple[tuple[int, int, int], ...] = ((24, 2, 1), (32, 3, 2), (64, 3, 2), (96, 2, 1))
STEM_CHS, FIRST_CHS, HEAD_CHS = 16, 16, 256


def default_arch() -> list[list[str]]:
    """The largest member of the space: every block k7, e6, full width."""
    return [
        [f"ir_r1_k7_s{stride if i == 0 else 1}_e6_c{chs}" for i in range(n)]
        for chs, n, stride in MBNAS_STAGES
    ]


def _check_arch(arch: Any) -> list[list[str]]:
    if not isinstance(arch, (list, tuple)) or not arch:
        raise ConfigError(f"mbnas_cifar: arch must be a non-empty list of stages, got {arch!r}")
    out = []
    for i, stage in enumerate(arch):
        if not isinstance(stage, (list, tuple)) or not stage:
            raise ConfigError(f"mbnas_cifar: stage {i} must be a non-empty list of block strings")
        for block in stage:
            if not isinstance(block, str) or not block.startswith(("ir_", "ds_")):
                raise ConfigError(
                    f"mbnas_cifar: stage {i} block {block!r} is not a timm block string "
                    "('ir_r1_k3_s1_e6_c24')"
                )
        out.append(list(stage))
    return out


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (8, 8),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv_stem",
        "classifier": "classifier",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"mbnas_cifar": _cfg()})


@register_model
def mbnas_cifar(pretrained: bool = False, arch: Any = None, **kwargs: Any) -> TinyNet:
    """A MobileNetV2-style CIFAR network from a searched ``arch`` (see the module docstring)."""
    stages = _check_arch(default_arch() if arch is None else arch)
    bn = resolve_bn_args(kwargs)
    model_kwargs = dict(
        block_args=decode_arch_def([[f"ds_r1_k3_s1_c{FIRST_CHS}"], *stages]),
        num_features=HEAD_CHS,
        stem_size=STEM_CHS,
        fix_stem=True,
        act_layer=get_act_layer(kwargs.pop("act_layer", "relu6")),
        norm_layer=kwargs.pop("norm_layer", None) or partial(nn.BatchNorm2d, **bn),
        stem_stride=1,
        **kwargs,
    )
    return build_model_with_cfg(
        TinyNet,
        "mbnas_cifar",
        pretrained,
        # features at strides 1, 2 and 4: before each stride-2 stage and at the end
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2)),
        **model_kwargs,
    )
