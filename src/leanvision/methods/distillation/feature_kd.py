"""``feature_kd``: FitNets-style hint loss, the generic feature-distillation method.

FitNets: Hints for Thin Deep Nets, Romero et al., ICLR 2015 (arXiv 1412.6550): a regressor maps
the student's hint layer to the teacher's guided layer and the squared error between them is
minimised. Here the regressor is a learned linear map per layer pair over aligned tokens, which
is a 1×1 convolution on CNN maps (``nn.Linear`` over the channel axis) and a linear layer on ViT
tokens; it is created only where the widths differ. Maps and tokens of different resolution
are aligned as in :mod:`.tokens`. The hint loss is trained jointly with the task loss (and
optional logit KD), not in FitNets' separate first stage. Adapters are training-only: they
are saved in the trainer's checkpoints (resume) but not in the returned model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leanvision.engine import FeatureRecorder, StepContext
from leanvision.errors import ConfigError
from leanvision.methods.common import finetune
from leanvision.methods.config import check_real
from leanvision.methods.registry import register_method

from .kd import KDHook
from .manifold_kd import LayerPairConfig, feature_setup
from .tokens import align_tokens

__all__ = ["FeatureKDConfig", "FeatureKDHook", "build_adapters"]


def _adapter_key(student_name: str, teacher_name: str) -> str:
    return f"{student_name}->{teacher_name}".replace(".", "_")


@torch.no_grad()
def build_adapters(
    student: nn.Module,
    teacher: nn.Module,
    pairs: list[tuple[str, str]],
    sample: torch.Tensor,
    *,
    student_extra_tokens: int | None = None,
    teacher_extra_tokens: int | None = None,
) -> nn.ModuleDict:
    """One ``nn.Linear(C_student, C_teacher)`` per pair whose aligned widths differ.

    The widths are read from one forward of both models on ``sample`` (a small batch).
    """
    extra = {"student_extra_tokens": student_extra_tokens}
    extra["teacher_extra_tokens"] = teacher_extra_tokens
    feats = []
    for model, names in ((student, [s for s, _ in pairs]), (teacher, [t for _, t in pairs])):
        was_training = model.training
        model.eval()
        with FeatureRecorder(model, sorted(set(names))) as rec:
            model(sample)
            feats.append(dict(rec.features))
        model.train(was_training)
    adapters = nn.ModuleDict()
    for s_name, t_name in pairs:
        s, t = align_tokens(feats[0][s_name], feats[1][t_name], **extra)
        if s.shape[-1] != t.shape[-1]:
            adapters[_adapter_key(s_name, t_name)] = nn.Linear(s.shape[-1], t.shape[-1])
    return adapters


class FeatureKDHook(KDHook):
    """Task loss (+ optional logit KD) + β · mean over pairs of MSE(adapter(student), teacher).

    Adds ``ctx.losses["hint"]``; the adapters are trained with the student.
    """

    name = "feature_kd"

    def __init__(
        self,
        teacher: nn.Module,
        pairs: list[tuple[str, str]],
        adapters: nn.ModuleDict,
        *,
        beta: float = 1.0,
        student_extra_tokens: int | None = None,
        teacher_extra_tokens: int | None = None,
        T: float = 4.0,
        alpha: float = 0.0,
    ) -> None:
        if not pairs:
            raise ConfigError("feature_kd needs at least one (student, teacher) layer pair")
        if beta < 0:
            raise ConfigError(f"feature_kd beta must be >= 0, got {beta}")
        super().__init__(
            teacher,
            T,
            alpha,
            student_features=sorted({s for s, _ in pairs}),
            teacher_features=sorted({t for _, t in pairs}),
        )
        self.pairs, self.adapters, self.beta = list(pairs), adapters, beta
        self.extra = {"student_extra_tokens": student_extra_tokens}
        self.extra["teacher_extra_tokens"] = teacher_extra_tokens

    def on_train_start(self, trainer: Any) -> None:
        super().on_train_start(trainer)
        self.adapters.to(trainer.device).train()

    def hint_loss(
        self, student_features: dict[str, Any], teacher_features: dict[str, Any]
    ) -> torch.Tensor:
        """Mean over pairs of the squared error between adapted student and teacher tokens."""
        total = 0.0
        for s_name, t_name in self.pairs:
            s, t = align_tokens(student_features[s_name], teacher_features[t_name], **self.extra)
            key = _adapter_key(s_name, t_name)
            if key in self.adapters:
                s = self.adapters[key](s)
            total = total + F.mse_loss(s.float(), t.detach().float())
        return total / len(self.pairs)

    def on_loss(self, trainer: Any, ctx: StepContext) -> None:
        super().on_loss(trainer, ctx)
        if self.beta > 0:
            loss = self.hint_loss(ctx.extras["student_features"], ctx.extras["teacher_features"])
            ctx.losses["hint"] = self.beta * loss

    def parameters(self) -> list[nn.Parameter]:
        return list(self.adapters.parameters())

    def state_dict(self) -> dict[str, Any]:
        return {"adapters": self.adapters.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "adapters" in state:
            self.adapters.load_state_dict(state["adapters"])


@dataclass
class FeatureKDConfig(LayerPairConfig):
    """FitNets hints (arXiv 1412.6550): ``beta`` weight of the hint loss; ``alpha`` > 0 adds
    logit KD at ``T``; the layer options of :class:`LayerPairConfig`."""

    beta: float = 1.0
    alpha: float = 0.0

    def validate(self) -> None:
        """The layer-pair checks; β ≥ 0."""
        super().validate()
        check_real("beta", self.beta, 0.0)


@register_method(
    "feature_kd",
    family="distillation",
    paper="Romero et al. (FitNets), ICLR 2015, arXiv 1412.6550",
    config=FeatureKDConfig,
)
def apply_feature_kd(model: nn.Module, data: Any, cfg: FeatureKDConfig) -> nn.Module:
    """Train a student to match the teacher's features at paired layers through adapters."""
    student, teacher, pairs = feature_setup(model, data, cfg, "feature_kd")
    if data is None:  # nothing to train: no adapters needed (finetune() rejects epochs > 0)
        finetune(student, data, cfg, method="feature_kd")
        return student.eval()
    extra = {
        "student_extra_tokens": cfg.student_extra_tokens,
        "teacher_extra_tokens": cfg.teacher_extra_tokens,
    }
    sample = torch.zeros(2, *data.input_size)
    adapters = build_adapters(student, teacher, pairs, sample, **extra)
    hook = FeatureKDHook(teacher, pairs, adapters, beta=cfg.beta, T=cfg.T, alpha=cfg.alpha, **extra)
    hook.reduction = cfg.kd_reduction  # the logit term's normalisation (KDConfig.kd_reduction)
    finetune(student, data, cfg, hooks=[hook], method="feature_kd")
    return student.eval()
