"""The search loop on an Optuna study: trials, duplicates, budget, workers, interruption.

:func:`run_study` asks the study for trials until it holds ``n_trials`` completed ones, counted
over every worker sharing it: before each trial a worker counts the completed and running
trials, so several workers stop together (at most one trial per extra worker beyond
``n_trials``); a worker left with nothing to start waits for the others' running trials on
storage with heartbeats, so a dead worker's trial is re-run and the study ends complete. Each
trial samples the space through the study's sampler, builds the spec and
calls the method's ``evaluate(sample, spec, trial) -> metrics``; the objectives are read from
those metrics by name. An architecture the study already completed is not evaluated again:
the trial copies the earlier values (``lv_duplicate_of``). A candidate over the budget is
pruned by ``evaluate`` (``optuna.TrialPruned``) before any training.

A trial's cost is its process CPU time (``lv_cpu_seconds``); a trial that put work on a GPU
also records the GPU's name (``lv_gpu``), and its wall time counts as GPU time: on a GPU the
CPU time of the launching process says little about the cost.

``Ctrl-C`` marks the running trial failed (Optuna does), re-queues its architecture and
re-raises: running the same command again resumes the study where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from leanvision.errors import ConfigError
from leanvision.search.space import ModelSpec, SearchSpace
from leanvision.search.study import Objective, requeue_dead_workers, worker_tag

__all__ = ["Candidate", "Evaluate", "SearchResult", "run_study"]

Evaluate = Callable[[dict[str, Any], ModelSpec, Any], Mapping[str, Any]]
# pruned (over-budget) trials allowed per wanted completed trial: a tight budget rejects most
# random members (a MACs count each), e.g. ~95 % of vit_res_cifar under 110 M MACs
MAX_ATTEMPTS_PER_TRIAL = 50
WAIT_S = 1.0  # how often a worker with nothing left to start checks the others' trials


@dataclass
class Candidate:
    """One completed trial: the sample, its spec, its objective values and every metric;
    ``seconds`` its wall time, ``cpu_seconds`` its process CPU time (None if not recorded),
    ``gpu`` the name of the GPU it ran work on (None: the CPU alone)."""

    number: int
    sample: dict[str, Any]
    spec: ModelSpec
    values: dict[str, float]
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    duplicate_of: int | None = None
    cpu_seconds: float | None = None
    gpu: str | None = None


@dataclass
class SearchResult:
    """What a search hands back (``lv.search``).

    ``best``: the best completed candidate on the first objective; ``pareto``: the candidates
    no other candidate beats on every objective (Optuna's ``best_trials``; with one objective,
    the best); ``candidates``: every completed trial; ``cpu_hours``: the trials' summed CPU
    time (the worker process's, every thread; a trial recorded before CPU time was, by its
    wall time times its threads), so jobs sharing the cores do not inflate it (supernet
    training, when a method has one, is added by the method, counted the same way);
    ``gpu_hours``: the wall time of the trials and stages that ran on a GPU (0 on the CPU).
    """

    space: SearchSpace
    objectives: list[Objective]
    study: Any
    candidates: list[Candidate]
    pareto: list[Candidate]
    cpu_hours: float
    extra: dict[str, Any] = field(default_factory=dict)
    gpu_hours: float = 0.0

    def cost(self) -> str:
        """The search's cost in words, e.g. ``"0.412 CPU-hours"`` or ``"0.031 CPU-hours and
        0.250 GPU-hours (wall time on a GPU)"``."""
        text = f"{self.cpu_hours:.3f} CPU-hours"
        if self.gpu_hours:
            text += f" and {self.gpu_hours:.3f} GPU-hours (wall time on a GPU)"
        return text

    @property
    def best(self) -> Candidate:
        if not self.candidates:
            raise ConfigError(f"study {self.study.study_name!r} has no completed trial yet")
        first = self.objectives[0]
        sign = 1.0 if first.direction == "maximize" else -1.0
        return max(self.candidates, key=lambda c: (sign * c.values[first.name], -c.number))

    @property
    def best_spec(self) -> ModelSpec:
        return self.best.spec

    def distinct(self) -> int:
        """How many different architectures the completed trials evaluated."""
        return len({json.dumps(c.sample, sort_keys=True) for c in self.candidates})


