"""The registered search spaces (``lv.search("mbv2_cifar", ...)`` or a :class:`SearchSpace`).

* ``mbv2_cifar``: MobileNetV2-style CIFAR networks (:mod:`leanvision.models.mbnas`). Per block an
  inverted-residual operator, kernel 3/5/7 x expansion 3/6 (ProxylessNAS's and single-path NAS's
  operator set), or ``skip`` for every block but a stage's first (so depth is searched too);
  per stage a width multiplier 0.5/0.75/1.0. Four stages of 2, 3, 3, 2 blocks: about 1.2e10
  architectures from 10.7 M to 68.8 M MACs at 32x32.
* ``vit_res_cifar``: multi-stage ViTs with residual spatial reduction (ViT-ResNAS, Liao et al.
  2021) in the CIFAR adaptation (conv patch embedding, patch 4: 8x8, 4x4 and 2x2 token grids).
  Per stage an embedding width; per block a head count (64-dim heads, as the official space)
  and an MLP ratio, or ``skip`` for every block but a stage's first (the official "layer
  skip"). Three stages of four blocks, like ViT-Res-Tiny; built as ``vit_res_tiny`` with the
  official ``network_def`` encoding (``arch=``, any ViT-Res network). Its supernet
  (:class:`~leanvision.models.vit_res_supernet.ViTResSuperNet`) holds every member and runs
  several members on the parts of one batch (multi-architecture sampling).
* ``sr_generator``: x2 super-resolution generators (:mod:`leanvision.models.edsr`,
  ``srnet_custom``) in three groups, coarse to fine: the path (``depth``, 2 to 8 residual
  blocks), the operators (per block an EDSR conv block, a depthwise-separable or an inverted
  residual block) and the widths (the trunk width and each block's inner width as a multiple
  of it). Choices of blocks past ``depth`` are unused.
* ``hitdet_fcos``: FCOS detectors for small images (:mod:`leanvision.models.hitdet`) in three
  groups, Hit-Detector's components: per backbone block (eight, in four stages) an operation
  (inverted residuals of kernel 3/5, expansion 1/3/6, dilated ones, separable convs, a dense
  3x3 conv; ``skip`` for a stage's second block), per neck level and per head-tower layer one
  of the same or ``skip``. About 4e13 architectures.
"""

from __future__ import annotations

from collections.abc import Callable

from leanvision.errors import ConfigError, UnknownNameError
from leanvision.search.space import Choice, ModelSpec, SearchSpace

__all__ = [
    "get_space",
    "hitdet_fcos",
    "list_spaces",
    "mbv2_cifar",
    "register_space",
    "sr_generator",
    "vit_res_cifar",
]

_SPACES: dict[str, Callable[[], SearchSpace]] = {}

MB_OPS = ("k3e3", "k3e6", "k5e3", "k5e6", "k7e3", "k7e6")
MB_WIDTHS = (0.5, 0.75, 1.0)


class UnknownSpaceError(UnknownNameError):
    def __init__(self, name: str, allowed: list[str]) -> None:
        super().__init__("search space", name, allowed)


def register_space(name: str) -> Callable[[Callable[[], SearchSpace]], Callable[[], SearchSpace]]:
    """Register a space factory under ``name``."""

    def deco(factory: Callable[[], SearchSpace]) -> Callable[[], SearchSpace]:
        _SPACES[name] = factory
        return factory

    return deco


def list_spaces() -> list[str]:
    return sorted(_SPACES)


def get_space(space: str | SearchSpace) -> SearchSpace:
    """A space by name, or the given :class:`SearchSpace` itself."""
    if isinstance(space, SearchSpace):
        return space
    if not isinstance(space, str):
        raise ConfigError(f"space must be a registered name or a SearchSpace, got {space!r}")
    if space not in _SPACES:
        raise UnknownSpaceError(space, list_spaces())
    return _SPACES[space]()


def _divisible(value: float, divisor: int = 8) -> int:
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


