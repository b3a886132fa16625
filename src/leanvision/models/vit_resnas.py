"""ViT-Res / ViT-ResNAS: multi-stage vision transformers with residual spatial reduction.

Searching for Efficient Multi-Stage Vision Transformers, Liao, Karaman and Sze, 2021
(arXiv 2109.00642); official code: https://github.com/yilunliao/vit-search
(``nets/vit_sr_supernet.py``, searched networks in ``scripts/vit-sr-nas/searched_net/``).

A DeiT-style transformer (class token, pre-norm blocks, one linear head) made multi-stage:

* **Convolutional patch embedding** (224 → 16×16 tokens with patch 14): a 3×3 stride-2
  conv-BN-ReLU to 24 channels, two more 3×3 conv-BN-ReLU with a residual add around them, then a
  (p/2)×(p/2) stride-p/2 projection to the first width; a learned positional embedding covers the
  class token(s) and the patches.
* **Residual spatial reduction** between stages (16×16 → 8×8 → 4×4): the tokens are layer-normed,
  the patch tokens reshaped to a map and reduced by a 3×3 stride-2 conv (kernel p+1, stride p,
  padding p/2 with p = 2) to the wider next width, plus a new positional embedding; the class
  token(s) go through a Linear (``token_transform``). A parameter-free shortcut is added: 2×2
  average pooling of the (un-normalised) patch tokens and the class token(s) themselves, both
  zero-padded along channels to the new width.
* **Heterogeneous blocks**: every block has its own attention (heads × head width, which need not
  equal the embedding width) and MLP hidden width, the result of the paper's weight-sharing NAS.

The architecture is a readable :class:`ViTResArch` (stages of :class:`BlockSpec`); the official
``network_def`` tuples are converted verbatim by :func:`arch_from_network_def` (and back by
:func:`arch_to_network_def`). Registered: ``vit_res_tiny`` (the hand-designed ViT-Res-Tiny
reference, ``scripts/vit-sr-nas/reference_net/tiny.sh``) and ``vit_resnas_tiny`` /
``vit_resnas_small`` / ``vit_resnas_medium`` (the searched networks, ``searched_net/tiny.sh``,
``small_mac@2.9G.sh``, ``medium_mac@4.6G.sh``; the evolutionary search of the tiny net was
constrained to ViT-Res-Tiny's 1.79 G MACs).

Distillation token: optional (``distilled=True``), off by default because the official searched
and reference networks are trained and evaluated as ``flexible_vit_sr_patch14_224_patch_output``,
a single class token without distillation (their MAC budgets are computed the same way). With
``distilled=True`` a DeiT-style distillation token and ``head_dist`` are added: the spatial
reductions transform both tokens, inference averages the two heads' logits (as DeiT does),
``set_distilled_training(True)`` makes training return both, and ``get_classifier()`` returns the
main head ``head``. The official training-only patch-token head (for their "shifted patch token
mixup") is not part of the model. Stochastic depth grows linearly over all blocks; the official
recipes use ``drop_path_rate`` 0.2 (tiny) and 0.3 (small, medium); the default here is 0.

Small inputs (CIFAR, 32×32): the patch size is chosen from ``img_size`` so the token grid keeps
its ImageNet shape. For ``img_size >= 112`` it is the official 14 (16×16 tokens at 224; the side
must be divisible by 14 × 4); below it is ``max(2, 2 * (img_size // 32))``, i.e. 2 at 32×32: the
stride-2 stem conv then a 1×1 projection give 16×16 tokens, then 8×8 and 4×4 after the two
spatial reductions, exactly the ImageNet token counts. An explicit ``patch_size`` (even) overrides
the rule. Since the token counts are ImageNet's, so is most of the compute (ViT-ResNAS-Tiny:
1.59 G MACs at 32×32 vs 1.78 G at 224; only the stem shrinks). Positional embeddings are sized
for ``img_size``; other input sizes are rejected.

Counts (``leanvision.profiling``, MACs = multiply-accumulates, FLOPs = 2 × MACs) equal the
official MAC estimator's formula (``network_utils/compute_flop_mac.py``) exactly.
"""

