"""HourNAS: vital blocks first (Yang et al., CVPR 2021, "HourNAS: Extremely Fast Neural
Architecture Search Through an Hourglass Lens").

The network's shortest path, its *vital blocks* (each stage's entry block, where it down-samples,
and the stage widths: the space's ``vital`` choices), decides most of its accuracy, so it is
searched first and most carefully; the other blocks are then searched cheaply around it.

1. **Vital stage.** The space's supernet trains with every non-vital block skipped (the
   "hourglass" network) and one vital member drawn uniformly per step (``vital_epochs``); an
   Optuna study (``<study>-vital``, ``vital_trials`` trials) proposes vital choices, each scored
   with the shared weights after batch-norm recalibration. The best vital choice within the
   budget (non-vital blocks skipped) is kept.
2. **The rest.** With the vital choices fixed, the supernet trains on (``rest_epochs``) drawing
   the non-vital choices uniformly, and the main study (``n_trials``) proposes them (Optuna's
   ``PartialFixedSampler`` holds the vital ones), each scored the same way, pruned over budget.

Departures from the paper (whose training code was never released: the MindSpore repository
ships evaluation only): the paper's second stage is a resource-constrained search with a
space-proxy estimate; ours reuses the supernet's shared weights for it (the same scorer as the
vital stage), and both stages use Optuna's samplers (NSGA-II by default) rather than the
paper's own. The search's cost is the two supernet stretches plus the trials, in CPU-hours (and
GPU-hours, wall time, for what ran on a GPU).
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
    objectives_for,
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
from leanvision.search.study import fixed_sampler
from leanvision.search.supernet import UniformPathHook, score_member
from leanvision.search.verb import build_kwargs, spec_macs

__all__ = ["HourNASConfig", "run_hournas"]


@dataclass
class HourNASConfig(SearchConfig):
    """HourNAS: the vital stage's and the rest's supernet training and trials."""

    version: ClassVar[int] = 1
    sampler: str = "nsga2"
    vital_epochs: int = 10
    rest_epochs: int = 5
    vital_trials: int = 20
    bn_batches: int = 4

    def validate(self) -> None:
        super().validate()
        for name in ("vital_epochs", "rest_epochs", "vital_trials"):
            check_int(name, getattr(self, name), 1)


@register_search_method(
    "hournas",
    paper="HourNAS: Extremely Fast NAS Through an Hourglass Lens (Yang et al., CVPR 2021)",
    config=HourNASConfig,
    summary="vital blocks searched first on the hourglass supernet, then the rest around them",
)
def run_hournas(space: SearchSpace, data: Any, config: HourNASConfig, ctx: SearchContext) -> Any:
    import torch

    if not space.has_supernet or not space.vital:
        raise ConfigError(f"space {space.name!r} needs a supernet and vital choices for HourNAS")
    objectives = objectives_for(config, data)
    threads = config.num_threads or torch.get_num_threads()
    size, build = tuple(data.input_size), build_kwargs(data)
    base = ctx.study or f"hournas-{space.name}"
    hourglass = space.hourglass()

    def scorer(net: Any, fixed: dict[str, Any]):
        def evaluate(sample: dict, spec: Any, trial: Any) -> dict:
            full = {**sample, **fixed}
            spec = space.spec(full)
            macs = spec_macs(spec, size, **build)
            check_budget(trial, macs, ctx)
            return {**score_member(net, space, full, data, config.bn_batches), "macs": macs}

        return evaluate

    # 1. the vital stage on the hourglass network
    torch.manual_seed(config.seed)
    net = space.supernet(**build)
    net, vital_record = train_stage(
        net, data, config, ctx.out_dir / "supernet_vital", config.vital_epochs,
        [UniformPathHook(space, config.seed, fixed=hourglass)], ctx,
    )  # fmt: skip
    vital_sampler = fixed_sampler(hourglass, make_sampler(config.sampler, seed_for(config, ctx)))
    vital_study, _ = method_study(
        space, data, config, ctx, "hournas-vital", sampler=vital_sampler, study=f"{base}-vital"
    )
    vital_result = run_study(
        vital_study, space, objectives, scorer(net, hourglass), n_trials=config.vital_trials,
        threads=threads, progress=ctx.progress,
    )  # fmt: skip
    best_vital = {k: vital_result.best.sample[k] for k in space.vital}

    # 2. the rest, around the vital choices found (the same supernet, trained on)
    net, rest_record = train_stage(
        net, data, config, ctx.out_dir / "supernet_rest", config.rest_epochs,
        [UniformPathHook(space, config.seed + 1, fixed=best_vital)], ctx,
    )  # fmt: skip
    sampler = fixed_sampler(best_vital, make_sampler(config.sampler, seed_for(config, ctx) + 1))
    study, _ = method_study(space, data, config, ctx, "hournas", sampler=sampler, study=base)
    result = run_study(
        study, space, objectives, scorer(net, best_vital), n_trials=ctx.n_trials,
        threads=threads, progress=ctx.progress,
    )  # fmt: skip
    supernet_h = stage_cpu_hours(vital_record, threads) + stage_cpu_hours(rest_record, threads)
    result.extra.update(
        supernet=net, vital=best_vital, vital_result=vital_result,
        supernet_records={"vital": vital_record, "rest": rest_record},
        supernet_cpu_hours=supernet_h,
    )  # fmt: skip
    result.cpu_hours += supernet_h + vital_result.cpu_hours
    result.gpu_hours += (stage_gpu_hours(vital_record) + stage_gpu_hours(rest_record)
                         + vital_result.gpu_hours)  # fmt: skip
    return result
