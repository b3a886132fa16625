"""``manifold_kd``: fine-grained manifold distillation of vision transformers, as a method.

Hao et al., Learning Efficient Vision Transformers via Fine-Grained Manifold Distillation,
NeurIPS 2022 (arXiv 2107.01378). The loss of the official code is

    L = (1 − α)·CE + α·τ²·KL(teacher/τ ‖ student/τ)
        + β·(w_patch·L_intra + w_sample·L_inter + w_rand·L_rand),

each manifold term averaged over the paired layers (see :mod:`.manifold` for the terms). The
KL is summed over classes and averaged over the batch: ``ManifoldKD/losses.py`` (huawei-noah
Efficient-Computing, and the authors' Hao840/manifold-distillation) uses
``reduction='batchmean'``, where the DeiT code it builds on divides the summed KL by B·K
(``kd_reduction="numel"`` selects that, making the logit term K times lighter against the
relation terms).
Defaults are the paper's command: α = 1 (no label term), β = 1, τ = 1, w_patch 4, w_sample 0.1,
w_rand 0.2, K = 192, and the first four and last four blocks of each model paired. The teacher
may be a CNN: its maps become tokens and a finer grid is merged to the student's (see
:mod:`.tokens`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from leanvision.engine import StepContext
from leanvision.errors import ConfigError
from leanvision.methods.common import finetune
from leanvision.methods.config import check_int, check_real
from leanvision.methods.registry import register_method

from .kd import KDConfig, KDHook, frozen_teacher, make_student
from .manifold import manifold_terms
from .pairing import LayerRefs, default_pairs, pair_layers
from .tokens import align_tokens

__all__ = [
    "LayerPairConfig",
    "ManifoldKDConfig",
    "ManifoldKDHook",
    "feature_setup",
    "resolve_pairs",
]

TERMS = ("patch", "sample", "rand")


class ManifoldKDHook(KDHook):
    """Logit KD plus the manifold relation losses between paired student/teacher layers.

    Adds ``ctx.losses["mf_patch"|"mf_sample"|"mf_rand"]`` (terms with weight 0 are skipped).

    Args:
        teacher: the trained teacher.
        pairs: ``[(student_module, teacher_module), ...]`` (see :func:`pair_layers`).
        beta: weight of the manifold loss; ``w_patch``, ``w_sample``, ``w_rand`` its terms'.
        num_samples: K of the random-sampled term.
        student_extra_tokens, teacher_extra_tokens: leading non-patch tokens (None: inferred).
        T, alpha, kind, distillation_token, reduction: the logit term, as in :class:`KDHook`
            (``reduction="batchmean"``, the official ManifoldKD loss).
    """

    name = "manifold_kd"

    def __init__(
        self,
        teacher: nn.Module,
        pairs: list[tuple[str, str]],
        *,
        beta: float = 1.0,
        w_patch: float = 4.0,
        w_sample: float = 0.1,
        w_rand: float = 0.2,
        num_samples: int = 192,
        student_extra_tokens: int | None = None,
        teacher_extra_tokens: int | None = None,
        T: float = 1.0,
        alpha: float = 1.0,
        kind: str = "soft",
        distillation_token: bool = False,
        reduction: str = "batchmean",
    ) -> None:
        if not pairs:
            raise ConfigError("manifold_kd needs at least one (student, teacher) layer pair")
        weights = {"patch": w_patch, "sample": w_sample, "rand": w_rand, "beta": beta}
        bad = {k: v for k, v in weights.items() if v < 0}
        if bad:
            raise ConfigError(f"manifold_kd weights must be >= 0, got {bad}")
        if num_samples < 2:
            raise ConfigError(f"num_samples (K) must be >= 2, got {num_samples}")
        super().__init__(
            teacher,
            T,
            alpha,
            kind,
            distillation_token,
            student_features=sorted({s for s, _ in pairs}),
            teacher_features=sorted({t for _, t in pairs}),
            reduction=reduction,
        )
        self.pairs = list(pairs)
        self.beta = beta
        self.weights = {"patch": w_patch, "sample": w_sample, "rand": w_rand}
        self.num_samples = num_samples
        self.extra = {"student_extra_tokens": student_extra_tokens}
        self.extra["teacher_extra_tokens"] = teacher_extra_tokens

    def manifold_losses(
        self, student_features: dict[str, Any], teacher_features: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        """Each term averaged over the pairs, weighted by β·w (terms with weight 0 left out)."""
        sums: dict[str, torch.Tensor] = {}
        for s_name, t_name in self.pairs:
            s, t = align_tokens(student_features[s_name], teacher_features[t_name], **self.extra)
            terms = manifold_terms(s, t, num_samples=self.num_samples)
            for k in TERMS:
                sums[k] = sums.get(k, 0.0) + terms[k]
        n = len(self.pairs)
        return {
            f"mf_{k}": self.beta * self.weights[k] * sums[k] / n
            for k in TERMS
            if self.weights[k] > 0 and self.beta > 0
        }

    def on_loss(self, trainer: Any, ctx: StepContext) -> None:
        super().on_loss(trainer, ctx)
        ctx.losses.update(
            self.manifold_losses(ctx.extras["student_features"], ctx.extras["teacher_features"])
        )


@dataclass
class LayerPairConfig(KDConfig):
    """Which layers a feature method pairs (see :func:`resolve_pairs`) and their extra tokens.

    ``student_layers`` / ``teacher_layers``: block indices or module names, paired in order
    (None: the first 4 and last 4 blocks of each model, see :func:`default_pairs`).
    ``student_container`` / ``teacher_container``: the block lists indices refer to.
    ``student_extra_tokens`` / ``teacher_extra_tokens``: leading non-patch tokens (None: inferred).
    """

    student_layers: list[int | str] | None = None
    teacher_layers: list[int | str] | None = None
    student_container: str = "blocks"
    teacher_container: str = "blocks"
    student_extra_tokens: int | None = None
    teacher_extra_tokens: int | None = None

    def validate(self) -> None:
        """The KD checks; both layer lists or neither, of equal length; extra tokens ≥ 0."""
        super().validate()
        s, t = self.student_layers, self.teacher_layers
        if (s is None) != (t is None):
            raise ConfigError(
                f"student_layers={s!r}, teacher_layers={t!r}; allowed: both (paired in order) "
                "or neither (the first and last 4 blocks)"
            )
        if s is not None and (not s or len(s) != len(t)):
            raise ConfigError(
                f"student_layers has {len(s)} and teacher_layers {len(t)} entries; allowed: "
                "two non-empty lists of the same length"
            )
        check_int("student_extra_tokens", self.student_extra_tokens, 0, none_ok=True)
        check_int("teacher_extra_tokens", self.teacher_extra_tokens, 0, none_ok=True)


@dataclass
class ManifoldKDConfig(LayerPairConfig):
    """Manifold distillation (arXiv 2107.01378); defaults from the paper's command, and the
    logit term's ``kd_reduction="batchmean"`` from the official ``losses.py``."""

    T: float = 1.0
    alpha: float = 1.0
    beta: float = 1.0
    w_patch: float = 4.0
    w_sample: float = 0.1
    w_rand: float = 0.2
    num_samples: int = 192

    def validate(self) -> None:
        """The layer-pair checks; β, w_patch, w_sample, w_rand ≥ 0; num_samples K ≥ 2."""
        super().validate()
        for name in ("beta", "w_patch", "w_sample", "w_rand"):
            check_real(name, getattr(self, name), 0.0)
        check_int("num_samples", self.num_samples, 2)


