"""EDSR and searchable super-resolution generators: ``edsr_baseline``, ``edsr_cpu``,
``srnet_custom``.

Enhanced Deep Residual Networks for Single Image Super-Resolution, Lim, Son, Kim, Nah and Lee,
CVPR workshops 2017 (arXiv 1707.02921); official code: https://github.com/sanghyun-son/EDSR-PyTorch
(``src/model/edsr.py``, ``common.py``).

An SR network maps an LR image (B, 3, h, w) in [0, 1] to its SR image (B, 3, h·s, w·s):
the DIV2K mean is subtracted, a 3x3 conv (the head) makes ``width`` feature maps, a body of
residual blocks and a 3x3 conv is added to them (the global skip), and the tail upsamples by
sub-pixel convolution (a 3x3 conv to s²·width channels and a pixel shuffle; x4 is two x2 steps)
and a 3x3 conv returns to RGB; the mean is added back. EDSR's block is
``x + res_scale * conv(relu(conv(x)))`` with no batch norm.

Searchable variants (``srnet_custom(arch=...)``, the generator space of
:mod:`leanvision.search.spaces`): ``arch = {"width": W, "blocks": [[op, mid], ...]}``, each block
an operator with its inner width ``mid``:

* ``"conv"``: EDSR's block, 3x3 conv W->mid, ReLU, 3x3 conv mid->W;
* ``"dsc"``: depthwise-separable, 3x3 depthwise + 1x1 W->mid, ReLU, 3x3 depthwise + 1x1 mid->W;
* ``"ir"``: inverted residual, 1x1 W->mid, ReLU, 3x3 depthwise, ReLU, 1x1 mid->W.

These are image-to-image models: they have no classifier (``num_classes`` is 0, and
``reset_classifier`` refuses a class count); ``forward_features`` returns the body's feature map
(B, W, h, w) and ``forward_head`` the SR image. ``pretrained_cfg["input_size"]`` is an LR input
of 64x64 (what ``lv.profile`` counts by default; pass ``input_size`` for another).
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from leanvision.errors import ConfigError

from ._device import DeviceLike, build_on

__all__ = ["OPS", "SRNet", "check_sr_arch", "edsr_arch"]

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)  # EDSR's rgb_mean (DIV2K), images in [0, 1]
OPS = ("conv", "dsc", "ir")
SCALES = (2, 3, 4)


def edsr_arch(n_blocks: int, width: int) -> dict[str, Any]:
    """EDSR's architecture: ``n_blocks`` conv blocks at ``width``."""
    return {"width": width, "blocks": [["conv", width] for _ in range(n_blocks)]}


def check_sr_arch(arch: Any) -> dict[str, Any]:
    """``arch`` as ``{"width": int, "blocks": [[op, mid], ...]}`` after checking it.

    Raises:
        ConfigError: a missing or unknown key, a width < 1, an unknown operator.
    """
    if not isinstance(arch, dict) or set(arch) != {"width", "blocks"}:
        raise ConfigError(f"an SR arch is {{'width': W, 'blocks': [[op, mid], ...]}}, got {arch!r}")
    width, blocks = arch["width"], arch["blocks"]
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ConfigError(f"SR arch width must be an int >= 1, got {width!r}")
    if not isinstance(blocks, (list, tuple)):
        raise ConfigError(f"SR arch blocks must be a list of [op, mid], got {blocks!r}")
    out = []
    for i, block in enumerate(blocks):
        if not isinstance(block, (list, tuple)) or len(block) != 2:
            raise ConfigError(f"SR arch block {i} must be [op, mid], got {block!r}")
        op, mid = block
        if op not in OPS:
            raise ConfigError(f"SR arch block {i}: op {op!r} is not allowed; allowed: {list(OPS)}")
        if isinstance(mid, bool) or not isinstance(mid, int) or mid < 1:
            raise ConfigError(f"SR arch block {i}: mid must be an int >= 1, got {mid!r}")
        out.append([op, mid])
    return {"width": width, "blocks": out}


def _conv(cin: int, cout: int, k: int = 3, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups)


class ResBlock(nn.Module):
    """``x + res_scale * f(x)`` with ``f`` one of :data:`OPS` (see the module docstring)."""

    def __init__(self, width: int, op: str = "conv", mid: int | None = None,
                 res_scale: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        mid = width if mid is None else mid
        relu = nn.ReLU(inplace=True)
        if op == "conv":
            self.body = nn.Sequential(_conv(width, mid), relu, _conv(mid, width))
        elif op == "dsc":
            self.body = nn.Sequential(
                _conv(width, width, 3, groups=width), _conv(width, mid, 1), relu,
                _conv(mid, mid, 3, groups=mid), _conv(mid, width, 1),
            )  # fmt: skip
        elif op == "ir":
            self.body = nn.Sequential(
                _conv(width, mid, 1), relu, _conv(mid, mid, 3, groups=mid), nn.ReLU(inplace=True),
                _conv(mid, width, 1),
            )  # fmt: skip
        else:
            raise ConfigError(f"op {op!r} is not allowed; allowed: {list(OPS)}")
        self.op, self.res_scale = op, res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) * self.res_scale


