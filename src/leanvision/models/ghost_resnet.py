"""Ghost-ResNet-50: ResNet-50 with every convolution of its residual stages as a Ghost module.

GhostNet: More Features from Cheap Operations, Han et al., CVPR 2020 (arXiv 1911.11907), §4.1
(Table 7); official code: ``huawei-noah/Efficient-AI-Backbones``,
``ghostnet_pytorch/ghost_resnet.py``.

A Ghost module (:class:`leanvision.layers.GhostConv2d`) computes ``ceil(n/s)`` intrinsic maps
with the original convolution's kernel and stride, and derives the other maps from them with a
cheap ``d×d`` depthwise convolution, so it costs about ``1/s`` of the convolution it replaces.
As in the official code, the three convolutions of every bottleneck (1×1, 3×3 with the
stride, 1×1) and the 1×1 projection of every down-sampling shortcut are Ghost modules; the 7×7
stem convolution and the classifier stay as they are. ``s`` (ratio) and ``d`` (cheap kernel)
are keyword arguments (paper defaults ``s=2, d=3``; the official file's default is ``s=4``).

The network is timm's ``ResNet`` (conv-BN-ReLU ordering, BN after every conv, the timm
interface and feature machinery) with those convolutions swapped. Differences from the
official file, none of which change the architecture's compute:

- The official bottlenecks have no BatchNorm (conv → ReLU only) and its Ghost convolutions
  carry biases; here every Ghost module keeps the BN that follows the convolution it replaces
  and has no bias (the ResNet-50 the paper starts from; BN-free, a 50-layer network is hard to
  train).
- The official ``GhostModule`` also allocates a second copy of its weights plus two BatchNorms
  that ``forward`` never uses (11.9M dead parameters at ``s=2``); they are not reproduced.

Measured at 224×224 (MACs; FLOPs = 2 × MACs), ours vs the official configuration [C]:

====  ============  ====================================  ===========
s     ours params   official params (live / with unused)  MACs (both)
====  ============  ====================================  ===========
2     13.95M        13.93M / 25.82M                       2.151G
3     10.11M        10.09M / 18.14M                       1.516G
4     8.15M         8.13M / 14.22M                        1.182G
====  ============  ====================================  ===========

MACs are identical; parameters differ by the BN affine terms minus the official conv biases
(+0.19% at s=2). The paper reports 13.0M parameters and 2.2B FLOPs for s=2 [M]; timm's
ResNet-50 has 25.56M parameters and 4.09 GMACs.

Small inputs (CIFAR, 32x32): the ImageNet stem (7×7 stride-2 conv, 3×3 stride-2 max-pool)
reduces a 32×32 image to 8×8 before the first stage and to 1×1 after the last. When the
shorter side of ``img_size`` is below 64 (unless ``small_stem`` is given) the stem is a 3×3
stride-1 conv and there is no max-pool, as in the usual CIFAR ResNets: the stages then run on
32, 16, 8 and 4 pixels and the total reduction is 8 instead of 32.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import Bottleneck, ResNet
from torch import nn

from leanvision.layers.ghost import GhostConv2d

from ._device import DeviceLike, build_on

__all__ = ["GhostResNet", "ghost_conv_like"]


def ghost_conv_like(conv: nn.Conv2d, s: int, d: int) -> GhostConv2d:
    """A Ghost module with ``conv``'s channels, kernel, stride, padding and dilation.

    Raises:
        ValueError: ``conv`` is grouped (a Ghost module replaces dense convolutions only).
    """
    if conv.groups != 1:
        raise ValueError(f"Ghost modules replace dense convolutions, got groups={conv.groups}")
    return GhostConv2d.like(conv, ratio=s, dw_size=d)


class GhostResNet(ResNet):
    """timm's ResNet with Ghost modules in place of the residual stages' convolutions.

    Args:
        layers: bottleneck blocks per stage ((3, 4, 6, 3) for ResNet-50).
        s: Ghost ratio, outputs per intrinsic map (cost ≈ 1/s of a convolution).
        d: kernel of the cheap depthwise convolution.
        img_size: input size the model is built for; picks the stem (see ``small_stem``).
        small_stem: 3×3 stride-1 stem conv and no max-pool (for CIFAR-sized inputs); default:
            when the shorter side of ``img_size`` is below 64.
        device, dtype: where and in what floating dtype the parameters are created.
        **kwargs: ``timm.models.resnet.ResNet`` arguments (``num_classes``, ``in_chans``,
            ``drop_rate``, ``drop_path_rate``, ``zero_init_last``, ...).
    """

    def __init__(
        self,
        layers: tuple[int, ...] = (3, 4, 6, 3),
        s: int = 2,
        d: int = 3,
        img_size: int | tuple[int, int] = 224,
        small_stem: bool | None = None,
        device: DeviceLike = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        dd = dict(device=device, dtype=dtype)
        super().__init__(block=Bottleneck, layers=layers, **dd, **kwargs)
        self.s, self.d = s, d
        img_size = to_2tuple(img_size)
        self.small_stem = min(img_size) < 64 if small_stem is None else small_stem
        with build_on(**dd):
            if self.small_stem:
                # ImageNet's stride-4 stem would leave a 1×1 map after the last stage at 32×32.
                self.conv1 = nn.Conv2d(self.in_chans, self.conv1.out_channels, 3, 1, 1, bias=False)
                self.maxpool = nn.Identity()
                for info in self.feature_info:
                    info["reduction"] //= 4 if info["module"] != "act1" else 2
            # The official Ghost-ResNet swaps exactly these: the 3 convs of every bottleneck and
            # the projection shortcut's 1×1 conv (timm's make_blocks builds them as nn.Conv2d).
            for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
                for block in stage:
                    for name in ("conv1", "conv2", "conv3"):
                        setattr(block, name, ghost_conv_like(getattr(block, name), s, d))
                    if block.downsample is not None:
                        block.downsample[0] = ghost_conv_like(block.downsample[0], s, d)
        self.init_weights(zero_init_last=kwargs.get("zero_init_last", True))


def _create_ghost_resnet(variant: str, pretrained: bool = False, **kwargs: Any) -> GhostResNet:
    # The stem depends on the input size: record the size in pretrained_cfg.
    img_size = to_2tuple(kwargs.pop("img_size", None) or 224)
    kwargs["img_size"] = tuple(img_size)
    in_chans = kwargs.get("in_chans", 3)
    small = kwargs.get("small_stem")
    small = min(img_size) < 64 if small is None else small
    reduction = 8 if small else 32
    overlay = dict(
        input_size=(in_chans, *img_size),
        pool_size=tuple(max(1, -(-s // reduction)) for s in img_size),
    )
    overlay.update(kwargs.pop("pretrained_cfg_overlay", None) or {})
    return build_model_with_cfg(
        GhostResNet, variant, pretrained, pretrained_cfg_overlay=overlay, **kwargs
    )


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        "paper_ids": "arXiv:1911.11907",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"ghost_resnet50": _cfg()})


@register_model
def ghost_resnet50(pretrained: bool = False, **kwargs: Any) -> GhostResNet:
    """Ghost-ResNet-50 (s=2, d=3 by default): 13.95M params, 2.151 GMACs at 224."""
    args = dict(layers=(3, 4, 6, 3), s=2, d=3)
    return _create_ghost_resnet("ghost_resnet50", pretrained, **{**args, **kwargs})