def resolve_pairs(
    student: nn.Module,
    teacher: nn.Module,
    student_layers: LayerRefs | None,
    teacher_layers: LayerRefs | None,
    student_container: str = "blocks",
    teacher_container: str = "blocks",
) -> list[tuple[str, str]]:
    """Layer pairs from explicit lists, or the default first-4/last-4 blocks when both are None."""
    containers = {"student_container": student_container, "teacher_container": teacher_container}
    if student_layers is None and teacher_layers is None:
        return default_pairs(student, teacher, **containers)
    if student_layers is None or teacher_layers is None:
        raise ConfigError("give both student_layers and teacher_layers, or neither")
    return pair_layers(student, teacher, student_layers, teacher_layers, **containers)


def feature_setup(
    model: nn.Module, data: Any, cfg: Any, method: str
) -> tuple[nn.Module, nn.Module, list[tuple[str, str]]]:
    """The student, a frozen copy of the teacher and their layer pairs, from a feature config."""
    student = make_student(model, data, cfg, method)
    teacher = frozen_teacher(cfg)
    pairs = resolve_pairs(
        student,
        teacher,
        cfg.student_layers,
        cfg.teacher_layers,
        cfg.student_container,
        cfg.teacher_container,
    )
    return student, teacher, pairs


@register_method(
    "manifold_kd",
    family="distillation",
    paper="Hao et al., NeurIPS 2022, arXiv 2107.01378",
    config=ManifoldKDConfig,
)
def apply_manifold_kd(model: nn.Module, data: Any, cfg: ManifoldKDConfig) -> nn.Module:
    """Train a ViT student with manifold relation losses and logit KD from ``cfg.teacher``."""
    student, teacher, pairs = feature_setup(model, data, cfg, "manifold_kd")
    hook = ManifoldKDHook(
        teacher,
        pairs,
        beta=cfg.beta,
        w_patch=cfg.w_patch,
        w_sample=cfg.w_sample,
        w_rand=cfg.w_rand,
        num_samples=cfg.num_samples,
        student_extra_tokens=cfg.student_extra_tokens,
        teacher_extra_tokens=cfg.teacher_extra_tokens,
        T=cfg.T,
        alpha=cfg.alpha,
        kind=cfg.kind,
        distillation_token=cfg.distillation_token,
        reduction=cfg.kd_reduction,
    )
    finetune(student, data, cfg, hooks=[hook], method="manifold_kd")
    return student.eval()
