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
from torch import nn

from leanvision.checks import check_int, check_real
from leanvision.data.multicrop import multicrop_bundle
from leanvision.engine import Hook, train
from leanvision.errors import ConfigError
from leanvision.methods.config import MethodConfig
from leanvision.methods.registry import record_transform, register_method
from leanvision.models.self_distillation import SelfDistillationLearner

__all__ = ["ESViTConfig", "TeacherMomentum"]


class TeacherMomentum(Hook):
    """After each optimizer step, the EMA update of the teacher; the momentum follows a cosine
    from ``start`` to 1 over the training's steps."""

    name = "esvit_teacher"

    def __init__(self, learner: SelfDistillationLearner, start: float) -> None:
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
        learner = SelfDistillationLearner(
            copy.deepcopy(model), out_dim=cfg.out_dim, hidden=cfg.hidden,
            bottleneck=cfg.bottleneck, global_crops=cfg.global_crops,
            teacher_temp=cfg.teacher_temp, student_temp=cfg.student_temp,
            center_momentum=cfg.center_momentum, region_weight=cfg.region_weight,
        )  # fmt: skip
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
