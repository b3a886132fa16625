"""Run reports (``report.md`` / ``report.html``) and the multi-run summary (docs/RESULTS.md)."""

from __future__ import annotations

import base64
import html
import os
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from leanvision.errors import ConfigError, DataError
from leanvision.report.plots import PLOT_FILES, plot_tradeoffs
from leanvision.report.schema import ModelResult
from leanvision.report.tables import fmt_cell, markdown_table, run_table_markdown, table_data
from leanvision.report.writer import (
    RESULTS_FILENAME,
    ResultsFile,
    atomic_write_text,
    compute_ratios,
    load_results_file,
)

__all__ = ["build_summary", "write_report"]

_PLOT_TITLES = {
    "acc_vs_macs": "Top-1 accuracy vs MACs",
    "acc_vs_latency": "Top-1 accuracy vs latency",
}
_LEGEND = (
    "Top-1 in percent; Δ top-1 in percentage points vs the baseline; MACs are "
    "multiply-accumulates per sample (FLOPs = 2 × MACs); latency is the median time of one "
    "batch; speed-up = baseline latency / model latency; energy is an estimate per sample."
)
_METRICS_LEGEND = (
    " PSNR in dB and SSIM on the Y channel (BT.601) with the scale's border cropped; a metric "
    "named '(Set5)' was measured on that test set; with no top-1 the Δ column is the first "
    "metric's difference from the baseline."
)


def _legend(models: list[Any]) -> str:
    """The table's legend, with the task metrics' conventions when a row has any."""
    with_metrics = any((m.metrics if hasattr(m, "metrics") else m.get("metrics")) for m in models)
    return _LEGEND + (_METRICS_LEGEND if with_metrics else "")


# -- metadata and notes -------------------------------------------------------------------------


def _meta(run: Mapping[str, Any], models: Sequence[ModelResult]) -> list[tuple[str, str]]:
    """(label, value) pairs describing a run, for the header of a report section."""
    out: list[tuple[str, str]] = []
    dates = sorted(m.date for m in models if m.date)
    date = run.get("created") or (dates[-1] if dates else None)
    if date:
        out.append(("Date", str(date)))
    rows = sorted(
        {commit_label(m.git_commit, m.git_dirty, m.git_diff_sha256) for m in models if m.git_commit}
    )
    if run.get("git_commit"):
        label = commit_label(run["git_commit"], run.get("git_dirty"), run.get("git_diff_sha256"))
        out.append(("Git commit", label))
        others = [r for r in rows if r != label]
        if others:
            out.append(("Some rows measured at", "; ".join(others)))
    elif len(rows) == 1:
        out.append(("Git commit", rows[0]))
    elif rows:
        out.append(("Git commits", "; ".join(rows)))
    seeds = sorted({m.seed for m in models if m.seed is not None})
    if seeds:
        out.append(("Seed" if len(seeds) == 1 else "Seeds", ", ".join(map(str, seeds))))
    host = run.get("host")
    if isinstance(host, Mapping):
        parts = [str(host[k]) for k in ("platform",) if host.get(k)]
        if host.get("python"):
            parts.append(f"Python {host['python']}")
        packages = host.get("packages")
        if isinstance(packages, Mapping):
            shown = ("torch", "timm", "onnxruntime")
            parts += [f"{k} {packages[k]}" for k in shown if k in packages]
        if host.get("cpu_count"):
            model = f" ({host['cpu_model']})" if host.get("cpu_model") else ""
            parts.append(f"{host['cpu_count']} CPUs{model}")
        if parts:
            out.append(("Host", ", ".join(parts)))
    return out


def commit_label(commit: Any, dirty: Any, diff_sha256: Any) -> str:
    """A commit as a report shows it, marked when its tree was dirty.

    ``"<commit> (clean)"``, ``"<commit> (DIRTY TREE: uncommitted changes, diff sha256 <12
    hex>)"``, or ``"<commit> (dirty: unknown)"`` for files written before the dirty flag
    existed (or outside a git checkout).
    """
    if dirty is True:
        digest = f", diff sha256 {str(diff_sha256)[:12]}" if diff_sha256 else ""
        return f"{commit} (DIRTY TREE: uncommitted changes{digest})"
    if dirty is False:
        return f"{commit} (clean)"
    return f"{commit} (dirty: unknown)"


