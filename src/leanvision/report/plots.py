"""Accuracy-vs-cost plots (matplotlib, headless)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from leanvision.report.schema import ModelResult

__all__ = ["PLOT_FILES", "plot_tradeoffs"]

PLOT_FILES = ("acc_vs_macs.png", "acc_vs_latency.png")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")

Runs = Mapping[str, Sequence[ModelResult]]
_Getter = Callable[[ModelResult], float | None]


def _as_runs(models: Sequence[ModelResult] | Runs) -> dict[str, list[ModelResult]]:
    if isinstance(models, Mapping):
        return {str(k): list(v) for k, v in models.items()}
    return {"": list(models)}


def _macs_m(m: ModelResult) -> float | None:
    return m.macs / 1e6 if m.macs is not None else None


def _latency(m: ModelResult) -> float | None:
    return m.latency_ms["median"] if m.latency_ms else None


def _paper_macs_m(m: ModelResult) -> float | None:
    value = (m.paper or {}).get("macs")
    return value / 1e6 if isinstance(value, (int, float)) else None


def _paper_latency(m: ModelResult) -> float | None:
    value = (m.paper or {}).get("latency_ms")
    return float(value) if isinstance(value, (int, float)) else None


def _latency_label(runs: dict[str, list[ModelResult]]) -> str:
    settings = {
        (m.latency_ms.get("batch"), m.latency_ms.get("threads"))
        for ms in runs.values()
        for m in ms
        if m.latency_ms
    }
    if len(settings) == 1:
        batch, threads = next(iter(settings))
        return f"Latency (ms, median; batch {batch}, {threads} threads)"
    return "Latency (ms, median; settings differ per run)"


def _draw(
    runs: dict[str, list[ModelResult]],
    x_of: _Getter,
    paper_x_of: _Getter,
    xlabel: str,
    title: str,
    path: Path,
) -> Path | None:
    """Draw one scatter plot; return None when no model has both coordinates."""
    points = [(m, x_of(m)) for ms in runs.values() for m in ms]
    if not any(x is not None and m.top1 is not None for m, x in points):
        return None
    # Figure without pyplot: no global backend switch, no GUI, safe in threads and notebooks;
    # Figure.savefig renders with Agg.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.8), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    colours = [f"C{i % 10}" for i in range(len(runs))]
    xs: list[float] = []
    several = len(runs) > 1
    for i, (label, ms) in enumerate(runs.items()):
        colour, marker = colours[i], _MARKERS[i % len(_MARKERS)]
        baselines = {m.baseline for m in ms if m.baseline is not None}
        ours = [(m, x_of(m)) for m in ms if x_of(m) is not None and m.top1 is not None]
        if ours:
            ax.scatter(
                [x for _, x in ours],
                [m.top1 for m, _ in ours],
                color=colour,
                marker=marker,
                s=40,
                zorder=3,
                label=label if several else "measured",
            )
        for m, x in ours:
            xs.append(x)
            ax.annotate(m.name, (x, m.top1), textcoords="offset points", xytext=(5, 4), fontsize=8)
            if m.name in baselines:
                ax.scatter(
                    [x],
                    [m.top1],
                    s=180,
                    facecolors="none",
                    edgecolors="black",
                    linewidths=1.5,
                    zorder=4,
                )
        paper = [
            (m, paper_x_of(m), (m.paper or {}).get("top1"))
            for m in ms
            if paper_x_of(m) is not None and isinstance((m.paper or {}).get("top1"), (int, float))
        ]
        if paper:
            ax.scatter(
                [x for _, x, _ in paper],
                [y for _, _, y in paper],
                facecolors="none",
                edgecolors=colour,
                marker=marker,
                s=50,
                zorder=3,
                label=f"{label} (paper)" if several else "paper",
            )
        for m, x, y in paper:
            xs.append(x)
            ax.annotate(
                f"{m.name} (paper)",
                (x, y),
                textcoords="offset points",
                xytext=(5, -10),
                fontsize=7,
                color="dimgray",
            )
    if any(m.name in {n.baseline for n in ms} for ms in runs.values() for m in ms):
        ax.scatter([], [], s=180, facecolors="none", edgecolors="black", label="baseline")
    positive = [x for x in xs if x > 0]
    if positive and len(positive) == len(xs) and max(positive) / min(positive) > 30:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_tradeoffs(
    models: Sequence[ModelResult] | Mapping[str, Sequence[ModelResult]],
    out_dir: str | os.PathLike[str],
) -> list[Path]:
    """Plot top-1 vs MACs and top-1 vs latency.

    Each point is labelled with the model name; models that others are compared to are
    circled; ``paper`` numbers (``paper.top1`` with ``paper.macs`` or ``paper.latency_ms``)
    are drawn as hollow markers. A plot is skipped when no model has its fields.

    Args:
        models: Results of one run, or ``{run label: results}`` to draw several runs with one
            colour and marker per run.
        out_dir: Folder for ``acc_vs_macs.png`` and ``acc_vs_latency.png``.

    Returns:
        Paths of the plots written (possibly fewer than two, possibly none).
    """
    runs = _as_runs(models)
    out = Path(out_dir)
    written = []
    path = _draw(
        runs,
        _macs_m,
        _paper_macs_m,
        "MACs (M, multiply-accumulates per sample)",
        "Top-1 accuracy vs MACs",
        out / PLOT_FILES[0],
    )
    if path is not None:
        written.append(path)
    path = _draw(
        runs,
        _latency,
        _paper_latency,
        _latency_label(runs),
        "Top-1 accuracy vs latency",
        out / PLOT_FILES[1],
    )
    if path is not None:
        written.append(path)
    return written
