"""``esvit``: efficient self-supervised vision transformers (EsViT).

Li, Yang, Zhang, Gao, Xiao, Dai, Yuan, Gao, "Efficient Self-supervised Vision Transformers for
Representation Learning", ICLR 2022 (arXiv 2106.09785). A multi-stage ViT learns by DINO's
self-distillation (Caron et al., ICCV 2021): a student and a momentum teacher (an EMA of the
student) see several crops of an image; the teacher's output on a global crop, centred and
sharpened (temperature ``teacher_temp``), is the target of the student's on every other crop
(``student_temp``). EsViT adds a region-level task, since a multi-stage ViT's final tokens
still map regions: each of the student's final-stage tokens of one view is matched to the
teacher's most cosine-similar token of another, and the same cross-entropy is applied to the
matched pair through a region head. ``L = L_view + region_weight · L_region``
(``region_weight=0``: the view-level loss alone, DINO on the same backbone).

Ours, where the paper is not specific or we depart: heads of DINO's shape at CIFAR size
(``hidden``-wide 3-layer MLP, ``bottleneck``, an ℓ2-normalised weight-normed projection to
``out_dim`` prototypes); one centre per head; the teacher's momentum on a cosine from
``teacher_momentum`` to 1; matching on the backbone's tokens (before the heads), as the paper.
Multi-crop views all come at the model's input size (:mod:`leanvision.data.multicrop`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leanvision.checks import check_int, check_real
from leanvision.data.multicrop import multicrop_bundle
from leanvision.engine import Hook, train
from leanvision.errors import ConfigError
from leanvision.methods.config import MethodConfig
from leanvision.methods.registry import record_transform, register_method

__all__ = ["DINOHead", "ESViTConfig", "ESViTLearner", "backbone_tokens", "esvit_loss"]


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


class DINOHead(nn.Module):
    """MLP (``dim`` → ``hidden`` → ``hidden`` → ``bottleneck``, GELU), ℓ2 normalisation and a
    weight-normed linear layer to ``out_dim`` prototypes (DINO's head)."""

    def __init__(self, dim: int, out_dim: int, hidden: int, bottleneck: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
            nn.Linear(hidden, bottleneck),
        )  # fmt: skip
        self.last = nn.utils.parametrizations.weight_norm(
            nn.Linear(bottleneck, out_dim, bias=False)
        )
        self.last.parametrizations.weight.original0.data.fill_(1.0)
        self.last.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(F.normalize(self.mlp(x), dim=-1))


def dino_ce(teacher: torch.Tensor, student: torch.Tensor, center: torch.Tensor, t_temp: float,
            s_temp: float) -> torch.Tensor:  # fmt: skip
    """Mean cross-entropy between the centred, sharpened teacher distribution and the
    student's (over the last dimension; the teacher gets no gradient)."""
    target = F.softmax((teacher.detach() - center) / t_temp, dim=-1)
    return -(target * F.log_softmax(student / s_temp, dim=-1)).sum(-1).mean()


def esvit_loss(
    s_view: list[torch.Tensor], t_view: list[torch.Tensor],
    s_region: list[torch.Tensor], t_region: list[torch.Tensor],
    s_tokens: list[torch.Tensor], t_tokens: list[torch.Tensor],
    centers: tuple[torch.Tensor, torch.Tensor], t_temp: float, s_temp: float,
    region_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(view loss, region loss) over every pair of a teacher global view t and a student view
    s ≠ t: the view heads' cross-entropy, and the region heads' on each student token and its
    most cosine-similar teacher token (matched on the backbone tokens)."""
    view, region, pairs = 0.0, 0.0, 0
    for ti, t_out in enumerate(t_view):
        for si, s_out in enumerate(s_view):
            if si == ti:
                continue
            view = view + dino_ce(t_out, s_out, centers[0], t_temp, s_temp)
            if region_weight > 0:
                sim = torch.einsum("bnc,bmc->bnm", F.normalize(s_tokens[si].detach(), dim=-1),
                                   F.normalize(t_tokens[ti], dim=-1))  # fmt: skip
                match = sim.argmax(-1)  # (B, N_s): the teacher token of each student token
                t_matched = torch.gather(
                    t_region[ti], 1, match[..., None].expand(-1, -1, t_region[ti].shape[-1])
                )
                region = region + dino_ce(t_matched, s_region[si], centers[1], t_temp, s_temp)
            pairs += 1
    if pairs == 0:
        raise ConfigError("esvit needs at least two views per image (a global one and another)")
    return view / pairs, region / pairs


class ESViTLearner(nn.Module):
    """The student backbone and heads, their momentum teacher, and the two centres; forward
    on (B, V, C, H, W) views (the first ``global_crops`` global) returns the loss."""

    def __init__(self, backbone: nn.Module, cfg: ESViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
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


class TeacherMomentum(Hook):
    """After each optimizer step, the EMA update of the teacher; the momentum follows a cosine
    from ``start`` to 1 over the training's steps."""

    name = "esvit_teacher"

    def __init__(self, learner: ESViTLearner, start: float) -> None:
        self.learner, self.start = learner, start

    def after_optimizer_step(self, trainer: Any) -> None:
        total = trainer.steps_per_epoch * trainer.config.epochs
        if trainer.config.max_steps is not None:
            total = min(total, trainer.config.max_steps)
        total = max(1, total)
        t = min(1.0, trainer.global_step / total)
        m = 1.0 - (1.0 - self.start) * 0.5 * (1 + math.cos(math.pi * t))
        self.learner.update_teacher(m)


@dataclass
class ESViTConfig(MethodConfig):
    """EsViT: the pre-training's ``epochs`` (AdamW, ``lr``, ``weight_decay``, cosine schedule
    with ``warmup_epochs``), the views (``global_crops``, ``local_crops``), the heads
    (``out_dim`` prototypes, ``hidden``, ``bottleneck``), the temperatures, the centre's and
    the teacher's momenta, and ``region_weight`` (0: the view-level loss only)."""

    epochs: int = 100
    lr: float = 5e-4
    weight_decay: float = 0.04
    warmup_epochs: int = 10
    batch_size: int | None = None
    global_crops: int = 2
    local_crops: int = 4
    out_dim: int = 1024
    hidden: int = 512
    bottleneck: int = 128
    teacher_temp: float = 0.04
    student_temp: float = 0.1
    center_momentum: float = 0.9
    teacher_momentum: float = 0.996
    region_weight: float = 1.0
    clip_grad: float | None = 3.0
    seed: int = 0
    max_steps: int | None = None
    out_dir: str | None = None
    resume: bool = False
    progress: bool = True
    log: bool = True
    num_threads: int | None = None

    def validate(self) -> None:
        """Types; counts ≥ 1 (local crops ≥ 0); temperatures > 0; momenta in [0, 1)."""
        super().validate()
        for name in ("epochs", "global_crops", "out_dim", "hidden", "bottleneck"):
            check_int(name, getattr(self, name), 1)
        check_int("local_crops", self.local_crops, 0)
        check_int("warmup_epochs", self.warmup_epochs, 0)
        if self.global_crops + self.local_crops < 2:
            raise ConfigError(
                f"esvit needs two views or more; got global_crops={self.global_crops} and "
                f"local_crops={self.local_crops}"
            )
        for name in ("lr", "teacher_temp", "student_temp"):
            check_real(name, getattr(self, name), 0.0, lo_open=True)
        check_real("weight_decay", self.weight_decay, 0.0)
        check_real("region_weight", self.region_weight, 0.0)
        check_real("center_momentum", self.center_momentum, 0.0, 1.0, hi_open=True)
        check_real("teacher_momentum", self.teacher_momentum, 0.0, 1.0, hi_open=True)

    def check_inputs(self, data: Any) -> None:
        """Pre-training reads data."""
        if data is None:
            raise ConfigError("esvit pre-trains on data=lv.load_data(...) (labels unread)")


@register_method(
    "esvit",
    family="self_supervised",
    paper="Li et al., Efficient Self-supervised Vision Transformers for Representation "
    "Learning, ICLR 2022 (arXiv 2106.09785)",
    config=ESViTConfig,
)
def apply_esvit(model: nn.Module, data: Any, cfg: ESViTConfig) -> nn.Module:
    """Pre-train a copy of ``model``'s backbone by EsViT on ``data``'s training images
    (labels unread); returns the teacher backbone (DINO's choice), the classifier as given."""
    with torch.random.fork_rng():  # the heads' initialisation follows the seed
        torch.manual_seed(cfg.seed)
        learner = ESViTLearner(copy.deepcopy(model), cfg)
    views = multicrop_bundle(data, cfg.global_crops, cfg.local_crops)
    train(
        learner, views, hooks=[TeacherMomentum(learner, cfg.teacher_momentum)],
        epochs=cfg.epochs, lr=cfg.lr, opt="adamw", weight_decay=cfg.weight_decay,
        sched="cosine", warmup_epochs=cfg.warmup_epochs, batch_size=cfg.batch_size,
        clip_grad=cfg.clip_grad, seed=cfg.seed, max_steps=cfg.max_steps, out_dir=cfg.out_dir,
        resume=cfg.resume, eval_every=0, progress=cfg.progress, log=cfg.log,
        num_threads=cfg.num_threads,
    )  # fmt: skip
    out = learner.teacher.eval()
    out.lv_pretraining = {"method": "esvit", "region_weight": cfg.region_weight,
                          "terms": dict(learner.last_terms)}  # fmt: skip
    record_transform(out, model, "esvit")
    return out
