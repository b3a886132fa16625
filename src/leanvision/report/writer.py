"""Write and read ``results.json`` files."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from leanvision import provenance
from leanvision.errors import ConfigError, DataError
from leanvision.fileio import atomic_write_text
from leanvision.report.schema import SCHEMA_ID, ModelResult, check_run_tables

__all__ = [
    "RESULTS_FILENAME",
    "ResultsFile",
    "atomic_write_text",
    "check_results_target",
    "compute_ratios",
    "git_commit",
    "load_results",
    "load_results_file",
    "write_results",
]

RESULTS_FILENAME = "results.json"
# Versions worth recording with every run; read from package metadata, never imported.
_RECORDED_PACKAGES = ("leanvision", "torch", "torchvision", "timm", "onnxruntime", "numpy")


@dataclass
class ResultsFile:
    """One parsed results file.

    Attributes:
        path: Where it was read from.
        run: The ``run`` object (name, command, created, git_commit, git_dirty, host, ...).
        models: The model results, in file order.
    """

    path: Path
    run: dict[str, Any] = field(default_factory=dict)
    models: list[ModelResult] = field(default_factory=list)

    @property
    def name(self) -> str:
        """Run name, falling back to the directory or file name."""
        name = self.run.get("name")
        if isinstance(name, str) and name:
            return name
        return self.path.parent.name if self.path.name == RESULTS_FILENAME else self.path.stem


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def git_commit() -> str:
    """Commit hash of the leanvision source checkout, or ``"unknown"`` outside git.

    It says nothing of uncommitted changes: use :func:`leanvision.provenance.git_state`
    for the dirty flag and the diff hash.
    """
    return provenance.git_state().commit


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name as /proc/cpuinfo gives it (Linux), else ``platform.processor()``
    ("" where neither says): latencies depend on it, and hosts change between runs."""
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path(cpuinfo).read_text(), re.M)
    except OSError:
        found = None
    return found.group(1).strip() if found else platform.processor()


def _host_info() -> dict[str, Any]:
    packages = {}
    for name in _RECORDED_PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "packages": packages,
    }


def _as_results(models: Iterable[ModelResult | Mapping[str, Any]]) -> list[ModelResult]:
    out = []
    for i, m in enumerate(models):
        if isinstance(m, ModelResult):
            m.validate()
            out.append(dataclasses.replace(m))
        elif isinstance(m, Mapping):
            out.append(ModelResult.from_dict(m, where=f"models[{i}]"))
        else:
            raise ConfigError(
                f"models[{i}] is a {type(m).__name__}; pass ModelResult objects or dicts"
            )
    seen: set[str] = set()
    for m in out:
        if m.name in seen:
            raise ConfigError(
                f"model name {m.name!r} appears twice; names must be unique within a results file"
            )
        seen.add(m.name)
    return out


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    return float(f"{num / den:.6g}")  # 6 significant digits: readable JSON, no float noise


def compute_ratios(
    models: Sequence[ModelResult | Mapping[str, Any]],
) -> list[ModelResult]:
    """Fill each model's ``ratios`` from its ``baseline`` (a model in the same list).

    ``params``, ``macs`` and ``latency`` are this / baseline; ``speedup`` is
    baseline latency / this latency; ``top1_delta`` is this top-1 minus the baseline's, in
    points. A ratio whose inputs are missing is None; a model without baseline gets ``{}``.
    Ratios are always recomputed, so stale values never survive.

    Args:
        models: Results (objects or dicts) of one run.

    Returns:
        New ``ModelResult`` objects with ``ratios`` set; the inputs are not modified.

    Raises:
        ConfigError: A baseline name is not in the list, or latencies (batch, threads) or
            accuracies (dataset, split) are not comparable with the baseline's.
    """
    results = _as_results(models)
    by_name = {m.name: m for m in results}
    for m in results:
        if m.baseline is None:
            m.ratios = {}
            continue
        base = by_name.get(m.baseline)
        if base is None:
            raise ConfigError(
                f"model {m.name!r} names baseline {m.baseline!r}, which is not in the same "
                f"results; models: {', '.join(by_name)}"
            )
        this_lat = m.latency_ms["median"] if m.latency_ms else None
        base_lat = base.latency_ms["median"] if base.latency_ms else None
        if m.latency_ms and base.latency_ms:
            for key in ("batch", "threads"):
                ours, theirs = m.latency_ms.get(key), base.latency_ms.get(key)
                if ours != theirs:
                    raise ConfigError(
                        f"latency of {m.name!r} ({key}={ours}) is not comparable with "
                        f"baseline {base.name!r} ({key}={theirs}); "
                        "measure both with the same batch size and thread count"
                    )
        delta = None
        if m.top1 is not None and base.top1 is not None:
            if (m.dataset, m.split) != (base.dataset, base.split):
                raise ConfigError(
                    f"top-1 of {m.name!r} ({m.dataset}/{m.split}) is not comparable with "
                    f"baseline {base.name!r} ({base.dataset}/{base.split})"
                )
            delta = round(m.top1 - base.top1, 6)
        m.ratios = {
            "params": _ratio(m.params, base.params),
            "macs": _ratio(m.macs, base.macs),
            "latency": _ratio(this_lat, base_lat),
            "speedup": _ratio(base_lat, this_lat),
            "top1_delta": delta,
        }
    return results


