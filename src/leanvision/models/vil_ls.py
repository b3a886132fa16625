"""ViL-LS: the multi-scale Vision Longformer with Transformer-LS long-short attention.

Long-Short Transformer: Efficient Transformers for Language and Vision, Zhu et al., NeurIPS 2021
(arXiv 2107.02192), official code ``NVIDIA/transformer-ls`` (``imagenet/models/msvit.py``, built on
ViL, ``microsoft/vision-longformer``). Four stages; each starts with a patch embedding (a strided
convolution + LayerNorm, then ``g`` fresh global tokens) and stacks pre-norm attention + MLP
blocks. Stages with ``s1`` use :class:`~leanvision.layers.long_short_attention.LongShortAttention`
(window ``f``, dynamic-projection rank ``r``, relative position bias on the window when there is
no absolute position embedding, ``a0``); stages with ``s0`` use full attention with a 2D relative
position bias (plus global-to-local and global-to-global biases). The global tokens of a stage
are dropped before the next patch embedding. The classifier reads the last stage's global token,
or the mean of all its tokens when it has none.

Architecture strings (as in the official code): stages separated by ``_``, each a list of
``<key><int>``: ``l`` stage id, ``h`` heads, ``d`` width, ``n`` blocks, ``p`` patch size, ``s``
long-short (1) or full (0) attention, ``g`` global tokens, ``f`` window, ``a`` absolute position
embedding, ``r`` dynamic-projection rank. Missing keys take the official defaults
(``h3,d192,n1,s1,g1,p2,f7,a1,r0``). The registered variants use the strings of the official
ImageNet launch scripts: LS attention in stages 1-2 (56² and 28² tokens at 224) and full
attention in stages 3-4 (14² and 7²), relative position bias everywhere, no global token in
stage 4 (so average pooling).

Counts at 224 (``leanvision.profiling``; MACs = multiply-accumulates, the convention of the
official README's "FLOPs"): ``vil_ls_medium`` 39.80M params, 8.69 GMACs (official 39.8M / 8.7G);
``vil_ls_base`` 55.83M, 13.34 GMACs (official 55.8M / 13.4G). The parameter counts equal those of
the official ``MsViT`` exactly, and with the same weights the logits agree. The README numbers
are reproduced only when every matrix product of the long-short attention (window, projection
and global scores) is counted as well (without them: 8.35 / 12.78 GMACs). The official 384
model (``arch=ARCH_MEDIUM.replace("f7", "f8"), img_size=384``) gives 39.95M params and
28.65 GMACs (README: 39.8M, 28.7G; its full-attention position tables grow with the map).

Small inputs (CIFAR, 32x32): with ``img_size <= 64`` the first patch embedding uses patch 2
instead of 4 (patches 2, 2, 2, 2) and the long-short window is 4 instead of 7, so a 32x32 image
gives 16², 8², 4² and 2² tokens: stage 1 has 4x4 segments of 4x4 tokens (each query sees an 8x8
tile plus the projected and global tokens), stage 2 has 2x2 segments. Explicit ``patch_sizes`` /
``window_size`` arguments override the rule. The full-attention stages and their relative
position tables are built for ``img_size`` (the input size is fixed, as in the official code).
"""

# No `from __future__ import annotations`: torch.fx copies forward's annotations into the code
# it generates, where TorchScript cannot resolve them as strings.
from collections.abc import Sequence
from functools import partial
from typing import Any, Final

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, register_notrace_function, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from leanvision.layers.long_short_attention import LongShortAttention

from ._device import DeviceLike, build_on, device_dtype

__all__ = ["ViLLS", "FullAttention2d", "parse_arch"]

# Defaults of the official arch-string parser (msvit.py).
_ARCH_DEFAULTS = {"l": 1, "h": 3, "d": 192, "n": 1, "s": 1, "g": 1, "p": 2, "f": 7, "a": 1, "r": 0}

