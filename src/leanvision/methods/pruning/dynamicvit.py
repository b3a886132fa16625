"""``dynamicvit``: input-dependent token sparsification of vision transformers.

DynamicViT: Efficient Vision Transformers with Dynamic Token Sparsification, Rao et al.,
NeurIPS 2021 (arXiv 2106.02034). Light prediction modules before blocks at 1/4, 1/2 and 3/4
of the depth score every patch token from its own feature and the kept tokens' mean; the class
token is always kept.

* Training: hard Gumbel-softmax keep decisions, multiplied by the previous stage's (kept sets
  shrink), and *attention masking*: dropped tokens stay in the tensor but no other token attends
  to them (``exp(a − max) · policy``, renormalised with ε = 1e-6, as the official
  ``softmax_with_policy``), so gradients reach the decisions.
* Inference: the top ``⌊ρ_s · N⌋`` tokens by keep score are gathered and the rest physically
  dropped, with ρ_s = ρ, ρ², ρ³ of the N patch tokens (``int(init_n * token_ratio[s])`` in the
  official ``models/dyvit.py``; ``keep_rounding="ceil"`` keeps ``⌈ρ_s · N⌉``, this toolkit's
  count before issue 17). At least one token is kept.
* Loss (ViT setting of the official code): ``CE + 2.0 · Σ_s (mean kept_s − ρ_s)² / S
  + 0.5 · KL(student ‖ teacher logits) + 0.5 · KL over kept tokens (teacher's final tokens)``,
  the teacher being the dense model. The backbone trains at 0.01 × the learning rate.

Works on timm ``VisionTransformer`` models (DeiT, ViT) with class-token pooling, and on our
ViTs built on them (``augvit_*``: the block's own forward runs, with the policy attention).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leanvision.engine import StepContext
from leanvision.errors import ConfigError
from leanvision.methods.common import FinetuneConfig, finetune
from leanvision.methods.config import check_choice, check_real, field_error
from leanvision.methods.distillation.kd import TeacherHook, kd_loss
from leanvision.methods.registry import record_transform, register_method

from .vit import embed_tokens, require_token_vit

__all__ = [
    "DynamicViT",
    "DynamicViTConfig",
    "DynamicViTHook",
    "TokenPredictor",
    "softmax_with_policy",
]


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
        require_token_vit(vit, "dynamicvit")
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


class DynamicViTHook(TeacherHook):
    """DynamicViT's losses: keep-ratio, logit KD and token KD against the dense teacher."""

    name = "dynamicvit"

    def __init__(
        self,
        teacher: nn.Module,
        ratio_weight: float = 2.0,
        distill_weight: float = 0.5,
        token_loss: str = "kl",
    ) -> None:
        super().__init__(teacher, teacher_features=["norm"])
        if token_loss not in ("kl", "mse"):
            raise ConfigError(f"token_loss must be 'kl' or 'mse', got {token_loss!r}")
        self.ratio_weight, self.distill_weight, self.token_loss = (
            ratio_weight,
            distill_weight,
            token_loss,
        )
        self.model: DynamicViT | None = None

    def on_train_start(self, trainer: Any) -> None:
        super().on_train_start(trainer)
        self.model = trainer.model

    def on_loss(self, trainer: Any, ctx: StepContext) -> None:
        model = self.model
        aux = model.aux
        ratios = [
            (d.mean(1) - r).pow(2).mean() for d, r in zip(aux["decisions"], model.keep_ratios)
        ]
        ctx.losses["keep_ratio"] = self.ratio_weight * sum(ratios) / len(ratios)
        t_logits = ctx.extras["teacher_logits"]
        ctx.losses["kd"] = self.distill_weight * kd_loss(ctx.logits, t_logits, 1.0)
        t_tokens = ctx.extras["teacher_features"]["norm"][:, model.num_prefix :]
        s_tokens, keep = aux["tokens"], aux["policy"].squeeze(-1) > 0.5
        if keep.any():
            s, t = s_tokens[keep].float(), t_tokens[keep].float()
            tok = (s - t).pow(2).mean() if self.token_loss == "mse" else kd_loss(s, t, 1.0)
        else:
            tok = s_tokens.sum() * 0.0
        ctx.losses["token_kd"] = self.distill_weight * tok


