"""PyramidTNT: Transformer-in-Transformer with a four-stage pyramid.

PyramidTNT: Improved Transformer-in-Transformer Baselines with Pyramid Architecture, Han, Guo,
Tang and Wang, 2022 (arXiv 2201.00978), built on TNT (Transformer in Transformer, Han et al.,
NeurIPS 2021, arXiv 2103.00112). Official code: ``huawei-noah/Efficient-AI-Backbones``,
``tnt_pytorch/pyramid_tnt.py`` (models ``ptnt_ti_patch16_192``, ``ptnt_s_patch16_256``,
``ptnt_m_patch16_256``, ``ptnt_b_patch16_256``; registered here as ``ptnt_ti``, ``ptnt_s``,
``ptnt_m``, ``ptnt_b``).

TNT keeps two token sets: *outer* ("sentence") tokens, one per image patch, and *inner*
("word") tokens, a 4×4 grid of sub-patch tokens inside every patch. PyramidTNT arranges them in
four stages (outer widths d, 2d, 4d, 4d; inner widths c, 2c, 4c, 4c):

* **Convolutional stem**: a stride-2 3×3 conv-BN-ReLU shared by both branches; a 3×3 conv gives
  the word map at 1/2 resolution, cut into 4×4 words per patch; three more convs (two of stride
  2) give the sentence map at 1/8 resolution. So each outer token covers 8×8 pixels (the
  official names say "patch16" but the stage-1 patch is 8×8) and each word 2×2 pixels.
  Learnable absolute position embeddings are added to both.
* **Blocks**: the first block of every stage (and the second too when the stage has more than 6
  blocks) is a TNT block: the words of each patch run self-attention and an MLP among
  themselves (pre-norm, the LayerNorms normalise a whole patch's 16·c word features at once),
  then a ``LN → Linear(16c → d, no bias) → LN`` projection of the flattened words is added to
  the patch's outer token. Every block then runs outer self-attention + MLP on the outer tokens.
  Outer attention reduces its keys/values spatially (average pooling by ``sr_ratio`` = 4, 2, 1,
  1 per stage, then Linear + LN, as in PVT) and adds a learned bias (one per stage, shared by
  the stage's blocks) to its attention logits. Attention has separate ``q`` and ``kv``
  projections without bias; MLP ratio 4, GELU.
* **Pyramid down-sampling** between stages, for both token sets: *sentence aggregation* is
  ``LN`` + a 3×3 stride-2 conv on the outer-token map (d → 2d); *word aggregation* gathers the
  words of each 2×2 group of patches into one 8×8 word map (``LN`` first, zero padding of an odd
  grid), and a 3×3 stride-2 conv brings it back to 4×4 words of the next inner width. Every
  patch thus keeps 16 words at every stage.
* **Head**: final LN, mean over the outer tokens, linear classifier.

Drop rates follow timm's names: ``drop_rate`` is the dropout before the classifier,
``proj_drop_rate`` / ``attn_drop_rate`` / ``drop_path_rate`` act inside the blocks and
``pos_drop_rate`` on the outer position embedding (the official code's single ``drop_rate``
covers the latter three; all default to 0 as in the official models).

Sizes at the default input (ours: ``leanvision.profiling``; README: the official tnt_pytorch
readme, whose "FLOPs" are MACs that include the attention matmuls, Q·Kᵀ and A·V; without them
ptnt_s would be 3.16 G and ptnt_b 15.66 G, which do not round to the README's values):

=========  =====  ===========================  ===========================
variant    input  params, ours / README        MACs, ours / README
=========  =====  ===========================  ===========================
ptnt_ti    192    10.58 M / 10.6 M             0.586 G / 0.6 G (1 digit)
ptnt_s     256    31.95 M / 32.0 M             3.283 G / 3.3 G
ptnt_m     256    84.94 M / 85.0 M             8.205 G / 8.2 G
ptnt_b     256    156.99 M / 157.0 M           15.967 G / 16.0 G
=========  =====  ===========================  ===========================

Small inputs (CIFAR, 32x32): for ``img_size <= 64`` the first stem conv has stride 1 (instead of
2), so an outer token covers a 4×4-pixel patch whose 16 words are single pixels; a 32×32 image
gives 8×8, 4×4, 2×2 and 1×1 outer tokens over the four stages (instead of 4×4, 2×2, 1×1, 1×1),
still with 16 words per token. Outer attention then uses no spatial reduction
(``sr_ratios = (1, 1, 1, 1)``): stage 1 already has the 8×8 grid of keys that the official
ratios leave at 256 px, and pooling it by 4 would leave 2×2 keys. Widths, depths and heads are
unchanged. ``stem_stride`` and ``sr_ratios`` given explicitly override the rule.

The attention bias and the outer position embedding are sized for the grid of ``img_size``, so a
model runs at the input size it was built for (as in the official code); its ``default_cfg``
says so (``fixed_input_size``). Like timm's TNT, the features are tokens (B, N, d), not a map.
"""

