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
The model with its predictors is a layer, :class:`leanvision.layers.DynamicViT`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from torch import nn

from leanvision.engine import StepContext
from leanvision.errors import ConfigError
from leanvision.layers.token_pruning import DynamicViT
from leanvision.methods.common import FinetuneConfig, finetune
from leanvision.methods.config import check_choice, check_real, field_error
from leanvision.methods.distillation.kd import TeacherHook, kd_loss
from leanvision.methods.registry import record_transform, register_method

__all__ = ["DynamicViTConfig", "DynamicViTHook"]


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