def _notes(run: Mapping[str, Any], models: Sequence[ModelResult]) -> list[str]:
    notes = run.get("notes")
    out = [notes] if isinstance(notes, str) and notes else []
    if isinstance(notes, list):
        out += [str(n) for n in notes if n]
    for m in models:
        if m.notes:
            out.append(f"**{m.name}**: {m.notes}")
        source = (m.paper or {}).get("source")
        if source:
            out.append(f"**{m.name}** paper numbers: {source}")
    return out


def _run_title(run: Mapping[str, Any], fallback: str) -> str:
    name = run.get("name")
    return str(name) if name else fallback


# -- Markdown -----------------------------------------------------------------------------------


def _markdown_body(
    run: Mapping[str, Any],
    models: Sequence[ModelResult],
    plot_links: Sequence[tuple[str, str]],
    source: str | None,
) -> list[str]:
    """Lines of one run's section below its heading."""
    lines: list[str] = []
    if run.get("description"):
        lines += [str(run["description"]), ""]
    if run.get("command"):
        lines += ["Reproduce with:", "", "```bash", str(run["command"]), "```", ""]
    meta = _meta(run, models)
    if source:
        meta.append(("Results file", source))
    for label, value in meta:
        lines.append(f"- **{label}:** `{value}`" if label != "Host" else f"- **{label}:** {value}")
    if meta:
        lines.append("")
    if models:
        lines += [markdown_table(models).rstrip("\n"), "", f"<sub>{_legend(models)}</sub>", ""]
    notes = _notes(run, models)
    if notes:
        lines += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    for table in run.get("tables") or []:
        lines += [f"**{table['title']}**", "", run_table_markdown(table).rstrip("\n"), ""]
        if table.get("notes"):
            lines += [str(table["notes"]), ""]
    for alt, link in plot_links:
        lines += [f"![{alt}]({link})", ""]
    return lines


def _plot_links(plots: Iterable[Path], base: Path) -> list[tuple[str, str]]:
    return [
        (_PLOT_TITLES.get(p.stem, p.stem), Path(os.path.relpath(p, base)).as_posix()) for p in plots
    ]


# -- HTML ---------------------------------------------------------------------------------------

_CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 2rem auto; max-width: 1200px; padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; margin-bottom: .3rem; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem;
          font-size: .9rem; color: #444; }