# No `from __future__ import annotations`: torch.fx copies forward's annotations into the code
# it generates, where TorchScript cannot resolve them as strings.
from collections.abc import Sequence
from typing import Final

import torch
import torch.nn.functional as F
from timm.layers import (
    DropPath,
    Mlp,
    calculate_drop_path_rates,
    register_notrace_function,
    to_2tuple,
    trunc_normal_,
)
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from leanvision.errors import ConfigError, InputShapeError

from ._device import DeviceLike, build_on, device_dtype

__all__ = [
    "PyramidTNT",
    "PyramidTNTBlock",
    "PyramidTNTStage",
    "PyramidTNTStem",
    "SentenceAggregation",
    "WordAggregation",
]

# Inputs up to this side (CIFAR, STL-size crops) use the small-input stem and attention.
SMALL_INPUT_MAX = 64
# Words per patch side; fixed by the stem's 4×4 cut and kept by every word aggregation.
WORDS_SIDE = 4

Grid = tuple[int, int]


@register_notrace_function  # torch.fx calls it as is; TorchScript compiles it
def check_input_size(x: torch.Tensor, img_size: tuple[int, int]) -> None:
    """Raise ``InputShapeError`` unless ``x`` is (..., H, W) with (H, W) = ``img_size``."""
    if x.shape[-2] != img_size[0] or x.shape[-1] != img_size[1]:
        raise InputShapeError(
            f"PyramidTNT was built for ({img_size[0]}, {img_size[1]}) inputs (its attention "
            f"biases are sized for that token grid), got ({x.shape[-2]}, {x.shape[-1]}); build "
            "it with that img_size"
        )


def _conv_bn_relu(in_chs: int, out_chs: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(inplace=True),
    ]


