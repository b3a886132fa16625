"""DC-NAS: divide-and-conquer search over a weight-sharing supernet.

Weight sharing couples members that compute very different functions, which blurs the
supernet's ranking. DC-NAS divides the members by what they compute and evaluates each part
with weights of its own:

1. Train the space's supernet with uniform single-path sampling (as ``oneshot``; its
   checkpoint is shared with it when both run in one folder).
2. Sample ``n_trials`` distinct members within the budget; describe each by its outputs on a
   fixed probe batch of training images (after batch-norm recalibration); cluster the
   descriptions with scikit-learn's k-means into ``n_clusters`` ("divide").
3. For each cluster, fine-tune a copy of the supernet for ``cluster_epochs`` drawing paths from
   that cluster's members only; score every member with its cluster's weights ("conquer"). The
   best member is the search's result.

Every member is also scored with the plain shared weights (``extra["oneshot_scores"]``), so a
benchmark can compare both rankings with a stand-alone one (Kendall tau).

Departures: no code of the method is public and its description here is from memory
(``methods-notes.md`` §25): the member description (softmax outputs on a probe batch) and the
per-cluster fine-tuning are our reading of "divide" and "conquer"; the paper's merging of the
best clusters' per-layer choices is not done.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from typing import Any, ClassVar

from leanvision.checks import check_int
from leanvision.errors import ConfigError
from leanvision.methods.search.common import (
    SearchConfig,
    method_study,
    objectives_for,
    stage_cpu_hours,
    stage_gpu_hours,
    train_stage,
)
from leanvision.methods.search.oneshot import train_supernet
from leanvision.search import (
    SearchContext,
    SearchSpace,
    make_sampler,
    register_search_method,
    run_study,
)
from leanvision.search.supernet import UniformPathHook, member_outputs, score_member
from leanvision.search.verb import build_kwargs, spec_macs

__all__ = ["DCNASConfig", "run_dcnas"]


@dataclass
class DCNASConfig(SearchConfig):
    """DC-NAS: the shared supernet, the clustering and each cluster's fine-tuning."""

    version: ClassVar[int] = 1
    supernet_epochs: int = 10
    n_clusters: int = 4
    cluster_epochs: int = 1
    probe_images: int = 64
    bn_batches: int = 4

    def validate(self) -> None:
        super().validate()
        for name in ("n_clusters", "cluster_epochs", "probe_images"):
            check_int(name, getattr(self, name), 1)


def _members(space: SearchSpace, n: int, seed: int, fits: Any) -> list[dict[str, Any]]:
    """``n`` distinct members drawn uniformly among those ``fits`` accepts."""
    rng, out, seen = random.Random(seed), [], set()
    for _ in range(200 * n):
        s = space.sample(rng)
        key = repr(sorted(s.items()))
        if key in seen or not fits(s):
            continue
        seen.add(key)
        out.append(s)
        if len(out) == n:
            return out
    raise ConfigError(
        f"DC-NAS found only {len(out)} distinct members of {space.name!r} within the budget "
        f"in {200 * n} draws; ask for fewer trials or a larger budget"
    )


@register_search_method(
    "dcnas",
    paper="DC-NAS: Divide-and-Conquer Neural Architecture Search (Wang et al.)",
    config=DCNASConfig,
    summary="members clustered by their outputs, each cluster scored on its own fine-tuned weights",
)
def run_dcnas(space: SearchSpace, data: Any, config: DCNASConfig, ctx: SearchContext) -> Any:
    import numpy as np
    import torch
    from sklearn.cluster import KMeans

    from leanvision.engine.trainer import resolve_task

    if config.n_clusters > ctx.n_trials:
        raise ConfigError(
            f"n_clusters={config.n_clusters} is more than the {ctx.n_trials} members (n_trials)"
        )
    objectives = objectives_for(config, data)
    threads = config.num_threads or torch.get_num_threads()
    size, build = tuple(data.input_size), build_kwargs(data)
    macs: dict[str, int] = {}

    def key(s: dict[str, Any]) -> str:
        return repr(sorted(s.items()))

    def fits(s: dict[str, Any]) -> bool:
        macs[key(s)] = spec_macs(space.spec(s), size, **build)
        return ctx.budget_macs is None or macs[key(s)] <= ctx.budget_macs

    # 1. the shared supernet
    net, record = train_supernet(space, data, config, ctx)
    # 2. divide: members described by their outputs on a fixed probe batch, then k-means
    members = _members(space, ctx.n_trials, config.seed, fits)
    task = resolve_task(None, data)
    probe = []
    for batch in data.loader("train"):
        probe.append(task.split_batch(batch)[0])
        if sum(len(p) for p in probe) >= config.probe_images:
            break
    probe_x = torch.cat(probe)[: config.probe_images]
    plain = {key(m): score_member(net, space, m, data, config.bn_batches) for m in members}
    vectors = np.stack(
        [member_outputs(net, space, m, data, probe_x, config.bn_batches).numpy() for m in members]
    )
    kmeans = KMeans(n_clusters=config.n_clusters, n_init=10, random_state=config.seed)
    labels = kmeans.fit_predict(vectors)
    # 3. conquer: each cluster's own weights
    cluster_nets, cluster_records = {}, {}
    for c in sorted(set(labels.tolist())):
        group = [m for m, lab in zip(members, labels, strict=True) if lab == c]
        torch.manual_seed(config.seed + 1 + c)
        out = ctx.out_dir / f"cluster_{c}"
        hooks = [UniformPathHook(space, config.seed + 1 + c, members=group)]
        cluster_nets[c], cluster_records[c] = train_stage(
            copy.deepcopy(net), data, config, out, config.cluster_epochs, hooks, ctx
        )
    cluster_of = {key(m): int(lab) for m, lab in zip(members, labels, strict=True)}

    study, _ = method_study(
        space, data, config, ctx, "dcnas", sampler=make_sampler("random", config.seed)
    )
    done = {key(t.params) for t in study.trials}
    for m in members:  # the members, in order; a resumed study keeps those it holds
        if key(m) not in done:
            study.enqueue_trial(m, skip_if_exists=True)

    def evaluate(sample: dict, spec: Any, trial: Any) -> dict:
        k = key(sample)
        if k not in cluster_of:
            raise ConfigError(f"DC-NAS evaluates its sampled members only, got {sample}")
        c = cluster_of[k]
        row = score_member(cluster_nets[c], space, sample, data, config.bn_batches)
        row.update(macs=macs[k], cluster=c)
        row.update({f"oneshot_{name}": v for name, v in plain[k].items()})
        return row

    result = run_study(
        study, space, objectives, evaluate, n_trials=ctx.n_trials, threads=threads,
        progress=ctx.progress,
    )  # fmt: skip
    stretches = [record, *cluster_records.values()]
    supernet_h = sum(stage_cpu_hours(r, threads) for r in stretches)
    result.extra.update(
        supernet=net, clusters={k: cluster_of[k] for k in cluster_of},
        oneshot_scores=plain, supernet_record=record, cluster_records=cluster_records,
        supernet_cpu_hours=supernet_h,
    )  # fmt: skip
    result.cpu_hours += supernet_h
    result.gpu_hours += sum(stage_gpu_hours(r) for r in stretches)
    return result
