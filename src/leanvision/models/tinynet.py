"""TinyNet: EfficientNet-B0 shrunk along resolution, depth and width (r, d, w).

Model Rubik's Cube: Twisting Resolution, Depth and Width for TinyNets, Han et al., NeurIPS 2020
(arXiv 2010.14819); official code: github.com/huawei-noah/Efficient-AI-Backbones,
``tinynet_pytorch/tinynet.py`` (the ``tinynet(r, w, d)`` builder) and ``eval.py`` (r/w/d of
TinyNet-A..E). timm ships the five published models as ``tinynet_a`` .. ``tinynet_e``.

A TinyNet is EfficientNet-B0 with three multipliers: the input side is ``int(224 * r)``, every
stage's block count is ``max(1, round(n * d))`` (``depth_trunc="round"``; EfficientNet's ``ceil``
would add a block to every stage as soon as d > 1), and every block's channels are
``round_channels(c * w)`` (multiples of 8), while the 32-channel stem is fixed and the head keeps
``max(1280, round_channels(1280 * w))`` channels. ``tinynet_custom(r=, d=, w=)`` builds exactly
that on timm's EfficientNet builder, so ``tinynet_custom(r=0.86, d=1.2, w=1.0)`` is timm's
``tinynet_a`` (same modules, parameters and MACs).

The paper's **tiny formula** (§3), which picks (r, d, w) for a FLOPs budget, and the exact MAC
count it solves against are a procedure over this architecture, not part of it: they live in
:mod:`leanvision.analysis.tinynet_scaling` (``lv.analysis.tiny_formula(c)`` returns the
``r, d, w`` this builder takes).

Small inputs (CIFAR, 32x32): with a stride-2 stem and four stride-2 stages B0 reduces by 32, so a
32x32 image would end as a 1x1 map. The small-input layout makes the stem stride 1 and the first
stride-2 stage (24 channels) stride 1, keeping the other three stride-2 stages: overall stride 8,
a 4x4 final map at 32x32 (2x2 at 16x16; the CIFAR ResNets end at 8x8). It is chosen when
``base_size <= 64`` or an explicit ``img_size <= 64`` (``small_input=`` overrides). Resolution
scaling then starts from the CIFAR base: ``create_model("tinynet_custom", r=0.7, base_size=32)``
takes ``int(32 * 0.7) = 22`` pixel inputs, so on CIFAR r shrinks the image as on ImageNet and the
formulas can be compared at equal MACs (``budget="macs"`` with ``base_size=32`` measures the
budget on this layout). ``img_size`` overrides ``int(base_size * r)``; the built size is recorded
in ``pretrained_cfg["input_size"]``.

Export: ``torch.export`` works (timm's EfficientNet has no data-dependent control flow).
"""

from __future__ import annotations

import math
import numbers
from functools import partial
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import create_conv2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._efficientnet_builder import (
    decode_arch_def,
    resolve_act_layer,
    resolve_bn_args,
    round_channels,
)
from timm.models.efficientnet import EfficientNet
from torch import nn

from leanvision.errors import ConfigError

__all__ = ["HEAD_CHS", "SMALL_INPUT_MAX", "STEM_CHS", "TinyNet", "arch_def", "resolve_input"]

# EfficientNet-B0 stages: block type, repeats, kernel, stride, expansion, channels, SE ratio.
_B0_ARCH = (
    "ds_r1_k3_s1_e1_c16_se0.25",
    "ir_r2_k3_s2_e6_c24_se0.25",
    "ir_r2_k5_s2_e6_c40_se0.25",
    "ir_r3_k3_s2_e6_c80_se0.25",
    "ir_r3_k5_s1_e6_c112_se0.25",
    "ir_r4_k5_s2_e6_c192_se0.25",
    "ir_r1_k3_s1_e6_c320_se0.25",
)
STEM_CHS = 32  # fixed (fix_stem=True), whatever w
HEAD_CHS = 1280  # the head is never narrower than B0's
SMALL_INPUT_MAX = 64  # inputs this small get the stride-8 layout


def arch_def(small_input: bool) -> list[list[str]]:
    """B0's arch strings; the small-input layout drops the 24-channel stage's down-sampling."""
    arch = list(_B0_ARCH)
    if small_input:
        arch[1] = arch[1].replace("_s2_", "_s1_")
    return [[s] for s in arch]


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_positive_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def check_multipliers(r: float, d: float, w: float) -> None:
    """Raise ``ConfigError`` unless r, d and w are finite numbers > 0."""
    for name, value in (("r", r), ("d", d), ("w", w)):
        if not (_is_real(value) and math.isfinite(value) and value > 0):
            raise ConfigError(
                f"TinyNet multiplier {name} must be a finite number > 0, got {value!r}"
            )