ARCH_MEDIUM = (
    "l1,h3,d96,n1,s1,g1,p4,f7,a0,r8_l2,h3,d192,n4,s1,g1,p2,f7,a0,r8_"
    "l3,h6,d384,n16,s0,g1,p2,f7,a0,r8_l4,h12,d768,n1,s0,g0,p2,f7,a0,r8"
)
ARCH_BASE = (
    "l1,h3,d96,n1,s1,g1,p4,f7,a0,r8_l2,h3,d192,n8,s1,g1,p2,f7,a0,r8_"
    "l3,h6,d384,n24,s0,g1,p2,f7,a0,r8_l4,h12,d768,n1,s0,g0,p2,f7,a0,r8"
)


def parse_arch(arch: str) -> list[dict[str, int]]:
    """Parse an official arch string into one dict per stage (keys l, h, d, n, s, g, p, f, a, r)."""
    stages = []
    for i, spec in enumerate(arch.split("_")):
        cfg = dict(_ARCH_DEFAULTS)
        for item in spec.split(","):
            if item[:1] not in _ARCH_DEFAULTS or not item[1:].isdigit():
                raise ValueError(f"bad arch item {item!r} in stage {i + 1} of {arch!r}")
            cfg[item[0]] = int(item[1:])
        if cfg["l"] != i + 1:
            raise ValueError(f"stage {i + 1} of {arch!r} is labelled l{cfg['l']}")
        stages.append(cfg)
    return stages


@register_notrace_function  # torch.fx calls it as is (the map size is a traced value)
def check_map_size(hw: tuple[int, int], built_for: tuple[int, int], what: str) -> None:
    """Raise ``ValueError`` unless the token map ``hw`` is the (H, W) ``what`` was built for."""
    if hw[0] != built_for[0] or hw[1] != built_for[1]:
        raise ValueError(
            f"{what} was built for a ({built_for[0]}, {built_for[1]}) map, got ({hw[0]}, {hw[1]})"
        )


