"""Hit-Detector's search family: an FCOS detector whose backbone, neck and head are built from
named candidate operations (``hitdet_detector``), and its weight-sharing supernet.

Hit-Detector (Guo et al., CVPR 2020, arXiv 2003.11818) searches the three components of a
detector together. Ours is CPU-sized, for small images (digits_det's 64x64 canvases):

* **backbone**: a 3x3 stride-2 stem (16 channels), then four stages of ``BLOCKS`` blocks each,
  the first of a stage at stride 2 (widths ``WIDTHS``); every block is one operation. The last
  three stages feed the neck (strides 8, 16, 32).
* **neck**: a feature pyramid (1x1 laterals to ``fpn_channels``, top-down sums) whose per-level
  output layer is one operation (torchvision's FPN uses a plain 3x3 conv there).
* **head**: torchvision's FCOS head whose classification and regression towers are
  ``len(head)`` operations (one choice per layer, separate weights per tower), in place of
  FCOS's four GroupNorm convs; every pyramid level runs through the same towers, so their
  operations normalise with group norms (batch statistics would mix the levels).

The operations (Hit-Detector's primitives, after FBNet): inverted residuals ``ir_k{3,5}_e{1,3,6}``
and dilated ``ir_k{3,5}_e3_d2``, depthwise-separable ``sep_k{3,5}``, a dense ``conv3``, and
``skip`` (identity; not where a block changes width or stride). Inverted residuals and
separable convs are timm's blocks. A position given a list of operations instead of one name
is a :class:`MixedOp` (the supernet): the weighted sum of every operation, weighted by
architecture parameters set by the search (:mod:`leanvision.methods.search.hit_detector`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from timm.models import register_model
from timm.models._efficientnet_blocks import ConvBnAct, DepthwiseSeparableConv, InvertedResidual
from torch import nn

from leanvision.errors import ConfigError

__all__ = [
    "BLOCKS",
    "HEAD_OPS",
    "OPS",
    "WIDTHS",
    "HitBody",
    "MixedOp",
    "hand_design",
    "hitdet_detector",
    "make_op",
    "mixed_positions",
    "positions",
]

OPS = ("ir_k3_e1", "ir_k3_e3", "ir_k3_e6", "ir_k5_e3", "ir_k5_e6", "ir_k3_e3_d2", "ir_k5_e3_d2",
       "sep_k3", "sep_k5", "conv3", "skip")  # fmt: skip
HEAD_OPS = OPS  # the neck and head take every operation (all are stride 1, width-preserving)
WIDTHS, BLOCKS, STEM = (24, 40, 64, 96), 2, 16
GROUPS = 8  # group norm's groups in the head towers (32, 96 and 192 channels divide by it)


def make_op(name: str, cin: int, cout: int, stride: int = 1, group_norm: bool = False
            ) -> nn.Module:  # fmt: skip
    """The operation ``name`` from ``cin`` to ``cout`` channels at ``stride``; its norms are
    batch norms, or ``GROUPS``-group norms where ``group_norm`` (a head tower, which every
    pyramid level shares: batch statistics would mix the levels)."""
    if name == "skip":
        if cin != cout or stride != 1:
            raise ConfigError(f"skip cannot change width or stride ({cin}->{cout}, s{stride})")
        return nn.Identity()
    norm = {"norm_layer": partial(nn.GroupNorm, GROUPS)} if group_norm else {}
    if name == "conv3":
        return ConvBnAct(cin, cout, 3, stride=stride, **norm)
    kind, *parts = name.split("_")
    opts = {p[0]: int(p[1:]) for p in parts}
    if kind == "ir" and set(opts) <= {"k", "e", "d"} and "k" in opts and "e" in opts:
        return InvertedResidual(cin, cout, opts["k"], stride=stride, dilation=opts.get("d", 1),
                                exp_ratio=float(opts["e"]), **norm)  # fmt: skip
    if kind == "sep" and set(opts) == {"k"}:
        return DepthwiseSeparableConv(cin, cout, opts["k"], stride=stride, pw_act=True, **norm)
    raise ConfigError(f"unknown operation {name!r}; allowed: {list(OPS)}")


class MixedOp(nn.Module):
    """Every candidate operation at one position, their outputs summed with weights.

    ``alpha`` (a tensor, one entry per operation; set by the search, shared by positions that
    are one choice) weighs them: divided by its ℓ1 norm (``mode="raw"``, group-sparsity
    screening: shrinking every weight together leaves the output as it was, so only the
    operations' relative strengths matter; an entry of exactly 0 skips its operation) or
    through a softmax (``mode="softmax"``, the joint search). The operations' batch norms are
    not affine, so a weight cannot be undone by a norm's scale (DARTS' practice). ``shapes``
    records the inputs seen (for MACs counts).
    """

    def __init__(self, names: Sequence[str], cin: int, cout: int, stride: int = 1,
                 group_norm: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.names = list(names)
        self.ops = nn.ModuleList(make_op(n, cin, cout, stride, group_norm) for n in self.names)
        for m in self.ops.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                m.affine = False
                m.register_parameter("weight", None)
                m.register_parameter("bias", None)
        self.alpha: torch.Tensor | None = None
        self.mode = "softmax"
        self.shapes: set[tuple[int, ...]] = set()

    def weights(self) -> torch.Tensor:
        if self.alpha is None:
            return torch.full((len(self.ops),), 1.0 / len(self.ops))
        if self.mode == "softmax":
            return self.alpha.softmax(0)
        return self.alpha / self.alpha.abs().sum().clamp_min(1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.add(tuple(x.shape[1:]))
        w = self.weights().to(x.device)
        zero = (w.detach() == 0).tolist()
        live = [i for i in range(len(self.ops)) if self.mode == "softmax" or not zero[i]]
        if not live:
            return self.ops[0](x) * w[0]  # every weight pruned: a zero output, same shape
        return sum(w[i] * self.ops[i](x) for i in live)


def _position(choice: str | Sequence[str], cin: int, cout: int, stride: int = 1,
              group_norm: bool = False) -> nn.Module:  # fmt: skip
    if isinstance(choice, str):
        return make_op(choice, cin, cout, stride, group_norm)
    return MixedOp(choice, cin, cout, stride, group_norm)


def positions(
    backbone: Sequence[Any], neck: Sequence[Any], head: Sequence[Any]
) -> dict[str, list[tuple[int, int, int]]]:
    """Per component, each position's (in channels, out channels, stride)."""
    if len(backbone) != len(WIDTHS) * BLOCKS:
        raise ConfigError(f"backbone: {len(WIDTHS) * BLOCKS} operations (one per block), "
                          f"got {len(backbone)}")  # fmt: skip
    if len(neck) != len(WIDTHS) - 1:
        raise ConfigError(f"neck: {len(WIDTHS) - 1} operations (one per level), got {len(neck)}")
    if not 1 <= len(head) <= 4:
        raise ConfigError(f"head: 1 to 4 operations (tower layers), got {len(head)}")
    bb, cin = [], STEM
    for w in WIDTHS:
        for i in range(BLOCKS):
            bb.append((cin, w, 2 if i == 0 else 1))
            cin = w
    return {"backbone": bb, "neck": [(0, 0, 1)] * len(neck), "head": [(0, 0, 1)] * len(head)}


