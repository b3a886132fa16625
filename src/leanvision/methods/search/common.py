"""What every search method shares: its config's common options, objectives, seeds, budget."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

from leanvision.checks import check_choice, check_int, check_real
from leanvision.errors import ConfigError
from leanvision.methods.config import MethodConfig
from leanvision.search import SAMPLERS, Objective, SearchContext

__all__ = [
    "OBJECTIVES",
    "SearchConfig",
    "check_budget",
    "method_study",
    "objectives_for",
    "seed_for",
    "stage_cpu_hours",
    "stage_gpu_hours",
    "train_candidate",
    "train_stage",
]

OBJECTIVES = ("accuracy", "accuracy_macs")


@dataclass
class SearchConfig(MethodConfig):
    """Options every search method has: the objectives, the training of whatever it trains
    (candidates or a supernet: SGD by default, ``max_steps`` caps every stage), the seed and
    the threads. Methods add their own fields (and may change a default)."""

    version: ClassVar[int] = 1
    objectives: str = "accuracy_macs"
    max_steps: int | None = None
    lr: float = 0.05
    weight_decay: float = 4e-5
    opt: str = "sgd"
    seed: int = 0
    num_threads: int | None = None

    def validate(self) -> None:
        super().validate()
        check_choice("objectives", self.objectives, OBJECTIVES)
        check_int("max_steps", self.max_steps, 1, none_ok=True)
        check_real("lr", self.lr, 0.0, lo_open=True)
        check_real("weight_decay", self.weight_decay, 0.0)
        check_int("num_threads", self.num_threads, 1, none_ok=True)
        for name in ("sampler",):
            if hasattr(self, name):
                check_choice(name, getattr(self, name), SAMPLERS)
        for name in ("bn_batches", "epochs", "supernet_epochs"):
            if hasattr(self, name):
                check_int(name, getattr(self, name), 1)

    def check_inputs(self, data: Any) -> None:
        if data is None:
            raise ConfigError("this search trains its candidates or a supernet: pass data=")


def objectives_for(config: SearchConfig, data: Any) -> list[Objective]:
    """The primary metric of the data's task (``val_<name>``), then MACs if asked for."""
    from leanvision.engine.trainer import resolve_task

    task = resolve_task(None, data)
    out = [Objective(f"val_{task.primary}", "maximize" if task.higher_is_better else "minimize")]
    if config.objectives == "accuracy_macs":
        out.append(Objective("macs", "minimize"))
    return out


def seed_for(config: SearchConfig, ctx: SearchContext) -> int:
    """The sampler's seed: the config's for the default (one-process) storage; mixed with the
    pid for a shared storage, so that concurrent workers do not propose the same samples."""
    return config.seed if ctx.storage is None else config.seed * 100_003 + os.getpid()


def stage_cpu_hours(record: dict[str, Any], threads: int) -> float:
    """A training stage's CPU-hours from its :func:`~leanvision.engine.training_record`: its
    CPU time, or (a record without one) its wall time times its threads."""
    if record.get("cpu_s") is not None:
        return float(record["cpu_s"]) / 3600.0
    return float(record["wall_s"]) * threads / 3600.0


def stage_gpu_hours(record: dict[str, Any]) -> float:
    """A training stage's GPU-hours from its :func:`~leanvision.engine.training_record`: the
    wall time of its stretches that ran on a GPU (0 for a stage on the CPU)."""
    gpu_s = sum(float(r.get("wall_s", 0.0)) for r in record.get("stretches", [])
                if r.get("device") not in (None, "cpu"))  # fmt: skip
    return gpu_s / 3600.0


def check_budget(trial: Any, macs: int, ctx: SearchContext) -> None:
    """Record a candidate's MACs on its trial; prune it (before any training) over budget."""
    import optuna

    trial.set_user_attr("lv_macs", int(macs))
    if ctx.budget_macs is not None and macs > ctx.budget_macs:
        raise optuna.TrialPruned(f"{macs:,} MACs over the budget {ctx.budget_macs:,.0f}")


def method_study(
    space: Any, data: Any, config: SearchConfig, ctx: SearchContext, method: str, *,
    sampler: Any = None, study: str | None = None,
) -> tuple[Any, list[Objective]]:  # fmt: skip
    """The method's study on ``ctx``'s storage (created or resumed) and its objectives;
    ``sampler`` defaults to the config's, seeded by :func:`seed_for`, plus the trials the study
    already holds when it resumes (a sampler seeded as before would propose the same first
    architectures again: duplicates, which cost nothing and add nothing)."""
    from leanvision.search import make_sampler, open_storage, open_study

    objectives = objectives_for(config, data)
    default = sampler is None
    if default:
        sampler = make_sampler(config.sampler, seed_for(config, ctx))
    opened = open_study(
        space, objectives, storage=open_storage(ctx.storage, ctx.out_dir),
        study=study or ctx.study, method=method, sampler=sampler,
    )  # fmt: skip
    done = len(opened.get_trials(deepcopy=False))
    if default and done:  # resumed: the same seed would propose the first trials again
        opened.sampler = make_sampler(config.sampler, seed_for(config, ctx) + done)
    return opened, objectives


def train_stage(
    net: Any, data: Any, config: SearchConfig, out: Any, epochs: int, hooks: list[Any],
    ctx: SearchContext,
) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """One training stretch of a search (a supernet, a cluster's copy): a resumable run of its
    own in ``out`` with the config's options; the model and its training record."""
    import leanvision as lv
    from leanvision.engine import training_record

    result = lv.train(
        net, data, epochs=epochs, max_steps=config.max_steps, lr=config.lr,
        weight_decay=config.weight_decay, opt=config.opt, seed=config.seed, out_dir=str(out),
        resume=True, progress=ctx.progress, num_threads=config.num_threads, hooks=hooks,
    )  # fmt: skip
    return result.model, training_record(out / "last.pt")


def train_candidate(
    spec: Any, data: Any, config: SearchConfig, ctx: SearchContext, trial: Any, out: Any,
    epochs: int, hooks: list[Any] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """A candidate trained alone: built from ``spec`` (seeded), its MACs recorded and checked
    against the budget (pruned over it, before training), trained ``epochs`` with the config's
    options (and ``hooks``) in ``out``, then scored on the validation split. Returns
    ``val_<metric>`` for every metric of the data's task, ``macs``, ``params`` and ``epochs``."""
    import torch

    import leanvision as lv
    from leanvision.profiling import count_ops
    from leanvision.search.verb import build_kwargs

    torch.manual_seed(config.seed)
    model = spec.build(**build_kwargs(data))
    macs = int(count_ops(model.eval(), tuple(data.input_size)).macs)
    check_budget(trial, macs, ctx)
    result = lv.train(
        model, data, epochs=epochs, max_steps=config.max_steps, lr=config.lr,
        weight_decay=config.weight_decay, opt=config.opt, seed=config.seed, out_dir=str(out),
        resume=False, progress=False, num_threads=config.num_threads or torch.get_num_threads(),
        hooks=hooks,
    )  # fmt: skip
    row: dict[str, Any] = {
        f"val_{k}": v for k, v in lv.evaluate(result.model, data.loader("val")).items()
    }
    row.update(macs=macs, params=sum(p.numel() for p in model.parameters()), epochs=epochs)
    return row
