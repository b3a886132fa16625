"""Stand-alone search: every candidate trained alone with one short schedule (the control).

The baseline every weight-sharing NAS paper compares with (and the "stand-alone ranking" DC-NAS
measures its own ranking against): the sampler (TPE, NSGA-II evolution or random, all Optuna's)
proposes an architecture of the space, which is built from scratch, trained ``epochs`` (capped by
``max_steps``) with the one trainer and scored on the data's validation split by the task's
primary metric. A candidate over the MACs budget is pruned before it trains. Objectives:
``"accuracy"`` (the primary metric alone) or ``"accuracy_macs"`` (the primary metric and MACs,
a Pareto front).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, ClassVar

from leanvision.checks import check_choice, check_int, check_real
from leanvision.errors import ConfigError
from leanvision.methods.config import MethodConfig
from leanvision.search import (
    SAMPLERS,
    Objective,
    SearchContext,
    SearchSpace,
    make_sampler,
    open_storage,
    open_study,
    register_search_method,
    run_study,
)
from leanvision.search.verb import build_kwargs

__all__ = ["OBJECTIVES", "StandaloneSearchConfig", "objectives_for", "run_standalone", "seed_for"]

OBJECTIVES = ("accuracy", "accuracy_macs")


@dataclass
class StandaloneSearchConfig(MethodConfig):
    """Stand-alone search: the sampler and each candidate's training schedule."""

    version: ClassVar[int] = 1
    sampler: str = "tpe"
    objectives: str = "accuracy_macs"
    epochs: int = 1
    max_steps: int | None = None
    lr: float = 0.05
    weight_decay: float = 5e-4
    opt: str = "sgd"
    seed: int = 0
    num_threads: int | None = None

    def validate(self) -> None:
        super().validate()
        check_choice("sampler", self.sampler, SAMPLERS)
        check_choice("objectives", self.objectives, OBJECTIVES)
        check_int("epochs", self.epochs, 1)
        check_int("max_steps", self.max_steps, 1, none_ok=True)
        check_real("lr", self.lr, 0.0, lo_open=True)
        check_real("weight_decay", self.weight_decay, 0.0)
        check_int("num_threads", self.num_threads, 1, none_ok=True)

    def check_inputs(self, data: Any) -> None:
        if data is None:
            raise ConfigError("stand-alone search trains every candidate: pass data=")


def objectives_for(config: Any, data: Any) -> list[Objective]:
    """The primary metric of the data's task (``val_<name>``), then MACs if asked for."""
    from leanvision.engine.trainer import resolve_task

    task = resolve_task(None, data)
    out = [Objective(f"val_{task.primary}", "maximize" if task.higher_is_better else "minimize")]
    if config.objectives == "accuracy_macs":
        out.append(Objective("macs", "minimize"))
    return out


def seed_for(config: Any, ctx: SearchContext) -> int:
    """The sampler's seed: the config's for the default (one-process) storage; mixed with the
    pid for a shared storage, so that concurrent workers do not propose the same samples."""
    return config.seed if ctx.storage is None else config.seed * 100_003 + os.getpid()


@register_search_method(
    "standalone",
    paper="control: each candidate trained alone (the stand-alone ranking of NAS papers)",
    config=StandaloneSearchConfig,
    summary="sampler proposes, each candidate trains alone for a short schedule",
)
def run_standalone(
    space: SearchSpace, data: Any, config: StandaloneSearchConfig, ctx: SearchContext
) -> Any:
    import torch

    import leanvision as lv
    from leanvision.profiling import count_ops

    objectives = objectives_for(config, data)
    storage = open_storage(ctx.storage, ctx.out_dir)
    sampler = make_sampler(config.sampler, seed_for(config, ctx))
    study = open_study(
        space, objectives, storage=storage, study=ctx.study, method="standalone", sampler=sampler
    )
    threads = config.num_threads or torch.get_num_threads()
    size = tuple(data.input_size)

    def evaluate(sample: dict, spec: Any, trial: Any) -> dict:
        import optuna

        torch.manual_seed(config.seed)
        model = spec.build(**build_kwargs(data))
        macs = int(count_ops(model.eval(), size).macs)
        params = sum(p.numel() for p in model.parameters())
        trial.set_user_attr("lv_macs", macs)
        if ctx.budget_macs is not None and macs > ctx.budget_macs:
            raise optuna.TrialPruned(f"{macs:,} MACs over the budget {ctx.budget_macs:,.0f}")
        out = ctx.out_dir / "trials" / f"{study.study_name}-{trial.number}"
        result = lv.train(
            model, data, epochs=config.epochs, max_steps=config.max_steps, lr=config.lr,
            weight_decay=config.weight_decay, opt=config.opt, seed=config.seed,
            out_dir=str(out), resume=False, progress=False, num_threads=threads,
        )  # fmt: skip
        metrics = lv.evaluate(result.model, data.loader("val"))
        row: dict[str, Any] = {f"val_{k}": v for k, v in metrics.items()}
        row.update(macs=macs, params=params, epochs=config.epochs)
        return row

    return run_study(
        study, space, objectives, evaluate, n_trials=ctx.n_trials, threads=threads,
        progress=ctx.progress,
    )  # fmt: skip
