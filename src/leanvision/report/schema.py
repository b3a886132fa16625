"""The results.json schema: one :class:`ModelResult` per measured model.

A results file is a JSON object::

    {
      "schema": "leanvision.results/1",
      "run": {"name": ..., "command": ..., "created": ..., "git_commit": ..., "git_dirty": ...,
              "git_diff_sha256": ..., "git_dirty_files": [...], "host": {...}},
      "models": [ModelResult dicts, ...]
    }

Units: ``top1``/``top5`` in percent, ``macs`` are multiply-accumulates (FLOPs = 2 x MACs),
``adds``/``muls``/``bitops`` are counts per forward pass of one sample, ``latency_ms`` is in
milliseconds for one batch of ``latency_ms["batch"]`` samples, ``peak_mem_mb`` in MiB and
``energy_uj`` in microjoules; ``metrics`` holds a task's other metrics (``psnr`` in dB,
``ssim`` in [0, 1], ``map`` in percent, ...), a key ``"psnr@Set5"`` naming the test set it
was measured on when a row holds several. Reports and tables are built only from these files.

Provenance (``git_commit``, ``git_dirty``, ``git_diff_sha256``; see
:mod:`leanvision.provenance`) is in the run object and in every model row. Files written
before ``git_dirty`` existed still load: the missing fields read as None ("dirty: unknown").
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from leanvision.errors import ConfigError

__all__ = [
    "LATENCY_KEYS",
    "LATENCY_REQUIRED",
    "METRIC_LABELS",
    "RATIO_KEYS",
    "RUN_TABLE_KEYS",
    "SCHEMA_ID",
    "ModelResult",
    "check_run_tables",
]

SCHEMA_ID = "leanvision.results/1"

# ``median``, ``batch`` and ``threads`` are required: a latency without its batch size and
# thread count cannot be compared with another one.
LATENCY_REQUIRED = ("median", "batch", "threads")
LATENCY_KEYS = (
    "median",
    "p90",
    "batch",
    "threads",
    "backend",
    "mean",
    "min",
    "max",
    "std",
    "runs",
    "warmup",
    "device",
)
RATIO_KEYS = ("params", "macs", "latency", "speedup", "top1_delta")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_METRIC_KEY = re.compile(r"[a-z][a-z0-9_]*(@[^@\s|]+)?")
# how reports name a task metric (a key of ``ModelResult.metrics`` before any '@set')
METRIC_LABELS = {"psnr": "PSNR dB", "ssim": "SSIM", "map": "mAP %", "map50": "AP50 %",
                 "map75": "AP75 %", "loss": "loss"}  # fmt: skip


def _where(where: str) -> str:
    return f" in {where}" if where else ""


def _number(value: Any, key: str, where: str, *, integer: bool = False) -> float | int | None:
    """Check that ``value`` is a finite number (or None); return it as int/float."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(
            f"{key!r}{_where(where)} must be a number, got {type(value).__name__} {value!r}"
        )
    if not math.isfinite(value):
        raise ConfigError(
            f"{key!r}{_where(where)} must be finite, got {value!r}; "
            "leave a value out (None) when it was not measured"
        )
    if integer:
        if isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"{key!r}{_where(where)} must be a whole count, got {value!r}")
            value = int(value)
        if value < 0:
            raise ConfigError(f"{key!r}{_where(where)} must be >= 0, got {value!r}")
        return value
    return float(value)


def _percent(value: Any, key: str, where: str) -> float | None:
    out = _number(value, key, where)
    if out is not None and not 0.0 <= out <= 100.0:
        raise ConfigError(
            f"{key!r}{_where(where)} is {out!r}; accuracies are stored in percent (0-100)"
        )
    return out


def _optional_str(value: Any, key: str, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ConfigError(f"{key!r}{_where(where)} must be a string, got {type(value).__name__}")


def _check_keys(
    data: Mapping[str, Any], allowed: tuple[str, ...], required: tuple[str, ...], what: str
) -> None:
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r} in {what}; allowed keys: {', '.join(allowed)}"
        )
    missing = [k for k in required if k not in data]
    if missing:
        raise ConfigError(
            f"missing required key {missing[0]!r} in {what}; required keys: {', '.join(required)}"
        )


