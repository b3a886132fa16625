"""Results files, tables, plots and reports.

Every run writes ``results.json`` (:func:`write_results`); tables, plots, ``report.md`` /
``report.html`` (:func:`write_report`) and ``docs/RESULTS.md`` (:func:`build_summary`) are
built only from these files. This package reads results, never live models, and does not
import torch.
"""

from leanvision.report.documents import build_summary, write_report
from leanvision.report.plots import plot_tradeoffs
from leanvision.report.schema import SCHEMA_ID, ModelResult
from leanvision.report.tables import markdown_table, rich_table
from leanvision.report.writer import (
    ResultsFile,
    check_results_target,
    compute_ratios,
    load_results,
    load_results_file,
    write_results,
)

__all__ = [
    "SCHEMA_ID",
    "ModelResult",
    "ResultsFile",
    "build_summary",
    "check_results_target",
    "compute_ratios",
    "load_results",
    "load_results_file",
    "markdown_table",
    "plot_tradeoffs",
    "rich_table",
    "write_report",
    "write_results",
]
