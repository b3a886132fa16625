"""CMT: convolutional neural networks meet vision transformers.

CMT: Convolutional Neural Networks Meet Vision Transformers, Guo et al., CVPR 2022
(arXiv 2107.06263); official code: ``huawei-noah/Efficient-AI-Backbones`` (``cmt_pytorch/cmt.py``).

A hybrid pyramid network. A convolutional stem (three 3×3 conv → GELU → BN, the first with
stride 2) is followed by four stages; each stage starts with a 2×2 stride-2 convolution
"patch embedding" + LayerNorm and stacks CMT blocks:

* **LPU** (local perception unit): ``x = DWConv3×3(x) + x``, a translation-invariant local
  position encoding applied to the token map before attention.
* **LMHSA** (lightweight multi-head self-attention): ``x = x + DropPath(LMHSA(LN(x)))``. Queries
  come from all N tokens; keys and values from the map reduced by a depthwise conv with kernel =
  stride = ``sr_ratio`` followed by BN (N/sr² tokens). A learnable relative position bias of
  shape (heads, N, N/sr²) is added to the attention logits; as in the official code it is one
  parameter per *stage*, shared by all blocks of that stage, initialised from N(0, 1).
* **IRFFN** (inverted residual FFN): ``x = x + DropPath(IRFFN(LN(x)))`` with IRFFN = 1×1 conv →
  GELU → BN, a residual DW3×3 (``h = DW(h) + h``) → GELU → BN, then 1×1 conv → BN.

The head is a 1×1 conv to 1280 channels + BN + Swish (SiLU), global average pooling, dropout
and a linear classifier. ``qkv_bias=True``, ``sr_ratios=(8, 4, 2, 1)``,
``num_heads=(1, 2, 4, 8)``. Variants (input size, as trained): CMT-Ti 160, CMT-XS 192,
CMT-S 224, CMT-B 256. At those sizes every stage's reduced K/V map is img_size/32 on a side.

Fixed input size: the relative position bias has one entry per (query, key) token pair, so a
model serves exactly the ``img_size`` it was built for (``pretrained_cfg["input_size"]``). Any
other input size raises :class:`leanvision.errors.InputShapeError` naming the expected size
(no silent interpolation of the bias); build the model with ``img_size=`` for other sizes.

Small inputs (CIFAR, 32x32): with the ImageNet stem (stride 2) a 32×32 image would leave a 1×1
map in stage 4 (total reduction 32). Unless ``stem_stride`` is given, the stem stride is chosen
from ``img_size``: 2 when the shorter side is at least 64 px, else 1 (total reduction 16). A
32×32 image then gives 16×16, 8×8, 4×4 and 2×2 token grids and, with the unchanged sr ratios
8/4/2/1, a 2×2 reduced K/V map in every stage, the same geometry as 64×64 with the ImageNet
stem. For any size each stage's sr ratio is clipped to its token grid so the reduced K/V map is
at least 1×1; ``img_size`` must leave a stage-4 grid of at least 1×1.

Counts (``leanvision.profiling``; MACs include both attention matmuls; the parameter count
includes the relative position biases): CMT-Ti 9.49M / 0.64 GMACs at 160, CMT-XS 15.25M /
1.55G at 192, CMT-S 26.26M / 4.03G at 224, CMT-B 45.72M / 9.32G at 256. These equal the
official code layer for layer (checked against a transcription of its modules: the same
parameter tensors and, with weights copied across, the same outputs). The paper reports 9.5M / 0.6G,
15.2M / 1.5G, 25.1M / 4.0G and 45.7M / 9.3G: all match except CMT-S's parameter count, which
no counting convention reproduces (leaving out the 0.29M of relative position biases, for
example, would break the Ti/XS/B matches and still not reach 25.1M); the official ``cmt_s``
has 26.26M.

``torch.export`` works (static shapes; the input-size check runs at trace time).
"""

# No `from __future__ import annotations`: torch.fx copies forward's annotations into the code
# it generates, where TorchScript cannot resolve them as strings.
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    DropPath,
    SelectAdaptivePool2d,
    register_notrace_function,
    to_2tuple,
    trunc_normal_,
)
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from leanvision.errors import ConfigError, InputShapeError

from ._device import DeviceLike, build_on, device_dtype

__all__ = [
    "CMT",
    "CMTBlock",
    "CMTStage",
    "InvertedResidualFFN",
    "LightweightAttention",
    "LocalPerceptionUnit",
]


