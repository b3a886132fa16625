"""CIFAR ResNets (ResNet-20/32/56/110), the baselines of the CIFAR experiments in the papers.

Deep Residual Learning for Image Recognition, He et al., CVPR 2016 (arXiv 1512.03385), §4.2:
a 3×3 stem, three stages of ``n`` basic blocks at 16/32/64 channels (×``width``), global
average pooling and a linear classifier; depth = 6n + 2. The down-sampling shortcut is a 1×1
convolution + BN (the paper's "option B"), which keeps every channel removable by pruning; the
paper's parameter-free "option A" shortcut is available with ``shortcut="pad"``.
"""

# No `from __future__ import annotations`: torch.fx copies forward's annotations into the code
# it generates, where TorchScript cannot resolve them as strings.
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, register_model
from torch import nn

from leanvision.layers.adder import adderize

from ._device import DeviceLike, build_on, device_dtype

__all__ = ["ResNetCifar", "BasicBlockCifar"]


class PadShortcut(nn.Module):
    """Option-A shortcut: stride-2 subsampling and zero channel padding (no parameters)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.stride, self.extra = stride, out_chs - in_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class BasicBlockCifar(nn.Module):
    """Two 3×3 conv-BN layers with a residual connection."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, shortcut: str = "conv") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_chs != out_chs:
            if shortcut == "pad":
                self.downsample = PadShortcut(in_chs, out_chs, stride)
            else:
                self.downsample = nn.Sequential(
                    nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), nn.BatchNorm2d(out_chs)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act2(x + shortcut)