@dataclass
class DynamicViTConfig(FinetuneConfig):
    """DynamicViT (arXiv 2106.02034) with the official ViT defaults.

    ``keep_ratio`` ρ (stages keep ρ, ρ², ρ³); ``prune_locs`` (default depth/4, /2, 3/4);
    ``keep_rounding``: inference keeps ⌊ρ_s·N⌋ tokens (``"floor"``, the official
    ``int(N * ratio)``) or ⌈ρ_s·N⌉ (``"ceil"``, this toolkit before issue 17);
    ``ratio_weight`` 2.0, ``distill_weight`` 0.5, ``token_loss`` "kl"; ``backbone_lr_scale``
    0.01 (predictors train at ``lr``, the backbone at ``lr × 0.01``).
    """

    keep_ratio: float = 0.7
    prune_locs: list[int] | None = None
    keep_rounding: str = "floor"
    ratio_weight: float = 2.0
    distill_weight: float = 0.5
    token_loss: str = "kl"
    backbone_lr_scale: float = 0.01
    lr: float = 1e-3
    opt: str = "adamw"
    weight_decay: float = 0.05

    def validate(self) -> None:
        """The fine-tuning checks; keep_ratio in (0, 1]; prune_locs increasing block indices
        ≥ 1 (or None); ratio_weight, distill_weight, backbone_lr_scale ≥ 0; token_loss 'kl'
        or 'mse'."""
        super().validate()
        check_real("keep_ratio", self.keep_ratio, 0.0, 1.0, lo_open=True)
        locs = self.prune_locs
        if locs is not None and (not locs or min(locs) < 1 or sorted(set(locs)) != list(locs)):
            raise field_error("prune_locs", locs, "increasing block indices >= 1, or None")
        check_real("ratio_weight", self.ratio_weight, 0.0)
        check_real("distill_weight", self.distill_weight, 0.0)
        check_choice("token_loss", self.token_loss, ("kl", "mse"))
        check_real("backbone_lr_scale", self.backbone_lr_scale, 0.0)


def _rebuild(model: nn.Module, arch: dict[str, Any]) -> nn.Module:
    # models saved before keep_rounding existed kept ⌈ρ_s·N⌉ tokens: they load as they ran
    return DynamicViT(
        model, arch["keep_ratio"], arch["prune_locs"], arch.get("keep_rounding", "ceil")
    )


@register_method(
    "dynamicvit",
    family="pruning",
    paper="Rao et al., NeurIPS 2021, arXiv 2106.02034",
    config=DynamicViTConfig,
    rebuild=_rebuild,
)
def apply_dynamicvit(model: nn.Module, data: Any, cfg: DynamicViTConfig) -> nn.Module:
    """Add token predictors to a ViT and fine-tune with the dense model as teacher."""
    dyn = DynamicViT(copy.deepcopy(model), cfg.keep_ratio, cfg.prune_locs, cfg.keep_rounding)
    arch = {"keep_ratio": dyn.keep_ratio, "prune_locs": dyn.prune_locs}
    record_transform(dyn, model, "dynamicvit", {**arch, "keep_rounding": dyn.keep_rounding})
    hook = DynamicViTHook(
        copy.deepcopy(model), cfg.ratio_weight, cfg.distill_weight, cfg.token_loss
    )
    # the backbone moves 100x slower than the new predictors (the official lr_scale)
    scales = {"backbone": cfg.backbone_lr_scale}
    finetune(dyn, data, cfg, [hook], method="dynamicvit", lr_scales=scales)
    return dyn.eval()
