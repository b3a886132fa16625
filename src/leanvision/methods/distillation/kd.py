"""Hinton knowledge distillation (the logit-KD baseline).

Distilling the Knowledge in a Neural Network, Hinton, Vinyals, Dean, 2015 (arXiv 1503.02531):
the student matches the teacher's temperature-softened class probabilities,
``L = (1 − α)·CE(y, s) + α·T²·KL(softmax(t/T) ‖ softmax(s/T))``; the T² keeps gradient scales
comparable across temperatures.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leanvision.engine import FeatureRecorder, Hook, StepContext
from leanvision.errors import ConfigError
from leanvision.methods.common import FinetuneConfig, finetune
from leanvision.methods.registry import record_transform, register_method

__all__ = ["KDConfig", "KDHook", "kd_loss", "TeacherHook"]


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """T²·KL(softmax(t/T) ‖ softmax(s/T)), averaged over the batch. Shapes (B, K)."""
    log_p = F.log_softmax(student_logits.float() / T, dim=1)
    log_q = F.log_softmax(teacher_logits.float() / T, dim=1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * (T * T)


class TeacherHook(Hook):
    """Runs a frozen teacher on each batch under ``no_grad`` and collects features by name.

    Per step, ``ctx.extras`` gets ``"teacher_outputs"``, ``"teacher_logits"``, and — when
    module names are given — ``"teacher_features"`` (detached) and ``"student_features"`` (with
    their autograd graph, filled during the student's forward): dicts name → output. Feature
    losses subclass this hook and read them in ``on_loss``.

    Args:
        teacher: the teacher model (frozen and put in eval mode by the hook).
        student_features: module names of the student to record.
        teacher_features: module names of the teacher to record.
    """

    name = "teacher"

    def __init__(
        self,
        teacher: nn.Module,
        student_features: list[str] | tuple[str, ...] = (),
        teacher_features: list[str] | tuple[str, ...] = (),
    ) -> None:
        self.teacher = teacher
        self.student_feature_names = list(student_features)
        self.teacher_feature_names = list(teacher_features)
        self._student_rec: FeatureRecorder | None = None
        self._teacher_rec: FeatureRecorder | None = None

    def on_train_start(self, trainer: Any) -> None:
        self.teacher.to(trainer.device)
        if trainer.channels_last:
            self.teacher.to(memory_format=torch.channels_last)
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        if self.student_feature_names:
            self._student_rec = FeatureRecorder(trainer.model, self.student_feature_names)
        if self.teacher_feature_names:
            self._teacher_rec = FeatureRecorder(
                self.teacher, self.teacher_feature_names, detach=True
            )

    def before_forward(self, trainer: Any, ctx: StepContext) -> None:
        if self._teacher_rec is not None:
            self._teacher_rec.clear()
        with torch.no_grad():
            out = self.teacher(ctx.inputs)
        ctx.extras["teacher_outputs"] = out
        ctx.extras["teacher_logits"] = out if isinstance(out, torch.Tensor) else out[0]
        if self._teacher_rec is not None:
            ctx.extras["teacher_features"] = self._teacher_rec.features
        if self._student_rec is not None:
            self._student_rec.clear()  # the student's forward fills this dict next
            ctx.extras["student_features"] = self._student_rec.features

    def on_train_end(self, trainer: Any) -> None:
        for rec in (self._student_rec, self._teacher_rec):
            if rec is not None:
                rec.remove()
        self._student_rec = self._teacher_rec = None


class KDHook(TeacherHook):
    """Hinton KD as a trainer hook: scales the task loss by (1 − α) and adds α·T²·KL."""

    name = "kd"

    def __init__(self, teacher: nn.Module, T: float = 4.0, alpha: float = 0.9) -> None:
        super().__init__(teacher)
        if T <= 0:
            raise ConfigError(f"KD temperature T must be > 0, got {T}")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"KD alpha must be in [0, 1], got {alpha}")
        self.T, self.alpha = T, alpha

    def on_loss(self, trainer: Any, ctx: StepContext) -> None:
        ctx.losses["task"] = ctx.losses["task"] * (1.0 - self.alpha)
        ctx.losses["kd"] = self.alpha * kd_loss(ctx.logits, ctx.extras["teacher_logits"], self.T)


@dataclass
class KDConfig(FinetuneConfig):
    """Hinton KD: ``teacher`` is required; ``T`` temperature, ``alpha`` weight of the KD term.

    ``student``: a model spec ``{"name": ..., **kwargs}`` to build a new student (e.g. a
    narrower one) instead of training a copy of the input model; ``num_classes`` and
    ``in_chans`` default to the data's.
    """

    teacher: nn.Module | None = None
    student: dict[str, Any] | None = None
    T: float = 4.0
    alpha: float = 0.9
    finetune_epochs: int = 30


@register_method(
    "kd", family="distillation", paper="Hinton et al. 2015, arXiv 1503.02531", config=KDConfig
)
def apply_kd(model: nn.Module, data: Any, cfg: KDConfig) -> nn.Module:
    """Train a copy of ``model`` with logit distillation from ``cfg.teacher``."""
    if cfg.teacher is None:
        raise ConfigError("method 'kd' needs teacher=<a trained nn.Module>")
    if cfg.student is not None:
        from leanvision.models import create_model

        spec = dict(cfg.student)
        if "name" not in spec:
            raise ConfigError(f"kd: student must be a model spec with a 'name', got {spec!r}")
        if data is not None:
            spec.setdefault("num_classes", data.num_classes)
            spec.setdefault("in_chans", data.input_size[0])
        student = create_model(spec.pop("name"), **spec)
        record_transform(student, None, "kd")  # a new architecture, described by its own spec
    else:
        student = copy.deepcopy(model)
        record_transform(student, model, "kd")
    # The hook freezes its teacher (eval, no grad): give it a copy, never the caller's model.
    teacher = copy.deepcopy(cfg.teacher)
    finetune(student, data, cfg, hooks=[KDHook(teacher, cfg.T, cfg.alpha)], method="kd")
    return student.eval()
