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

from leanvision.checks import check_int
from leanvision.errors import ConfigError
from leanvision.methods.search.common import (
    SearchConfig,
    check_budget,
    method_study,
    seed_for,
    stage_cpu_hours,
    stage_gpu_hours,
    train_stage,
)
from leanvision.search import (
    SearchContext,
    SearchSpace,
    make_sampler,
    register_search_method,
    run_study,
)
from leanvision.search.supernet import UniformPathHook, score_member
from leanvision.search.verb import build_kwargs, spec_macs

__all__ = ["OneShotSearchConfig", "oneshot_search", "run_oneshot", "train_supernet"]


@dataclass
class OneShotSearchConfig(SearchConfig):
    """One-shot search: the supernet's training and the search on it."""

    version: ClassVar[int] = 1
    sampler: str = "nsga2"
    supernet_epochs: int = 10
    bn_batches: int = 4
    archs_per_step: int = 1
    population: int | None = None

    def validate(self) -> None:
        super().validate()
        check_int("archs_per_step", self.archs_per_step, 1)
        check_int("population", self.population, 2, none_ok=True)
        if self.population is not None and self.sampler != "nsga2":
            raise ConfigError(
                f"population={self.population} sizes NSGA-II's generations; sampler is "
                f"{self.sampler!r} (use sampler='nsga2' or drop population)"
            )


def train_supernet(
    space: SearchSpace, data: Any, config: Any, ctx: SearchContext
) -> tuple[Any, dict[str, Any]]:
    """The trained supernet (resumed from ``<out_dir>/supernet`` if a run was cut short) and
    its training record (epochs, wall time, commits). ``config``: a one-shot method's (its
    supernet_epochs, archs_per_step, max_steps, lr, weight_decay, opt, seed, num_threads)."""
    import torch

    if not space.has_supernet:
        raise ConfigError(f"space {space.name!r} has no supernet: one-shot search needs one")
    torch.manual_seed(config.seed)
    net = space.supernet(**build_kwargs(data))
    per_step = getattr(config, "archs_per_step", 1)  # multi-architecture sampling, if asked
    hooks = [UniformPathHook(space, config.seed, archs_per_step=per_step)]
    return train_stage(net, data, config, ctx.out_dir / "supernet", config.supernet_epochs,
                       hooks, ctx)  # fmt: skip


@register_search_method(
    "oneshot",
    paper="SPOS: Single Path One-Shot NAS with Uniform Sampling (Guo et al., ECCV 2020)",
    config=OneShotSearchConfig,
    summary="supernet trained one uniform path per step, members scored with shared weights",
)
def run_oneshot(
    space: SearchSpace, data: Any, config: OneShotSearchConfig, ctx: SearchContext
) -> Any:
    return oneshot_search(space, data, config, ctx, "oneshot")


def oneshot_search(
    space: SearchSpace, data: Any, config: OneShotSearchConfig, ctx: SearchContext, method: str
) -> Any:
    """Train the supernet, then search it with the config's sampler; the study is ``method``'s."""
    import torch

    net, record = train_supernet(space, data, config, ctx)
    sampler = None
    if config.population is not None:
        sampler = make_sampler("nsga2", seed_for(config, ctx), population_size=config.population)
    study, objectives = method_study(space, data, config, ctx, method, sampler=sampler)
    threads = config.num_threads or torch.get_num_threads()
    size = tuple(data.input_size)

    def evaluate(sample: dict, spec: Any, trial: Any) -> dict:
        macs = spec_macs(spec, size, **build_kwargs(data))
        check_budget(trial, macs, ctx)
        row: dict[str, Any] = score_member(net, space, sample, data, config.bn_batches)
        row["macs"] = macs
        return row

    result = run_study(
        study, space, objectives, evaluate, n_trials=ctx.n_trials, threads=threads,
        progress=ctx.progress,
    )  # fmt: skip
    supernet_h = stage_cpu_hours(record, threads)
    result.extra.update(supernet=net, supernet_record=record, supernet_cpu_hours=supernet_h)
    result.cpu_hours += supernet_h
    result.gpu_hours += stage_gpu_hours(record)
    return result
