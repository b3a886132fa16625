"""``defeat``: distilling object detectors via decoupled features (DeFeat).

Guo et al., "Distilling Object Detectors via Decoupled Features", CVPR 2021 (arXiv 2103.14475).
The student imitates the teacher's feature pyramid at every level, with the positions inside the
ground-truth boxes (foreground, mask ``M``) and the rest (background) as two terms of their own
weight, ``L_fg = Σ M·(S−T)² / max(1, 2·ΣM)`` and ``L_bg = Σ (1−M)·(S−T)² / max(1, 2·Σ(1−M))``
with the mask repeated over the channels, so each is half the mean squared error over its
elements (positions x channels), as the official ``batch_processor_kd`` normalises; each is
averaged over the levels;
a 1×1 adaptation conv maps the student's pyramid to the teacher's width where they differ. The
classification outputs are distilled apart on positive and negative positions as well: a
KL divergence at temperature ``T``, summed over the selected positions and divided by their
number. The detector's own losses are kept at weight 1. Defaults are the paper's VOC config
(features 3 fg / 12 bg, classification 2 / 2, both temperatures 1).

Where ours departs from the paper:

- The paper's headline detector is two-stage and its classification term is the softmax KL of
  the RoI head, on positive and background proposals. leanvision's detectors are one-stage
  (torchvision's RetinaNet and FCOS), whose classifier is a sigmoid per class: the term here
  is the binary KL per class, summed over the classes, on the head's positions (every anchor
  of a location) inside a ground-truth box (positive) or outside all (negative).
- ``M`` marks, on every pyramid level, the cells a ground-truth box overlaps (at least the cell
  of its centre), rather than assigning each box to one level by its scale.
- Teacher and student must share the pyramid's strides, the image size and the anchors per
  location (so the classification outputs align position by position); the widths may differ.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leanvision.engine import StepContext
from leanvision.errors import ConfigError
from leanvision.methods.common import FinetuneConfig, finetune
from leanvision.methods.config import check_real, field_error
from leanvision.methods.registry import register_method

from .kd import TeacherHook, make_student

__all__ = ["DeFeatConfig", "DeFeatHook", "binary_kl", "box_masks", "decoupled_feature_loss"]

_BACKBONE, _CLS = "backbone", "head.classification_head"


def box_masks(
    boxes: list[torch.Tensor], sizes: list[tuple[int, int]], strides: list[int]
) -> list[torch.Tensor]:
    """One (B, H, W) float mask per level: 1 on the cells a box of the image overlaps (at
    least one cell per box, however small).

    Args:
        boxes: per image, (n, 4) xyxy boxes in input pixels.
        sizes: per level, the feature map's (H, W).
        strides: per level, the map's stride in input pixels.
    """
    masks = []
    for (h, w), s in zip(sizes, strides, strict=True):
        m = torch.zeros(len(boxes), h, w)
        for i, b in enumerate(boxes):
            for x0, y0, x1, y1 in b.tolist():
                lx, ly = max(int(x0 // s), 0), max(int(y0 // s), 0)
                rx, ry = max(math.ceil(x1 / s), lx + 1), max(math.ceil(y1 / s), ly + 1)
                m[i, ly : min(ry, h), lx : min(rx, w)] = 1.0
        masks.append(m)
    return masks


def decoupled_feature_loss(
    student: list[torch.Tensor], teacher: list[torch.Tensor], masks: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeFeat's (fg, bg) feature terms, each averaged over the levels (module docstring)."""
    fg = bg = 0.0
    for s, t, m in zip(student, teacher, masks, strict=True):
        err = (s.float() - t.float()).pow(2).sum(1)  # (B, H, W): summed over channels
        m, c = m.to(err.device), s.shape[1]  # the mask counts every channel of a position
        fg = fg + (err * m).sum() / max(1.0, 2.0 * c * float(m.sum()))
        bg = bg + (err * (1 - m)).sum() / max(1.0, 2.0 * c * float((1 - m).sum()))
    return fg / len(student), bg / len(student)


def binary_kl(student: torch.Tensor, teacher: torch.Tensor, T: float) -> torch.Tensor:
    """Per position (rows), Σ over classes of KL(Bernoulli(σ(t/T)) ‖ Bernoulli(σ(s/T)))·T²."""
    s, t = student.float() / T, teacher.float() / T
    p = torch.sigmoid(t)
    kl = p * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p) * (F.logsigmoid(-t) - F.logsigmoid(-s))
    return kl.sum(-1) * (T * T)