dl.meta dt { font-weight: 600; } dl.meta dd { margin: 0; font-family: monospace; }
pre { background: #f5f5f5; padding: .6rem .8rem; border-radius: 4px; overflow-x: auto; }
table.results { border-collapse: collapse; margin: 1rem 0; font-size: .9rem; }
table.results th, table.results td { border-bottom: 1px solid #ddd; padding: .35rem .6rem; }
table.results th { background: #f0f3f6; text-align: left; border-bottom: 2px solid #bbb; }
table.results td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.results tr.baseline td { font-weight: 600; }
table.results tbody tr:hover { background: #fafbfc; }
p.legend { font-size: .8rem; color: #666; }
.plots img { max-width: 48%; min-width: 320px; margin: .5rem 1% 0 0; border: 1px solid #eee; }
"""


def _html_table(models: Sequence[ModelResult]) -> str:
    data = table_data(models)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in data.headers)
    body = []
    for row in data.rows:
        cls = ' class="baseline"' if row[0] in data.baselines else ""
        cells = "".join(
            f'<td class="num">{html.escape(c)}</td>' if num else f"<td>{html.escape(c)}</td>"
            for c, num in zip(row, data.numeric)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return (
        '<table class="results"><thead><tr>'
        + head
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table>"
    )


def _html_run_table(table: Mapping[str, Any]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in table["columns"])
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{html.escape(fmt_cell(c))}</td>'
            if isinstance(c, (int, float))
            else f"<td>{html.escape(fmt_cell(c))}</td>"
            for c in row
        )
        + "</tr>"
        for row in table["rows"]
    )
    return f'<table class="results"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _html_inline(text: str) -> str:
    """Escape text, keeping the ``**bold**`` used in notes."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(text))


def _render_html(
    title: str, run: Mapping[str, Any], models: Sequence[ModelResult], plots: Sequence[Path]
) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if run.get("description"):
        parts.append(f"<p>{html.escape(str(run['description']))}</p>")
    meta = _meta(run, models)
    if meta:
        parts.append('<dl class="meta">')
        parts += [f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in meta]
        parts.append("</dl>")
    if run.get("command"):
        parts.append(
            f"<p>Reproduce with:</p><pre><code>{html.escape(str(run['command']))}</code></pre>"
        )
    if models:
        parts.append(_html_table(models))
        parts.append(f'<p class="legend">{html.escape(_legend(models))}</p>')
    notes = _notes(run, models)
    if notes:
        parts.append("<h2>Notes</h2><ul>")
        parts += [f"<li>{_html_inline(n)}</li>" for n in notes]
        parts.append("</ul>")
    for table in run.get("tables") or []:
        parts.append(f"<h2>{html.escape(table['title'])}</h2>")
        parts.append(_html_run_table(table))
        if table.get("notes"):
            parts.append(f"<p>{_html_inline(str(table['notes']))}</p>")
    if plots:
        parts.append('<div class="plots">')
        for p in plots:
            data = base64.b64encode(p.read_bytes()).decode("ascii")
            alt = html.escape(_PLOT_TITLES.get(p.stem, p.stem))
            parts.append(f'<img alt="{alt}" src="data:image/png;base64,{data}">')
        parts.append("</div>")
    parts.append(
        '<p class="legend">Generated by <code>leanvision report</code> from '
        f"{html.escape(RESULTS_FILENAME)}.</p></body></html>"
    )
    return "\n".join(parts) + "\n"


# -- public -------------------------------------------------------------------------------------


def write_report(
    run_dir: str | os.PathLike[str],
    models: Sequence[ModelResult | Mapping[str, Any]] | None = None,
) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and the trade-off plots of one run.

    ``report.html`` is self-contained (plots embedded as base64 PNG); ``report.md`` links
    the PNGs written beside it.

    Args:
        run_dir: The run folder; its ``results.json`` supplies models and run info.
        models: Results to report instead of those in ``results.json`` (run info is still
            read from ``results.json`` when present).

    Returns:
        ``{"markdown": ..., "html": ..., "acc_vs_macs": ..., "acc_vs_latency": ...}``;
        a plot key is absent when no model had the fields for it.

    Raises:
        DataError: ``models`` is None and the run has no readable results file.
    """
    run_dir = Path(run_dir)
    has_file = (run_dir / RESULTS_FILENAME).is_file()
    if models is None:
        loaded = load_results_file(run_dir)
        run, results = loaded.run, loaded.models
    else:
        run = load_results_file(run_dir).run if has_file else {}
        results = compute_ratios(models)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in PLOT_FILES:
        (run_dir / stale).unlink(missing_ok=True)
    plots = plot_tradeoffs(results, run_dir)
    title = f"leanvision report: {_run_title(run, run_dir.resolve().name)}"

    md = [f"# {title}", ""]
    md += _markdown_body(
        run, results, _plot_links(plots, run_dir), RESULTS_FILENAME if has_file else None
    )
    md_path = atomic_write_text(run_dir / "report.md", "\n".join(md).rstrip("\n") + "\n")
    html_path = atomic_write_text(run_dir / "report.html", _render_html(title, run, results, plots))
    out = {"markdown": md_path, "html": html_path}
    out.update({p.stem: p for p in plots})
    return out


def _collect_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Expand run dirs, result files and folders of ``*.json`` into result file paths."""
    if not inputs:
        raise ConfigError("build_summary needs at least one results file or run directory")
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_file():
            found = [p]
        elif p.is_dir():
            if (p / RESULTS_FILENAME).is_file():
                found = [p / RESULTS_FILENAME]
            else:
                found = sorted(p.glob("*.json")) or sorted(p.glob(f"*/{RESULTS_FILENAME}"))
            if not found:
                raise DataError(
                    f"{p} holds no {RESULTS_FILENAME}, no *.json results files and no run "
                    f"folders with a {RESULTS_FILENAME}; pass results files or run directories"
                )
        else:
            raise DataError(f"results input {p} does not exist")
        files += found
    unique: dict[Path, Path] = {}
    for f in files:
        unique.setdefault(f.resolve(), f)
    return list(unique.values())


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.").lower() or "run"


def _display_path(p: Path) -> str:
    """Path as a reader of the repository would type it: relative to cwd when inside it."""
    try:
        return p.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return p.resolve().as_posix()


def build_summary(inputs: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]) -> Path:
    """Write one Markdown document summarising several results files.

    Backs ``leanvision report RUN_DIR... -o docs/RESULTS.md``. The document starts with a
    header saying it is generated from the listed JSON files, then has one section per file
    (title from ``run.name``, ``run.description``, the reproducing ``run.command``, the
    table, notes, plots). Plots go to ``<out stem>_plots/`` beside ``out``, linked
    relatively; when several files share a dataset an overview plot compares their runs.

    Args:
        inputs: Results files, run directories, or folders of ``*.json`` results files.
        out: Markdown file to write.

    Returns:
        Path of the written document.

    Raises:
        DataError: An input is missing or is not a leanvision results file.
        ConfigError: No inputs, or a results file does not match the schema.
    """
    out = Path(out)
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files = _collect_inputs(inputs)
    loaded: list[ResultsFile] = [load_results_file(f) for f in files]
    base = out.parent
    plots_dir = base / f"{out.stem}_plots"
    if plots_dir.is_dir():  # the folder is generated: drop plots of runs no longer listed
        for stale in plots_dir.rglob("*.png"):
            stale.unlink()

    command = shlex.join(["leanvision", "report", *map(str, inputs), "-o", str(out)])
    lines = [
        "<!-- Generated by `leanvision report`; do not edit by hand. -->",
        "",
        "# leanvision results",
        "",
        "> Generated by `leanvision report` from the JSON results files listed below.",
        "> Never edit this file by hand: re-run the benchmark, then regenerate it with",
        f"> `{command}`",
        "",
        "Results files:",
        "",
    ]
    for rf in loaded:
        shown = _display_path(rf.path)
        link = Path(os.path.relpath(rf.path.resolve(), base.resolve())).as_posix()
        lines.append(f"- [`{shown}`]({link})")
    lines.append("")

    used: set[str] = set()
    labels: list[str] = []
    sections: list[list[str]] = []
    for rf in loaded:
        slug = _slug(rf.name)
        candidate, n = slug, 2
        while candidate in used:
            candidate, n = f"{slug}-{n}", n + 1
        used.add(candidate)
        labels.append(rf.name if candidate == slug else f"{rf.name} ({_display_path(rf.path)})")
        plots = plot_tradeoffs(rf.models, plots_dir / candidate)
        body = _markdown_body(rf.run, rf.models, _plot_links(plots, base), _display_path(rf.path))
        sections.append([f"## {_run_title(rf.run, rf.name)}", ""] + body)

    # Runs on the same dataset share one plot (one colour and marker per run).
    by_dataset: dict[str, dict[str, list[ModelResult]]] = {}
    for rf, label in zip(loaded, labels):
        for m in rf.models:
            by_dataset.setdefault(m.dataset, {}).setdefault(label, []).append(m)
    overview: list[str] = []
    for dataset, runs in by_dataset.items():
        if len(runs) < 2:
            continue
        plots = plot_tradeoffs(runs, plots_dir / f"_overview-{_slug(dataset)}")
        if plots:
            overview += [f"### {dataset}", ""]
            for alt, link in _plot_links(plots, base):
                overview += [f"![{alt}]({link})", ""]
    if overview:
        lines += ["## Overview", "", "Runs on the same dataset, one marker per run.", ""]
        lines += overview
    for section in sections:
        lines += section
    return atomic_write_text(out, "\n".join(lines).rstrip("\n") + "\n")
