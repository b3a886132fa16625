"""Aug-ViT: DeiT with augmented shortcuts (block-circulant parallel paths).

Augmented Shortcuts for Vision Transformers, Tang et al., NeurIPS 2021 (arXiv 2106.15941).
Official code: ``huawei-noah/Efficient-AI-Backbones``, ``augvit_pytorch/models/augvit.py``.

Without shortcuts the token features of a deep transformer collapse towards a rank-one matrix
(all tokens alike) exponentially with depth; the identity shortcut slows this, and *augmented*
shortcuts — learnable per-token projections in parallel with it — slow it further (see
:func:`leanvision.analysis.feature_diversity`). Each sub-layer of a DeiT block (qkv bias, LN eps
1e-6) gets augmented paths ``T(·)`` applied to the same *normalised* input as the sub-layer:

* ``circulant`` / ``linear``: ``x ← x + DP(Attn(LN₁x)) + T_a(LN₁x)``, then the same with
  ``MLP``/``LN₂`` and ``T_m``; ``T`` is one :class:`~leanvision.layers.circulant.CirculantLinear`
  (block-circulant, 4 blocks: ``5·dim`` parameters with bias) or a dense ``nn.Linear``.
* ``circulant2`` / ``linear2``: two paths per sub-layer, each ``projection → GELU``, and the
  four-term sum is scaled by ¾: ``x ← ¾·(x + DP(Attn(n)) + T₁(n) + T₂(n))`` (same for the MLP).

The plain names ``augvit_tiny`` / ``augvit_small`` / ``augvit_base`` use ``circulant2``, the
configuration the official README trains (``--model augvit_small_circulant2``) and that the
official code registers for both sizes it ships (``augvit_small_circulant2``,
``augvit_base_circulant2``); the ``*_circulant2`` names are explicit aliases. (The official
``augvit_small`` is mode ``base``, a plain DeiT-S: use timm's ``deit_small_patch16_224`` for that
baseline.) Other modes: ``lv.create_model("augvit_small", aug_mode="circulant")``.
The ImageNet pre-processing follows the official cfg (ViT-B's: mean = std = 0.5, crop 0.9).

Cost: the augmented paths add ``20·dim`` parameters per block in ``circulant2`` (+0.4 % over
DeiT-S). The default forward materialises the dense circulant weight (as the official code does,
and as export needs), so measured MACs include ``4·dim²`` per token and block (+30 % for DeiT-S);
the paper's "≈ the same FLOPs" assumes the FFT product (``CirculantLinear(use_fft=True)``,
``O(dim·log b)`` per token; :meth:`CirculantLinear.fft_macs` estimates it).

Small inputs (CIFAR, 32x32): an image smaller than 112 pixels (where 16-pixel patches would
leave fewer than 7×7 tokens) is cut into 4×4 patches, so 32×32 inputs give 8×8 = 64 patch
tokens plus the class token; width, depth and heads are unchanged. An explicit ``patch_size``
overrides the rule, and ``pretrained_cfg["input_size"]`` records the size built for.
"""

# No `from __future__ import annotations`: torch.fx copies forward's annotations into the code
# it generates, where TorchScript cannot resolve them as strings.
from functools import partial
from typing import Any

import torch
from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from leanvision.layers.circulant import CirculantLinear

from ._device import DeviceLike, build_on

__all__ = ["AugViT", "AugBlock", "AUG_MODES"]

AUG_MODES = ("circulant", "circulant2", "linear", "linear2")


