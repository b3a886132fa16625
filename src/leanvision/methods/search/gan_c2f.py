"""Coarse-to-fine search for efficient image-to-image generators, distilled from a teacher.

Coarse-to-Fine Searching for Efficient Generative Adversarial Networks, Wang et al., 2021
(methods-notes §27; no public code). A teacher generator is compressed by three searches in
turn, coarse to fine, each under the resource budget and each training its candidates with
distillation from the teacher: first the path (here the trunk's depth), then the operator of
every block, then the widths. Each step keeps what the earlier steps chose.

Ours, on a space with ``groups`` (``sr_generator``: path, operator, channel) and a task whose
model output is an image (super-resolution): step ``g`` is an Optuna study of its own
(``<study>-<group>``, TPE by default) over group ``g``'s choices, the earlier groups held at
their chosen values and the later ones at the space's smallest member's (so whatever a coarse
step picks still fits the budget once the finer choices are filled in); every candidate over
the MACs budget is pruned before it trains; the others train alone for ``epochs`` with
``L1(output, HR) + distill_weight * L1(output, teacher's output)`` and are scored by the
validation split's primary metric (PSNR). ``n_trials`` completed trials per step. ``teacher``: the
teacher model, or a file written by ``lv.save`` (loaded at the door).

Departures from the paper, which are ours to state since no code exists: no adversarial loss
(the teacher here is an SR network trained with L1, so the generator is distilled with L1 to its
outputs); no supernet (each candidate trains alone); the steps' samplers are Optuna's, not the
paper's search; the path is the trunk's depth only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from leanvision.checks import check_int, check_real
from leanvision.engine import StepContext, model_device
from leanvision.errors import ConfigError
from leanvision.methods.distillation.kd import TeacherHook
from leanvision.methods.saving import load
from leanvision.methods.search.common import (
    SearchConfig,
    method_study,
    seed_for,
    train_candidate,
)
from leanvision.search import (
    SearchContext,
    SearchSpace,
    make_sampler,
    register_search_method,
    run_study,
)
from leanvision.search.study import fixed_sampler

__all__ = ["GanC2FConfig", "OutputDistillHook", "run_gan_c2f"]


class OutputDistillHook(TeacherHook):
    """Adds ``weight * L1(student output, teacher output)`` to the loss (image outputs)."""

    name = "output_distill"

    def __init__(self, teacher: nn.Module, weight: float) -> None:
        super().__init__(teacher)
        self.weight = weight

    def on_loss(self, trainer: Any, ctx: StepContext) -> None:
        ctx.losses["distill"] = self.weight * F.l1_loss(ctx.outputs, ctx.extras["teacher_outputs"])


@dataclass
class GanC2FConfig(SearchConfig):
    """The steps' sampler, each candidate's training and the distillation."""

    version: ClassVar[int] = 1
    sampler: str = "tpe"
    epochs: int = 1
    distill_weight: float = 1.0
    teacher: Any = None
    opt: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0

    def validate(self) -> None:
        super().validate()
        check_int("epochs", self.epochs, 1)
        check_real("distill_weight", self.distill_weight, 0.0)
        if isinstance(self.teacher, (str, os.PathLike)):  # a file of lv.save (CLI, recipes)
            self.teacher = load(self.teacher)
        if not isinstance(self.teacher, nn.Module):
            raise ConfigError(
                "gan_c2f distils from a teacher generator: pass teacher= (an nn.Module or a "
                f"file written by lv.save), got {type(self.teacher).__name__}"
            )

    def check_inputs(self, data: Any) -> None:
        super().check_inputs(data)
        lr, hr = next(iter(data.loader("val", batch_size=1)))
        was = self.teacher.training
        with torch.no_grad():
            out = self.teacher.eval()(lr.to(model_device(self.teacher))).cpu()
        self.teacher.train(was)
        if not isinstance(out, torch.Tensor) or out.shape != hr.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(
                f"gan_c2f: the teacher maps a {tuple(lr.shape)} input to {got}, not the target's "
                f"{tuple(hr.shape)} (an image-to-image teacher for this data is needed)"
            )


@register_search_method(
    "gan_c2f",
    paper="Coarse-to-Fine Searching for Efficient Generative Adversarial Networks (Wang et al., "
    "2021)",
    config=GanC2FConfig,
    summary="path, then operators, then widths, each step distilled from a teacher generator",
)
def run_gan_c2f(space: SearchSpace, data: Any, config: GanC2FConfig, ctx: SearchContext) -> Any:
    if not space.groups:
        raise ConfigError(f"gan_c2f searches a space's groups; space {space.name!r} has none")
    if space.smallest is None:
        raise ConfigError(f"gan_c2f holds later groups at the smallest member; {space.name!r} "
                          "declares none")  # fmt: skip
    threads = config.num_threads or torch.get_num_threads()
    chosen: dict[str, Any] = {}
    steps: dict[str, Any] = {}
    base = ctx.study or f"gan_c2f-{space.name}"
    for group, keys in space.groups.items():
        later = {k: space.smallest[k] for k in space.choices if k not in keys and k not in chosen}
        base_sampler = make_sampler(config.sampler, seed_for(config, ctx))
        sampler = fixed_sampler({**chosen, **later}, base_sampler)
        study, objectives = method_study(space, data, config, ctx, "gan_c2f", sampler=sampler,
                                         study=f"{base}-{group}")  # fmt: skip

        def evaluate(sample: dict, spec: Any, trial: Any, group: str = group) -> dict:
            hook = OutputDistillHook(config.teacher, config.distill_weight)
            out = ctx.out_dir / "trials" / f"{group}-{trial.number}"
            return train_candidate(spec, data, config, ctx, trial, out, config.epochs, [hook])

        result = run_study(study, space, objectives, evaluate, n_trials=ctx.n_trials,
                           threads=threads, progress=ctx.progress)  # fmt: skip
        if not result.candidates:
            raise ConfigError(f"gan_c2f: the {group} step completed no trial under the budget")
        chosen.update({k: result.best.sample[k] for k in keys})
        steps[group] = result
    final = steps[list(space.groups)[-1]]
    final.extra.update(steps=steps, chosen=dict(chosen))
    final.cpu_hours = sum(r.cpu_hours for r in steps.values())
    final.gpu_hours = sum(r.gpu_hours for r in steps.values())
    return final