@register_space("mbv2_cifar")
def mbv2_cifar() -> SearchSpace:
    from leanvision.models.mbnas import MBNAS_STAGES, MBNASSuperNet

    choices = []
    for s, (_, n, _) in enumerate(MBNAS_STAGES):
        choices.append(Choice(f"s{s}_width", MB_WIDTHS, "the stage's width multiplier"))
        for b in range(n):
            ops = MB_OPS if b == 0 else (*MB_OPS, "skip")
            choices.append(Choice(f"s{s}_b{b}", ops, "kKeE: kernel K, expansion E; or skip"))

    def build(sample: dict) -> ModelSpec:
        arch = []
        for s, (chs, n, stride) in enumerate(MBNAS_STAGES):
            width = _divisible(chs * sample[f"s{s}_width"])
            stage = []
            for b in range(n):
                op = sample[f"s{s}_b{b}"]
                if op == "skip":
                    continue
                k, e = op[1], op[3]
                stage.append(f"ir_r1_k{k}_s{stride if b == 0 else 1}_e{e}_c{width}")
            arch.append(stage)
        return ModelSpec("mbnas_cifar", {"arch": arch})

    smallest = {c.key: c.options[0] if c.key.endswith("width") else "k3e3" for c in choices}
    smallest.update({c.key: "skip" for c in choices if "skip" in c.options})
    return SearchSpace(
        "mbv2_cifar",
        choices,
        build,
        description="MobileNetV2-style CIFAR networks: per block kernel 3/5/7 x expansion 3/6 "
        "or skip, per stage width 0.5/0.75/1.0",
        smallest=smallest,
        supernet=lambda num_classes=10, in_chans=3: MBNASSuperNet(num_classes, in_chans),
        activate=lambda net, spec: net.set_arch(spec.kwargs["arch"]),
        # HourNAS's vital blocks: each stage's entry block (down-sampling where the stage
        # strides) and the widths, the network's shortest path; the other blocks may skip
        vital=[c.key for c in choices if c.key.endswith(("_b0", "_width"))],
        skip_value="skip",
    )


# ViT-ResNAS in the CIFAR adaptation: (width choices, head-count choices) per stage
VIT_STAGES: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = (
    ((96, 128, 160, 192), (2, 3)),
    ((192, 256, 320, 384), (3, 4, 6)),
    ((384, 512, 640, 768), (6, 8, 12)),
)
VIT_BLOCKS, VIT_MLP_RATIOS, VIT_HEAD_DIM = 4, (2, 3, 4), 64


@register_space("vit_res_cifar")
def vit_res_cifar() -> SearchSpace:
    from leanvision.models.vit_res_supernet import ViTResSuperNet

    choices = []
    for s, (widths, heads) in enumerate(VIT_STAGES):
        choices.append(Choice(f"s{s}_width", widths, "the stage's embedding width"))
        ops = tuple(f"h{h}m{m}" for h in heads for m in VIT_MLP_RATIOS)
        for b in range(VIT_BLOCKS):
            choices.append(Choice(f"s{s}_b{b}", ops if b == 0 else (*ops, "skip"),
                                  "hH mM: H heads of 64, MLP ratio M; or skip"))  # fmt: skip

    def build(sample: dict) -> ModelSpec:
        dim = sample["s0_width"]
        net: list = [[4, dim]]  # conv patch embedding
        for s in range(len(VIT_STAGES)):
            width = sample[f"s{s}_width"]
            if s > 0:
                net.append([3, dim, width])  # residual spatial reduction
            dim = width
            for b in range(VIT_BLOCKS):
                op = sample[f"s{s}_b{b}"]
                if op == "skip":
                    continue
                h, m = (int(v) for v in op[1:].split("m"))
                net.append([1, [dim, h, VIT_HEAD_DIM], [dim, dim * m], 1])
        net.append([2, dim, 1000])  # the head's class count is the build's num_classes
        return ModelSpec("vit_res_tiny", {"arch": net, "img_size": 32, "patch_size": 4})

    smallest: dict = {}
    for s, (widths, heads) in enumerate(VIT_STAGES):
        smallest[f"s{s}_width"] = widths[0]
        smallest[f"s{s}_b0"] = f"h{heads[0]}m{VIT_MLP_RATIOS[0]}"
        smallest.update({f"s{s}_b{b}": "skip" for b in range(1, VIT_BLOCKS)})
    return SearchSpace(
        "vit_res_cifar",
        choices,
        build,
        description="ViT-ResNAS-style multi-stage ViTs at 32x32 (patch 4): per stage width, "
        "per block heads x MLP ratio or skip",
        smallest=smallest,
        supernet=lambda num_classes=10, in_chans=3: ViTResSuperNet(
            widths=[w[-1] for w, _ in VIT_STAGES],
            heads=[h[-1] for _, h in VIT_STAGES],
            depths=[VIT_BLOCKS] * len(VIT_STAGES),
            mlp_ratio=max(VIT_MLP_RATIOS),
            head_dim=VIT_HEAD_DIM,
            img_size=32,
            patch_size=4,
            in_chans=in_chans,
            num_classes=num_classes,
        ),  # fmt: skip
        activate=lambda net, spec: net.set_arch(spec.kwargs["arch"]),
        activate_group=lambda net, specs: net.set_archs([s.kwargs["arch"] for s in specs]),
        vital=[c.key for c in choices if c.key.endswith(("_b0", "_width"))],
        skip_value="skip",
    )