class FullAttention2d(nn.Module):
    """Multi-head attention over ``nglo`` global tokens + an ``H×W`` map, with 2D relative bias.

    The bias (``rpe=True``) has a Swin-style table over the (2H-1)(2W-1) offsets between image
    tokens, one learnable bias for global→image and one for image→global per head and global
    token, and a global→global matrix. The map size is fixed at construction.

    Args:
        dim: token width.
        num_heads: attention heads.
        hw: (H, W) of the token map.
        nglo: number of global tokens at the front.
        qkv_bias: bias in the query/key/value projection.
        attn_drop, proj_drop: dropout on the attention weights / after the projection.
        rpe: use the relative position bias.
    """

    # Constants for TorchScript: the bias parameters exist only when these are set.
    rpe: Final[bool]
    has_global_bias: Final[bool]

    def __init__(
        self,
        dim: int,
        num_heads: int,
        hw: tuple[int, int],
        nglo: int = 1,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        rpe: bool = True,
    ) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim**-0.5
        self.hw, self.nglo, self.rpe = tuple(hw), nglo, rpe
        self.has_global_bias = rpe and nglo > 0
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if rpe:
            H, W = self.hw
            self.local_relative_position_bias_table = nn.Parameter(
                torch.zeros((2 * H - 1) * (2 * W - 1), num_heads)
            )
            trunc_normal_(self.local_relative_position_bias_table, std=0.02)
            if nglo > 0:
                self.g2l_relative_position_bias = nn.Parameter(torch.zeros(2, num_heads, nglo))
                self.g2g_relative_position_bias = nn.Parameter(torch.zeros(num_heads, nglo, nglo))
                trunc_normal_(self.g2l_relative_position_bias, std=0.02)
                trunc_normal_(self.g2g_relative_position_bias, std=0.02)
            ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
            ys, xs = ys.flatten(), xs.flatten()
            index = (ys[:, None] - ys[None, :] + H - 1) * (2 * W - 1) + (xs[:, None] - xs[None, :])
            self.register_buffer("relative_position_index", index + W - 1, persistent=False)

    def _bias(self) -> torch.Tensor:
        """(h, N, N) additive score bias, N = nglo + H·W."""
        n_loc = self.hw[0] * self.hw[1]
        local = self.local_relative_position_bias_table[self.relative_position_index]
        local = local.permute(2, 0, 1)  # (h, HW, HW)
        if not self.has_global_bias:
            return local
        g2l, l2g = self.g2l_relative_position_bias.unbind(0)
        top = torch.cat([self.g2g_relative_position_bias, g2l[:, :, None].expand(-1, -1, n_loc)], 2)
        bottom = torch.cat([l2g[:, None].expand(-1, n_loc, -1), local], dim=2)
        return torch.cat([top, bottom], dim=1)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """(B, nglo + H·W, C) → (B, nglo + H·W, C)."""
        if self.rpe:
            check_map_size(hw, self.hw, "FullAttention2d")
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).unbind(2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        bias = self._bias().to(q.dtype)[None] if self.rpe else None
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=bias,
            dropout_p=self.attn_drop if self.training else 0.0,
            scale=self.scale,
        )
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(
        self,
        dim: int,
        attn: nn.Module,
        mlp_ratio: float = 4.0,
        drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = attn
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """(B, N, C) → (B, N, C)."""
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Strided-conv patch embedding + LayerNorm, then global tokens and optional absolute
    position embedding (a learned row half and column half of the channels, as in ViL)."""

    ape: Final[bool]  # a constant for TorchScript: the position embeddings exist only if set

    def __init__(
        self,
        in_chs: int,
        dim: int,
        patch_size: int,
        hw: tuple[int, int],
        nglo: int,
        ape: bool,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, dim, patch_size, patch_size)
        self.norm_embed = norm_layer(dim)
        self.nglo, self.hw = nglo, tuple(hw)
        self.cls_token = nn.Parameter(torch.zeros(1, nglo, dim)) if nglo > 0 else None
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)
        self.ape = ape
        if ape:
            self.cls_pos_embed = nn.Parameter(torch.zeros(1, nglo, dim))
            self.x_pos_embed = nn.Parameter(torch.zeros(1, hw[0], dim // 2))
            self.y_pos_embed = nn.Parameter(torch.zeros(1, hw[1], dim - dim // 2))
            for p in (self.cls_pos_embed, self.x_pos_embed, self.y_pos_embed):
                trunc_normal_(p, std=0.02)
        self.pos_drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C_in, H_in, W_in) → tokens (B, nglo + H·W, dim) and (H, W)."""
        x = self.proj(x)
        b, _, h, w = x.shape
        x = self.norm_embed(x.flatten(2).transpose(1, 2))
        if self.ape:
            check_map_size((h, w), self.hw, "the absolute position embedding")
            pos = torch.cat(
                [
                    self.x_pos_embed[:, :, None].expand(-1, -1, w, -1),
                    self.y_pos_embed[:, None].expand(-1, h, -1, -1),
                ],
                dim=-1,
            ).flatten(1, 2)
            x = x + pos
        if self.cls_token is not None:
            cls = self.cls_token.expand(b, -1, -1)
            if self.ape:
                cls = cls + self.cls_pos_embed
            x = torch.cat([cls, x], dim=1)
        return self.pos_drop(x), (h, w)


class ViLLSStage(nn.Module):
    """Patch embedding followed by ``depth`` blocks; returns tokens and the map size."""

    def __init__(self, patch_embed: PatchEmbed, blocks: list[Block]) -> None:
        super().__init__()
        self.patch_embed = patch_embed
        self.blocks = nn.ModuleList(blocks)
        self.nglo = patch_embed.nglo

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, C_in, H_in, W_in) → (B, nglo + H·W, C), (H, W)."""
        x, hw = self.patch_embed(x)
        for blk in self.blocks:
            x = blk(x, hw)
        return x, hw

    def to_map(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """Drop the global tokens: (B, nglo + H·W, C) → (B, C, H, W)."""
        return x[:, self.nglo :].transpose(1, 2).reshape(x.shape[0], -1, hw[0], hw[1])


class ViLLS(nn.Module):
    """Multi-scale ViL with long-short attention, with timm's model interface.

    Args:
        arch: official architecture string (see the module docstring).
        img_size: input size the model is built for, int or (H, W) (fixes the token maps).
        in_chans: input channels.
        num_classes: classifier outputs (0 for none).
        global_pool: ``"token"`` (first global token) or ``"avg"`` (mean of all tokens); by
            default ``"token"`` if the last stage has global tokens, else ``"avg"``.
        patch_sizes: per-stage patch sizes overriding the arch string (and the small-input rule).
        window_size: long-short window for every LS stage, overriding ``f`` (and the rule).
        qkv_bias: bias in the query/key/value projections.
        mlp_ratio: MLP hidden width / width.
        drop_rate: dropout after attention/MLP projections and the patch embedding.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth, increasing linearly over all blocks.
        device, dtype: where and in what floating dtype the parameters are created.
    """

    def __init__(
        self,
        arch: str = ARCH_MEDIUM,
        img_size: int | tuple[int, int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str | None = None,
        patch_sizes: Sequence[int] | None = None,
        window_size: int | None = None,
        qkv_bias: bool = True,
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device: DeviceLike = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        cfgs = parse_arch(arch)
        if len(cfgs) not in (3, 4):
            raise ValueError(f"ViL-LS has 3 or 4 stages, got {len(cfgs)} in {arch!r}")
        img_hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        small = max(img_hw) <= 64
        if patch_sizes is None:
            patch_sizes = [c["p"] for c in cfgs]
            if small:  # CIFAR rule: halve the first patch (4 → 2) so later maps keep 2+ tokens
                patch_sizes[0] = max(1, patch_sizes[0] // 2)
        if len(patch_sizes) != len(cfgs):
            raise ValueError(f"patch_sizes needs {len(cfgs)} entries, got {list(patch_sizes)}")
        if window_size is None and small:
            window_size = 4
        norm_layer = partial(nn.LayerNorm, eps=1e-6)

        self.num_classes, self.in_chans, self.img_size = num_classes, in_chans, img_hw
        self.nglo_last = cfgs[-1]["g"]
        self.global_pool = global_pool or ("token" if self.nglo_last > 0 else "avg")
        self._check_pool(self.global_pool)
        depth = sum(c["n"] for c in cfgs)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear decay
        stages, self.feature_info = [], []
        in_chs, hw, reduction, k = in_chans, img_hw, 1, 0
        with build_on(device, dtype):
            for i, (cfg, p) in enumerate(zip(cfgs, patch_sizes)):
                hw, reduction = (hw[0] // p, hw[1] // p), reduction * p
                if min(hw) < 1:
                    raise ValueError(f"img_size {img_size} leaves no tokens at stage {i + 1}")
                dim, nglo = cfg["d"], cfg["g"]
                embed = PatchEmbed(
                    in_chs, dim, p, hw, nglo, bool(cfg["a"]), norm_layer=norm_layer, drop=drop_rate
                )
                blocks = []
                for _ in range(cfg["n"]):
                    if cfg["s"]:
                        attn: nn.Module = LongShortAttention(
                            dim,
                            cfg["h"],
                            window_size=window_size or cfg["f"],
                            dp_rank=cfg["r"],
                            nglo=nglo,
                            qkv_bias=qkv_bias,
                            attn_drop=attn_drop_rate,
                            proj_drop=drop_rate,
                            rpe=not cfg["a"],
                        )
                    else:
                        attn = FullAttention2d(
                            dim,
                            cfg["h"],
                            hw,
                            nglo=nglo,
                            qkv_bias=qkv_bias,
                            attn_drop=attn_drop_rate,
                            proj_drop=drop_rate,
                            rpe=not cfg["a"],
                        )
                    blocks.append(Block(dim, attn, mlp_ratio, drop_rate, dpr[k], norm_layer))
                    k += 1
                stages.append(ViLLSStage(embed, blocks))
                self.feature_info.append(
                    dict(num_chs=dim, reduction=reduction, module=f"stages.{i}")
                )
                in_chs = dim
            self.stages = nn.ModuleList(stages)
            self.num_features = self.head_hidden_size = in_chs
            self.norm = norm_layer(in_chs)
            self._make_head(num_classes)
            self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # As the official code: linear layers truncated-normal(0.02), LayerNorms at identity;
        # convolutions keep PyTorch's default initialisation.
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _check_pool(self, pool: str) -> None:
        if pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {pool!r}")
        if pool == "token" and self.nglo_last == 0:
            raise ValueError("global_pool='token' needs a global token in the last stage")

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Names (substrings) of parameters usually trained without weight decay."""
        return {"cls_token", "pos_embed", "relative_position"}

    def get_classifier(self) -> nn.Module:
        return self.head

    def _make_head(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier (and pooling, if given) on the model's device, dtype and mode."""
        if global_pool:
            self._check_pool(global_pool)
            self.global_pool = global_pool
        with build_on(**device_dtype(self)):
            self._make_head(num_classes)
        self.head.train(self.training)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the stages and return each selected stage's image tokens as (B, C, H, W) maps.

        Args:
            x: (B, C, H, W) images.
            indices: last n stages if int, all if None, else the stage indices to return.
            norm: apply the final norm to the last stage's output before returning it.
            stop_early: stop after the last requested stage.
            output_fmt: only ``"NCHW"``.
            intermediates_only: return only the list of maps.

        Returns:
            The maps, or (final tokens after the norm (B, N, C), maps).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[: max_index + 1] if stop_early else self.stages
        last = len(self.stages) - 1
        intermediates = []
        for i, stage in enumerate(stages):
            tokens, hw = stage(x)
            x = stage.to_map(tokens, hw)  # the next stage's input
            if i in take:
                intermediates.append(
                    stage.to_map(self.norm(tokens), hw) if norm and i == last else x
                )
        if intermediates_only:
            return intermediates
        # After an early stop the final norm (sized for the last stage) does not apply.
        return (self.norm(tokens) if len(stages) == len(self.stages) else tokens), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last requested one (and the norm/head if asked)."""
        take, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        if max_index < len(self.feature_info) - 1 or prune_norm:
            self.norm = nn.Identity()
        if prune_head or max_index < len(self.feature_info) - 1:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            self.head = nn.Identity()
            self.num_classes = 0
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → final tokens after the norm, (B, nglo + H'·W', num_features)."""
        for i, stage in enumerate(self.stages):
            tokens, hw = stage(x)
            if i < len(self.stages) - 1:
                x = stage.to_map(tokens, hw)
        return self.norm(tokens)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, N, C) tokens → logits (B, num_classes), or pooled (B, C) if ``pre_logits``."""
        x = x[:, 0] if self.global_pool == "token" else x.mean(dim=1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_vil_ls(variant: str, pretrained: bool = False, **kwargs: Any) -> ViLLS:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    img_size = kwargs.get("img_size", 224)
    img_hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    in_chans = kwargs.get("in_chans", 3)
    # Record the size the model is built for (timm passes the overlay key even when unset).
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    overlay.setdefault("input_size", (in_chans, *img_hw))
    return build_model_with_cfg(
        ViLLS,
        variant,
        pretrained,
        pretrained_cfg_overlay=overlay,
        feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
        **kwargs,
    )


def _cfg(**kwargs: Any) -> dict[str, Any]:
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
        "first_conv": "stages.0.patch_embed.proj",
        "classifier": "head",
        "paper_ids": "arXiv:2107.02192",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({"vil_ls_medium": _cfg(), "vil_ls_base": _cfg()})


@register_model
def vil_ls_medium(pretrained: bool = False, **kwargs: Any) -> ViLLS:
    """ViL-LS-medium (39.8M params, 8.7 GMACs at 224; 83.8% ImageNet top-1 reported)."""
    return _create_vil_ls("vil_ls_medium", pretrained, **dict(dict(arch=ARCH_MEDIUM), **kwargs))


@register_model
def vil_ls_base(pretrained: bool = False, **kwargs: Any) -> ViLLS:
    """ViL-LS-base (55.8M params, 13.4 GMACs at 224; 84.1% ImageNet top-1 reported)."""
    return _create_vil_ls("vil_ls_base", pretrained, **dict(dict(arch=ARCH_BASE), **kwargs))