# No `from __future__ import annotations`: torch.fx copies forward's annotations into the code
# it generates, where TorchScript cannot resolve them as strings.
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, register_notrace_function, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from leanvision.errors import InputShapeError

from ._device import DeviceLike, build_on, device_dtype

__all__ = [
    "BlockSpec",
    "StageSpec",
    "ViTResArch",
    "ViTResNAS",
    "ResidualSpatialReduction",
    "ConvPatchEmbed",
    "arch_from_network_def",
    "arch_to_network_def",
    "NETWORK_DEFS",
]


# --------------------------------------------------------------------------- architecture spec


@dataclass(frozen=True)
class BlockSpec:
    """One transformer block: ``num_heads`` × ``head_dim`` attention, ``mlp_hidden`` MLP width."""

    num_heads: int
    head_dim: int
    mlp_hidden: int


@dataclass(frozen=True)
class StageSpec:
    """A stage: its embedding width and blocks (stages after the first start with a reduction)."""

    dim: int
    blocks: tuple[BlockSpec, ...]


@dataclass(frozen=True)
class ViTResArch:
    """A multi-stage ViT-Res architecture.

    Attributes:
        stages: the stages, first to last; stage ``i > 0`` begins with a residual spatial
            reduction from ``stages[i - 1].dim`` to ``stages[i].dim`` (which must not shrink).
        stem: ``"conv"`` (the paper's 3-conv patch embedding) or ``"linear"`` (ViT's p×p conv).
        stem_chs: hidden channels of the conv stem (24 in every official network).
    """

    stages: tuple[StageSpec, ...]
    stem: str = "conv"
    stem_chs: int = 24

    @property
    def depth(self) -> int:
        """Number of transformer blocks."""
        return sum(len(s.blocks) for s in self.stages)


# Block-type tags of the official ``network_def`` tuples (nets/vit_sr_supernet.py).
_DEF_EMBED, _DEF_BLOCK, _DEF_HEAD, _DEF_REDUCE, _DEF_CONV_EMBED, _DEF_CONV_EMBED_MID = range(6)


def arch_from_network_def(network_def: Sequence[Sequence[Any]]) -> ViTResArch:
    """Convert an official ``network_def`` tuple into a :class:`ViTResArch`.

    The official format is a sequence of entries tagged by their first element:
    ``(0, C)`` linear patch embedding, ``(4, C)`` conv patch embedding (24 hidden channels),
    ``(5, C, mid)`` conv patch embedding with ``mid`` hidden channels,
    ``(1, (C, heads, head_dim), (C, mlp_hidden), keep)`` transformer block (dropped when
    ``keep`` is 0, as the official README instructs), ``(3, C_in, C_out)`` residual spatial
    reduction, and a final ``(2, C, num_classes)`` head (checked, its class count is ignored).

    Raises:
        ValueError: the tuple is malformed or its widths are inconsistent.
    """
    entries = list(network_def)
    if not entries or entries[0][0] not in (_DEF_EMBED, _DEF_CONV_EMBED, _DEF_CONV_EMBED_MID):
        raise ValueError(
            "network_def must start with a patch embedding (0, C), (4, C) or (5, C, m)"
        )
    first = entries[0]
    stem = "linear" if first[0] == _DEF_EMBED else "conv"
    stem_chs = int(first[2]) if first[0] == _DEF_CONV_EMBED_MID else 24
    dim = int(first[1])
    stages: list[StageSpec] = []
    blocks: list[BlockSpec] = []
    for i, entry in enumerate(entries[1:], start=1):
        tag = entry[0]
        if tag == _DEF_BLOCK:
            (attn_dim, heads, head_dim), (mlp_dim, hidden), keep = entry[1], entry[2], entry[3]
            if attn_dim != dim or mlp_dim != dim:
                raise ValueError(f"network_def[{i}]: block width {attn_dim}/{mlp_dim} != {dim}")
            if keep:
                blocks.append(BlockSpec(int(heads), int(head_dim), int(hidden)))
        elif tag == _DEF_REDUCE:
            if entry[1] != dim or entry[2] < dim:
                raise ValueError(f"network_def[{i}]: reduction {entry[1]}->{entry[2]} from {dim}")
            stages.append(StageSpec(dim, tuple(blocks)))
            dim, blocks = int(entry[2]), []
        elif tag == _DEF_HEAD:
            if i != len(entries) - 1 or entry[1] != dim:
                raise ValueError(f"network_def[{i}]: the head must come last with width {dim}")
        else:
            raise ValueError(f"network_def[{i}]: unknown block type {tag}")
    if entries[-1][0] != _DEF_HEAD:
        raise ValueError("network_def must end with a head entry (2, C, num_classes)")
    stages.append(StageSpec(dim, tuple(blocks)))
    return ViTResArch(tuple(stages), stem=stem, stem_chs=stem_chs)


