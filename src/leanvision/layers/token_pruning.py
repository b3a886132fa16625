"""Token-pruning vision transformers: timm ViTs that run their blocks on fewer tokens.

* :class:`DynamicViT`, from DynamicViT: Efficient Vision Transformers with Dynamic Token
  Sparsification, Rao et al., NeurIPS 2021 (arXiv 2106.02034): light :class:`TokenPredictor`
  modules before blocks at 1/4, 1/2 and 3/4 of the depth score every patch token from its own
  feature and the kept tokens' mean. Training keeps every token but masks the dropped ones out
  of the attention (:func:`softmax_with_policy`, hard Gumbel-softmax decisions); inference
  gathers the top ``⌊ρ_s · N⌋`` tokens and physically drops the rest. The class token is
  always kept.
* :class:`SlimmedViT`, from Patch Slimming for Efficient Vision Transformers, Tang et al.,
  CVPR 2022 (arXiv 2106.02852): block l runs on a static, nested set of kept tokens, gathered
  before the block.

Both wrap a timm ``VisionTransformer`` (DeiT, ViT, our ``augvit_*``) with class-token pooling.
The losses and the search for the kept sets are the methods' (``leanvision.methods.pruning``:
``dynamicvit``, ``patch_slimming``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leanvision.errors import ConfigError, UnsupportedModelError

__all__ = [
    "DynamicViT",
    "SlimmedViT",
    "TokenPredictor",
    "embed_tokens",
    "require_token_vit",
    "softmax_with_policy",
]


def require_token_vit(vit: nn.Module, who: str) -> None:
    """Raise UnsupportedModelError unless ``vit`` is a timm-style ViT pooling its class token
    (``who``: the layer or method that needs it, named in the message)."""
    for attr in ("patch_embed", "_pos_embed", "blocks", "norm", "forward_head"):
        if not hasattr(vit, attr):
            raise UnsupportedModelError(
                f"{who} needs a timm VisionTransformer (DeiT, ViT, our augvit_*); "
                f"{type(vit).__name__} has no {attr!r}"
            )
    if getattr(vit, "global_pool", "token") != "token" or getattr(vit, "cls_token", None) is None:
        raise UnsupportedModelError(f"{who} needs class-token pooling (global_pool='token')")


def embed_tokens(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Images → the token sequence the first block sees (patches, prefix tokens, positions)."""
    return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))


class TokenPredictor(nn.Module):
    """Scores tokens from local features and the policy-weighted mean of the kept ones."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.in_conv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(dim, dim // 2),
            nn.GELU(),
            nn.Linear(dim // 2, dim // 4),
            nn.GELU(),
            nn.Linear(dim // 4, 2),
        )

    def forward(self, x: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens, (B, N, 1) policy → (B, N, 2) log-probabilities of (keep, drop)."""
        x = self.in_conv(x)
        c = x.shape[-1] // 2
        local, glob = x[..., :c], x[..., c:]
        glob = (glob * policy).sum(1, keepdim=True) / policy.sum(1, keepdim=True).clamp_min(1e-6)
        x = torch.cat([local, glob.expand(-1, x.shape[1], -1)], dim=-1)
        return F.log_softmax(self.out_conv(x), dim=-1)


