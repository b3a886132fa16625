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

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import get_act_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._efficientnet_builder import decode_arch_def, resolve_bn_args
from torch import nn

from leanvision.errors import ConfigError
from leanvision.layers.sliced import SlicedBatchNorm2d, SlicedConv2d
from leanvision.models.tinynet import TinyNet

__all__ = ["MBNAS_STAGES", "MBNASSuperNet", "default_arch", "mbnas_cifar", "parse_block"]

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


# -- the weight-sharing supernet ------------------------------------------------------------------

KERNELS, EXPANSIONS = (3, 5, 7), (3, 6)


def parse_block(block: str) -> dict[str, int]:
    """``"ir_r1_k5_s2_e6_c32"`` -> ``{"k": 5, "s": 2, "e": 6, "c": 32}``."""
    parts = block.split("_")
    if parts[0] != "ir":
        raise ConfigError(f"the supernet holds inverted-residual blocks only, got {block!r}")
    out = {}
    for p in parts[1:]:
        key, value = p[0], p[1:]
        if key in "ksec" and value.isdigit():
            out[key] = int(value)
    if set(out) != {"k", "s", "e", "c"}:
        raise ConfigError(f"block {block!r} lacks one of k, s, e, c")
    return out


class _SuperIR(nn.Module):
    """One inverted-residual operator (kernel k, expansion e) at its largest widths."""

    def __init__(self, max_in: int, max_out: int, k: int, e: int, stride: int) -> None:
        super().__init__()
        act = nn.ReLU6
        mid = max_in * e
        self.e, self.stride = e, stride
        self.conv_pw, self.bn1, self.act1 = (
            SlicedConv2d(max_in, mid, 1),
            SlicedBatchNorm2d(mid),
            act(),
        )
        self.conv_dw = SlicedConv2d(mid, mid, k, stride, depthwise=True)
        self.bn2, self.act2 = SlicedBatchNorm2d(mid), act()
        self.conv_pwl, self.bn3 = SlicedConv2d(mid, max_out, 1), SlicedBatchNorm2d(max_out)

    def forward(self, x: torch.Tensor, out_chs: int) -> torch.Tensor:
        self.conv_pw.set_active_out(x.shape[1] * self.e)
        self.conv_pwl.set_active_out(out_chs)
        y = self.act1(self.bn1(self.conv_pw(x)))
        y = self.act2(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(y))
        return y + x if self.stride == 1 and x.shape[1] == out_chs else y