def _jsonable(metrics: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in metrics.items():
        try:
            json.dumps(v)
            out[k] = v
        except TypeError:
            out[k] = float(v) if hasattr(v, "__float__") else repr(v)
    return out


def _candidate(t: Any, space: SearchSpace, objectives: Sequence[Objective]) -> Candidate:
    values = list(t.values)
    return Candidate(
        number=t.number,
        sample=dict(t.params),
        spec=space.spec(t.params),
        values={o.name: float(v) for o, v in zip(objectives, values, strict=True)},
        metrics=dict(t.user_attrs.get("lv_metrics", {})),
        seconds=float(t.user_attrs.get("lv_seconds", 0.0)),
        duplicate_of=t.user_attrs.get("lv_duplicate_of"),
        cpu_seconds=t.user_attrs.get("lv_cpu_seconds"),
        gpu=t.user_attrs.get("lv_gpu"),
    )


def collect(study: Any, space: SearchSpace, objectives: Sequence[Objective]) -> SearchResult:
    """The :class:`SearchResult` of a study as it stands (any worker may still be running)."""
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    candidates = [_candidate(t, space, objectives) for t in done]
    by_number = {c.number: c for c in candidates}
    pareto = [by_number[t.number] for t in study.best_trials] if candidates else []
    threads = [float(t.user_attrs.get("lv_threads", 1)) for t in done]
    cpu_h = sum(c.seconds * n if c.cpu_seconds is None else c.cpu_seconds
                for c, n in zip(candidates, threads, strict=True)) / 3600.0  # fmt: skip
    gpu_h = sum(c.seconds for c in candidates if c.gpu) / 3600.0
    return SearchResult(space, list(objectives), study, candidates, pareto, cpu_h, gpu_hours=gpu_h)


def _reset_gpu_peak() -> None:
    """Zero CUDA's peak-memory counter where CUDA is up, so that a trial's GPU use shows."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def _gpu_used() -> str | None:
    """The GPU's name when work was put on it since :func:`_reset_gpu_peak` (or since CUDA
    started), else None."""
    import torch

    up = torch.cuda.is_available() and torch.cuda.is_initialized()
    return str(torch.cuda.get_device_name()) if up and torch.cuda.max_memory_allocated() else None


def _counts(study: Any) -> tuple[int, int, int]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    n = {s: 0 for s in TrialState}
    for t in trials:
        n[t.state] += 1
    return n[TrialState.COMPLETE], n[TrialState.RUNNING], len(trials)


def run_study(
    study: Any,
    space: SearchSpace,
    objectives: Sequence[Objective],
    evaluate: Evaluate,
    *,
    n_trials: int,
    threads: int = 1,
    progress: bool = True,
) -> SearchResult:
    """Run trials on ``study`` until it holds ``n_trials`` completed ones (all workers)."""
    import optuna
    from optuna.trial import TrialState

    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise ConfigError(f"n_trials={n_trials!r} is not allowed; allowed: an int >= 1")
    requeue_dead_workers(study)

    def objective(trial: Any) -> float | list[float]:
        trial.set_user_attr("lv_worker", worker_tag())
        trial.set_user_attr("lv_threads", threads)
        sample = space.suggest(trial)
        spec = space.spec(sample)
        trial.set_user_attr("lv_spec", spec.as_dict())
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.params == sample:  # the same architecture: its values, not a retraining
                trial.set_user_attr("lv_duplicate_of", t.number)
                trial.set_user_attr("lv_metrics", t.user_attrs.get("lv_metrics", {}))
                values = list(t.values)
                return values if len(values) > 1 else values[0]
        _reset_gpu_peak()
        start, cpu = time.perf_counter(), time.process_time()
        metrics = evaluate(sample, spec, trial)
        trial.set_user_attr("lv_seconds", time.perf_counter() - start)
        trial.set_user_attr("lv_cpu_seconds", time.process_time() - cpu)
        gpu = _gpu_used()
        if gpu is not None:
            trial.set_user_attr("lv_gpu", gpu)
        trial.set_user_attr("lv_metrics", _jsonable(metrics))
        missing = [o.name for o in objectives if o.name not in metrics]
        if missing:
            raise ConfigError(f"the search's evaluate returned no {missing}: {sorted(metrics)}")
        values = [float(metrics[o.name]) for o in objectives]
        bad = [o.name for o, v in zip(objectives, values, strict=True) if not math.isfinite(v)]
        if bad:
            raise optuna.TrialPruned(f"non-finite {bad}")
        return values if len(values) > 1 else values[0]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    columns = [
        TextColumn(f"[bold]search {study.study_name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("trials"),
        TimeElapsedColumn(),
    ]
    console = Console(stderr=True)
    attempts = 0
    with Progress(*columns, console=console, disable=not progress, transient=True) as bar:
        task = bar.add_task("trials", total=n_trials, completed=_counts(study)[0])
        while True:
            _fail_stale(study)  # a dead worker's trial is not "running": fail and re-queue it
            complete, running, _ = _counts(study)
            bar.update(task, completed=min(complete, n_trials))
            if complete >= n_trials:
                break
            if complete + running >= n_trials:
                # the rest are other workers' trials: wait for them where a dead worker's
                # trial will be seen (heartbeats); without heartbeats, leave them to their
                # workers (a rerun finishes the study)
                if not _heartbeats(study):
                    break
                time.sleep(WAIT_S)
                requeue_dead_workers(study)  # a worker on this host that died meanwhile
                continue
            if attempts >= MAX_ATTEMPTS_PER_TRIAL * n_trials:
                console.print(
                    f"search {study.study_name}: stopped after {attempts} trials, "
                    f"{complete} completed (the rest over the budget or failed)"
                )
                break
            attempts += 1
            try:
                study.optimize(objective, n_trials=1, catch=())
            except KeyboardInterrupt:
                _requeue_interrupted(study)
                console.print(
                    f"search {study.study_name}: interrupted; the study is saved, run the "
                    "same command again to resume"
                )
                raise
    return collect(study, space, objectives)


def _heartbeats(study: Any) -> bool:
    """Whether the study's storage sends heartbeats (RDB storage with an interval)."""
    try:
        from optuna.storages._heartbeat import is_heartbeat_enabled
    except ImportError:  # a future Optuna: assume none, never wait
        return False
    return bool(is_heartbeat_enabled(study._storage))


def _fail_stale(study: Any) -> None:
    """Optuna's heartbeat check (RDB storage; nothing for a journal): stale trials fail and
    their architectures are queued again (the storage's retry callback)."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _requeue_interrupted(study: Any) -> None:
    """Queue again the architecture of this worker's trial that Ctrl-C failed (once)."""
    from optuna.trial import TrialState

    me = worker_tag()
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("lv_retry_of") for t in trials}
    for t in trials[::-1]:
        if t.state == TrialState.FAIL and t.user_attrs.get("lv_worker") == me:
            if t.number not in retried:
                study.enqueue_trial(t.params, user_attrs={"lv_retry_of": t.number})
            return
