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

from dataclasses import dataclass
from typing import Any, ClassVar

from leanvision.checks import check_int
from leanvision.methods.search.common import SearchConfig, method_study, train_candidate
from leanvision.search import (
    SearchContext,
    SearchSpace,
    register_search_method,
    run_study,
)

__all__ = ["StandaloneSearchConfig", "run_standalone"]


@dataclass
class StandaloneSearchConfig(SearchConfig):
    """Stand-alone search: the sampler and each candidate's training schedule."""

    version: ClassVar[int] = 1
    sampler: str = "tpe"
    epochs: int = 1
    weight_decay: float = 5e-4

    def validate(self) -> None:
        super().validate()
        check_int("epochs", self.epochs, 1)


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

    study, objectives = method_study(space, data, config, ctx, "standalone")
    threads = config.num_threads or torch.get_num_threads()

    def evaluate(sample: dict, spec: Any, trial: Any) -> dict:
        out = ctx.out_dir / "trials" / f"{study.study_name}-{trial.number}"
        return train_candidate(spec, data, config, ctx, trial, out, config.epochs)

    return run_study(
        study, space, objectives, evaluate, n_trials=ctx.n_trials, threads=threads,
        progress=ctx.progress,
    )  # fmt: skip