SR_DEPTHS, SR_WIDTHS, SR_MID_RATIOS = (2, 4, 6, 8), (16, 24, 32), (0.5, 1.0, 2.0)


@register_space("sr_generator")
def sr_generator() -> SearchSpace:
    from leanvision.models.edsr import OPS

    n = max(SR_DEPTHS)
    choices = [Choice("depth", SR_DEPTHS, "residual blocks in the trunk (the path)")]
    choices += [Choice(f"b{i}_op", OPS, "the block's operator") for i in range(n)]
    choices.append(Choice("width", SR_WIDTHS, "the trunk's channels"))
    choices += [Choice(f"b{i}_mid", SR_MID_RATIOS, "inner width / trunk width") for i in range(n)]

    def build(sample: dict) -> ModelSpec:
        width = sample["width"]
        blocks = [
            [sample[f"b{i}_op"], max(8, int(width * sample[f"b{i}_mid"]))]
            for i in range(sample["depth"])
        ]
        return ModelSpec("srnet_custom", {"arch": {"width": width, "blocks": blocks}, "scale": 2})

    # the cheapest member: shallowest, narrowest, inverted residuals at half width
    smallest = {"depth": SR_DEPTHS[0], "width": SR_WIDTHS[0]}
    smallest.update({f"b{i}_op": "ir" for i in range(n)})
    smallest.update({f"b{i}_mid": SR_MID_RATIOS[0] for i in range(n)})
    return SearchSpace(
        "sr_generator",
        choices,
        build,
        description="x2 SR generators: depth 2-8, per block conv/dsc/ir, trunk width 16-32, "
        "inner width x0.5-2",
        smallest=smallest,
        groups={
            "path": ["depth"],
            "operator": [f"b{i}_op" for i in range(n)],
            "channel": ["width", *(f"b{i}_mid" for i in range(n))],
        },
    )


@register_space("hitdet_fcos")
def hitdet_fcos() -> SearchSpace:
    from leanvision.models.hitdet import BLOCKS, OPS, WIDTHS

    entry = tuple(o for o in OPS if o != "skip")
    backbone = [Choice(f"bb{i}", entry if i % BLOCKS == 0 else OPS,
                       "the block's operation" + ("" if i % BLOCKS == 0 else " or skip"))
                for i in range(len(WIDTHS) * BLOCKS)]  # fmt: skip
    neck = [Choice(f"neck{i}", OPS, "the pyramid level's output operation") for i in range(3)]
    head = [Choice(f"head{i}", OPS, "the towers' layer operation") for i in range(3)]
    choices = backbone + neck + head

    def build(sample: dict) -> ModelSpec:
        return ModelSpec("hitdet_detector", {
            part: [sample[c.key] for c in group]
            for part, group in (("backbone", backbone), ("neck", neck), ("head", head))
        })  # fmt: skip

    smallest = {c.key: "skip" if "skip" in c.options else "ir_k3_e1" for c in choices}
    return SearchSpace(
        "hitdet_fcos",
        choices,
        build,
        description="FCOS detectors for small images: per backbone block, neck level and head "
        "layer an operation (ir k3/k5 e1/e3/e6, dilated ir, sep k3/k5, conv3, skip)",
        smallest=smallest,
        groups={
            "backbone": [c.key for c in backbone],
            "neck": [c.key for c in neck],
            "head": [c.key for c in head],
        },  # fmt: skip
    )
