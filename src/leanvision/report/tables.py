"""Tables of model results: Markdown for reports, rich for the terminal."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from leanvision.report.schema import METRIC_LABELS, ModelResult
from leanvision.report.writer import compute_ratios

if TYPE_CHECKING:
    from rich.table import Table

__all__ = [
    "MISSING",
    "TableData",
    "fmt_cell",
    "fmt_energy",
    "fmt_millions",
    "fmt_metric",
    "fmt_percent",
    "markdown_table",
    "metric_header",
    "rich_table",
    "run_table_markdown",
    "table_data",
]

MISSING = "—"
_ALWAYS_SHOWN = {"Model", "Dataset", "Params (M)", "MACs (M)"}


def fmt_percent(value: float | None, *, signed: bool = False) -> str:
    """Accuracy in percent (or points) with 2 decimals; ``—`` when missing."""
    if value is None:
        return MISSING
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def fmt_millions(value: float | None, decimals: int) -> str:
    """A count in millions with ``decimals`` decimals.

    Values too small to show with that many decimals get 3 significant digits instead, so a
    0.027 M-parameter model does not read as ``0.0``.
    """
    if value is None:
        return MISSING
    v = value / 1e6
    if v != 0 and abs(v) < 10.0 ** (1 - decimals):
        return f"{v:.3g}"
    return f"{v:.{decimals}f}"


def fmt_energy(value: float | None) -> str:
    """Energy in microjoules, readable from nJ-scale to J-scale values."""
    if value is None:
        return MISSING
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value:.3g}" if abs(value) < 0.1 else f"{value:.2f}"


def metric_header(key: str) -> str:
    """A column header for a ``metrics`` key: ``"psnr@Set5"`` → ``"PSNR dB (Set5)"``."""
    name, _, where = key.partition("@")
    label = METRIC_LABELS.get(name, name)
    return f"{label} ({where})" if where else label


def fmt_metric(key: str, value: float | None) -> str:
    """A task metric with the decimals its papers use (PSNR 2, SSIM 4); ``—`` when missing."""
    if value is None:
        return MISSING
    name = key.partition("@")[0]
    if name == "ssim":
        return f"{value:.4f}"
    if name in METRIC_LABELS:
        return f"{value:.2f}"
    return fmt_cell(value)


def _metric_keys(results: Sequence[ModelResult]) -> list[str]:
    """Every ``metrics`` key of the run, first seen first (a column each)."""
    keys: dict[str, None] = {}
    for m in results:
        keys.update(dict.fromkeys(m.metrics))
    return list(keys)


def _fmt_speedup(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}×"


def _fmt_throughput(latency: Mapping[str, Any] | None) -> str:
    """Images per second of a batch latency."""
    if not latency or not latency.get("median"):
        return MISSING
    return fmt_cell(latency["batch"] * 1000.0 / latency["median"])


def fmt_cell(value: Any) -> str:
    """A free-form table cell: whole numbers as they are, floats to a readable precision."""
    if value is None:
        return MISSING
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if abs(value) >= 1000:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def run_table_markdown(table: Mapping[str, Any]) -> str:
    """A run's extra table (``run["tables"]`` entry) as Markdown, ending with a newline."""
    columns = list(table["columns"])
    cells = [[fmt_cell(c) for c in row] for row in table["rows"]]
    numeric = [
        all(isinstance(row[i], (int, float)) or row[i] is None for row in table["rows"])
        and any(row[i] is not None for row in table["rows"])
        for i in range(len(columns))
    ]
    lines = [
        "| " + " | ".join(_md_cell(h) for h in columns) + " |",
        "|" + "|".join("---:" if num else ":---" for num in numeric) + "|",
    ]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


@dataclass
class TableData:
    """Headers and formatted cells shared by the Markdown, rich and HTML tables.

    Attributes:
        headers: Column titles.
        rows: One list of formatted cells per model.
        numeric: For each column, whether it holds numbers (right-aligned).
        baselines: Names of models other models are compared to.
    """

    headers: list[str]
    rows: list[list[str]]
    numeric: list[bool]
    baselines: set[str]


def _latency_columns(models: Sequence[ModelResult]) -> tuple[str, list[str]]:
    """Header and cells for latency; settings go in the header when all rows share them."""
    measured = [m.latency_ms for m in models if m.latency_ms]
    settings = {(lat.get("batch"), lat.get("threads")) for lat in measured}
    backends = {lat.get("backend") for lat in measured}
    header = "Latency ms (median"
    if len(settings) == 1:
        batch, threads = next(iter(settings))
        header += f", batch {batch}, {threads} thread{'s' if threads != 1 else ''}"
    if len(backends) == 1 and None not in backends:
        header += f", {next(iter(backends))}"
    header += ")"
    cells = []
    for m in models:
        lat = m.latency_ms
        if not lat:
            cells.append(MISSING)
            continue
        cell = _fmt_ms(lat["median"])
        if len(settings) > 1:
            cell += f" (batch {lat.get('batch')}, {lat.get('threads')} thr)"
        if len(backends) > 1 and lat.get("backend"):
            cell += f" [{lat['backend']}]"
        cells.append(cell)
    return header, cells