class ResNetCifar(nn.Module):
    """ResNet for 32×32 inputs, with timm's model interface.

    Args:
        depth: 6n + 2 (20, 32, 44, 56, 110, ...).
        num_classes: classifier outputs (0 for none).
        in_chans: input channels (1 for MNIST-like data).
        width: channel multiplier applied to the 16/32/64 stage widths.
        shortcut: ``"conv"`` (1×1 conv + BN projection) or ``"pad"`` (option A).
        drop_rate: dropout before the classifier.
        global_pool: timm pool type before the classifier (``"avg"``; ``""``: none, the
            model then returns the feature map when ``num_classes=0``).
        device, dtype: where and in what floating dtype the parameters are created.
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_chans: int = 3,
        width: float = 1.0,
        shortcut: str = "conv",
        drop_rate: float = 0.0,
        global_pool: str = "avg",
        device: DeviceLike = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"ResNetCifar depth must be 6n+2 (20, 32, 56, 110, ...), got {depth}")
        if shortcut not in ("conv", "pad"):
            raise ValueError(f"shortcut must be 'conv' or 'pad', got {shortcut!r}")
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        with build_on(device, dtype):
            n = (depth - 2) // 6
            widths = [max(1, round(c * width)) for c in (16, 32, 64)]
            self.num_classes, self.drop_rate, self.in_chans = num_classes, drop_rate, in_chans
            self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(widths[0])
            self.act1 = nn.ReLU(inplace=True)
            stages, in_chs = [], widths[0]
            self.feature_info = []
            for i, out_chs in enumerate(widths):
                blocks = []
                for j in range(n):
                    stride = 2 if (i > 0 and j == 0) else 1
                    blocks.append(BasicBlockCifar(in_chs, out_chs, stride, shortcut))
                    in_chs = out_chs
                stages.append(nn.Sequential(*blocks))
                self.feature_info.append(
                    dict(num_chs=out_chs, reduction=2**i, module=f"layer{i + 1}")
                )
            self.layer1, self.layer2, self.layer3 = stages
            self.num_features = in_chs
            self._make_head(num_classes, global_pool)
            self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, a=5**0.5)
                nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def _make_head(self, num_classes: int, global_pool: str) -> None:
        self.num_classes = num_classes
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.fc = (
            nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        )

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier (and pooling, if given) on the model's device, dtype and mode."""
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        with build_on(**device_dtype(self)):
            self._make_head(num_classes, global_pool)
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, num_features, H/4, W/4)."""
        x = self.act1(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: object) -> dict:
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (8, 8),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2470, 0.2435, 0.2616),
        "first_conv": "conv1",
        "classifier": "fc",
        **kwargs,
    }


default_cfgs = {f"resnet{d}_cifar": _cfg() for d in (8, 14, 20, 32, 44, 56, 110)}
default_cfgs["resnet20_adder"] = _cfg(paper_ids="arXiv:1912.13200")


def _adder_resnet_cifar(
    depth: int = 20, device: DeviceLike = None, dtype: torch.dtype | None = None, **kwargs: object
) -> ResNetCifar:
    """A CIFAR ResNet whose convolutions, all but the stem, are adder layers (+ BN)."""
    model = ResNetCifar(depth, device=device, dtype=dtype, **kwargs)
    with build_on(device, dtype):
        return adderize(model)[0]


def _create(
    variant: str, depth: int, pretrained: bool = False, adder: bool = False, **kwargs: object
) -> ResNetCifar:
    kwargs.setdefault("num_classes", 10)
    return build_model_with_cfg(
        partial(_adder_resnet_cifar if adder else ResNetCifar, depth=depth),
        variant,
        pretrained,
        feature_cfg=dict(out_indices=(0, 1, 2)),  # three stages: outputs at strides 1, 2, 4
        **kwargs,
    )


@register_model
def resnet8_cifar(pretrained: bool = False, **kwargs: object) -> ResNetCifar:
    """ResNet-8 for CIFAR (one block per stage): a depth-reduced student."""
    return _create("resnet8_cifar", 8, pretrained, **kwargs)


@register_model
def resnet14_cifar(pretrained: bool = False, **kwargs: object) -> ResNetCifar:
    """ResNet-14 for CIFAR (two blocks per stage)."""
    return _create("resnet14_cifar", 14, pretrained, **kwargs)


@register_model
def resnet20_cifar(pretrained: bool = False, **kwargs: object) -> ResNetCifar:
    """ResNet-20 for CIFAR (0.27 M params with option-B shortcuts, 41 MMACs)."""
    return _create("resnet20_cifar", 20, pretrained, **kwargs)


@register_model
def resnet32_cifar(pretrained: bool = False, **kwargs: object) -> ResNetCifar:
    """ResNet-32 for CIFAR."""
    return _create("resnet32_cifar", 32, pretrained, **kwargs)


@register_model
def resnet44_cifar(pretrained: bool = False, **kwargs: object) -> ResNetCifar:
    """ResNet-44 for CIFAR."""
    return _create("resnet44_cifar", 44, pretrained, **kwargs)


@register_model
def resnet56_cifar(pretrained: bool = False, **kwargs: object) -> ResNetCifar:
    """ResNet-56 for CIFAR (125 MMACs)."""
    return _create("resnet56_cifar", 56, pretrained, **kwargs)


@register_model
def resnet110_cifar(pretrained: bool = False, **kwargs: object) -> ResNetCifar:
    """ResNet-110 for CIFAR."""
    return _create("resnet110_cifar", 110, pretrained, **kwargs)


@register_model
def resnet20_adder(pretrained: bool = False, **kwargs: object) -> ResNetCifar:
    """ResNet-20 AdderNet (Chen et al., CVPR 2020): every conv but the stem is an adder layer
    (3×3 blocks and 1×1 shortcuts, each followed by BN); the stem and the classifier stay real.
    Train it with :class:`leanvision.methods.lowbit.AdderLRHook` (the adaptive learning rate).

    TorchScript cannot compile it: the adder layer is an ``autograd.Function`` with AdderNet's
    own gradients and a native kernel. torch.fx keeps the adder layer as a leaf."""
    return _create("resnet20_adder", 20, pretrained, adder=True, **kwargs)