def _conv_out(size: int, kernel: int, stride: int, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


@register_notrace_function  # torch.fx calls it as is; TorchScript compiles it
def check_input_size(x: torch.Tensor, img_size: tuple[int, int]) -> None:
    """Raise ``InputShapeError`` unless ``x`` is (..., H, W) with (H, W) = ``img_size``."""
    if x.shape[-2] != img_size[0] or x.shape[-1] != img_size[1]:
        raise InputShapeError(
            f"CMT was built for {img_size[0]}x{img_size[1]} inputs but got "
            f"{x.shape[-2]}x{x.shape[-1]}: its relative position bias has a fixed token count "
            f"per stage; resize the input or build the model with img_size=({x.shape[-2]}, "
            f"{x.shape[-1]})"
        )


@register_notrace_function
def check_token_grid(
    x: torch.Tensor, grid_size: tuple[int, int], img_size: tuple[int, int]
) -> None:
    """Raise ``InputShapeError`` unless a stage's token map ``x`` is ``grid_size``."""
    if x.shape[-2] != grid_size[0] or x.shape[-1] != grid_size[1]:
        raise InputShapeError(
            f"CMT stage expects a {grid_size[0]}x{grid_size[1]} token grid but got "
            f"{x.shape[-2]}x{x.shape[-1]}: the model was built for {img_size[0]}x{img_size[1]} "
            "inputs (its relative position bias has a fixed token count); build it with "
            "img_size=<your input size>"
        )


def auto_stem_stride(img_size: int | Sequence[int]) -> int:
    """The CIFAR rule: stem stride 2 (ImageNet) when the shorter side is >= 64 px, else 1."""
    return 2 if min(to_2tuple(img_size)) >= 64 else 1


class ConvStem(nn.Module):
    """Three 3×3 conv → GELU → BN layers; the first has stride ``stride``.

    (B, in_chans, H, W) → (B, chs, ⌈H/stride⌉, ⌈W/stride⌉).
    """

    def __init__(self, in_chans: int, chs: int, stride: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, chs, 3, stride, 1)
        self.act1 = nn.GELU()
        self.norm1 = nn.BatchNorm2d(chs)
        self.conv2 = nn.Conv2d(chs, chs, 3, 1, 1)
        self.act2 = nn.GELU()
        self.norm2 = nn.BatchNorm2d(chs)
        self.conv3 = nn.Conv2d(chs, chs, 3, 1, 1)
        self.act3 = nn.GELU()
        self.norm3 = nn.BatchNorm2d(chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(self.act1(self.conv1(x)))
        x = self.norm2(self.act2(self.conv2(x)))
        return self.norm3(self.act3(self.conv3(x)))


class PatchEmbed(nn.Module):
    """Down-sampling between stages: k×k stride-k conv, then LayerNorm over channels.

    (B, in_chs, H, W) → (B, dim, ⌊H/k⌋, ⌊W/k⌋).
    """

    def __init__(self, in_chs: int, dim: int, patch_size: int = 2) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, dim, patch_size, patch_size)
        self.norm = nn.LayerNorm(dim)  # the official code keeps torch's default eps here

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class LocalPerceptionUnit(nn.Module):
    """LPU: ``x + DWConv3×3(x)`` on the (B, C, H, W) token map."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(x)


class LightweightAttention(nn.Module):
    """LMHSA: attention whose keys/values come from a depthwise-conv-reduced map.

    Args:
        dim: token width C.
        num_heads: attention heads.
        sr_ratio: kernel = stride of the depthwise reduction conv (1: no reduction).
        qkv_bias: biases on the q, k, v projections.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int = 1,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ConfigError(f"CMT attention width {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.head_dim, self.sr_ratio = num_heads, dim // num_heads, sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        # Depthwise spatial reduction of the K/V source (Identity when sr_ratio == 1).
        self.sr: nn.Module = nn.Identity()
        if sr_ratio > 1:
            self.sr = nn.Sequential(
                nn.Conv2d(dim, dim, sr_ratio, sr_ratio, groups=dim), nn.BatchNorm2d(dim)
            )
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self, x: torch.Tensor, grid: tuple[int, int], rel_pos: torch.Tensor
    ) -> torch.Tensor:
        """Attend.

        Args:
            x: tokens (B, N, C), N = H·W in row-major order.
            grid: (H, W) of the token map.
            rel_pos: relative position bias (heads, N, M), M = ⌊H/sr⌋·⌊W/sr⌋.

        Returns:
            (B, N, C).
        """
        b, n, c = x.shape
        h, w = grid
        q = self.q(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        kv_src = self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
        k = self.k(kv_src).reshape(b, -1, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v(kv_src).reshape(b, -1, self.num_heads, self.head_dim).transpose(1, 2)
        # softmax(q·kᵀ/√d + B)·v: the bias enters as an additive float mask, broadcast over B.
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=rel_pos, dropout_p=self.attn_drop if self.training else 0.0
        )
        x = x.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class InvertedResidualFFN(nn.Module):
    """IRFFN: 1×1 expand → GELU → BN, residual DW3×3 → GELU → BN, 1×1 project → BN.

    (B, C, H, W) → (B, C, H, W).
    """

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act1 = nn.GELU()
        self.norm1 = nn.BatchNorm2d(hidden)
        self.dw = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act2 = nn.GELU()
        self.norm2 = nn.BatchNorm2d(hidden)
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.norm3 = nn.BatchNorm2d(dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.norm1(self.act1(self.fc1(x))))
        x = self.norm2(self.act2(self.dw(x) + x))
        return self.drop(self.norm3(self.fc2(x)))


class CMTBlock(nn.Module):
    """LPU, then pre-norm LMHSA and IRFFN residual branches; (B, C, H, W) → (B, C, H, W)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        sr_ratio: int = 1,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.lpu = LocalPerceptionUnit(dim)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = LightweightAttention(dim, num_heads, sr_ratio, qkv_bias, attn_drop, proj_drop)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = InvertedResidualFFN(dim, int(dim * mlp_ratio), proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, rel_pos: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W); rel_pos: (heads, H·W, M) shared by the stage's blocks."""
        b, c, h, w = x.shape
        x = self.lpu(x)
        t = x.flatten(2).transpose(1, 2)  # (B, N, C)
        t = t + self.drop_path1(self.attn(self.norm1(t), (h, w), rel_pos))
        y = self.norm2(t).transpose(1, 2).reshape(b, c, h, w)
        t = t + self.drop_path2(self.ffn(y).flatten(2).transpose(1, 2))
        return t.transpose(1, 2).reshape(b, c, h, w)


class CMTStage(nn.Module):
    """Patch embedding, the stage's relative position bias, and its CMT blocks.

    Args:
        in_chs: input channels.
        dim: stage width.
        depth: number of blocks.
        num_heads: attention heads.
        sr_ratio: K/V spatial reduction (already clipped to the grid).
        grid_size: (H, W) token grid after the patch embedding; fixes the bias shape.
        img_size: the model's input size, for error messages.
        mlp_ratio: IRFFN expansion.
        qkv_bias: biases on q, k, v.
        proj_drop: dropout in the attention projection and IRFFN.
        attn_drop: attention-weight dropout.
        drop_path: per-block stochastic depth rates (length ``depth``).
    """

    def __init__(
        self,
        in_chs: int,
        dim: int,
        depth: int,
        num_heads: int,
        sr_ratio: int,
        grid_size: tuple[int, int],
        img_size: tuple[int, int],
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: Sequence[float] = (),
    ) -> None:
        super().__init__()
        self.grid_size, self.img_size, self.sr_ratio = grid_size, img_size, sr_ratio
        self.grad_checkpointing = False
        self.downsample = PatchEmbed(in_chs, dim)
        h, w = grid_size
        n_kv = (h // sr_ratio) * (w // sr_ratio)
        self.rel_pos = nn.Parameter(torch.randn(num_heads, h * w, n_kv))
        dpr = list(drop_path) or [0.0] * depth
        self.blocks = nn.ModuleList(
            CMTBlock(dim, num_heads, mlp_ratio, sr_ratio, qkv_bias, proj_drop, attn_drop, dpr[i])
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chs, 2H, 2W) → (B, dim, H, W)."""
        x = self.downsample(x)
        check_token_grid(x, self.grid_size, self.img_size)
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, self.rel_pos, use_reentrant=False)
            else:
                x = blk(x, self.rel_pos)
        return x


class CMT(nn.Module):
    """CMT with timm's model interface, built for one input size.

    Args:
        img_size: input size (int or (H, W)); fixes every stage's token count.
        in_chans: input channels.
        num_classes: classifier outputs (0 for none).
        embed_dims: widths of the four stages.
        stem_chs: stem width.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        mlp_ratios: IRFFN expansion per stage.
        sr_ratios: K/V spatial reduction per stage, clipped to each stage's token grid.
        stem_stride: stride of the first stem conv; ``None`` picks 2 for inputs of at least
            64 px and 1 below (see the module docstring).
        fc_dim: width of the 1×1 conv before pooling (``num_features``).
        qkv_bias: biases on q, k, v.
        global_pool: ``"avg"`` (default) or another timm pool type; ``""`` for none.
        drop_rate: dropout before the classifier (the official ``dp``: 0.1, CMT-B 0.3).
        proj_drop_rate: dropout inside the blocks (attention projection and IRFFN).
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth, linearly increasing over all blocks.
        device, dtype: where and in what floating dtype the parameters are created.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (46, 92, 184, 368),
        stem_chs: int = 16,
        depths: Sequence[int] = (2, 2, 10, 2),
        num_heads: Sequence[int] = (1, 2, 4, 8),
        mlp_ratios: float | Sequence[float] = 3.6,
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        stem_stride: int | None = None,
        fc_dim: int = 1280,
        qkv_bias: bool = True,
        global_pool: str = "avg",
        drop_rate: float = 0.1,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device: DeviceLike = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        img_size = tuple(to_2tuple(img_size))
        if len(img_size) != 2 or min(img_size) < 1:
            raise ConfigError(f"CMT img_size must be a positive int or (H, W), got {img_size}")
        num_stages = len(embed_dims)
        for name, seq in (("depths", depths), ("num_heads", num_heads), ("sr_ratios", sr_ratios)):
            if len(seq) != num_stages:
                raise ConfigError(f"CMT {name} needs {num_stages} entries, got {list(seq)}")
        if isinstance(mlp_ratios, (int, float)):
            mlp_ratios = [float(mlp_ratios)] * num_stages
        if stem_stride is None:
            stem_stride = auto_stem_stride(img_size)
        self.img_size, self.stem_stride = img_size, stem_stride
        self.num_classes, self.in_chans, self.drop_rate = num_classes, in_chans, drop_rate
        self.embed_dims = list(embed_dims)

        with build_on(device, dtype):
            self.stem = ConvStem(in_chans, stem_chs, stem_stride)
            grid = tuple(_conv_out(s, 3, stem_stride, 1) for s in img_size)
            total = sum(depths)  # stochastic depth grows linearly from 0 to drop_path_rate
            dpr = [drop_path_rate * i / max(1, total - 1) for i in range(total)]
            stages: list[nn.Module] = []
            self.sr_ratios: list[int] = []
            self.feature_info: list[dict[str, Any]] = []
            in_chs, reduction = stem_chs, stem_stride
            for i, dim in enumerate(embed_dims):
                grid = tuple(_conv_out(s, 2, 2) for s in grid)
                reduction *= 2
                if min(grid) < 1:
                    raise ConfigError(
                        f"CMT img_size {img_size} is too small: stage {i + 1} would have no tokens "
                        f"(total reduction {reduction}); use a larger img_size or stem_stride=1"
                    )
                sr = max(1, min(sr_ratios[i], *grid))  # reduced K/V map at least 1x1
                self.sr_ratios.append(sr)
                start = sum(depths[:i])
                stages.append(
                    CMTStage(
                        in_chs,
                        dim,
                        depths[i],
                        num_heads[i],
                        sr,
                        grid,
                        img_size,
                        mlp_ratios[i],
                        qkv_bias,
                        proj_drop_rate,
                        attn_drop_rate,
                        dpr[start : start + depths[i]],
                    )
                )
                self.feature_info.append(
                    dict(num_chs=dim, reduction=reduction, module=f"stages.{i}")
                )
                in_chs = dim
            self.stages = nn.Sequential(*stages)
            self.grid_size = grid

            # Head: 1x1 conv to fc_dim + BN + Swish before pooling (EfficientNet-style), so
            # forward_features ends at fc_dim channels and num_features == fc_dim.
            self.num_features = fc_dim
            self.conv_head = nn.Conv2d(in_chs, fc_dim, 1)
            self.norm_head = nn.BatchNorm2d(fc_dim)
            self.act_head = nn.SiLU()
            self._make_head(num_classes, global_pool)
            self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # As the official code; the relative position biases keep their N(0, 1) init.
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for s in self.stages:
            s.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def _make_head(self, num_classes: int, global_pool: str) -> None:
        self.num_classes = num_classes
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.head_drop = nn.Dropout(self.drop_rate)
        fc = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        self.head = fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier (and pooling, if given) on the model's device, dtype and mode."""
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        with build_on(**device_dtype(self)):
            self._make_head(num_classes, global_pool)
        for m in (self.global_pool, self.head_drop, self.head):
            m.train(self.training)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (B, embed_dims[i], H/r_i, W/r_i) for the selected stages.

        Args:
            x: (B, in_chans, H, W) at the model's ``img_size``.
            indices: last n stages if int, all if None, else the listed stage indices.
            norm: unused (CMT has no final norm on stage features).
            stop_early: stop after the last requested stage.
            output_fmt: only ``"NCHW"``.
            intermediates_only: return only the list of stage features.

        Returns:
            The intermediates, or (forward_features output, intermediates).
        """
        if output_fmt != "NCHW":
            raise ConfigError(f"CMT intermediates support output_fmt='NCHW', got {output_fmt!r}")
        check_input_size(x, self.img_size)
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[: max_index + 1] if stop_early else self.stages
        intermediates = []
        x = self.stem(x)
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        if len(stages) == len(self.stages):
            x = self.act_head(self.norm_head(self.conv_head(x)))
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last requested one (and the head); returns the indices."""
        take_indices, max_index = feature_take_indices(len(self.stages), indices)
        if max_index < len(self.stages) - 1:
            self.stages = self.stages[: max_index + 1]
            # The head was sized for the last stage, so it goes with it.
            for name in ("conv_head", "norm_head", "act_head"):
                setattr(self, name, nn.Identity())
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            prune_head = True
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) → (B, fc_dim, H/r, W/r), r = 16·stem_stride."""
        check_input_size(x, self.img_size)
        x = self.stages(self.stem(x))
        return self.act_head(self.norm_head(self.conv_head(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, fc_dim, h, w) → (B, num_classes), or (B, fc_dim) with ``pre_logits``."""
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# Input size each variant was trained (and is built) at.
_IMG_SIZE = {"cmt_ti": 160, "cmt_xs": 192, "cmt_s": 224, "cmt_b": 256}


def _create_cmt(variant: str, pretrained: bool = False, **kwargs: Any) -> CMT:
    # The model is built for one input size: record it in pretrained_cfg (and take the
    # variant's trained size when none is given).
    img_size = to_2tuple(kwargs.pop("img_size", None) or _IMG_SIZE[variant])
    kwargs["img_size"] = tuple(img_size)
    in_chans = kwargs.get("in_chans", 3)
    stem_stride = kwargs.get("stem_stride") or auto_stem_stride(img_size)
    overlay = dict(
        input_size=(in_chans, *img_size),
        pool_size=tuple(max(1, s // (16 * stem_stride)) for s in img_size),
    )
    overlay.update(kwargs.pop("pretrained_cfg_overlay", None) or {})
    return build_model_with_cfg(
        CMT,
        variant,
        pretrained,
        pretrained_cfg_overlay=overlay,
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2, 3)),
        **kwargs,
    )


def _cfg(img_size: int, **kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, img_size, img_size),
        "pool_size": (img_size // 32, img_size // 32),
        "fixed_input_size": True,
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv1",
        "classifier": "head",
        "paper_ids": "arXiv:2107.06263",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({name: _cfg(size) for name, size in _IMG_SIZE.items()})


@register_model
def cmt_ti(pretrained: bool = False, **kwargs: Any) -> CMT:
    """CMT-Ti at 160×160: widths 46-368, depths 2-2-10-2, IRFFN ratio 3.6."""
    args = dict(embed_dims=(46, 92, 184, 368), stem_chs=16, depths=(2, 2, 10, 2), mlp_ratios=3.6)
    return _create_cmt("cmt_ti", pretrained, **{**args, **kwargs})


@register_model
def cmt_xs(pretrained: bool = False, **kwargs: Any) -> CMT:
    """CMT-XS at 192×192: widths 52-416, depths 3-3-12-3, IRFFN ratio 3.77."""
    args = dict(embed_dims=(52, 104, 208, 416), stem_chs=16, depths=(3, 3, 12, 3), mlp_ratios=3.77)
    return _create_cmt("cmt_xs", pretrained, **{**args, **kwargs})


@register_model
def cmt_s(pretrained: bool = False, **kwargs: Any) -> CMT:
    """CMT-S at 224×224: widths 64-512, depths 3-3-16-3, IRFFN ratio 4."""
    args = dict(embed_dims=(64, 128, 256, 512), stem_chs=32, depths=(3, 3, 16, 3), mlp_ratios=4.0)
    return _create_cmt("cmt_s", pretrained, **{**args, **kwargs})


@register_model
def cmt_b(pretrained: bool = False, **kwargs: Any) -> CMT:
    """CMT-B at 256×256: widths 76-608, depths 4-4-20-4, IRFFN ratio 4, head dropout 0.3."""
    args = dict(
        embed_dims=(76, 152, 304, 608),
        stem_chs=38,
        depths=(4, 4, 20, 4),
        mlp_ratios=4.0,
        drop_rate=0.3,
    )
    return _create_cmt("cmt_b", pretrained, **{**args, **kwargs})
