"""IPT pre-training: one image processing transformer trained on several corruptions of the
same images, with a contrastive loss on its patch features.

Pre-Trained Image Processing Transformer, Chen et al., CVPR 2021 (arXiv 2012.00364). Each step
takes the training bundle's clean crops, picks one task (×2, ×3 or ×4 bicubic
super-resolution, Gaussian denoising at σ 30 or 50), corrupts the crops for it, runs that task's
head and tail around the shared body (:class:`~leanvision.models.ipt.IPT`), and adds to the L1
loss ``contrastive_weight`` times the paper's contrastive loss on the decoder's patch features:
two patches of one image are a positive pair, the same patches of the other images in the
batch its negatives. Fine-tuning is then plain training on the target task's data with the
task selected (``model.set_task("sr2")``, ``lv.train``), as in the paper.

Where ours departs from the paper (whose public code is inference only, without this loss):

* the training images are the data bundle's (T91 in our benchmarks), not ImageNet; no
  deraining task (no rain data here);
* the corrupted inputs are made on the fly from the clean crops: torch's antialiased bicubic
  for super-resolution (the test sets' LR images are PIL's bicubic), noise not clipped;
* the contrastive loss's form: InfoNCE over cosine similarities at ``temperature`` (ours, 0.1),
  16 patch pairs a step; the paper's λ = 0.1 is the default weight.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leanvision.checks import check_real, field_error
from leanvision.engine.hooks import Hook, StepContext
from leanvision.errors import ConfigError, UnsupportedModelError
from leanvision.methods.common import FinetuneConfig, finetune
from leanvision.methods.registry import record_transform, register_method

__all__ = ["IPTConfig", "IPTPretrainHook", "corrupt", "patch_contrastive_loss"]


def _tasks() -> tuple[str, ...]:
    from leanvision.models.ipt import IPT_TASKS

    return IPT_TASKS


@dataclass
class IPTConfig(FinetuneConfig):
    """IPT pre-training: the tasks (default every task the model has heads for), the
    contrastive term (the paper's λ = 0.1), Adam at the paper's 5e-5."""

    tasks: list[str] | None = None
    contrastive_weight: float = 0.1
    temperature: float = 0.1
    opt: str = "adam"
    lr: float = 5e-5
    weight_decay: float = 0.0

    def validate(self) -> None:
        """The fine-tuning checks; known, distinct tasks (None: all the model's); weight ≥ 0;
        temperature > 0."""
        super().validate()
        known = _tasks()
        if self.tasks is not None and (not isinstance(self.tasks, (list, tuple)) or not self.tasks
                or len(set(self.tasks)) != len(self.tasks)
                or any(t not in known for t in self.tasks)):  # fmt: skip
            raise field_error("tasks", self.tasks, f"distinct names of {list(known)}")
        check_real("contrastive_weight", self.contrastive_weight, 0.0)
        check_real("temperature", self.temperature, 0.0, lo_open=True)


def corrupt(clean: torch.Tensor, task: str, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input, target)`` for ``task`` from clean crops (B, 3, H, W): a random
    ``crop · scale`` square of them (one position for the batch) and its corruption, a
    ``crop``×``crop`` input (bicubic, 8-bit rounded, for ``sr*``; plus Gaussian noise for
    ``noise*``)."""
    from leanvision.models.ipt import task_scale

    s = task_scale(task)
    side = crop * s
    h, w = clean.shape[-2:]
    if min(h, w) < side:
        raise ConfigError(f"ipt: task {task} needs clean crops of {side} pixels, got {h}x{w}")
    y = int(torch.randint(0, h - side + 1, ()))
    x = int(torch.randint(0, w - side + 1, ()))
    target = clean[..., y : y + side, x : x + side]
    if s > 1:
        lr = F.interpolate(target, size=(crop, crop), mode="bicubic", align_corners=False,
                           antialias=True)  # fmt: skip
        return (lr.clamp(0, 1) * 255).round() / 255, target
    sigma = float(task[5:])
    return target + torch.randn_like(target) * (sigma / 255.0), target


def patch_contrastive_loss(
    features: torch.Tensor, temperature: float = 0.1, pairs: int = 16
) -> torch.Tensor:
    """IPT's contrastive loss on patch features (B, N, D): for ``pairs`` random position pairs
    (j, j'), patch j of image i is pulled toward patch j' of image i and pushed from patch j' of
    every other image (InfoNCE, cosine similarity / ``temperature``); zero for one image."""
    b, n, _ = features.shape
    if b < 2 or n < 2:
        return features.sum() * 0.0
    f = F.normalize(features, dim=-1)
    j1 = torch.randperm(n, device=f.device)[: min(pairs, n)]
    j2 = (j1 + torch.randint(1, n, (len(j1),), device=f.device)) % n  # another patch
    a, p = f[:, j1].transpose(0, 1), f[:, j2].transpose(0, 1)  # (K, B, D)
    logits = a @ p.transpose(1, 2) / temperature  # (K, B, B): diagonal = same image
    labels = torch.arange(b, device=f.device).expand(len(j1), b)
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


class IPTPretrainHook(Hook):
    """Each step: one task at random, the batch's clean crops corrupted for it, that task's
    head and tail selected; the contrastive term added; afterwards the data's own task
    selected again (validation scores it)."""

    name = "ipt_pretrain"

    def __init__(self, model: nn.Module, tasks: list[str], eval_task: str,
                 contrastive_weight: float = 0.1, temperature: float = 0.1) -> None:  # fmt: skip
        self.model, self.tasks, self.eval_task = model, list(tasks), eval_task
        self.weight, self.temperature = contrastive_weight, temperature

    def before_forward(self, trainer: Any, ctx: StepContext) -> None:
        task = self.tasks[int(torch.randint(len(self.tasks), ()))]
        self.model.set_task(task)
        ctx.inputs, ctx.targets = corrupt(ctx.targets, task, self.model.crop)

    def on_loss(self, trainer: Any, ctx: StepContext) -> None:
        feats = self.model.last_features
        self.model.last_features = None
        if self.weight > 0 and feats is not None:
            ctx.losses["contrastive"] = self.weight * patch_contrastive_loss(
                feats, self.temperature
            )

    def after_optimizer_step(self, trainer: Any) -> None:
        self.model.set_task(self.eval_task)

    def on_train_end(self, trainer: Any) -> None:
        self.model.set_task(self.eval_task)


def _check(model: nn.Module, data: Any, cfg: IPTConfig) -> str:
    """The data's own task name; the model and the crops checked."""
    from leanvision.models.ipt import IPT, task_scale
    from leanvision.tasks import Denoising, SuperResolution

    if not isinstance(model, IPT):
        raise UnsupportedModelError(f"ipt pre-trains an IPT (ipt_cpu, ipt_base), not "
                                    f"{type(model).__name__}")  # fmt: skip
    tasks = list(cfg.tasks or model.tasks)
    missing = [t for t in tasks if t not in model.tasks]
    if missing:
        raise ConfigError(f"ipt: tasks {missing} have no head and tail in this IPT "
                          f"(its tasks: {list(model.tasks)})")  # fmt: skip
    if data is None:
        return model.task
    task = getattr(data, "task", None)
    if isinstance(task, Denoising):
        own = f"noise{task.sigma:g}"
    elif isinstance(task, SuperResolution):
        own = f"sr{task.scale}"
    else:
        raise ConfigError("ipt pre-trains on an image-restoration bundle (load_data('sr', ...) "
                          "or 'denoise'): its clean crops are corrupted for each task")  # fmt: skip
    side = data.input_size[-1] * getattr(task, "scale", 1)
    need = model.crop * max(task_scale(t) for t in tasks)
    if side < need:
        raise ConfigError(
            f"ipt: the bundle's clean crops are {side} pixels; the tasks {tasks} need "
            f"{need} (crop {model.crop} x the largest scale): raise patch_size"
        )
    return own if own in model.tasks else model.task


@register_method(
    "ipt",
    family="architecture",
    paper="Pre-Trained Image Processing Transformer, CVPR 2021, arXiv 2012.00364",
    config=IPTConfig,
    rebuild=lambda model, arch: model,
)
def apply_ipt(model: nn.Module, data: Any, cfg: IPTConfig) -> nn.Module:
    """Multi-task pre-training with the contrastive loss; returns the pre-trained IPT (a copy:
    the caller's model is left as it was)."""
    eval_task = _check(model, data, cfg)
    source, model = model, copy.deepcopy(model)
    record_transform(model, source, "ipt", {})
    model.set_task(eval_task)
    hook = IPTPretrainHook(model, list(cfg.tasks or model.tasks), eval_task,
                           cfg.contrastive_weight,
                           cfg.temperature)  # fmt: skip
    finetune(model, data, cfg, [hook], method="ipt")
    return model.eval()
