"""A search's results file and report: the Pareto front measured like any other model.

:func:`write_search_results` writes ``results.json`` (one row per Pareto member, with its
validation metric, params, MACs and latency timed side by side in one process) and the run's
report (``report.md`` / ``report.html`` with the accuracy-vs-MACs and accuracy-vs-latency
plots), plus a table of every completed trial and the search's cost in CPU-hours (GPU-hours apart
for what ran on a GPU).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from leanvision.report import write_report, write_results
from leanvision.search.engine import SearchResult
from leanvision.search.verb import build_kwargs

__all__ = ["write_search_results"]


def write_search_results(
    result: SearchResult,
    data: Any,
    out_dir: str | os.PathLike[str],
    *,
    command: str = "",
    threads: int | None = None,
    batch: int = 1,
    repeats: int = 20,
) -> Path:
    """Write ``out_dir/results.json`` and the report of ``result`` (see the module docstring).

    The Pareto members are built from their specs (random weights: latency does not depend on
    them) and timed together with :func:`leanvision.profiling.compare` at ``batch``.
    """
    from leanvision.profiling import compare, count_params

    first = result.objectives[0].name
    metric = first.removeprefix("val_")
    size = tuple(data.input_size)
    members = {f"trial{c.number}": c for c in result.pareto}
    models = {n: c.spec.build(**build_kwargs(data)).eval() for n, c in members.items()}
    timed = compare(models, size, batch=batch, threads=threads, warmup=3, repeats=repeats)
    rows = []
    for name, c in members.items():
        stats = timed[name].as_result()
        scored = {metric: c.values[first]} if metric in ("top1", "top5") else {}
        rows.append({
            "name": name, "dataset": getattr(data, "name", "data"), "split": "val",
            **scored, "params": count_params(models[name]),
            "macs": c.metrics.get("macs"), "latency_ms": stats, "seed": 0,
            "method_chain": [f"search:{result.study.study_name}"],
            "notes": f"Pareto member, trial {c.number}; spec {c.spec.as_dict()}",
            "extra": {"sample": c.sample, "spec": c.spec.as_dict(), "values": c.values},
        })  # fmt: skip
    cols = ["trial", *(o.name for o in result.objectives), "duplicate of", "seconds"]
    table = [
        [c.number, *(round(c.values[o.name], 4) for o in result.objectives),
         c.duplicate_of, round(c.seconds, 1)]
        for c in sorted(result.candidates, key=lambda c: c.number)
    ]  # fmt: skip
    cost = (
        f"{len(result.candidates)} completed trials ({result.distinct()} architectures); "
        f"search cost {result.cost()}"
        + (" (supernet training included)" if "supernet_cpu_hours" in result.extra else "")
        + f"; Pareto members timed side by side at batch {batch}."
    )
    run = {
        "name": f"search {result.study.study_name}",
        "description": f"Space {result.space.name!r}: {result.space.description}",
        "command": command,
        "notes": [cost],
        "tables": [{"title": "Every completed trial", "columns": cols, "rows": table}],
        "search": {
            "study": result.study.study_name,
            "cpu_hours": result.cpu_hours,
            "gpu_hours": result.gpu_hours,
            "best": result.best.spec.as_dict(),
        },  # fmt: skip
    }
    path = write_results(out_dir, rows, run_info=run)
    write_report(out_dir)
    return path