def resolve_input(
    r: float, base_size: int, img_size: int | None, small_input: bool | None
) -> tuple[int, bool]:
    """(input side, small-input layout?) from r, the base resolution and the overrides."""
    if not _is_positive_int(base_size):
        raise ConfigError(f"TinyNet base_size must be a positive int, got {base_size!r}")
    if img_size is not None and not _is_positive_int(img_size):
        raise ConfigError(f"TinyNet img_size must be a positive int, got {img_size!r}")
    size = img_size if img_size is not None else int(base_size * r)  # official: int(224 * r)
    if size < 1:
        raise ConfigError(
            f"TinyNet input side int({base_size} * r={r}) = {size}; use a larger r or base_size"
        )
    if small_input is None:
        small_input = base_size <= SMALL_INPUT_MAX or (
            img_size is not None and img_size <= SMALL_INPUT_MAX
        )
    return size, bool(small_input)


class TinyNet(EfficientNet):
    """timm's EfficientNet with a choice of stem stride (1 for small inputs).

    Args:
        block_args: decoded stage definitions (``decode_arch_def``).
        stem_stride: 2 (ImageNet) or 1 (small-input layout).
        output_stride: overall stride wanted (strides beyond it become dilations).
        **kwargs: the other :class:`timm.models.efficientnet.EfficientNet` arguments.
    """

    def __init__(
        self,
        block_args: list[list[dict[str, Any]]],
        stem_stride: int = 2,
        output_stride: int = 32,
        **kwargs: Any,
    ) -> None:
        if stem_stride not in (1, 2):
            raise ConfigError(f"TinyNet stem_stride must be 1 or 2, got {stem_stride!r}")
        # timm's builder counts strides from an assumed stride-2 stem; hand it the equivalent.
        super().__init__(block_args, output_stride=output_stride * 2 // stem_stride, **kwargs)
        self.stem_stride = stem_stride
        if stem_stride == 1:
            old = self.conv_stem
            self.conv_stem = create_conv2d(
                old.in_channels,
                old.out_channels,
                old.kernel_size[0],
                stride=1,
                padding=kwargs.get("pad_type", ""),
                device=old.weight.device,
                dtype=old.weight.dtype,
            )
            self.conv_stem.weight = old.weight  # same shape and fan-out: keep timm's init
            for info in self.feature_info:
                info["reduction"] //= 2


def _create_tinynet(
    variant: str,
    pretrained: bool = False,
    *,
    r: float = 1.0,
    d: float = 1.0,
    w: float = 1.0,
    base_size: int = 224,
    img_size: int | None = None,
    small_input: bool | None = None,
    **kwargs: Any,
) -> TinyNet:
    check_multipliers(r, d, w)
    size, small = resolve_input(r, base_size, img_size, small_input)
    pool = math.ceil(size / (8 if small else 32))  # padded stride-2 convs round up
    overlay: dict[str, Any] = {
        "input_size": (kwargs.get("in_chans", 3), size, size),
        "pool_size": (pool, pool),
    }
    if small:
        overlay["crop_pct"] = 1.0
    overlay.update(kwargs.pop("pretrained_cfg_overlay", None) or {})
    model_kwargs = dict(
        block_args=decode_arch_def(arch_def(small), d, depth_trunc="round"),
        num_features=max(HEAD_CHS, round_channels(HEAD_CHS, w, 8, None)),
        stem_size=STEM_CHS,
        fix_stem=True,
        round_chs_fn=partial(round_channels, multiplier=w),
        act_layer=resolve_act_layer(kwargs, "swish"),
        norm_layer=kwargs.pop("norm_layer", None)
        or partial(nn.BatchNorm2d, **resolve_bn_args(kwargs)),
        stem_stride=1 if small else 2,
        **kwargs,
    )
    return build_model_with_cfg(
        TinyNet,
        variant,
        pretrained,
        pretrained_cfg_overlay=overlay,
        # Stage ends: 5 in the ImageNet layout, 4 when the 24-channel stage keeps the resolution.
        feature_cfg=dict(flatten_sequential=True, out_indices=tuple(range(4 if small else 5))),
        **model_kwargs,
    )


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv_stem",
        "classifier": "classifier",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"tinynet_custom": _cfg()})


@register_model
def tinynet_custom(
    pretrained: bool = False,
    r: float = 1.0,
    d: float = 1.0,
    w: float = 1.0,
    base_size: int = 224,
    **kwargs: Any,
) -> TinyNet:
    """TinyNet with resolution / depth / width multipliers of EfficientNet-B0.

    Input side ``int(base_size * r)`` (``img_size=`` overrides). ``r=d=w=1`` is EfficientNet-B0
    (385.8 M MACs at 224); ``r=0.86, d=1.2, w=1.0`` is TinyNet-A; ``base_size=32`` gives the
    small-input (CIFAR) layout.
    """
    return _create_tinynet(
        "tinynet_custom", pretrained, r=r, d=d, w=w, base_size=base_size, **kwargs
    )