class HitBody(nn.Module):
    """The searched backbone and neck: images to an ``OrderedDict`` of pyramid levels."""

    def __init__(self, backbone: Sequence[Any], neck: Sequence[Any], fpn_channels: int,
                 in_chans: int = 3) -> None:  # fmt: skip
        super().__init__()
        pos = positions(backbone, neck, [None])
        self.stem = ConvBnAct(in_chans, STEM, 3, stride=2)
        self.blocks = nn.ModuleList(
            _position(c, cin, cout, s) for c, (cin, cout, s) in zip(backbone, pos["backbone"],
                                                                   strict=True))  # fmt: skip
        self.outs = [BLOCKS * (i + 1) - 1 for i in range(1, len(WIDTHS))]  # last block per stage
        self.lateral = nn.ModuleList(nn.Conv2d(w, fpn_channels, 1) for w in WIDTHS[1:])
        self.output = nn.ModuleList(_position(c, fpn_channels, fpn_channels) for c in neck)
        self.out_channels = fpn_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x, feats = self.stem(x), []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.outs:
                feats.append(x)
        lat = [conv(f) for conv, f in zip(self.lateral, feats, strict=True)]
        for i in range(len(lat) - 2, -1, -1):  # top-down: upsample the coarser level and add
            lat[i] = lat[i] + nn.functional.interpolate(lat[i + 1], size=lat[i].shape[-2:],
                                                        mode="nearest")  # fmt: skip
        return OrderedDict(
            (str(i), op(f)) for i, (op, f) in enumerate(zip(self.output, lat, strict=True))
        )