@dataclass(kw_only=True)
class ModelResult:
    """Measurements of one model, as stored in ``results.json``.

    Attributes:
        name: Unique name of the model within its results file.
        recipe: Recipe file or name that produced the model, if any.
        method_chain: Method keys applied in order (empty for a baseline).
        dataset: Dataset the accuracy was measured on.
        split: Split the accuracy was measured on (``"test"``, ``"val"``, ...).
        top1: Top-1 accuracy in percent, or None when not measured.
        top5: Top-5 accuracy in percent, or None.
        metrics: The task's other metrics (see :data:`METRIC_LABELS`), ``{"psnr": 36.1}`` or,
            for several test sets, ``{"psnr@Set5": 36.1, "psnr@Set14": 32.0}``.
        params: Number of parameters.
        macs: Multiply-accumulates per sample (FLOPs = 2 x MACs).
        adds: Additions per sample, or None.
        muls: Multiplications per sample, or None.
        bitops: Binary operations per sample, or None.
        latency_ms: ``{"median", "p90", "batch", "threads", "backend"}`` in ms per batch.
        peak_mem_mb: Peak memory of one forward pass in MiB, or None.
        energy_uj: Estimated energy per sample in microjoules, or None.
        baseline: Name of the baseline model in the same file, or None.
        ratios: Computed vs the baseline (see :func:`compute_ratios`).
        seed: Random seed of the run.
        git_commit: Commit of the code that produced the numbers.
        git_dirty: Whether that checkout had uncommitted changes; None when unknown (not
            recorded, or not a git checkout).
        git_diff_sha256: SHA-256 (64 hex digits) of those changes when ``git_dirty``.
        date: ISO-8601 date of the measurement.
        paper: Numbers the paper reports, e.g. ``{"top1": 92.7, "macs": 63e6, "source": ...}``.
        notes: Free text shown under the table.
        extra: Anything else (per-image scores, specs, search records).
    """

    name: str
    recipe: str | None = None
    method_chain: list[str] = field(default_factory=list)
    dataset: str
    split: str
    top1: float | None = None
    top5: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    params: int
    macs: int
    adds: int | None = None
    muls: int | None = None
    bitops: int | None = None
    latency_ms: dict[str, Any] | None = None
    peak_mem_mb: float | None = None
    energy_uj: float | None = None
    baseline: str | None = None
    ratios: dict[str, float | None] = field(default_factory=dict)
    seed: int | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None
    git_diff_sha256: str | None = None
    date: str | None = None
    paper: dict[str, Any] | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # -- validation -------------------------------------------------------------------------

    def validate(self, where: str = "") -> None:
        """Check types and ranges; normalise counts to ``int``.

        Args:
            where: Location used in error messages (e.g. ``"results.json models[2]"``).

        Raises:
            ConfigError: A value has the wrong type or is out of range.
        """
        where = where or f"model {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"'name'{_where(where)} must be a non-empty string")
        for key in ("dataset", "split"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ConfigError(f"{key!r}{_where(where)} must be a non-empty string")
        for key in ("recipe", "baseline", "git_commit"):
            _optional_str(getattr(self, key), key, where)
        if not isinstance(self.notes, str):
            raise ConfigError(f"'notes'{_where(where)} must be a string")
        if isinstance(self.method_chain, str) or not all(
            isinstance(m, str) for m in self.method_chain
        ):
            raise ConfigError(
                f"'method_chain'{_where(where)} must be a list of method names, "
                f"got {self.method_chain!r}"
            )
        self.method_chain = list(self.method_chain)
        self.top1 = _percent(self.top1, "top1", where)
        self.top5 = _percent(self.top5, "top5", where)
        self._validate_metrics(where)
        for key in ("params", "macs"):
            value = _number(getattr(self, key), key, where, integer=True)
            if value is None:
                raise ConfigError(f"{key!r}{_where(where)} is required (a count, not None)")
            setattr(self, key, value)
        for key in ("adds", "muls", "bitops", "seed"):
            setattr(self, key, _number(getattr(self, key), key, where, integer=True))
        for key in ("peak_mem_mb", "energy_uj"):
            setattr(self, key, _number(getattr(self, key), key, where))
        self._validate_latency(where)
        self._validate_ratios(where)
        self._validate_provenance(where)
        if self.date is not None:
            _optional_str(self.date, "date", where)
            try:
                datetime.fromisoformat(self.date)
            except ValueError:
                raise ConfigError(
                    f"'date'{_where(where)} is {self.date!r}, not an ISO-8601 date "
                    "(e.g. 2025-01-31T12:00:00+00:00)"
                ) from None
        if self.paper is not None:
            if not isinstance(self.paper, dict):
                raise ConfigError(f"'paper'{_where(where)} must be a dict, e.g. {{'top1': 92.7}}")
            self.paper = dict(self.paper)  # normalised below; never edit the caller's dict
            for key in ("top1", "top5"):
                if key in self.paper:
                    self.paper[key] = _percent(self.paper[key], f"paper.{key}", where)
            for key in ("macs", "params"):
                if key in self.paper:
                    self.paper[key] = _number(self.paper[key], f"paper.{key}", where, integer=True)
        if not isinstance(self.extra, dict):
            raise ConfigError(f"'extra'{_where(where)} must be a dict")

    def _validate_metrics(self, where: str) -> None:
        if not isinstance(self.metrics, Mapping):
            raise ConfigError(
                f"'metrics'{_where(where)} must be a dict such as {{'psnr': 36.1}}, got "
                f"{type(self.metrics).__name__}"
            )
        out = {}
        for key, value in self.metrics.items():
            if not isinstance(key, str) or not _METRIC_KEY.fullmatch(key):
                raise ConfigError(
                    f"metric name {key!r}{_where(where)} must be a lowercase name, optionally "
                    "with '@' and the test set it was measured on (e.g. 'psnr', 'psnr@Set5')"
                )
            if key.split("@")[0] in ("top1", "top5"):
                raise ConfigError(
                    f"metric {key!r}{_where(where)}: top-1/top-5 have their own keys "
                    "('top1', 'top5'), not 'metrics'"
                )
            out[key] = _number(value, f"metrics.{key}", where)
            if out[key] is None:
                raise ConfigError(
                    f"'metrics.{key}'{_where(where)} is None; leave a metric out when it was "
                    "not measured"
                )
        self.metrics = out

    def _validate_latency(self, where: str) -> None:
        lat = self.latency_ms
        if lat is None:
            return
        if not isinstance(lat, Mapping):
            raise ConfigError(
                f"'latency_ms'{_where(where)} must be a dict with keys "
                f"{', '.join(LATENCY_KEYS)}; got {type(lat).__name__}"
            )
        _check_keys(lat, LATENCY_KEYS, LATENCY_REQUIRED, f"'latency_ms'{_where(where)}")
        out = dict(lat)
        for key in ("median", "p90", "mean", "min", "max", "std"):
            if key in out:
                out[key] = _number(out[key], f"latency_ms.{key}", where)
        for key in ("batch", "threads", "runs", "warmup"):
            if key in out:
                out[key] = _number(out[key], f"latency_ms.{key}", where, integer=True)
        if out["median"] is None:
            raise ConfigError(
                f"'latency_ms.median'{_where(where)} is None; set latency_ms=None instead "
                "when latency was not measured"
            )
        for key in ("backend", "device"):
            if key in out:
                _optional_str(out[key], f"latency_ms.{key}", where)
        self.latency_ms = out

    def _validate_provenance(self, where: str) -> None:
        if self.git_dirty is not None and not isinstance(self.git_dirty, bool):
            raise ConfigError(
                f"'git_dirty'{_where(where)} must be true, false or null, got {self.git_dirty!r}"
            )
        digest = _optional_str(self.git_diff_sha256, "git_diff_sha256", where)
        if digest is not None and not _SHA256.fullmatch(digest):
            raise ConfigError(
                f"'git_diff_sha256'{_where(where)} must be 64 lowercase hex digits, got {digest!r}"
            )
        if digest is not None and self.git_dirty is not True:
            raise ConfigError(
                f"'git_diff_sha256'{_where(where)} is set but 'git_dirty' is "
                f"{self.git_dirty!r}; a diff hash belongs to a dirty tree only"
            )

    def _validate_ratios(self, where: str) -> None:
        if not isinstance(self.ratios, Mapping):
            raise ConfigError(f"'ratios'{_where(where)} must be a dict")
        _check_keys(self.ratios, RATIO_KEYS, (), f"'ratios'{_where(where)}")
        self.ratios = {k: _number(v, f"ratios.{k}", where) for k, v in self.ratios.items()}

    # -- conversion -------------------------------------------------------------------------

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """All keys a model entry may have, in schema order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def required_keys(cls) -> tuple[str, ...]:
        """Keys every model entry must have."""
        return tuple(
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "") -> ModelResult:
        """Build a result from a dict, rejecting unknown and missing keys.

        Args:
            data: One entry of ``results.json["models"]``.
            where: Location used in error messages (e.g. ``"runs/a/results.json models[0]"``).

        Returns:
            The validated result.

        Raises:
            ConfigError: Unknown or missing key, or a bad value; the message names it.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"a model result{_where(where)} must be a JSON object, got {type(data).__name__}"
            )
        what = f"model result{_where(where)}" if where else "model result"
        _check_keys(data, cls.field_names(), cls.required_keys(), what)
        # Shallow copies, so validation never edits the caller's dicts and lists.
        kwargs = {
            k: dict(v) if isinstance(v, Mapping) else list(v) if isinstance(v, (list, tuple)) else v
            for k, v in data.items()
        }
        obj = cls.__new__(cls)
        for f in dataclasses.fields(cls):
            if f.name in kwargs:
                value = kwargs[f.name]
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                value = f.default
            setattr(obj, f.name, value)
        obj.validate(where or f"model {data.get('name')!r}")
        return obj

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict with every schema key, in schema order."""
        return dataclasses.asdict(self)


# -- extra tables of a run ----------------------------------------------------------------------

RUN_TABLE_KEYS = ("title", "columns", "rows", "notes")


def check_run_tables(tables: Any, where: str = "") -> list[dict[str, Any]]:
    """Validate the ``run["tables"]`` list: measurements that are not one row per model.

    Some claims are curves, not models (peak memory against input size, feature diversity per
    layer). A run stores them as tables::

        {"title": str, "columns": [str, ...], "rows": [[cell, ...], ...], "notes": str}

    Cells are numbers, strings or None (shown as a dash); every row has one cell per column.

    Args:
        tables: The value of ``run["tables"]`` (None means no tables).
        where: File or object named in error messages.

    Returns:
        The tables as plain dicts.

    Raises:
        ConfigError: The tables are not of that shape.
    """
    if tables is None:
        return []
    if not isinstance(tables, list):
        raise ConfigError(
            f"run 'tables'{_where(where)} must be a list, got {type(tables).__name__}"
        )
    out = []
    for i, table in enumerate(tables):
        what = f"run tables[{i}]{_where(where)}"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{what} must be an object, got {type(table).__name__}")
        _check_keys(table, RUN_TABLE_KEYS, ("title", "columns", "rows"), what)
        columns = table["columns"]
        if not isinstance(table["title"], str) or not table["title"]:
            raise ConfigError(f"'title' of {what} must be a non-empty string")
        if not (isinstance(columns, list) and columns and all(isinstance(c, str) for c in columns)):
            raise ConfigError(f"'columns' of {what} must be a non-empty list of strings")
        rows = table["rows"]
        if not isinstance(rows, list):
            raise ConfigError(f"'rows' of {what} must be a list of lists")
        for j, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != len(columns):
                raise ConfigError(
                    f"row {j} of {what} must be a list of {len(columns)} cells "
                    f"(one per column), got {row!r}"
                )
            for cell in row:
                if cell is not None and not isinstance(cell, (str, int, float)):
                    raise ConfigError(
                        f"cell {cell!r} in row {j} of {what} must be a number, string or null"
                    )
                if isinstance(cell, float) and not math.isfinite(cell):
                    raise ConfigError(f"cell {cell!r} in row {j} of {what} must be finite")
        notes = table.get("notes", "")
        if not isinstance(notes, str):
            raise ConfigError(f"'notes' of {what} must be a string")
        out.append(
            {"title": table["title"], "columns": list(columns), "rows": rows, "notes": notes}
        )
    return out