def arch_to_network_def(arch: ViTResArch, num_classes: int = 1000) -> tuple:
    """The official ``network_def`` tuple of ``arch`` (every block kept)."""
    first = arch.stages[0].dim
    if arch.stem == "linear":
        out: list[tuple] = [(_DEF_EMBED, first)]
    elif arch.stem_chs == 24:
        out = [(_DEF_CONV_EMBED, first)]
    else:
        out = [(_DEF_CONV_EMBED_MID, first, arch.stem_chs)]
    prev = first
    for i, stage in enumerate(arch.stages):
        if i > 0:
            out.append((_DEF_REDUCE, prev, stage.dim))
        d = stage.dim
        out += [
            (_DEF_BLOCK, (d, b.num_heads, b.head_dim), (d, b.mlp_hidden), 1) for b in stage.blocks
        ]
        prev = d
    out.append((_DEF_HEAD, prev, num_classes))
    return tuple(out)


# The official networks, verbatim from the scripts named in the module docstring.
# fmt: off
NETWORK_DEFS: dict[str, tuple] = {
    "vit_res_tiny": (
        (4, 192),
        (1, (192, 3, 64), (192, 768), 1), (1, (192, 3, 64), (192, 768), 1),
        (1, (192, 3, 64), (192, 768), 1), (1, (192, 3, 64), (192, 768), 1),
        (3, 192, 384),
        (1, (384, 6, 64), (384, 1536), 1), (1, (384, 6, 64), (384, 1536), 1),
        (1, (384, 6, 64), (384, 1536), 1), (1, (384, 6, 64), (384, 1536), 1),
        (3, 384, 768),
        (1, (768, 12, 64), (768, 3072), 1), (1, (768, 12, 64), (768, 3072), 1),
        (1, (768, 12, 64), (768, 3072), 1), (1, (768, 12, 64), (768, 3072), 1),
        (2, 768, 1000),
    ),
    "vit_resnas_tiny": (
        (4, 176),
        (1, (176, 3, 32), (176, 704), 1), (1, (176, 3, 32), (176, 576), 1),
        (1, (176, 3, 32), (176, 640), 1), (1, (176, 4, 32), (176, 576), 1),
        (1, (176, 4, 32), (176, 704), 1),
        (3, 176, 352),
        (1, (352, 10, 48), (352, 1408), 1), (1, (352, 8, 48), (352, 1408), 1),
        (1, (352, 8, 48), (352, 1280), 1), (1, (352, 8, 48), (352, 1408), 1),
        (1, (352, 10, 48), (352, 1280), 1), (1, (352, 10, 48), (352, 1024), 1),
        (3, 352, 704),
        (1, (704, 10, 64), (704, 2560), 1), (1, (704, 10, 64), (704, 1792), 1),
        (1, (704, 10, 64), (704, 2816), 1), (1, (704, 8, 64), (704, 2816), 1),
        (1, (704, 8, 64), (704, 2560), 1),
        (2, 704, 1000),
    ),
    "vit_resnas_small": (
        (4, 220),
        (1, (220, 5, 32), (220, 880), 1), (1, (220, 5, 32), (220, 880), 1),
        (1, (220, 7, 32), (220, 800), 1), (1, (220, 5, 32), (220, 720), 1),
        (1, (220, 5, 32), (220, 720), 1), (1, (220, 5, 32), (220, 720), 1),
        (3, 220, 440),
        (1, (440, 10, 48), (440, 1760), 1), (1, (440, 10, 48), (440, 1440), 1),
        (1, (440, 10, 48), (440, 1920), 1), (1, (440, 10, 48), (440, 1600), 1),
        (1, (440, 12, 48), (440, 1600), 1), (1, (440, 12, 48), (440, 1440), 1),
        (3, 440, 880),
        (1, (880, 16, 64), (880, 3200), 1), (1, (880, 12, 64), (880, 3200), 1),
        (1, (880, 16, 64), (880, 2880), 1), (1, (880, 12, 64), (880, 2240), 1),
        (1, (880, 14, 64), (880, 2560), 1),
        (2, 880, 1000),
    ),
    "vit_resnas_medium": (
        (4, 240),
        (1, (240, 7, 32), (240, 960), 1), (1, (240, 6, 32), (240, 960), 1),
        (1, (240, 7, 32), (240, 800), 1), (1, (240, 8, 32), (240, 960), 1),
        (1, (240, 7, 32), (240, 880), 1), (1, (240, 8, 32), (240, 880), 1),
        (1, (240, 6, 32), (240, 800), 1),
        (3, 240, 640),
        (1, (640, 10, 48), (640, 1120), 1), (1, (640, 14, 48), (640, 1760), 1),
        (1, (640, 14, 48), (640, 1920), 1), (1, (640, 16, 48), (640, 1760), 1),
        (1, (640, 14, 48), (640, 1440), 1), (1, (640, 16, 48), (640, 1760), 1),
        (1, (640, 16, 48), (640, 1920), 1),
        (3, 640, 880),
        (1, (880, 16, 64), (880, 3200), 1), (1, (880, 10, 64), (880, 3840), 1),
        (1, (880, 16, 64), (880, 3840), 1), (1, (880, 12, 64), (880, 3200), 1),
        (1, (880, 16, 64), (880, 3520), 1), (1, (880, 14, 64), (880, 3520), 1),
        (2, 880, 1000),
    ),
}
# fmt: on