def _tower(head: Sequence[Any], channels: int) -> nn.Sequential:
    return nn.Sequential(*(_position(c, channels, channels, group_norm=True) for c in head))


def _checked(choices: Any, what: str) -> list[Any]:
    if not isinstance(choices, (list, tuple)):
        raise ConfigError(f"{what} must be a list of operation names, got {choices!r}")
    out = []
    for c in choices:
        names = [c] if isinstance(c, str) else list(c) if isinstance(c, (list, tuple)) else None
        if not names or any(n not in OPS for n in names):
            raise ConfigError(f"{what}: {c!r} is not an operation or a list of them; allowed: "
                              f"{list(OPS)}")  # fmt: skip
        out.append(c if isinstance(c, str) else list(c))
    return out


def hand_design() -> dict[str, list[str]]:
    """The hand-designed member of the family: MobileNetV2's block (``ir_k3_e6``) throughout the
    backbone, the FPN's plain 3x3 conv in the neck, three 3x3 convs per head tower."""
    return {"backbone": ["ir_k3_e6"] * (len(WIDTHS) * BLOCKS), "neck": ["conv3"] * 3,
            "head": ["conv3"] * 3}  # fmt: skip


def mixed_positions(model: nn.Module) -> dict[str, list[MixedOp]]:
    """A ``hitdet_detector``'s :class:`MixedOp` positions by the ``hitdet_fcos`` space's keys
    (``bb<i>``, ``neck<i>``, ``head<i>``; a head layer's two towers share a key)."""
    body, head = model.backbone, model.head
    places = [(f"bb{i}", m) for i, m in enumerate(body.blocks)]
    places += [(f"neck{i}", m) for i, m in enumerate(body.output)]
    for tower in (head.classification_head.conv, head.regression_head.conv):
        places += [(f"head{i}", m) for i, m in enumerate(tower)]
    out: dict[str, list[MixedOp]] = {}
    for key, m in places:
        if isinstance(m, MixedOp):
            out.setdefault(key, []).append(m)
    return out


@register_model
def hitdet_detector(
    pretrained: bool = False,
    backbone: Sequence[Any] | None = None,
    neck: Sequence[Any] | None = None,
    head: Sequence[Any] | None = None,
    num_classes: int = 80,
    image_size: int = 640,
    fpn_channels: int = 32,
    in_chans: int = 3,
    **kwargs: Any,
) -> nn.Module:
    """torchvision's FCOS on a searched backbone, neck and head (see the module docstring);
    ``None`` for a component takes :func:`hand_design`'s. ``fpn_channels`` is a multiple of 32
    (FCOS's head normalises in 32 groups); ``kwargs`` go to torchvision's FCOS."""
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    if pretrained:
        raise ConfigError("hitdet_detector has no pretrained weights (pretrained=False)")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    if fpn_channels % 32:
        raise ConfigError(f"fpn_channels={fpn_channels}: FCOS's head normalises in 32 groups, so "
                          "it must be a multiple of 32")  # fmt: skip
    hand = hand_design()
    backbone = _checked(hand["backbone"] if backbone is None else backbone, "backbone")
    neck = _checked(hand["neck"] if neck is None else neck, "neck")
    head = _checked(hand["head"] if head is None else head, "head")
    positions(backbone, neck, head)
    body = HitBody(backbone, neck, fpn_channels, in_chans)
    strides = (8, 16, 32)
    anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
    model = FCOS(body, num_classes, min_size=image_size, max_size=image_size,
                 image_mean=[0.0] * in_chans, image_std=[1.0] * in_chans,
                 anchor_generator=anchors, **kwargs)  # fmt: skip
    model.head.classification_head.conv = _tower(head, fpn_channels)
    model.head.regression_head.conv = _tower(head, fpn_channels)
    model.num_classes = num_classes
    return model