def softmax_with_policy(
    attn: torch.Tensor, policy: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """Softmax over keys where dropped keys (policy 0) get no weight, except a token's own.

    ``attn`` (B, H, N, N) logits, ``policy`` (B, N, 1) in {0, 1}. As the official code:
    ``(exp(a − max) · P + ε/N) / (Σ exp(a − max) · P + ε)``, P = policy of the keys with the
    diagonal forced to 1 so a dropped query still attends to itself.
    """
    b, n, _ = policy.shape
    key = policy.reshape(b, 1, 1, n)
    eye = torch.eye(n, dtype=attn.dtype, device=attn.device).view(1, 1, n, n)
    mask = key + (1.0 - key) * eye
    attn = attn - attn.max(dim=-1, keepdim=True).values
    weights = attn.float().exp() * mask
    return ((weights + eps / n) / (weights.sum(dim=-1, keepdim=True) + eps)).to(attn.dtype)


def _attention(attn: nn.Module, x: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
    """timm ``Attention`` with ``softmax_with_policy`` in place of the softmax."""
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    a = (q * attn.scale) @ k.transpose(-2, -1)
    a = attn.attn_drop(softmax_with_policy(a, policy))
    x = (a @ v).transpose(1, 2).reshape(b, n, -1)
    x = getattr(attn, "norm", nn.Identity())(x)
    return attn.proj_drop(attn.proj(x))


def _block(blk: nn.Module, x: torch.Tensor, policy: torch.Tensor) -> torch.Tensor:
    """Run ``blk`` (a timm ``Block`` or a subclass, e.g. Aug-ViT's) with policy attention."""
    attn = blk.attn
    attn.forward = lambda y, *args, **kwargs: _attention(attn, y, policy)  # this call only
    try:
        return blk(x)
    finally:
        del attn.forward


class DynamicViT(nn.Module):
    """A timm ViT with DynamicViT's token predictors.

    Args:
        vit: a timm ``VisionTransformer`` with class-token pooling (e.g. DeiT-S).
        keep_ratio: ρ; stage s keeps ⌊ρ^(s+1) · N⌋ of the N patch tokens at inference.
        prune_locs: block indices before which the predictors act (default depth/4, /2, 3/4).
        keep_rounding: ``"floor"`` (default, the official ``int(N · ratio)``) or ``"ceil"``.

    Attributes:
        last_tokens_per_block: at inference, the sequence length each block ran on (last call).
        aux: in training, ``{"decisions": [(B, N)], "tokens": (B, N, C)}`` of the last forward.
    """

    def __init__(
        self,
        vit: nn.Module,
        keep_ratio: float = 0.7,
        prune_locs: list[int] | None = None,
        keep_rounding: str = "floor",
    ) -> None:
        super().__init__()
        require_token_vit(vit, "DynamicViT")
        if not 0.0 < keep_ratio <= 1.0:
            raise ConfigError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
        if keep_rounding not in ("floor", "ceil"):
            raise ConfigError(f"keep_rounding must be 'floor' or 'ceil', got {keep_rounding!r}")
        depth = len(vit.blocks)
        locs = prune_locs if prune_locs is not None else [depth // 4, depth // 2, 3 * depth // 4]
        if sorted(set(locs)) != list(locs) or not all(0 < i < depth for i in locs):
            raise ConfigError(
                f"prune_locs must be increasing block indices in (0, {depth}), got {locs}"
            )
        self.backbone = vit
        self.prune_locs = list(locs)
        self.keep_ratio = keep_ratio
        self.keep_rounding = keep_rounding
        self.keep_ratios = [keep_ratio ** (i + 1) for i in range(len(locs))]
        dim = vit.embed_dim
        self.predictors = nn.ModuleList(TokenPredictor(dim) for _ in locs)
        self.num_prefix = int(getattr(vit, "num_prefix_tokens", 1))
        self.aux: dict[str, Any] = {}
        self.last_tokens_per_block: list[int] = []
        self.pretrained_cfg = getattr(vit, "pretrained_cfg", {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = embed_tokens(self.backbone, x)
        p = self.num_prefix
        b, n = x.shape[0], x.shape[1] - p
        stage = {loc: s for s, loc in enumerate(self.prune_locs)}
        if self.training:
            policy = x.new_ones(b, n, 1)
            full: torch.Tensor | None = None
            decisions = []
            for i, blk in enumerate(self.backbone.blocks):
                if i in stage:
                    logp = self.predictors[stage[i]](x[:, p:], policy)
                    keep = F.gumbel_softmax(logp, hard=True)[..., :1] * policy
                    decisions.append(keep.squeeze(-1))
                    policy = keep
                    full = torch.cat([x.new_ones(b, p, 1), policy], dim=1)
                x = blk(x) if full is None else _block(blk, x, full)
            x = self.backbone.norm(x)
            self.aux = {"decisions": decisions, "tokens": x[:, p:], "policy": policy}
            return self.backbone.forward_head(x)
        counts = []
        for i, blk in enumerate(self.backbone.blocks):
            if i in stage:
                s = stage[i]
                tokens = x[:, p:]
                score = self.predictors[s](tokens, tokens.new_ones(b, tokens.shape[1], 1))[..., 0]
                k = self.num_keep(n, s)
                idx = score.argsort(dim=1, descending=True)[:, :k]
                tokens = tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
                x = torch.cat([x[:, :p], tokens], dim=1)
            counts.append(x.shape[1])
            x = blk(x)
        self.last_tokens_per_block = counts
        return self.backbone.forward_head(self.backbone.norm(x))

    def num_keep(self, n: int, stage: int) -> int:
        """Patch tokens stage ``stage`` keeps of ``n`` at inference: ``int(n · ρ_s)`` as the
        official code (the same float product, so the same count), or its ceiling; ≥ 1."""
        rounding = math.floor if getattr(self, "keep_rounding", "floor") == "floor" else math.ceil
        return max(1, int(rounding(n * self.keep_ratios[stage])))


class SlimmedViT(nn.Module):
    """A timm ViT that runs block l on the tokens of ``keep[l]`` only (static, nested sets).

    Args:
        vit: the ViT (class-token pooling).
        keep: per block, the kept token positions of the original sequence (prefix tokens
            included), each a subset of the previous block's.

    Attributes:
        last_tokens_per_block: the sequence length each block ran on in the last forward.
    """

    def __init__(self, vit: nn.Module, keep: list[list[int]]) -> None:
        super().__init__()
        require_token_vit(vit, "SlimmedViT")
        if len(keep) != len(vit.blocks):
            raise ConfigError(f"need one keep set per block ({len(vit.blocks)}), got {len(keep)}")
        prev: list[int] | None = None
        self._gathers: list[torch.Tensor | None] = []
        for i, k in enumerate(keep):
            k = sorted(int(v) for v in k)
            if prev is not None and not set(k) <= set(prev):
                raise ConfigError(
                    f"keep sets must be nested: block {i} keeps tokens block {i - 1} dropped"
                )
            if prev is None:
                self._gathers.append(None if len(k) == 0 else torch.tensor(k))
            else:
                pos = {p: j for j, p in enumerate(prev)}
                rel = [pos[p] for p in k]
                self._gathers.append(None if rel == list(range(len(prev))) else torch.tensor(rel))
            prev = k
        self.backbone = vit
        self.keep = [sorted(int(v) for v in k) for k in keep]
        self.last_tokens_per_block: list[int] = []
        self.pretrained_cfg = getattr(vit, "pretrained_cfg", {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        vit = self.backbone
        x = embed_tokens(vit, x)
        counts = []
        for blk, idx in zip(vit.blocks, self._gathers):
            if idx is not None:
                x = x.index_select(1, idx.to(x.device))
            counts.append(x.shape[1])
            x = blk(x)
        self.last_tokens_per_block = counts
        return vit.forward_head(vit.norm(x))
