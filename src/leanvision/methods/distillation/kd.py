"""Hinton knowledge distillation (the logit-KD baseline).

Distilling the Knowledge in a Neural Network, Hinton, Vinyals, Dean, 2015 (arXiv 1503.02531):
the student matches the teacher's temperature-softened class probabilities,
``L = (1 − α)·CE(y, s) + α·T²·KL(softmax(t/T) ‖ softmax(s/T))``; the T² keeps gradient scales
comparable across temperatures.

The KL is normalised per sample (``reduction="batchmean"``, the KL as written, and what the
official ManifoldKD and DynamicViT losses use) or per logit (``"numel"``: the summed KL over
B·K logits, as DeiT's ``losses.py`` soft distillation, ``F.kl_div(..., reduction='sum') · T² /
outputs_kd.numel()``, i.e. K times smaller): ``KDConfig.kd_reduction``.
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
from leanvision.methods.config import check_choice, check_real, field_error
from leanvision.methods.registry import record_transform, register_method

__all__ = ["DeiTConfig", "KDConfig", "KDHook", "TeacherHook", "kd_loss", "make_student"]


KD_REDUCTIONS = ("batchmean", "numel")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    T: float,
    reduction: str = "batchmean",
) -> torch.Tensor:
    """T²·KL(softmax(t/T) ‖ softmax(s/T)) summed over the classes and averaged over the batch
    (``"batchmean"``), or summed and divided by B·K (``"numel"``, DeiT's normalisation). Shapes
    (B, K).

    Raises:
        ConfigError: an unknown ``reduction``.
    """
    if reduction not in KD_REDUCTIONS:
        raise ConfigError(f"KD reduction must be one of {KD_REDUCTIONS}, got {reduction!r}")
    log_p = F.log_softmax(student_logits.float() / T, dim=1)
    log_q = F.log_softmax(teacher_logits.float() / T, dim=1)
    kl = F.kl_div(log_p, log_q, reduction="sum", log_target=True)
    count = log_p.shape[0] if reduction == "batchmean" else log_p.numel()
    return kl * (T * T) / max(1, count)


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
    """Logit distillation as a trainer hook (Hinton KD, and DeiT's distillation token).

    The task loss (cross-entropy on the class head) is scaled by (1 − α) and
    ``α·T²·KL(teacher/T ‖ student/T)`` (``kind="soft"``, normalised by ``reduction``: see
    :func:`kd_loss`) or ``α·CE(student, argmax teacher)`` (``kind="hard"``, DeiT's hard
    distillation) is added. With ``distillation_token=True`` the
    student must return ``(class_logits, distillation_logits)`` in training (a DeiT-style
    student, e.g. timm's ``deit_tiny_distilled_patch16_224`` or ``vit_resnas_*(distilled=True)``)
    and the distillation term is put on the distillation head, as in DeiT (Touvron et al.,
    ICML 2021, arXiv 2012.12877); at evaluation such students average the two heads.
    """

    name = "kd"

    def __init__(
        self,
        teacher: nn.Module,
        T: float = 4.0,
        alpha: float = 0.9,
        kind: str = "soft",
        distillation_token: bool = False,
        student_features: list[str] | tuple[str, ...] = (),
        teacher_features: list[str] | tuple[str, ...] = (),
        reduction: str = "batchmean",
    ) -> None:
        super().__init__(teacher, student_features, teacher_features)
        if reduction not in KD_REDUCTIONS:
            raise ConfigError(f"KD reduction must be one of {KD_REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        if T <= 0:
            raise ConfigError(f"KD temperature T must be > 0, got {T}")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"KD alpha must be in [0, 1], got {alpha}")
        if kind not in ("soft", "hard"):
            raise ConfigError(f"KD kind must be 'soft' or 'hard', got {kind!r}")
        self.T, self.alpha, self.kind = T, alpha, kind
        self.distillation_token = distillation_token

    def on_train_start(self, trainer: Any) -> None:
        super().on_train_start(trainer)
        if self.distillation_token:
            _set_distilled_training(trainer.model, True)

    def on_train_end(self, trainer: Any) -> None:
        super().on_train_end(trainer)
        if self.distillation_token:
            _set_distilled_training(trainer.model, False)

    def student_kd_logits(self, ctx: StepContext) -> torch.Tensor:
        """Logits the distillation term acts on: the distillation head's, else the class head's."""
        if not self.distillation_token:
            return ctx.logits
        out = ctx.outputs
        if isinstance(out, torch.Tensor) or len(out) < 2:
            raise ConfigError(
                "distillation_token=True needs a student that returns (class_logits, "
                "distillation_logits) in training, e.g. deit_tiny_distilled_patch16_224 or "
                "vit_resnas_*(distilled=True); this one returned a single tensor"
            )
        return out[1]

    def on_loss(self, trainer: Any, ctx: StepContext) -> None:
        ctx.losses["task"] = ctx.losses["task"] * (1.0 - self.alpha)
        student = self.student_kd_logits(ctx)
        teacher = ctx.extras["teacher_logits"]
        if self.kind == "soft":
            term = kd_loss(student, teacher, self.T, self.reduction)
        else:
            term = F.cross_entropy(student.float(), teacher.argmax(dim=1))
        ctx.losses["kd"] = self.alpha * term


def _set_distilled_training(model: nn.Module, enable: bool) -> None:
    fn = getattr(model, "set_distilled_training", None)
    if fn is None:
        raise ConfigError(
            f"distillation_token=True needs a student with a distillation token; "
            f"{type(model).__name__} has none (no set_distilled_training). Build e.g. "
            "deit_tiny_distilled_patch16_224 or vit_resnas_*(distilled=True)"
        )
    fn(enable)


@dataclass
class KDConfig(FinetuneConfig):
    """Logit distillation: ``teacher`` is required; ``T`` temperature, ``alpha`` KD weight.

    ``kind``: ``"soft"`` (KL on softened logits) or ``"hard"`` (CE on the teacher's argmax).
    ``distillation_token``: put the term on a DeiT distillation head (the student must have one).
    ``kd_reduction``: the soft term's KL per sample, ``"batchmean"`` (default: the KL as Hinton
    et al. write it, and the normalisation of the official ManifoldKD and DynamicViT losses), or
    per logit, ``"numel"`` (DeiT's ``losses.py``: K = num_classes times smaller).
    ``student``: a model spec ``{"name": ..., **kwargs}`` to build a new student (e.g. a
    narrower one) instead of training a copy of the input model; ``num_classes`` and
    ``in_chans`` default to the data's.
    """

    teacher: nn.Module | None = None
    student: dict[str, Any] | None = None
    T: float = 4.0
    alpha: float = 0.9
    kind: str = "soft"
    distillation_token: bool = False
    finetune_epochs: int = 30
    kd_reduction: str = "batchmean"

    def validate(self) -> None:
        """The fine-tuning checks; T > 0; alpha in [0, 1]; kind 'soft' or 'hard'; student a
        model spec with a 'name' (or None)."""
        super().validate()
        check_real("T", self.T, 0.0, lo_open=True)
        check_real("alpha", self.alpha, 0.0, 1.0)
        check_choice("kind", self.kind, ("soft", "hard"))
        if self.student is not None and not isinstance(self.student.get("name"), str):
            raise field_error("student", self.student, "a model spec {'name': ..., **kwargs}")

    def check_inputs(self, data: Any) -> None:
        """A teacher is required (and data when training)."""
        if self.teacher is None:
            raise ConfigError("teacher=None; distillation needs teacher=<a trained nn.Module>")
        super().check_inputs(data)


@dataclass
class DeiTConfig(KDConfig):
    """DeiT distillation through a distillation token; defaults of DeiT (arXiv 2012.12877).

    Hard distillation with α = 0.5 (½·CE on the class head + ½·CE(teacher argmax) on the
    distillation head); ``kind="soft"`` with ``T`` gives the soft variant, whose KL is divided
    by B·K as DeiT's ``losses.py`` (``kd_reduction="numel"``).
    """

    T: float = 1.0
    alpha: float = 0.5
    kind: str = "hard"
    distillation_token: bool = True
    kd_reduction: str = "numel"


def make_student(model: nn.Module, data: Any, cfg: KDConfig, method: str) -> nn.Module:
    """The model a distillation method trains: a copy of ``model``, or one from cfg.student."""
    if cfg.teacher is None:
        raise ConfigError(f"method {method!r} needs teacher=<a trained nn.Module>")
    if cfg.student is None:
        student = copy.deepcopy(model)
        record_transform(student, model, method)
        return student
    from leanvision.models import create_model

    spec = dict(cfg.student)
    if "name" not in spec:
        raise ConfigError(f"{method}: student must be a model spec with a 'name', got {spec!r}")
    if data is not None:
        spec.setdefault("num_classes", data.num_classes)
        spec.setdefault("in_chans", data.input_size[0])
    student = create_model(spec.pop("name"), **spec)
    record_transform(student, None, method)  # a new architecture, described by its own spec
    return student


def frozen_teacher(cfg: KDConfig) -> nn.Module:
    """A private copy of the teacher (the hook freezes it; never touch the caller's model)."""
    return copy.deepcopy(cfg.teacher)


@register_method(
    "kd", family="distillation", paper="Hinton et al. 2015, arXiv 1503.02531", config=KDConfig
)
def apply_kd(model: nn.Module, data: Any, cfg: KDConfig) -> nn.Module:
    """Train a copy of ``model`` with logit distillation from ``cfg.teacher``."""
    student = make_student(model, data, cfg, "kd")
    hook = KDHook(
        frozen_teacher(cfg), cfg.T, cfg.alpha, cfg.kind, cfg.distillation_token,
        reduction=cfg.kd_reduction,
    )  # fmt: skip
    finetune(student, data, cfg, hooks=[hook], method="kd")
    return student.eval()


@register_method(
    "deit_kd",
    family="distillation",
    paper="Touvron et al. 2021 (DeiT), arXiv 2012.12877",
    config=DeiTConfig,
)
def apply_deit_kd(model: nn.Module, data: Any, cfg: DeiTConfig) -> nn.Module:
    """Train a ViT with a distillation token against ``cfg.teacher`` (hard or soft)."""
    student = make_student(model, data, cfg, "deit_kd")
    hook = KDHook(
        frozen_teacher(cfg), cfg.T, cfg.alpha, cfg.kind, cfg.distillation_token,
        reduction=cfg.kd_reduction,
    )  # fmt: skip
    finetune(student, data, cfg, hooks=[hook], method="deit_kd")
    return student.eval()