def check_results_target(
    run_dir: str | os.PathLike[str],
    *,
    committed: bool | None = None,
    allow_dirty: bool | None = None,
) -> provenance.GitState:
    """Check now what :func:`write_results` checks before writing to ``run_dir``.

    A benchmark calls it before hours of measuring, so a dirty tree fails at once, not at the
    end. Arguments as in :func:`write_results`.

    Returns:
        The checkout's state (commit, dirty flag, diff hash).

    Raises:
        DirtyTreeError: ``run_dir`` holds committed results, the tree is dirty and
            ``allow_dirty`` (or ``LEANVISION_ALLOW_DIRTY``) does not allow it.
    """
    repo = provenance.source_repo()
    state = provenance.git_state(repo)
    if committed is None:
        committed = provenance.is_committed_location(run_dir, repo)
    if committed:
        what = f"committed results {Path(run_dir) / RESULTS_FILENAME}"
        provenance.check_committable(state, what, allow_dirty=allow_dirty)
    return state


# Run keys write_results records itself; run_info may not set them.
_PROVENANCE_KEYS = ("git_commit", "git_dirty", "git_diff_sha256", "git_dirty_files")


def write_results(
    run_dir: str | os.PathLike[str],
    models: Sequence[ModelResult | Mapping[str, Any]],
    *,
    run_info: Mapping[str, Any] | None = None,
    committed: bool | None = None,
    allow_dirty: bool | None = None,
) -> Path:
    """Write ``run_dir/results.json`` atomically, naming the code that made it.

    Fills ``ratios`` (:func:`compute_ratios`), and ``git_commit``, ``git_dirty``,
    ``git_diff_sha256`` and ``date`` where a model lacks a ``git_commit`` / ``date``. The
    ``run`` object gets ``name`` (default: the folder name), ``created``, ``git_commit``,
    ``git_dirty``, ``git_diff_sha256``, ``git_dirty_files`` and ``host``; other keys in
    ``run_info`` (e.g. ``command``, ``description``) are added and win over these defaults.
    See :mod:`leanvision.provenance` for what makes a tree dirty.

    Results meant to be committed are refused from a dirty tree: those under the checkout's
    ``benchmarks/results``, or any with ``committed=True``. Runs elsewhere (``runs/...``, a
    user's folder) are never refused, only recorded.

    Args:
        run_dir: Folder of the run; created if needed.
        models: Results of the run (``ModelResult`` objects or dicts).
        run_info: Extra run metadata, e.g. ``{"command": "leanvision bench ghostnet"}``;
            ``tables`` holds measurements that are not one row per model (see
            :func:`leanvision.report.schema.check_run_tables`).
        committed: Whether these results are to be committed; default: whether ``run_dir``
            lies in the checkout's ``benchmarks/results``.
        allow_dirty: Write committed results from a dirty tree anyway (recorded as dirty);
            default: the ``LEANVISION_ALLOW_DIRTY`` environment variable.

    Returns:
        Path of the written file.

    Raises:
        ConfigError: A model entry or ``run_info`` is invalid.
        DirtyTreeError: Committed results from a dirty tree without ``allow_dirty``; the
            message names the changed files.
    """
    run_dir = Path(run_dir)
    if run_info is not None and not isinstance(run_info, Mapping):
        raise ConfigError(f"run_info must be a dict, got {type(run_info).__name__}")
    taken = [k for k in _PROVENANCE_KEYS if k in (run_info or {})]
    if taken:
        raise ConfigError(
            f"run_info sets {taken[0]!r}; write_results records the code's git state itself"
        )
    results = compute_ratios(models)
    state = check_results_target(run_dir, committed=committed, allow_dirty=allow_dirty)
    now = _now_iso()
    for m in results:
        if m.git_commit is None:
            m.git_commit = state.commit
            m.git_dirty = state.dirty
            m.git_diff_sha256 = state.diff_sha256
        if m.date is None:
            m.date = now
    run: dict[str, Any] = {
        "name": run_dir.resolve().name,
        "created": now,
        "git_commit": state.commit,
        "git_dirty": state.dirty,
        "git_diff_sha256": state.diff_sha256,
        "git_dirty_files": list(state.dirty_files),
        "host": _host_info(),
    }
    run.update(run_info or {})
    if "tables" in run:
        run["tables"] = check_run_tables(run["tables"], str(run_dir))
    doc = {"schema": SCHEMA_ID, "run": run, "models": [m.to_dict() for m in results]}
    try:
        text = json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"results for {run_dir} are not JSON-serialisable ({err}); keep run_info, "
            "paper and extra to plain numbers, strings, lists and dicts"
        ) from None
    return atomic_write_text(run_dir / RESULTS_FILENAME, text + "\n")