class Upsampler(nn.Sequential):
    """Sub-pixel upsampling by ``scale`` (2, 3, or 4 as two x2 steps)."""

    def __init__(self, scale: int, width: int) -> None:
        steps = [2, 2] if scale == 4 else [scale]
        layers: list[nn.Module] = []
        for s in steps:
            layers += [_conv(width, s * s * width), nn.PixelShuffle(s)]
        super().__init__(*layers)


class SRNet(nn.Module):
    """A residual SR network (EDSR's layout) with per-block operators and widths.

    Args:
        arch: ``{"width": W, "blocks": [[op, mid], ...]}`` (see the module docstring).
        scale: upscaling factor, 2, 3 or 4.
        in_chans: image channels (the output has as many).
        res_scale: the residual blocks' scaling (EDSR: 1.0; 0.1 for its 32-block model).
        num_classes: must be 0 (an image-to-image model; timm's builder passes it).
        device, dtype: where and in what floating dtype the parameters are created.
    """

    def __init__(
        self,
        arch: dict[str, Any],
        scale: int = 2,
        in_chans: int = 3,
        res_scale: float = 1.0,
        num_classes: int = 0,
        device: DeviceLike = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        arch = check_sr_arch(arch)
        if scale not in SCALES:
            raise ConfigError(f"scale={scale!r} is not allowed; allowed: {list(SCALES)}")
        if num_classes:
            raise ConfigError(f"an SR network has no classifier (num_classes={num_classes})")
        self.arch, self.scale, self.in_chans = arch, scale, in_chans
        self.num_classes, self.num_features = 0, arch["width"]
        width = arch["width"]
        mean = DIV2K_MEAN if in_chans == 3 else (0.5,) * in_chans
        with build_on(device, dtype):
            self.register_buffer("mean", torch.tensor(mean).view(1, in_chans, 1, 1))
            self.head = _conv(in_chans, width)
            blocks = [ResBlock(width, op, mid, res_scale) for op, mid in arch["blocks"]]
            self.body = nn.Sequential(*blocks, _conv(width, width))
            self.tail = nn.Sequential(Upsampler(scale, width), _conv(width, in_chans))

    def get_classifier(self) -> nn.Module:
        return nn.Identity()

    def reset_classifier(self, num_classes: int = 0, global_pool: str | None = None) -> None:
        if num_classes:
            raise ConfigError("an SR network has no classifier to reset")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) LR in [0, 1] -> (B, width, h, w) body features (with the global skip)."""
        f = self.head(x - self.mean)
        return f + self.body(f)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Body features -> the SR image (B, C, h·s, w·s); ``pre_logits``: the features."""
        return x if pre_logits else self.tail(x) + self.mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create(variant: str, pretrained: bool, arch: dict[str, Any], **kwargs: Any) -> SRNet:
    if "img_size" in kwargs:  # an LR side for profiling; the network takes any size
        size = kwargs.pop("img_size")
        kwargs["pretrained_cfg_overlay"] = dict(input_size=(kwargs.get("in_chans", 3), size, size))
    return build_model_with_cfg(SRNet, variant, pretrained, arch=arch, **kwargs)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 0,
        "input_size": (3, 64, 64),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bicubic",
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
        "first_conv": "head",
        "classifier": "",
        "paper_ids": "arXiv:1707.02921",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {"edsr_baseline": _cfg(), "edsr_cpu": _cfg(), "srnet_custom": _cfg()}
)


@register_model
def edsr_baseline(pretrained: bool = False, **kwargs: Any) -> SRNet:
    """EDSR-baseline: 16 conv blocks of 64 channels (``scale=`` 2, 3 or 4)."""
    return _create("edsr_baseline", pretrained, edsr_arch(16, 64), **kwargs)


@register_model
def edsr_cpu(pretrained: bool = False, **kwargs: Any) -> SRNet:
    """A CPU-sized EDSR for tests and benchmarks: 6 conv blocks of 32 channels."""
    return _create("edsr_cpu", pretrained, edsr_arch(6, 32), **kwargs)


@register_model
def srnet_custom(pretrained: bool = False, arch: Any = None, **kwargs: Any) -> SRNet:
    """An SR network from a searched ``arch`` (default: ``edsr_cpu``'s)."""
    return _create("srnet_custom", pretrained, arch or edsr_arch(6, 32), **kwargs)