class PyramidTNTStem(nn.Module):
    """Convolutional stem giving the word tokens and the sentence tokens.

    Args:
        in_chans: image channels.
        inner_dim: word width ``c`` of stage 1.
        outer_dim: sentence width ``d`` of stage 1.
        stride: stride of the first (shared) conv: 2 for ImageNet, 1 for small inputs.
    """

    def __init__(self, in_chans: int, inner_dim: int, outer_dim: int, stride: int = 2) -> None:
        super().__init__()
        self.words_side = WORDS_SIDE
        self.patch_size = stride * WORDS_SIDE
        self.common = nn.Sequential(*_conv_bn_relu(in_chans, 2 * inner_dim, stride))
        self.inner = nn.Sequential(*_conv_bn_relu(2 * inner_dim, inner_dim, 1))
        # Two stride-2 convs take the word map (WORDS_SIDE× finer) to the sentence map.
        self.outer = nn.Sequential(
            *_conv_bn_relu(2 * inner_dim, 4 * inner_dim, 2),
            *_conv_bn_relu(4 * inner_dim, 8 * inner_dim, 2),
            *_conv_bn_relu(8 * inner_dim, outer_dim, 1),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) → words (B·N, 16, c) and sentences (B, N, d), N = (H/p)·(W/p)."""
        x = self.common(x)
        words = self.inner(x)
        b, c, h, w = words.shape
        k = self.words_side
        # Cut the word map into k×k words per patch: patches row-major, words row-major inside.
        words = words.reshape(b, c, h // k, k, w // k, k).permute(0, 2, 4, 3, 5, 1)
        words = words.reshape(b * (h // k) * (w // k), k * k, c)
        sentences = self.outer(x).flatten(2).transpose(1, 2)
        return words, sentences


class Attention(nn.Module):
    """Multi-head self-attention with optional spatial reduction of keys/values and logit bias.

    Args:
        dim: token width.
        num_heads: attention heads.
        qkv_bias: bias in the ``q`` and ``kv`` projections.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
        sr_ratio: average-pooling factor for keys/values (1: none).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        sr_ratio: int = 1,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ConfigError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.sr_ratio = sr_ratio
        # Identities (no parameters) when there is no reduction: TorchScript wants every
        # attribute the forward names.
        self.pool: nn.Module = nn.Identity()
        self.reduce: nn.Module = nn.Identity()
        self.norm: nn.Module = nn.Identity()
        if sr_ratio > 1:
            self.pool = nn.AvgPool2d(sr_ratio, stride=sr_ratio)
            self.reduce = nn.Linear(dim, dim)
            self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self, x: torch.Tensor, grid: Grid | None = None, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, N, C) → (B, N, C); ``grid`` = (H, W) of the N tokens (needed when sr_ratio > 1);
        ``bias`` broadcasts to the (B, heads, N, N_kv) logits."""
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        kv_in = x
        if self.sr_ratio > 1:
            assert grid is not None, "spatial reduction needs the token grid"
            kv_in = self.pool(x.transpose(1, 2).reshape(b, c, *grid)).flatten(2).transpose(1, 2)
            kv_in = self.norm(self.reduce(kv_in))
        kv = self.kv(kv_in).reshape(b, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_drop if self.training else 0.0
        )
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, c)))


class PyramidTNTBlock(nn.Module):
    """One PyramidTNT block: an optional inner (word) transformer feeding the outer tokens, then
    an outer (sentence) transformer layer.

    Args:
        outer_dim: sentence width ``d``.
        outer_heads: heads of the outer attention.
        inner_dim: word width ``c``; ``None`` for a block without the inner transformer.
        inner_heads: heads of the inner attention.
        num_words: words per sentence (16).
        mlp_ratio: hidden width of both MLPs relative to their input.
        qkv_bias: bias in the q/kv projections.
        proj_drop: dropout after projections and MLPs.
        attn_drop: dropout on attention weights.
        drop_path: stochastic-depth rate of the residual branches.
        sr_ratio: spatial reduction of the outer attention's keys/values.
    """

    has_inner: Final[bool]  # a constant for TorchScript: the inner layers exist only if set

    def __init__(
        self,
        outer_dim: int,
        outer_heads: int,
        inner_dim: int | None,
        inner_heads: int,
        num_words: int = WORDS_SIDE**2,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        sr_ratio: int = 1,
    ) -> None:
        super().__init__()
        self.has_inner = inner_dim is not None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if inner_dim is not None:
            patch_dim = num_words * inner_dim
            # The inner norms see all words of a patch at once (the official layout).
            self.inner_norm1 = nn.LayerNorm(patch_dim)
            self.inner_attn = Attention(inner_dim, inner_heads, qkv_bias, attn_drop, proj_drop)
            self.inner_norm2 = nn.LayerNorm(patch_dim)
            self.inner_mlp = Mlp(inner_dim, int(inner_dim * mlp_ratio), drop=proj_drop)
            self.proj_norm1 = nn.LayerNorm(patch_dim)
            self.proj = nn.Linear(patch_dim, outer_dim, bias=False)
            self.proj_norm2 = nn.LayerNorm(outer_dim)
        self.outer_norm1 = nn.LayerNorm(outer_dim)
        self.outer_attn = Attention(
            outer_dim, outer_heads, qkv_bias, attn_drop, proj_drop, sr_ratio=sr_ratio
        )
        self.outer_norm2 = nn.LayerNorm(outer_dim)
        self.outer_mlp = Mlp(outer_dim, int(outer_dim * mlp_ratio), drop=proj_drop)

    def forward(
        self,
        words: torch.Tensor,
        sentences: torch.Tensor,
        grid: Grid,
        bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """words (B·N, M, c), sentences (B, N, d) → same shapes; ``grid`` = (H, W), H·W = N."""
        b, n, _ = sentences.shape
        if self.has_inner:
            bn, m, c = words.shape
            y = self.inner_norm1(words.reshape(b, n, m * c)).reshape(bn, m, c)
            words = words + self.drop_path(self.inner_attn(y))
            y = self.inner_norm2(words.reshape(b, n, m * c)).reshape(bn, m, c)
            words = words + self.drop_path(self.inner_mlp(y))
            # Words → sentence: the flattened words of each patch are added to its outer token.
            flat = words.reshape(b, n, m * c)
            sentences = sentences + self.proj_norm2(self.proj(self.proj_norm1(flat)))
        y = self.outer_attn(self.outer_norm1(sentences), grid, bias)
        sentences = sentences + self.drop_path(y)
        sentences = sentences + self.drop_path(self.outer_mlp(self.outer_norm2(sentences)))
        return words, sentences


class SentenceAggregation(nn.Module):
    """Outer-token down-sampling: LN, then a 3×3 stride-2 conv on the (H, W) token map."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.conv = nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """(B, H·W, C) → (B, ⌈H/2⌉·⌈W/2⌉, C_out)."""
        b, _, c = x.shape
        x = self.norm(x).transpose(1, 2).reshape(b, c, *grid)
        return self.conv(x).flatten(2).transpose(1, 2)


class WordAggregation(nn.Module):
    """Inner-token down-sampling: the k×k words of each 2×2 group of patches form one 2k×2k word
    map (LN first; an odd grid is zero-padded), which a 3×3 stride-2 conv brings back to k×k
    words of the new width. The conv sees only the group's words (zero padding at its border)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.words_side = WORDS_SIDE
        self.norm = nn.LayerNorm(in_dim)
        self.conv = nn.Conv2d(in_dim, out_dim, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, grid: Grid) -> torch.Tensor:
        """(B·H·W, k², C) → (B·⌈H/2⌉·⌈W/2⌉, k², C_out), ``grid`` = (H, W) of the patches."""
        h, w = grid
        _, m, c = x.shape
        k = self.words_side
        x = self.norm(x).reshape(-1, h, w, k, k, c)
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, 0, 0, 0, 0, w % 2, 0, h % 2))
            h, w = h + h % 2, w + w % 2
        # (B, H/2, dr, W/2, dc, i, j, C) → (B·H/2·W/2, C, dr·k + i, dc·k + j): the 2×2 patches'
        # words laid out where they sit in the image.
        x = x.reshape(-1, h // 2, 2, w // 2, 2, k, k, c).permute(0, 1, 3, 7, 2, 5, 4, 6)
        x = self.conv(x.reshape(-1, c, 2 * k, 2 * k))
        return x.flatten(2).transpose(1, 2)


def _num_inner_blocks(depth: int) -> int:
    """Blocks of a stage that keep the inner transformer (official: the first, and the second
    too in stages deeper than 6)."""
    return 2 if depth > 6 else 1


class PyramidTNTStage(nn.Module):
    """Optional down-sampling of both token sets, then ``depth`` blocks sharing one attention bias.

    Args:
        depth: blocks in the stage.
        in_grid: (H, W) of the outer tokens entering the stage.
        inner_dim / outer_dim: widths of the stage.
        in_inner_dim / in_outer_dim: widths entering the stage (used when ``downsample``).
        inner_heads / outer_heads: attention heads.
        downsample: halve the grid with word and sentence aggregation first.
        sr_ratio: spatial reduction of the outer attention.
        drop_path: per-block stochastic-depth rates.
        **block_kwargs: passed to :class:`PyramidTNTBlock` (mlp_ratio, qkv_bias, drop rates).
    """

    def __init__(
        self,
        depth: int,
        in_grid: Grid,
        inner_dim: int,
        outer_dim: int,
        in_inner_dim: int,
        in_outer_dim: int,
        inner_heads: int,
        outer_heads: int,
        downsample: bool,
        sr_ratio: int = 1,
        drop_path: Sequence[float] = (),
        **block_kwargs: object,
    ) -> None:
        super().__init__()
        self.in_grid = in_grid
        if downsample:
            self.word_merge: WordAggregation | None = WordAggregation(in_inner_dim, inner_dim)
            self.sentence_merge: SentenceAggregation | None = SentenceAggregation(
                in_outer_dim, outer_dim
            )
            self.grid = ((in_grid[0] + 1) // 2, (in_grid[1] + 1) // 2)
        else:
            self.word_merge = self.sentence_merge = None
            self.grid = in_grid
        num_tokens = self.grid[0] * self.grid[1]
        # AvgPool2d(sr) floors the grid, as in the official code.
        num_kv = (self.grid[0] // sr_ratio) * (self.grid[1] // sr_ratio)
        if num_kv == 0:
            raise ConfigError(f"sr_ratio {sr_ratio} is larger than the {self.grid} token grid")
        # A learned bias on the attention logits, shared by the stage's blocks (official:
        # "relative_pos", initialised from N(0, 1)).
        self.attn_bias = nn.Parameter(torch.randn(1, outer_heads, num_tokens, num_kv))
        drop_path = list(drop_path) or [0.0] * depth
        n_inner = _num_inner_blocks(depth)
        self.blocks = nn.ModuleList(
            PyramidTNTBlock(
                outer_dim,
                outer_heads,
                inner_dim if j < n_inner else None,
                inner_heads,
                sr_ratio=sr_ratio,
                drop_path=drop_path[j],
                **block_kwargs,
            )
            for j in range(depth)
        )

    def forward(
        self, words: torch.Tensor, sentences: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """words (B·N_in, 16, c_in), sentences (B, N_in, d_in) → (B·N, 16, c), (B, N, d)."""
        if self.word_merge is not None and self.sentence_merge is not None:
            words = self.word_merge(words, self.in_grid)
            sentences = self.sentence_merge(sentences, self.in_grid)
        for blk in self.blocks:
            words, sentences = blk(words, sentences, self.grid, self.attn_bias)
        return words, sentences


class PyramidTNT(nn.Module):
    """PyramidTNT with timm's model interface.

    Args:
        img_size: input size the model is built for (the attention biases are sized for it).
        in_chans: input channels.
        num_classes: classifier outputs (0 for none).
        global_pool: ``"avg"`` (mean of the outer tokens) or ``""`` (no pooling).
        outer_dims / inner_dims: widths of the four stages.
        outer_heads / inner_heads: attention heads of the four stages.
        depths: blocks per stage.
        mlp_ratio: MLP hidden width ratio.
        qkv_bias: bias in the q/kv projections.
        sr_ratios: spatial reduction of the outer attention per stage (``None``: (4, 2, 1, 1),
            or (1, 1, 1, 1) for small inputs).
        stem_stride: stride of the first stem conv (``None``: 2, or 1 for small inputs).
        drop_rate: dropout before the classifier.
        pos_drop_rate: dropout on the outer position embedding.
        proj_drop_rate / attn_drop_rate / drop_path_rate: dropouts inside the blocks
            (stochastic depth grows linearly over all blocks).
        device, dtype: where and in what floating dtype the parameters are created.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 256,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        outer_dims: Sequence[int] = (128, 256, 512, 512),
        inner_dims: Sequence[int] = (8, 16, 32, 32),
        outer_heads: Sequence[int] = (4, 8, 16, 16),
        inner_heads: Sequence[int] = (2, 4, 8, 8),
        depths: Sequence[int] = (2, 8, 4, 2),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        sr_ratios: Sequence[int] | None = None,
        stem_stride: int | None = None,
        drop_rate: float = 0.0,
        pos_drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device: DeviceLike = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if global_pool not in ("", "avg"):
            raise ConfigError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        num_stages = len(depths)
        per_stage = (outer_dims, inner_dims, outer_heads, inner_heads)
        if not all(len(s) == num_stages for s in per_stage):
            raise ConfigError("depths, dims and heads must give one value per stage")
        self.img_size = to_2tuple(img_size)
        small = max(self.img_size) <= SMALL_INPUT_MAX
        if stem_stride is None:
            stem_stride = 1 if small else 2
        if sr_ratios is None:
            sr_ratios = (1,) * num_stages if small else (4, 2, 1, 1)[:num_stages]
        patch = stem_stride * WORDS_SIDE
        if self.img_size[0] % patch or self.img_size[1] % patch:
            raise ConfigError(
                f"img_size {self.img_size} must be a multiple of the {patch}-pixel patch "
                f"(stem_stride {stem_stride} × {WORDS_SIDE} words)"
            )
        self.num_classes, self.global_pool, self.drop_rate = num_classes, global_pool, drop_rate
        self.in_chans = in_chans
        self.num_features = self.head_hidden_size = outer_dims[-1]

        with build_on(device, dtype):
            self.stem = PyramidTNTStem(in_chans, inner_dims[0], outer_dims[0], stem_stride)
            grid = (self.img_size[0] // patch, self.img_size[1] // patch)
            self.outer_pos = nn.Parameter(torch.zeros(1, grid[0] * grid[1], outer_dims[0]))
            self.inner_pos = nn.Parameter(torch.zeros(1, WORDS_SIDE**2, inner_dims[0]))
            self.pos_drop = nn.Dropout(pos_drop_rate)

            dpr = calculate_drop_path_rates(drop_path_rate, sum(depths))
            stages, self.feature_info, start = [], [], 0
            for i, depth in enumerate(depths):
                stage = PyramidTNTStage(
                    depth,
                    grid,
                    inner_dims[i],
                    outer_dims[i],
                    inner_dims[max(i - 1, 0)],
                    outer_dims[max(i - 1, 0)],
                    inner_heads[i],
                    outer_heads[i],
                    downsample=i > 0,
                    sr_ratio=sr_ratios[i],
                    drop_path=dpr[start : start + depth],
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                )
                grid, start = stage.grid, start + depth
                stages.append(stage)
                self.feature_info.append(
                    dict(num_chs=outer_dims[i], reduction=patch * 2**i, module=f"stages.{i}")
                )
            self.stages = nn.ModuleList(stages)
            self.norm = nn.LayerNorm(self.num_features)
            self.head_drop = nn.Dropout(drop_rate)
            self._make_head(num_classes)

            trunc_normal_(self.outer_pos, std=0.02)
            trunc_normal_(self.inner_pos, std=0.02)
            self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # The official initialisation: truncated-normal linears, fan-out normal convs.
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"outer_pos", "inner_pos"}

    def get_classifier(self) -> nn.Module:
        return self.head

    def _make_head(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier (and pooling, if given) on the model's device, dtype and mode."""
        if global_pool is not None:
            if global_pool not in ("", "avg"):
                raise ConfigError(f"global_pool must be 'avg' or '', got {global_pool!r}")
            self.global_pool = global_pool
        with build_on(**device_dtype(self)):
            self._make_head(num_classes)
        self.head.train(self.training)

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_input_size(x, self.img_size)
        words, sentences = self.stem(x)
        # As in the official code, dropout acts on the position embedding, not on the tokens.
        return words + self.inner_pos, sentences + self.pos_drop(self.outer_pos)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Outer-token maps of the chosen stages.

        Args:
            x: images (B, C, H, W).
            indices: last n stages if an int, these stages if a list, all if None.
            norm: apply the final norm to the last stage's map.
            stop_early: stop after the last stage asked for.
            output_fmt: ``"NCHW"`` (B, d_i, H_i, W_i) or ``"NLC"`` (B, H_i·W_i, d_i).
            intermediates_only: return only the list of maps.

        Returns:
            The maps, or (final normalised tokens (B, N, d), maps).
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ConfigError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        last = len(self.stages) - 1
        stages = self.stages[: max_index + 1] if stop_early else self.stages
        words, sentences = self._embed(x)
        intermediates = []
        for i, stage in enumerate(stages):
            words, sentences = stage(words, sentences)
            if i in take_indices:
                y = self.norm(sentences) if norm and i == last else sentences
                if output_fmt == "NCHW":
                    y = y.transpose(1, 2).reshape(y.shape[0], -1, *stage.grid)
                intermediates.append(y)
        if intermediates_only:
            return intermediates
        return self.norm(sentences), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages (and norm / head) not needed for the given intermediates."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → normalised outer tokens of the last stage (B, N, num_features)."""
        words, sentences = self._embed(x)
        for stage in self.stages:
            words, sentences = stage(words, sentences)
        return self.norm(sentences)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, N, num_features) → logits (B, num_classes), or pooled features if pre_logits."""
        if self.global_pool == "avg":
            x = x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_pyramid_tnt(variant: str, pretrained: bool = False, **kwargs: object) -> PyramidTNT:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    if "img_size" in kwargs:
        # Record the size the model is built for (the CIFAR adaptation reads 32 here).
        size = to_2tuple(kwargs["img_size"])
        overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
        overlay.setdefault("input_size", (kwargs.get("in_chans", 3), *size))
        kwargs["pretrained_cfg_overlay"] = overlay
    return build_model_with_cfg(
        PyramidTNT,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


def _cfg(size: int, **kwargs: object) -> dict:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, size, size),
        "pool_size": None,
        "fixed_input_size": True,
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "first_conv": "stem.common.0",
        "classifier": "head",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "ptnt_ti": _cfg(192),
        "ptnt_s": _cfg(256),
        "ptnt_m": _cfg(256),
        "ptnt_b": _cfg(256),
    }
)


def _widths(outer: int, inner: int, outer_heads: int, inner_heads: int) -> dict:
    # Stage widths and heads grow ×1, ×2, ×4, ×4 from the stage-1 values.
    mult = (1, 2, 4, 4)
    return dict(
        outer_dims=tuple(outer * m for m in mult),
        inner_dims=tuple(inner * m for m in mult),
        outer_heads=tuple(outer_heads * m for m in mult),
        inner_heads=tuple(inner_heads * m for m in mult),
    )


def _create(
    variant: str, pretrained: bool, size: int, depths: tuple[int, ...], widths: dict, **kwargs
) -> PyramidTNT:
    kwargs.setdefault("img_size", size)
    return _create_pyramid_tnt(variant, pretrained, depths=depths, **widths, **kwargs)


@register_model
def ptnt_ti(pretrained: bool = False, **kwargs: object) -> PyramidTNT:
    """PyramidTNT-Ti (official ``ptnt_ti_patch16_192``): 10.6 M params, 0.6 G MACs at 192 px."""
    return _create("ptnt_ti", pretrained, 192, (2, 6, 3, 2), _widths(80, 5, 2, 1), **kwargs)


@register_model
def ptnt_s(pretrained: bool = False, **kwargs: object) -> PyramidTNT:
    """PyramidTNT-S (official ``ptnt_s_patch16_256``): 32.0 M params, 3.3 G MACs at 256 px."""
    return _create("ptnt_s", pretrained, 256, (2, 8, 4, 2), _widths(128, 8, 4, 2), **kwargs)


@register_model
def ptnt_m(pretrained: bool = False, **kwargs: object) -> PyramidTNT:
    """PyramidTNT-M (official ``ptnt_m_patch16_256``): 85.0 M params, 8.2 G MACs at 256 px."""
    return _create("ptnt_m", pretrained, 256, (2, 8, 6, 2), _widths(192, 12, 4, 2), **kwargs)


@register_model
def ptnt_b(pretrained: bool = False, **kwargs: object) -> PyramidTNT:
    """PyramidTNT-B (official ``ptnt_b_patch16_256``): 157.0 M params, 16.0 G MACs at 256 px."""
    return _create("ptnt_b", pretrained, 256, (2, 10, 6, 2), _widths(256, 16, 4, 2), **kwargs)