class AugBlock(Block):
    """DeiT block (timm's ``Block``) with augmented shortcuts on the normalised inputs.

    Args:
        dim: Token width.
        num_heads: Attention heads.
        aug_mode: One of :data:`AUG_MODES` (see the module docstring).
        circulant_blocks: Circulant blocks per dimension of each projection (``num_cir``).
        device, dtype: where and in what floating dtype the parameters are created.
        **kwargs: Passed to timm's ``Block`` (``mlp_ratio``, ``qkv_bias``, ``drop_path``,
            ``norm_layer``, ``act_layer``, ...).

    Shapes:
        (B, N, dim) → (B, N, dim).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        aug_mode: str = "circulant2",
        circulant_blocks: int = 4,
        device: DeviceLike = None,
        dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(dim, num_heads, device=device, dtype=dtype, **kwargs)
        if aug_mode not in AUG_MODES:
            raise ValueError(f"aug_mode must be one of {AUG_MODES}, got {aug_mode!r}")
        self.aug_mode = aug_mode
        act_layer = kwargs.get("act_layer") or nn.GELU
        two_paths = aug_mode.endswith("2")

        def projection() -> nn.Module:
            if aug_mode.startswith("circulant"):
                return CirculantLinear(dim, dim, num_blocks=circulant_blocks, bias=True)
            return nn.Linear(dim, dim)

        def paths() -> nn.ModuleList:
            if two_paths:  # two projection → activation paths
                return nn.ModuleList(nn.Sequential(projection(), act_layer()) for _ in range(2))
            return nn.ModuleList([projection()])  # one purely linear path

        with build_on(device, dtype):
            self.aug_attn = paths()
            self.aug_mlp = paths()
        # Official: the four-term sum of the two-path modes is scaled by 3/4, which keeps the
        # residual stream from growing with the extra paths.
        self.residual_scale = 0.75 if two_paths else 1.0

    def forward(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
    ) -> torch.Tensor:
        """(B, N, dim) → (B, N, dim)."""
        # The paths are summed in loops over the ModuleLists (TorchScript cannot index one
        # passed as an argument).
        x_norm = self.norm1(x)
        attn = self.attn(x_norm, attn_mask=attn_mask, is_causal=is_causal)
        aug: torch.Tensor | None = None
        for path in self.aug_attn:
            aug = path(x_norm) if aug is None else aug + path(x_norm)
        assert aug is not None
        x = x + self.drop_path1(self.ls1(attn)) + aug
        if self.residual_scale != 1.0:
            x = x * self.residual_scale
        x_norm = self.norm2(x)
        aug = None
        for path in self.aug_mlp:
            aug = path(x_norm) if aug is None else aug + path(x_norm)
        assert aug is not None
        x = x + self.drop_path2(self.ls2(self.mlp(x_norm))) + aug
        if self.residual_scale != 1.0:
            x = x * self.residual_scale
        return x


class AugViT(VisionTransformer):
    """Aug-ViT / Aug-DeiT: timm's ``VisionTransformer`` built from :class:`AugBlock`.

    The whole timm ViT interface is inherited (``forward_features``, ``forward_head``,
    ``forward_intermediates``, ``reset_classifier``, ``features_only``).

    Args:
        aug_mode: Augmented-shortcut mode, one of :data:`AUG_MODES`.
        circulant_blocks: Circulant blocks per projection dimension (4 in the paper).
        **kwargs: ``VisionTransformer`` arguments (``img_size``, ``patch_size``, ``embed_dim``,
            ``depth``, ``num_heads``, ``num_classes``, ``in_chans``, ``drop_path_rate``, ...).
    """

    def __init__(
        self, aug_mode: str = "circulant2", circulant_blocks: int = 4, **kwargs: Any
    ) -> None:
        if aug_mode not in AUG_MODES:
            raise ValueError(f"aug_mode must be one of {AUG_MODES}, got {aug_mode!r}")
        block_fn = partial(AugBlock, aug_mode=aug_mode, circulant_blocks=circulant_blocks)
        kwargs.setdefault("qkv_bias", True)
        super().__init__(block_fn=block_fn, **kwargs)
        self.aug_mode, self.circulant_blocks = aug_mode, circulant_blocks

    def init_weights(self, mode: str = "", needs_reset: bool = True) -> None:
        """timm's ViT init; nn.Linear gets trunc-normal(0.02) (the ``linear`` paths included)
        while circulant projections keep their Kaiming-uniform init, as in the official code."""
        super().init_weights(mode, needs_reset)
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)  # official (DeiT) init, not timm's 1e-6


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": None,
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "fixed_input_size": True,
        "mean": IMAGENET_INCEPTION_MEAN,
        "std": IMAGENET_INCEPTION_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        f"augvit_{size}{suffix}": _cfg()
        for size in ("tiny", "small", "base")
        for suffix in ("", "_circulant2")
    }
)


def _create_augvit(variant: str, pretrained: bool = False, **kwargs: Any) -> AugViT:
    """Build an Aug-ViT: 16×16 patches, 4×4 below 112 pixels, unless ``patch_size`` is given."""
    img_size = kwargs.get("img_size", 224)
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    kwargs.setdefault("patch_size", 16 if min(h, w) >= 112 else 4)
    in_chans = kwargs.get("in_chans", 3)
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    overlay.setdefault("input_size", (in_chans, h, w))
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        AugViT,
        variant,
        pretrained,
        pretrained_cfg_overlay=overlay,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


def _size_args(embed_dim: int, num_heads: int) -> dict[str, Any]:
    return dict(embed_dim=embed_dim, depth=12, num_heads=num_heads, mlp_ratio=4.0)


_TINY, _SMALL, _BASE = _size_args(192, 3), _size_args(384, 6), _size_args(768, 12)


def _build(variant: str, size: dict[str, Any], pretrained: bool, kwargs: dict) -> AugViT:
    kwargs.setdefault("aug_mode", "circulant2")
    return _create_augvit(variant, pretrained, **{**size, **kwargs})


@register_model
def augvit_tiny(pretrained: bool = False, **kwargs: Any) -> AugViT:
    """Aug-DeiT-Ti (dim 192, 3 heads, circulant2): DeiT-Ti + 46 k params."""
    return _build("augvit_tiny", _TINY, pretrained, kwargs)


@register_model
def augvit_small(pretrained: bool = False, **kwargs: Any) -> AugViT:
    """Aug-DeiT-S (dim 384, 6 heads, circulant2): DeiT-S + 92 k params; paper 80.4 % top-1."""
    return _build("augvit_small", _SMALL, pretrained, kwargs)


@register_model
def augvit_base(pretrained: bool = False, **kwargs: Any) -> AugViT:
    """Aug-DeiT-B (dim 768, 12 heads, circulant2): DeiT-B + 184 k params; paper 82.4 % top-1."""
    return _build("augvit_base", _BASE, pretrained, kwargs)


@register_model
def augvit_tiny_circulant2(pretrained: bool = False, **kwargs: Any) -> AugViT:
    """Aug-DeiT-Ti with two circulant paths per sub-layer (same as ``augvit_tiny``)."""
    return _build("augvit_tiny_circulant2", _TINY, pretrained, kwargs)


@register_model
def augvit_small_circulant2(pretrained: bool = False, **kwargs: Any) -> AugViT:
    """Aug-DeiT-S with two circulant paths per sub-layer (the official headline model)."""
    return _build("augvit_small_circulant2", _SMALL, pretrained, kwargs)


@register_model
def augvit_base_circulant2(pretrained: bool = False, **kwargs: Any) -> AugViT:
    """Aug-DeiT-B with two circulant paths per sub-layer (same as ``augvit_base``)."""
    return _build("augvit_base_circulant2", _BASE, pretrained, kwargs)