def table_data(models: Sequence[ModelResult | Mapping[str, Any]]) -> TableData:
    """Format the results of one run as table cells (ratios recomputed from the baselines).

    Args:
        models: Results of one run.

    Returns:
        Headers, formatted rows and column alignment.
    """
    results = compute_ratios(models)
    baselines = {m.baseline for m in results if m.baseline is not None}
    lat_header, lat_cells = _latency_columns(results)
    with_paper = any(m.paper for m in results)
    headers = [
        "Model",
        "Method chain",
        "Dataset",
        "Top-1 %",
        "Δ top-1 vs baseline (pts)",
        "Params (M)",
        "MACs (M)",
        lat_header,
        "Speed-up ×",
        "Energy µJ",
    ]
    numeric = [False, False, False] + [True] * 7
    with_mem = any(m.peak_mem_mb is not None for m in results)
    with_throughput = any(m.latency_ms for m in results)
    paper_params = with_paper and any((m.paper or {}).get("params") for m in results)
    if with_throughput:
        headers.insert(8, "Throughput img/s")
        numeric.insert(8, True)
    if with_mem:
        headers.append("Peak mem MiB")
        numeric.append(True)
    if with_paper:
        headers += ["Paper top-1 %", "Paper MACs (M)"]
        numeric += [True, True]
        if paper_params:
            headers.append("Paper params (M)")
            numeric.append(True)
    rows = []
    for m, lat_cell in zip(results, lat_cells):
        is_ref = m.name in baselines and m.baseline in (None, m.name)
        delta = "baseline" if is_ref else fmt_percent(m.ratios.get("top1_delta"), signed=True)
        speedup = m.ratios.get("speedup")
        if is_ref and m.latency_ms:
            speedup = 1.0
        row = [
            m.name,
            " → ".join(m.method_chain) if m.method_chain else MISSING,
            f"{m.dataset} ({m.split})",
            fmt_percent(m.top1),
            delta,
            fmt_millions(m.params, 2),
            fmt_millions(m.macs, 1),
            lat_cell,
            _fmt_speedup(speedup),
            fmt_energy(m.energy_uj),
        ]
        if with_throughput:
            row.insert(8, _fmt_throughput(m.latency_ms))
        if with_mem:
            row.append(fmt_cell(m.peak_mem_mb))
        if with_paper:
            paper = m.paper or {}
            row += [fmt_percent(paper.get("top1")), fmt_millions(paper.get("macs"), 1)]
            if paper_params:
                row.append(fmt_millions(paper.get("params"), 2))
        rows.append(row)
    metric_keys = _metric_keys(results)
    if metric_keys:  # a task's metrics (PSNR/SSIM, mAP) beside top-1, after its delta
        at = headers.index("Δ top-1 vs baseline (pts)") + 1
        if all(m.top1 is None for m in results):  # no top-1: the delta of the first metric
            first = metric_keys[0]
            headers[at - 1] = f"Δ {metric_header(first)} vs baseline"
            by_name = {m.name: m for m in results}
            for m, row in zip(results, rows):
                base = by_name.get(m.baseline) if m.baseline else None
                mine = m.metrics.get(first)
                theirs = base.metrics.get(first) if base is not None else None
                if row[at - 1] != "baseline":
                    row[at - 1] = (MISSING if mine is None or theirs is None
                                   else fmt_metric(first, mine - theirs))  # fmt: skip
                    if row[at - 1] != MISSING and mine >= theirs:
                        row[at - 1] = "+" + row[at - 1]
        headers[at:at] = [metric_header(k) for k in metric_keys]
        numeric[at:at] = [True] * len(metric_keys)
        for m, row in zip(results, rows):
            row[at:at] = [fmt_metric(k, m.metrics.get(k)) for k in metric_keys]
    # Optional columns nobody filled in (no accuracy in a size table, no baseline, ...) go.
    keep = [
        i
        for i, h in enumerate(headers)
        if h in _ALWAYS_SHOWN or any(row[i] != MISSING for row in rows)
    ]
    return TableData(
        headers=[headers[i] for i in keep],
        rows=[[row[i] for i in keep] for row in rows],
        numeric=[numeric[i] for i in keep],
        baselines=baselines,
    )


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(models: Sequence[ModelResult | Mapping[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table of one run's results.

    Columns: model, method chain, dataset, top-1 %, Δ top-1 vs baseline, the task metrics
    (``metrics``: PSNR dB / SSIM per test set, ...) when any row has them, params (M),
    MACs (M; multiply-accumulates), median latency (batch/threads in the header), speed-up,
    energy, and paper top-1 / paper MACs when any model carries ``paper`` numbers.

    Args:
        models: Results of one run.

    Returns:
        The table, ending with a newline.
    """
    data = table_data(models)
    lines = [
        "| " + " | ".join(_md_cell(h) for h in data.headers) + " |",
        "|" + "|".join("---:" if num else ":---" for num in data.numeric) + "|",
    ]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in data.rows]
    return "\n".join(lines) + "\n"


def rich_table(
    models: Sequence[ModelResult | Mapping[str, Any]], title: str | None = None
) -> Table:
    """The same table as :func:`markdown_table`, as a ``rich.table.Table`` for the CLI.

    Args:
        models: Results of one run.
        title: Optional table title.

    Returns:
        A table ready for ``rich.console.Console().print``.
    """
    from rich.table import Table
    from rich.text import Text

    data = table_data(models)
    table = Table(title=title, header_style="bold")
    for header, num in zip(data.headers, data.numeric):
        table.add_column(header, justify="right" if num else "left", overflow="fold")
    for row in data.rows:
        style = "bold" if row[0] in data.baselines else None
        # Text, not str: cells such as "1.60 [onnxruntime]" must not be read as rich markup.
        table.add_row(*(Text(cell) for cell in row), style=style)
    return table