class MBNASSuperNet(nn.Module):
    """Every ``mbnas_cifar`` of the ``mbv2_cifar`` space in one network (single-path one-shot,
    Guo et al. 2020): per block slot one operator per (kernel, expansion), each at the stage's
    largest width; :meth:`set_arch` picks the path (a spec's ``arch``: a stage's blocks fill
    its first slots, widths slice the channels). Stem, first block and head as ``mbnas_cifar``.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, STEM_CHS, 3, 1, 1, bias=False), nn.BatchNorm2d(STEM_CHS), nn.ReLU6()
        )
        self.first = nn.Sequential(  # timm's ds block: dw 3x3, BN, act, pw, BN, + skip
            nn.Conv2d(STEM_CHS, STEM_CHS, 3, 1, 1, groups=STEM_CHS, bias=False),
            nn.BatchNorm2d(STEM_CHS), nn.ReLU6(),
            nn.Conv2d(STEM_CHS, FIRST_CHS, 1, bias=False), nn.BatchNorm2d(FIRST_CHS),
        )  # fmt: skip
        self.slots = nn.ModuleList()
        prev = FIRST_CHS
        for chs, n, stride in MBNAS_STAGES:
            stage = nn.ModuleList()
            for b in range(n):
                max_in = prev if b == 0 else chs
                stage.append(nn.ModuleDict({
                    f"k{k}e{e}": _SuperIR(max_in, chs, k, e, stride if b == 0 else 1)
                    for k in KERNELS for e in EXPANSIONS
                }))  # fmt: skip
            self.slots.append(stage)
            prev = chs
        self.conv_head = SlicedConv2d(prev, HEAD_CHS, 1)
        self.bn_head, self.act_head = nn.BatchNorm2d(HEAD_CHS), nn.ReLU6()
        self.classifier = nn.Linear(HEAD_CHS, num_classes)
        self.path: list[list[tuple[str, int]]] = []
        self.set_arch(default_arch())

    def set_arch(self, arch: Any) -> None:
        """Activate the path of ``arch`` (an ``mbnas_cifar`` arch: stages of block strings)."""
        stages = _check_arch(arch)
        if len(stages) != len(MBNAS_STAGES):
            raise ConfigError(f"the supernet has {len(MBNAS_STAGES)} stages, arch {len(stages)}")
        path = []
        for s, (blocks, (chs, n, stride)) in enumerate(zip(stages, MBNAS_STAGES, strict=True)):
            if len(blocks) > n:
                raise ConfigError(f"stage {s} has {n} block slots, arch {len(blocks)} blocks")
            ops = []
            for b, block in enumerate(blocks):
                d = parse_block(block)
                op = f"k{d['k']}e{d['e']}"
                if op not in self.slots[s][b]:
                    raise ConfigError(f"stage {s} block {b}: {op} is not a supernet operator")
                if d["c"] > chs or d["s"] != (stride if b == 0 else 1):
                    raise ConfigError(f"stage {s} block {b}: {block!r} does not fit the slot")
                ops.append((op, d["c"]))
            path.append(ops)
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.first(x)
        for stage, ops in zip(self.slots, self.path, strict=True):
            for slot, (op, chs) in zip(stage, ops, strict=False):
                x = slot[op](x, chs)
        x = self.act_head(self.bn_head(self.conv_head(x)))
        return self.classifier(x.mean((2, 3)))

    def member_state_dict(self) -> dict[str, torch.Tensor]:
        """The active member's weights as ``mbnas_cifar(arch=...)``'s state dict (its
        slices of the shared weights and batch-norm statistics): the member inherits the
        supernet's weights, e.g. to fine-tune rather than retrain from scratch."""
        out: dict[str, torch.Tensor] = {}

        def conv(name: str, m: nn.Conv2d, o: int, i: int | None) -> None:
            out[f"{name}.weight"] = m.weight[:o] if i is None else m.weight[:o, :i]

        def bn(name: str, m: nn.BatchNorm2d, c: int) -> None:
            for key in ("weight", "bias", "running_mean", "running_var"):
                out[f"{name}.{key}"] = getattr(m, key)[:c]
            out[f"{name}.num_batches_tracked"] = m.num_batches_tracked

        conv("conv_stem", self.stem[0], STEM_CHS, None)
        bn("bn1", self.stem[1], STEM_CHS)
        conv("blocks.0.0.conv_dw", self.first[0], STEM_CHS, None)
        bn("blocks.0.0.bn1", self.first[1], STEM_CHS)
        conv("blocks.0.0.conv_pw", self.first[3], FIRST_CHS, None)
        bn("blocks.0.0.bn2", self.first[4], FIRST_CHS)
        c_in = FIRST_CHS
        for s, (stage, ops) in enumerate(zip(self.slots, self.path, strict=True)):
            for b, (op, c_out) in enumerate(ops):
                m, name = stage[b][op], f"blocks.{s + 1}.{b}"
                mid = c_in * m.e
                conv(f"{name}.conv_pw", m.conv_pw, mid, c_in)
                bn(f"{name}.bn1", m.bn1, mid)
                conv(f"{name}.conv_dw", m.conv_dw, mid, None)
                bn(f"{name}.bn2", m.bn2, mid)
                conv(f"{name}.conv_pwl", m.conv_pwl, c_out, mid)
                bn(f"{name}.bn3", m.bn3, c_out)
                c_in = c_out
        conv("conv_head", self.conv_head, HEAD_CHS, c_in)
        bn("bn2", self.bn_head, HEAD_CHS)
        out["classifier.weight"], out["classifier.bias"] = (
            self.classifier.weight, self.classifier.bias,
        )  # fmt: skip
        return {k: v.detach().clone() for k, v in out.items()}
