"""One-shot search (single-path uniform sampling, Guo et al., ECCV 2020, arXiv 1904.00420).

Train the space's weight-sharing supernet with one member drawn uniformly per step (the one
trainer with :class:`~leanvision.search.supernet.UniformPathHook`; ``supernet_epochs``, capped
by ``max_steps``; resumed from its checkpoint), then let Optuna's sampler (NSGA-II evolution by
default, as the paper evolves; TPE or random) propose members, each scored by its validation
metric with the supernet's weights after its batch-norm statistics are recomputed on
``bn_batches`` training batches. A member over the MACs budget is pruned before it is scored.
The found spec is meant to be retrained from scratch (the paper's protocol).

Departures from the paper: the paper's evolution is its own (population 50, 20 generations,
crossover and mutation over the choices); here it is Optuna's NSGA-II with its defaults, on
the same choices. The supernet trains on the trainer's SGD and cosine schedule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from leanvision.checks import check_choice, check_int, check_real
from leanvision.errors import ConfigError
from leanvision.methods.config import MethodConfig
from leanvision.methods.search.standalone import OBJECTIVES, seed_for
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
from leanvision.search.supernet import UniformPathHook, score_member
from leanvision.search.verb import build_kwargs, spec_macs

__all__ = ["OneShotSearchConfig", "run_oneshot", "train_supernet"]


@dataclass
class OneShotSearchConfig(MethodConfig):
    """One-shot search: the supernet's training and the search on it."""

    version: ClassVar[int] = 1
    sampler: str = "nsga2"
    objectives: str = "accuracy_macs"
    supernet_epochs: int = 10
    max_steps: int | None = None
    lr: float = 0.05
    weight_decay: float = 4e-5
    opt: str = "sgd"
    bn_batches: int = 4
    seed: int = 0
    num_threads: int | None = None

    def validate(self) -> None:
        super().validate()
        check_choice("sampler", self.sampler, SAMPLERS)
        check_choice("objectives", self.objectives, OBJECTIVES)
        check_int("supernet_epochs", self.supernet_epochs, 1)
        check_int("max_steps", self.max_steps, 1, none_ok=True)
        check_real("lr", self.lr, 0.0, lo_open=True)
        check_real("weight_decay", self.weight_decay, 0.0)
        check_int("bn_batches", self.bn_batches, 1)
        check_int("num_threads", self.num_threads, 1, none_ok=True)

    def check_inputs(self, data: Any) -> None:
        if data is None:
            raise ConfigError("one-shot search trains a supernet: pass data=")


def train_supernet(
    space: SearchSpace, data: Any, config: Any, ctx: SearchContext
) -> tuple[Any, dict[str, Any]]:
    """The trained supernet (resumed from ``<out_dir>/supernet`` if a run was cut short) and
    its training record (epochs, wall time, commits). ``config``: a one-shot method's (its
    supernet_epochs, max_steps, lr, weight_decay, opt, seed, num_threads)."""
    import torch

    import leanvision as lv
    from leanvision.engine import training_record

    if not space.has_supernet:
        raise ConfigError(f"space {space.name!r} has no supernet: one-shot search needs one")
    torch.manual_seed(config.seed)
    net = space.supernet(**build_kwargs(data))
    out = ctx.out_dir / "supernet"
    result = lv.train(
        net, data, epochs=config.supernet_epochs, max_steps=config.max_steps, lr=config.lr,
        weight_decay=config.weight_decay, opt=config.opt, seed=config.seed, out_dir=str(out),
        resume=True, progress=ctx.progress, num_threads=config.num_threads,
        hooks=[UniformPathHook(space, config.seed)],
    )  # fmt: skip
    return result.model, training_record(out / "last.pt")


@register_search_method(
    "oneshot",
    paper="SPOS: Single Path One-Shot NAS with Uniform Sampling (Guo et al., ECCV 2020)",
    config=OneShotSearchConfig,
    summary="supernet trained one uniform path per step, members scored with shared weights",
)
def run_oneshot(
    space: SearchSpace, data: Any, config: OneShotSearchConfig, ctx: SearchContext
) -> Any:
    import torch

    from leanvision.methods.search.standalone import objectives_for

    objectives: list[Objective] = objectives_for(config, data)
    net, record = train_supernet(space, data, config, ctx)
    storage = open_storage(ctx.storage, ctx.out_dir)
    sampler = make_sampler(config.sampler, seed_for(config, ctx))
    study = open_study(
        space, objectives, storage=storage, study=ctx.study, method="oneshot", sampler=sampler
    )
    threads = config.num_threads or torch.get_num_threads()
    size = tuple(data.input_size)

    def evaluate(sample: dict, spec: Any, trial: Any) -> dict:
        import optuna

        macs = spec_macs(spec, size, **build_kwargs(data))
        trial.set_user_attr("lv_macs", macs)
        if ctx.budget_macs is not None and macs > ctx.budget_macs:
            raise optuna.TrialPruned(f"{macs:,} MACs over the budget {ctx.budget_macs:,.0f}")
        row: dict[str, Any] = score_member(net, space, sample, data, config.bn_batches)
        row["macs"] = macs
        return row

    result = run_study(
        study, space, objectives, evaluate, n_trials=ctx.n_trials, threads=threads,
        progress=ctx.progress,
    )  # fmt: skip
    supernet_h = record["wall_s"] * threads / 3600.0
    result.extra.update(supernet=net, supernet_record=record, supernet_cpu_hours=supernet_h)
    result.cpu_hours += supernet_h
    return result