def default_patch_size(img_size: int) -> int:
    """The patch size for an input side: 14 from 112 up (official), else 2 per 32 pixels."""
    return 14 if img_size >= 112 else max(2, 2 * (img_size // 32))


# ------------------------------------------------------------------------------ building blocks


@register_notrace_function  # torch.fx calls it as is; TorchScript compiles it
def check_token_grid(
    x: torch.Tensor, grid_size: tuple[int, int], img_size: tuple[int, int], patch_size: int
) -> None:
    """Raise ``InputShapeError`` unless the embedded map ``x`` (B, C, H, W) is ``grid_size``."""
    if x.shape[-2] != grid_size[0] or x.shape[-1] != grid_size[1]:
        raise InputShapeError(
            f"ViT-ResNAS built for ({img_size[0]}, {img_size[1]}) inputs (({grid_size[0]}, "
            f"{grid_size[1]}) tokens of patch {patch_size}) got a ({x.shape[-2]}, "
            f"{x.shape[-1]}) token grid"
        )


class ConvPatchEmbed(nn.Module):
    """Conv patch embedding: 3×3/2 conv-BN-ReLU, two residual 3×3 conv-BN-ReLU, p/2 projection.

    (B, in_chans, H, W) → (B, dim, H / p, W / p).
    """

    def __init__(self, in_chans: int, dim: int, patch_size: int, mid_chs: int = 24) -> None:
        super().__init__()
        if patch_size % 2:
            raise ValueError(f"the conv patch embedding needs an even patch size, got {patch_size}")
        self.conv1 = nn.Conv2d(in_chans, mid_chs, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_chs)
        self.conv2 = nn.Conv2d(mid_chs, mid_chs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_chs)
        self.conv3 = nn.Conv2d(mid_chs, mid_chs, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid_chs)
        self.act = nn.ReLU(inplace=True)
        # The stride-2 first conv already did half of the patch's down-sampling.
        self.proj = nn.Conv2d(mid_chs, dim, patch_size // 2, patch_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        shortcut = x
        x = self.act(self.bn2(self.conv2(x)))
        x = self.act(self.bn3(self.conv3(x)))
        return self.proj(x + shortcut)


class LinearPatchEmbed(nn.Module):
    """ViT's patch embedding, a p×p stride-p conv: (B, C, H, W) → (B, dim, H / p, W / p)."""

    def __init__(self, in_chans: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Attention(nn.Module):
    """Multi-head self-attention whose inner width ``num_heads * head_dim`` is free."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.qkv = nn.Linear(dim, 3 * inner)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) → (B, N, dim)."""
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        drop = self.attn_drop if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # scale head_dim ** -0.5
        x = x.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block with its own attention and MLP widths."""

    def __init__(
        self,
        dim: int,
        spec: BlockSpec,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, spec.num_heads, spec.head_dim, attn_drop, proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, spec.mlp_hidden, act_layer=nn.GELU, drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class ResidualSpatialReduction(nn.Module):
    """Halve the token grid and widen the tokens, with a parameter-free residual path.

    Main path: LayerNorm, then the patch tokens as a (H, W) map through a (s+1)×(s+1) stride-s
    conv (padding s/2) plus a new positional embedding, and the prefix (class/distillation)
    tokens through a Linear. Residual path: s×s average pooling of the un-normalised patch
    tokens and the prefix tokens unchanged, both zero-padded at the end of the channels.

    (B, T + H·W, in_dim) → (B, T + (H/s)·(W/s), out_dim), T = ``num_prefix_tokens``.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        grid_size: tuple[int, int],
        num_prefix_tokens: int = 1,
        stride: int = 2,
    ) -> None:
        super().__init__()
        if out_dim < in_dim:
            raise ValueError(f"a spatial reduction cannot narrow the tokens ({in_dim}->{out_dim})")
        H, W = grid_size
        if H % stride or W % stride:
            raise ValueError(f"token grid {H}x{W} is not divisible by the reduction {stride}")
        self.in_dim, self.out_dim, self.stride = in_dim, out_dim, stride
        self.num_prefix_tokens = num_prefix_tokens
        self.grid_size = (H, W)
        self.out_grid_size = (H // stride, W // stride)
        self.norm = nn.LayerNorm(in_dim, eps=1e-6)
        self.conv = nn.Conv2d(in_dim, out_dim, stride + 1, stride, stride // 2)
        self.pool = nn.AvgPool2d(stride, stride)
        self.token_transform = nn.Linear(in_dim, out_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, H * W // stride**2, out_dim))
        trunc_normal_(self.pos_embed, std=0.02)

    def _to_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H·W, C) → (B, C, H, W)."""
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *self.grid_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = self.num_prefix_tokens
        shortcut = torch.cat([x[:, :T], self.pool(self._to_map(x[:, T:])).flatten(2).mT], dim=1)
        shortcut = F.pad(shortcut, (0, self.out_dim - self.in_dim))
        x = self.norm(x)
        patches = self.conv(self._to_map(x[:, T:])).flatten(2).mT + self.pos_embed
        x = torch.cat([self.token_transform(x[:, :T]), patches], dim=1)
        return x + shortcut


class ViTResStage(nn.Module):
    """A residual spatial reduction (except in the first stage) followed by the stage's blocks."""

    def __init__(
        self,
        in_dim: int,
        spec: StageSpec,
        grid_size: tuple[int, int],
        num_prefix_tokens: int,
        downsample: bool,
        drop_path: Sequence[float],
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if downsample:
            self.downsample: nn.Module = ResidualSpatialReduction(
                in_dim, spec.dim, grid_size, num_prefix_tokens
            )
            self.grid_size = self.downsample.out_grid_size
        else:
            if in_dim != spec.dim:
                raise ValueError(f"the first stage width {spec.dim} != embedding width {in_dim}")
            self.downsample = nn.Identity()
            self.grid_size = grid_size
        self.blocks = nn.Sequential(
            *[
                Block(spec.dim, b, proj_drop, attn_drop, dp)
                for b, dp in zip(spec.blocks, drop_path, strict=True)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T + N_in, in_dim) → (B, T + N_out, dim)."""
        return self.blocks(self.downsample(x))


# ------------------------------------------------------------------------------------- model


class ViTResNAS(nn.Module):
    """Multi-stage ViT with residual spatial reduction (ViT-Res / ViT-ResNAS), timm interface.

    Args:
        arch: a :class:`ViTResArch` or an official ``network_def`` tuple.
        img_size: input side (or (H, W)); fixes the positional embeddings.
        patch_size: patch side (even for the conv stem); ``None`` picks
            :func:`default_patch_size` (14 at 224, 2 at 32).
        in_chans: input channels.
        num_classes: classifier outputs (0 for none).
        distilled: add a DeiT distillation token and head (``head_dist``).
        drop_rate: dropout before the classifier(s).
        pos_drop_rate: dropout after the first positional embedding.
        proj_drop_rate: dropout after the attention projection and in the MLPs.
        attn_drop_rate: attention-probability dropout.
        drop_path_rate: stochastic depth of the last block (linear from 0 over all blocks).
        global_pool: only ``"token"`` (the class token), as in the paper.
        device, dtype: where and in what floating dtype the parameters are created.
    """

    def __init__(
        self,
        arch: ViTResArch | Sequence[Sequence[Any]],
        img_size: int | tuple[int, int] = 224,
        patch_size: int | None = None,
        in_chans: int = 3,
        num_classes: int = 1000,
        distilled: bool = False,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "token",
        device: DeviceLike = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(arch, ViTResArch):
            arch = arch_from_network_def(arch)
        if global_pool not in ("token", ""):
            raise ValueError(
                f"ViT-ResNAS pools with its class token, got global_pool={global_pool!r}"
            )
        img_hw = to_2tuple(img_size)
        patch_size = default_patch_size(min(img_hw)) if patch_size is None else patch_size
        reduction = patch_size * 2 ** (len(arch.stages) - 1)
        if img_hw[0] % reduction or img_hw[1] % reduction:
            raise ValueError(
                f"img_size {img_size} must be divisible by patch_size × 2^(stages-1) = {reduction}"
            )
        self.arch, self.img_size, self.patch_size = arch, img_hw, patch_size
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.global_pool = "token"
        self.distilled = distilled
        self.distilled_training = False  # set_distilled_training(True) to get both heads' logits
        self.num_prefix_tokens = 2 if distilled else 1
        dim = arch.stages[0].dim

        with build_on(device, dtype):
            if arch.stem == "conv":
                self.patch_embed: nn.Module = ConvPatchEmbed(
                    in_chans, dim, patch_size, arch.stem_chs
                )
            elif arch.stem == "linear":
                self.patch_embed = LinearPatchEmbed(in_chans, dim, patch_size)
            else:
                raise ValueError(f"unknown stem {arch.stem!r} (use 'conv' or 'linear')")
            grid = (img_hw[0] // patch_size, img_hw[1] // patch_size)
            self.grid_size = grid
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.dist_token = nn.Parameter(torch.zeros(1, 1, dim)) if distilled else None
            self.pos_embed = nn.Parameter(
                torch.zeros(1, grid[0] * grid[1] + self.num_prefix_tokens, dim)
            )
            self.pos_drop = nn.Dropout(pos_drop_rate)

            # Linear stochastic-depth rule over all blocks (plain Python: also builds on "meta").
            dpr = [drop_path_rate * i / max(arch.depth - 1, 1) for i in range(arch.depth)]
            stages, self.feature_info, in_dim, start = [], [], dim, 0
            for i, spec in enumerate(arch.stages):
                n = len(spec.blocks)
                stage = ViTResStage(
                    in_dim,
                    spec,
                    grid,
                    self.num_prefix_tokens,
                    downsample=i > 0,
                    drop_path=dpr[start : start + n],
                    proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                )
                stages.append(stage)
                grid, in_dim, start = stage.grid_size, spec.dim, start + n
                self.feature_info.append(
                    dict(num_chs=spec.dim, reduction=patch_size * 2**i, module=f"stages.{i}")
                )
            self.stages = nn.Sequential(*stages)
            self.num_features = self.head_hidden_size = in_dim
            self.norm = nn.LayerNorm(in_dim, eps=1e-6)
            self.head_drop = nn.Dropout(drop_rate)
            self._make_heads(num_classes, distilled)
            self._init_weights()

    def _init_weights(self) -> None:
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        if self.dist_token is not None:
            trunc_normal_(self.dist_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """The prefix tokens (the official code decays the positional embeddings)."""
        return {"cls_token", "dist_token"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        # Fine groups: each reduction, then each block (timm's convnext layout: a downsample
        # sorts before the stage's blocks).
        fine = [(r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None)]
        return dict(
            stem=r"^cls_token|^dist_token|^pos_embed|^patch_embed",
            blocks=r"^stages\.(\d+)" if coarse else fine,
        )

    def set_distilled_training(self, enable: bool = True) -> None:
        """With a distillation token: make training forwards return (cls_logits, dist_logits)."""
        self.distilled_training = enable

    def get_classifier(self) -> nn.Module:
        """The main (class-token) head; ``head_dist`` is the distillation head, if any."""
        return self.head

    def _make_heads(self, num_classes: int, distilled: bool) -> None:
        def head() -> nn.Module:
            return nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

        self.num_classes = num_classes
        self.head = head()
        self.head_dist: nn.Module | None = head() if distilled else None

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New heads on the model's device, dtype and training mode (pooling stays the token)."""
        if global_pool not in (None, "", "token"):
            raise ValueError(
                f"ViT-ResNAS pools with its class token, got global_pool={global_pool!r}"
            )
        with build_on(**device_dtype(self)):
            self._make_heads(num_classes, self.head_dist is not None)
        for head in (self.head, self.head_dist):
            if head is not None:
                head.train(self.training)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, T + grid tokens, dim) with the first positional embedding."""
        x = self.patch_embed(x)
        check_token_grid(x, self.grid_size, self.img_size, self.patch_size)
        x = x.flatten(2).mT
        tokens = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.dist_token is not None:
            tokens.append(self.dist_token.expand(x.shape[0], -1, -1))
        tokens.append(x)
        return self.pos_drop(torch.cat(tokens, dim=1) + self.pos_embed)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → normalised tokens (B, T + N_last, num_features).

        The sequence is the T prefix token(s) followed by the last stage's N_last patch tokens
        (4×4 at the default sizes).
        """
        return self.norm(self.stages(self._embed(x)))

    def forward_head(
        self, x: torch.Tensor, pre_logits: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, N, C) → logits (B, num_classes), or the pooled (B, C) with ``pre_logits``.

        With a distillation token the two heads' logits are averaged (DeiT inference), unless
        training with ``set_distilled_training(True)``, which returns both.
        """
        x_cls = self.head_drop(x[:, 0])
        if self.head_dist is None:
            return x_cls if pre_logits else self.head(x_cls)
        x_dist = self.head_drop(x[:, 1])
        if pre_logits:
            return (x_cls + x_dist) / 2
        logits, logits_dist = self.head(x_cls), self.head_dist(x_dist)
        if self.distilled_training and self.training and not torch.jit.is_scripting():
            return logits, logits_dist
        return (logits + logits_dist) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs as maps.

        Args:
            x: (B, C, H, W) images.
            indices: last n stages if int, all if None, else the stage indices to take.
            norm: apply the final norm to the last stage's map (the only one it is sized for).
            stop_early: stop after the last requested stage.
            output_fmt: ``"NCHW"`` (B, C_i, H_i, W_i) maps or ``"NLC"`` (B, H_i·W_i, C_i) tokens;
                the prefix tokens are dropped.
            intermediates_only: return only the list of intermediates.

        Returns:
            The intermediates, or (forward_features output, intermediates).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages if not stop_early else self.stages[: max_index + 1]
        last = len(self.stages) - 1
        T = self.num_prefix_tokens
        x = self._embed(x)
        intermediates = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                y = self.norm(x) if norm and i == last else x
                y = y[:, T:]
                if output_fmt == "NCHW":
                    y = y.mT.reshape(y.shape[0], y.shape[2], *stage.grid_size)
                intermediates.append(y)
        if intermediates_only:
            return intermediates
        if len(stages) == len(self.stages):
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
        self,
        indices: int | list[int] = 1,
        prune_norm: bool = False,
        prune_head: bool = True,
    ) -> list[int]:
        """Drop the stages (and head/norm) not needed for the given intermediates."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        prune_end = max_index < len(self.stages) - 1
        self.stages = self.stages[: max_index + 1]
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_norm or prune_end:
            self.norm = nn.Identity()
        if prune_head or prune_end:
            self.head_dist = None
            self.reset_classifier(0, "")
        return take_indices


# ---------------------------------------------------------------------------------- builders


def _create_vit_resnas(variant: str, pretrained: bool = False, **kwargs: Any) -> ViTResNAS:
    out_indices = kwargs.pop("out_indices", (0, 1, 2))
    kwargs.setdefault("arch", arch_from_network_def(NETWORK_DEFS[variant]))
    built_for = "img_size" in kwargs or "in_chans" in kwargs
    if built_for and kwargs.get("pretrained_cfg_overlay") is None:  # timm passes None explicitly
        size = to_2tuple(kwargs.get("img_size", 224))
        kwargs["pretrained_cfg_overlay"] = dict(input_size=(kwargs.get("in_chans", 3), *size))
    return build_model_with_cfg(
        ViTResNAS,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


def _cfg(**kwargs: Any) -> dict:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.conv1",
        "classifier": "head",
        "paper_ids": "arXiv:2109.00642",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "vit_res_tiny": _cfg(),
        "vit_resnas_tiny": _cfg(),
        "vit_resnas_small": _cfg(),
        "vit_resnas_medium": _cfg(),
    }
)


@register_model
def vit_res_tiny(pretrained: bool = False, **kwargs: Any) -> ViTResNAS:
    """ViT-Res-Tiny, the hand-designed reference: 3 stages × 4 blocks at 192/384/768, head 64.

    42.01 M params, 1.794 G MACs at 224 (the official search's MAC budget for the tiny net).
    """
    return _create_vit_resnas("vit_res_tiny", pretrained, **kwargs)


@register_model
def vit_resnas_tiny(pretrained: bool = False, **kwargs: Any) -> ViTResNAS:
    """ViT-ResNAS-Tiny, searched under ViT-Res-Tiny's MACs (official drop_path_rate 0.2).

    40.79 M params, 1.783 G MACs at 224 (paper: 1.8 G).
    """
    return _create_vit_resnas("vit_resnas_tiny", pretrained, **kwargs)


@register_model
def vit_resnas_small(pretrained: bool = False, **kwargs: Any) -> ViTResNAS:
    """ViT-ResNAS-Small, searched under 2.9 G MACs (official drop_path_rate 0.3).

    63.72 M params, 2.846 G MACs at 224 (paper: 2.8 G).
    """
    return _create_vit_resnas("vit_resnas_small", pretrained, **kwargs)


@register_model
def vit_resnas_medium(pretrained: bool = False, **kwargs: Any) -> ViTResNAS:
    """ViT-ResNAS-Medium, searched under 4.6 G MACs (official drop_path_rate 0.3).

    96.44 M params, 4.513 G MACs at 224 (paper: 4.5 G).
    """
    return _create_vit_resnas("vit_resnas_medium", pretrained, **kwargs)