def _resolve_file(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if p.is_dir():
        candidate = p / RESULTS_FILENAME
        if not candidate.is_file():
            raise DataError(
                f"no {RESULTS_FILENAME} in run directory {p}; write one with "
                "leanvision.report.write_results or pass the results file itself"
            )
        return candidate
    if not p.exists():
        raise DataError(
            f"results file {p} does not exist; pass a {RESULTS_FILENAME} written by "
            "leanvision.report.write_results or the run directory holding it"
        )
    return p


def load_results_file(path: str | os.PathLike[str]) -> ResultsFile:
    """Read a results file (or a run directory's ``results.json``) with its run info.

    Args:
        path: A ``results.json`` (any name) or a run directory containing one.

    Returns:
        The parsed file.

    Raises:
        DataError: The file is missing, unreadable, not JSON, or not a leanvision results file.
        ConfigError: A model entry does not match the schema (the message names file and entry).
    """
    p = _resolve_file(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read results file {p}: {err}") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"results file {p} is not valid JSON: {err}") from None
    if not isinstance(doc, dict) or "schema" not in doc:
        raise DataError(
            f'{p} is not a leanvision results file (no "schema": {SCHEMA_ID!r} key); '
            "results files are written by leanvision.report.write_results"
        )
    if doc["schema"] != SCHEMA_ID:
        raise DataError(f"{p} has schema {doc['schema']!r}; this leanvision reads {SCHEMA_ID!r}")
    run = doc.get("run", {})
    models = doc.get("models")
    if not isinstance(run, dict) or not isinstance(models, list):
        raise DataError(f'{p} is malformed: "run" must be an object and "models" a list')
    unknown = sorted(set(doc) - {"schema", "run", "models"})
    if unknown:
        raise ConfigError(
            f"unknown top-level key {unknown[0]!r} in {p}; allowed keys: schema, run, models"
        )
    parsed = [ModelResult.from_dict(m, where=f"{p} models[{i}]") for i, m in enumerate(models)]
    if "tables" in run:
        run["tables"] = check_run_tables(run["tables"], str(p))
    return ResultsFile(path=p, run=run, models=parsed)


def load_results(path_or_dir: str | os.PathLike[str]) -> list[ModelResult]:
    """Read the model results of a results file or run directory.

    Args:
        path_or_dir: A ``results.json`` or a run directory containing one.

    Returns:
        The model results, in file order.

    Raises:
        DataError: Missing or unreadable file, or not a leanvision results file.
        ConfigError: A model entry does not match the schema.
    """
    return load_results_file(path_or_dir).models
