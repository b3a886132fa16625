"""What the source-free adaptation methods share: a classifier's features and frozen head, the
target data checked against the source model, and label-free training through the trainer.

Source-free adaptation (SHOT, Liang et al., ICML 2020; SFDA-DE, Ding et al., CVPR 2022) adapts
a trained source model to unlabelled target data with no access to the source data: the model's
classifier (the timm ``get_classifier()`` layer) is frozen and its feature extractor trained.
The target's labels are never read for training: the hooks replace the trainer's task loss
with their own, and the adaptation validates nothing (``eval_every=0``), so no target label
selects a model either.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from leanvision.engine import Hook, StepContext
from leanvision.errors import ConfigError
from leanvision.methods.common import finetune
from leanvision.methods.registry import record_transform

__all__ = ["FeatureHook", "adapt", "classifier_of", "source_classes"]


def classifier_of(model: nn.Module) -> nn.Linear:
    """The model's final linear classifier (timm's ``get_classifier()``)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Linear):
        raise ConfigError(
            "source-free adaptation needs a classifier whose get_classifier() is an nn.Linear "
            f"(a timm or leanvision model); got {type(model).__name__} with "
            f"{type(head).__name__ if head is not None else 'no get_classifier()'}"
        )
    return head


def source_classes(model: nn.Module, data: Any) -> int:
    """The source model's class count, checked against the target data's."""
    k = classifier_of(model).out_features
    if data is not None and data.num_classes != k:
        raise ConfigError(
            f"the target data has {data.num_classes} classes but the source model's classifier "
            f"has {k}: source-free adaptation needs the same label set"
        )
    return k


class FeatureHook(Hook):
    """Records the classifier's input (the features, with their graph) at every forward into
    ``ctx.extras["features"]`` and freezes the classifier; subclasses set ``ctx.losses``
    (the trainer's task loss, which reads the target labels, is dropped)."""

    def __init__(self) -> None:
        self._handle: Any = None
        self._features: torch.Tensor | None = None

    def on_train_start(self, trainer: Any) -> None:
        head = classifier_of(trainer.model)
        for p in head.parameters():
            p.requires_grad_(False)
        self._handle = head.register_forward_pre_hook(self._keep)

    def _keep(self, _module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self._features = inputs[0]

    def before_forward(self, trainer: Any, ctx: StepContext) -> None:
        self._features = None

    def on_loss(self, trainer: Any, ctx: StepContext) -> None:
        ctx.losses.pop("task", None)  # the target labels are never a training signal
        if self._features is None:
            raise ConfigError("the model's forward did not reach its classifier")
        ctx.extras["features"] = self._features

    def on_train_end(self, trainer: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def adapt(model: nn.Module, data: Any, cfg: Any, hook: Hook, method: str) -> nn.Module:
    """Train a copy of ``model`` on the target ``data`` with ``hook``'s label-free losses; the
    classifier stays as trained on the source."""
    source_classes(model, data)
    adapted = copy.deepcopy(model)
    record_transform(adapted, model, method)
    finetune(adapted, data, cfg, hooks=[hook], method=method, eval_every=0)
    for p in classifier_of(adapted).parameters():
        p.requires_grad_(True)
    return adapted.eval()
