"""A self-distillation learner (DINO, Caron et al., ICCV 2021; EsViT, Li et al., ICLR 2022):
a student backbone with its heads, their momentum teacher and the centres, whose forward on a
batch of views returns the loss, so the one trainer trains it like any model; and the access
to a timm-style backbone's pooled feature and final-stage region tokens."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch
from torch import nn

from leanvision.errors import ConfigError
from leanvision.layers.self_distillation import DINOHead, esvit_loss

__all__ = ["SelfDistillationLearner", "backbone_tokens"]


def backbone_tokens(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pooled feature (B, C) and the final-stage region tokens (B, N, C) of a timm-style
    backbone (``forward_features`` then ``forward_head(pre_logits=True)``): tokens (B, N, C)
    less their prefix (class / global) tokens, or a feature map (NHWC as timm's Swin, NCHW as
    a CNN) flattened."""
    feats = model.forward_features(x)
    pooled = model.forward_head(feats, pre_logits=True)
    dim = int(getattr(model, "num_features", 0))
    if feats.dim() == 4 and feats.shape[-1] == dim:  # NHWC (timm's Swin)
        regions = feats.flatten(1, 2)
    elif feats.dim() == 4 and feats.shape[1] == dim:  # NCHW (a CNN's map)
        regions = feats.flatten(2).transpose(1, 2)
    elif feats.dim() == 3:
        prefix = int(getattr(model, "num_prefix_tokens", getattr(model, "nglo_last", 0)))
        regions = feats[:, prefix:]
    else:
        raise ConfigError(
            f"esvit needs a backbone whose forward_features gives tokens (B, N, C) or a "
            f"feature map of num_features={dim} channels; {type(model).__name__} gave shape "
            f"{tuple(feats.shape)}"
        )
    if pooled.dim() != 2 or regions.shape[1] < 1:
        raise ConfigError(f"{type(model).__name__}: no pooled feature or no region tokens")
    return pooled, regions


class SelfDistillationLearner(nn.Module):
    """The student backbone and its view and region heads, their momentum teacher (a copy,
    no gradient) and the two centres; forward on (B, V, C, H, W) views (the first
    ``global_crops`` global) returns the self-distillation loss (EsViT's; DINO's when
    ``region_weight`` is 0). ``update_teacher`` is the EMA step, called after each optimizer
    step."""

    def __init__(
        self,
        backbone: nn.Module,
        out_dim: int = 1024,
        hidden: int = 512,
        bottleneck: int = 128,
        global_crops: int = 2,
        teacher_temp: float = 0.04,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        region_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(
            out_dim=out_dim, hidden=hidden, bottleneck=bottleneck, global_crops=global_crops,
            teacher_temp=teacher_temp, student_temp=student_temp,
            center_momentum=center_momentum, region_weight=region_weight,
        )  # fmt: skip
        cfg = self.cfg
        self.student = backbone
        dim = int(getattr(backbone, "num_features", 0))
        if dim <= 0:
            raise ConfigError(f"{type(backbone).__name__} has no num_features (timm's)")
        self.view_head = DINOHead(dim, cfg.out_dim, cfg.hidden, cfg.bottleneck)
        self.region_head = DINOHead(dim, cfg.out_dim, cfg.hidden, cfg.bottleneck)
        self.teacher = copy.deepcopy(backbone)
        self.t_view_head = copy.deepcopy(self.view_head)
        self.t_region_head = copy.deepcopy(self.region_head)
        for module in self.teacher_modules():
            for p in module.parameters():
                p.requires_grad_(False)
        self.register_buffer("view_center", torch.zeros(cfg.out_dim))
        self.register_buffer("region_center", torch.zeros(cfg.out_dim))
        self.last_terms: dict[str, float] = {}

    def teacher_modules(self) -> tuple[nn.Module, ...]:
        return self.teacher, self.t_view_head, self.t_region_head

    def student_modules(self) -> tuple[nn.Module, ...]:
        return self.student, self.view_head, self.region_head

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        if views.dim() != 5:
            raise ConfigError(f"esvit takes (B, V, C, H, W) views, got {tuple(views.shape)}")
        cfg, g = self.cfg, self.cfg.global_crops
        s_view, s_region, s_tokens = [], [], []
        for v in range(views.shape[1]):
            pooled, tokens = backbone_tokens(self.student, views[:, v])
            s_view.append(self.view_head(pooled))
            s_region.append(self.region_head(tokens) if cfg.region_weight > 0 else tokens)
            s_tokens.append(tokens)
        with torch.no_grad():
            self.teacher.train(self.training)
            t_view, t_region, t_tokens = [], [], []
            for v in range(g):
                pooled, tokens = backbone_tokens(self.teacher, views[:, v])
                t_view.append(self.t_view_head(pooled))
                t_region.append(self.t_region_head(tokens) if cfg.region_weight > 0 else tokens)
                t_tokens.append(tokens)
        view, region = esvit_loss(s_view, t_view, s_region, t_region, s_tokens, t_tokens,
                                  (self.view_center, self.region_center), cfg.teacher_temp,
                                  cfg.student_temp, cfg.region_weight)  # fmt: skip
        if self.training:
            self._update_centers(t_view, t_region)
        self.last_terms = {
            "view": float(view.detach()),
            "region": float(torch.as_tensor(region).detach()),
        }
        return view + cfg.region_weight * region

    @torch.no_grad()
    def _update_centers(self, t_view: list[torch.Tensor], t_region: list[torch.Tensor]) -> None:
        m = self.cfg.center_momentum
        self.view_center.mul_(m).add_((1 - m) * torch.cat(t_view).mean(0))
        if self.cfg.region_weight > 0:
            flat = torch.cat([r.flatten(0, 1) for r in t_region])
            self.region_center.mul_(m).add_((1 - m) * flat.mean(0))

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher ← momentum · teacher + (1 − momentum) · student (parameters and buffers)."""
        for t_mod, s_mod in zip(self.teacher_modules(), self.student_modules(), strict=True):
            for t, s in zip(t_mod.parameters(), s_mod.parameters(), strict=True):
                t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)
            for t, s in zip(t_mod.buffers(), s_mod.buffers(), strict=True):
                t.copy_(s)