def _check_detector(model: nn.Module, role: str) -> None:
    parts = (hasattr(model, "transform"), hasattr(model, "backbone"), hasattr(model, "head"))
    if not all(parts) or not hasattr(model.head, "classification_head"):
        raise ConfigError(
            f"defeat: the {role} must be a torchvision-style one-stage detector (transform, "
            "backbone with a feature pyramid, head.classification_head), e.g. "
            f"lv.create_detector('retinanet', ...); got {type(model).__name__}"
        )


@torch.no_grad()
def _pyramid(model: nn.Module, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """A detector's pyramid levels and classification logits (N, positions, K) on images."""
    batch, _ = model.transform(list(images))
    feats = list(model.backbone(batch.tensors).values())
    return feats, model.head.classification_head(feats)


class DeFeatHook(TeacherHook):
    """Adds ``ctx.losses`` ``"feat_fg"``, ``"feat_bg"``, ``"cls_pos"``, ``"cls_neg"``."""

    name = "defeat"

    def __init__(self, teacher: nn.Module, adapters: nn.ModuleList, strides: list[int],
                 cfg: DeFeatConfig) -> None:  # fmt: skip
        super().__init__(teacher, student_features=[_BACKBONE, _CLS])
        self.adapters, self.strides, self.cfg = adapters, list(strides), cfg

    def on_train_start(self, trainer: Any) -> None:
        super().on_train_start(trainer)
        self.adapters.to(trainer.device).train()

    def before_forward(self, trainer: Any, ctx: StepContext) -> None:
        feats, logits = _pyramid(self.teacher, ctx.inputs)
        ctx.extras["teacher_features"] = {_BACKBONE: feats, _CLS: logits}
        self._student_rec.clear()
        ctx.extras["student_features"] = self._student_rec.features

    def on_loss(self, trainer: Any, ctx: StepContext) -> None:
        cfg, rec, teach = self.cfg, ctx.extras["student_features"], ctx.extras["teacher_features"]
        student = list(rec[_BACKBONE].values())
        student = [a(s) for a, s in zip(self.adapters, student, strict=True)]
        masks = box_masks([t["boxes"] for t in ctx.targets],
                          [tuple(s.shape[-2:]) for s in student], self.strides)  # fmt: skip
        fg, bg = decoupled_feature_loss(student, teach[_BACKBONE], masks)
        ctx.losses["feat_fg"] = cfg.feat_fg_weight * fg
        ctx.losses["feat_bg"] = cfg.feat_bg_weight * bg
        s_logits, t_logits = rec[_CLS], teach[_CLS]
        per_loc = torch.cat([m.flatten(1) for m in masks], 1).to(s_logits.device)  # (B, Σ HW)
        pos = per_loc.repeat_interleave(s_logits.shape[1] // per_loc.shape[1], dim=1) > 0
        flat_s, flat_t, pos = s_logits.flatten(0, 1), t_logits.flatten(0, 1), pos.flatten()
        for key, sel, w, T in (("cls_pos", pos, cfg.cls_pos_weight, cfg.T_pos),
                               ("cls_neg", ~pos, cfg.cls_neg_weight, cfg.T_neg)):  # fmt: skip
            kl = binary_kl(flat_s[sel], flat_t[sel], T)
            ctx.losses[key] = w * kl.sum() / max(1, int(sel.sum()))

    def parameters(self) -> list[nn.Parameter]:
        return list(self.adapters.parameters())

    def state_dict(self) -> dict[str, Any]:
        return {"adapters": self.adapters.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "adapters" in state:
            self.adapters.load_state_dict(state["adapters"])


@dataclass
class DeFeatConfig(FinetuneConfig):
    """DeFeat (arXiv 2103.14475): ``teacher`` a trained detector; ``student`` a detector spec
    (``{"name": "retinanet_detector", "backbone": ..., ...}``) or None to train a copy of the
    input; feature weights ``feat_fg_weight`` / ``feat_bg_weight`` (paper: 3 / 12),
    classification weights ``cls_pos_weight`` / ``cls_neg_weight`` (2 / 2) at temperatures
    ``T_pos`` / ``T_neg`` (1 / 1). A weight of 0 turns a term off (``feat_bg_weight=0`` and
    ``cls_*_weight=0``: foreground-only feature imitation, the paper's ablation)."""

    teacher: nn.Module | None = None
    student: dict[str, Any] | None = None
    feat_fg_weight: float = 3.0
    feat_bg_weight: float = 12.0
    cls_pos_weight: float = 2.0
    cls_neg_weight: float = 2.0
    T_pos: float = 1.0
    T_neg: float = 1.0
    finetune_epochs: int = 12
    lr: float = 0.002
    opt: str = "adamw"
    weight_decay: float = 0.05

    def validate(self) -> None:
        """The fine-tuning checks; weights ≥ 0; temperatures > 0; student a model spec."""
        super().validate()
        for name in ("feat_fg_weight", "feat_bg_weight", "cls_pos_weight", "cls_neg_weight"):
            check_real(name, getattr(self, name), 0.0)
        check_real("T_pos", self.T_pos, 0.0, lo_open=True)
        check_real("T_neg", self.T_neg, 0.0, lo_open=True)
        if self.student is not None and not isinstance(self.student.get("name"), str):
            raise field_error("student", self.student, "a model spec {'name': ..., **kwargs}")

    def check_inputs(self, data: Any) -> None:
        """A detector teacher is required, and detection data when training."""
        if self.teacher is None:
            raise ConfigError("defeat needs teacher=<a trained detector>")
        super().check_inputs(data)
        _check_detector(self.teacher, "teacher")
        if data is not None and getattr(getattr(data, "task", None), "name", "") != "detection":
            raise ConfigError("defeat distils detectors: data must be a detection set, e.g. "
                              "lv.load_data('digits_det')")  # fmt: skip


@torch.no_grad()
def _adapters(student: nn.Module, teacher: nn.Module, input_size: tuple[int, ...]) -> tuple:
    """1×1 convs student → teacher width per level (identity where equal), and the strides;
    the two pyramids and classification outputs are checked to align."""
    x = torch.zeros(1, *input_size)
    modes = (student.training, teacher.training)
    student.eval(), teacher.eval()
    (fs, ls), (ft, lt) = _pyramid(student, x), _pyramid(teacher, x)
    student.train(modes[0]), teacher.train(modes[1])
    if [f.shape[-2:] for f in fs] != [f.shape[-2:] for f in ft]:
        raise ConfigError(
            "defeat: the student's and teacher's pyramids differ in levels or strides "
            f"({[tuple(f.shape[-2:]) for f in fs]} vs {[tuple(f.shape[-2:]) for f in ft]} at "
            f"input {tuple(input_size)}); give them the same out_indices and image_size"
        )
    if ls.shape != lt.shape:
        raise ConfigError(
            f"defeat: the classification outputs differ ({tuple(ls.shape)} vs {tuple(lt.shape)}):"
            " the detectors need the same kind, classes and anchors per location"
        )
    adapters = nn.ModuleList(
        nn.Conv2d(s.shape[1], t.shape[1], 1) if s.shape[1] != t.shape[1] else nn.Identity()
        for s, t in zip(fs, ft, strict=True)
    )
    return adapters, [input_size[-1] // f.shape[-1] for f in fs]


@register_method(
    "defeat",
    family="distillation",
    paper="Guo et al., Distilling Object Detectors via Decoupled Features, CVPR 2021 "
    "(arXiv 2103.14475)",
    config=DeFeatConfig,
)
def apply_defeat(model: nn.Module, data: Any, cfg: DeFeatConfig) -> nn.Module:
    """Train a detector with decoupled fg/bg feature and pos/neg classification distillation."""
    _check_detector(model, "student")
    if cfg.student is not None and data is not None:  # a new detector reads the data's size
        cfg = dataclasses.replace(cfg, student={"image_size": data.input_size[-1], **cfg.student})
    student = make_student(model, data, cfg, "defeat")
    _check_detector(student, "student")
    if data is None:
        finetune(student, data, cfg, method="defeat")
        return student.eval()
    teacher = copy.deepcopy(cfg.teacher)
    adapters, strides = _adapters(student, teacher, tuple(data.input_size))
    finetune(student, data, cfg, hooks=[DeFeatHook(teacher, adapters, strides, cfg)],
             method="defeat")  # fmt: skip
    return student.eval()
