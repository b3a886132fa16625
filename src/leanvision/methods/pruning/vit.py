"""What the token-pruning methods need of a ViT: timm's layout with class-token pooling."""

from __future__ import annotations

import torch
from torch import nn

from leanvision.errors import UnsupportedModelError

__all__ = ["embed_tokens", "require_token_vit"]


def require_token_vit(vit: nn.Module, method: str) -> None:
    """Raise UnsupportedModelError unless ``vit`` is a timm-style ViT pooling its class token."""
    for attr in ("patch_embed", "_pos_embed", "blocks", "norm", "forward_head"):
        if not hasattr(vit, attr):
            raise UnsupportedModelError(
                f"{method} needs a timm VisionTransformer (DeiT, ViT, our augvit_*); "
                f"{type(vit).__name__} has no {attr!r}"
            )
    if getattr(vit, "global_pool", "token") != "token" or getattr(vit, "cls_token", None) is None:
        raise UnsupportedModelError(f"{method} needs class-token pooling (global_pool='token')")


def embed_tokens(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Images → the token sequence the first block sees (patches, prefix tokens, positions)."""
    return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
