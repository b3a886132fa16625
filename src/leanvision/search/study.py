"""Optuna studies for leanvision's searches: storage, samplers, and the space a study belongs to.

Storage (``storage=``):

* ``None``: one SQLite file, ``<out_dir>/search.db`` (the embedded default; nothing to run).
* an Optuna RDB URL (``sqlite:///path.db``, ``postgresql://...``, ``mysql+pymysql://...``): any
  number of processes on any machines share the study. Workers send a heartbeat; a trial whose
  worker died (killed, machine lost) is marked failed by the next worker that starts a trial,
  and run again with the same architecture (Optuna's ``RetryHeartbeatStaleTrialCallback``).
* a file path (``study.log``) or ``journal:PATH``: Optuna's journal file, for a shared file
  system without a database. Journal storage has no heartbeat in Optuna: a worker starting on
  the same host fails and re-queues the running trials of workers that are no longer alive
  (their host and pid are recorded on each trial); a dead worker on another host is not seen.

A study records the fingerprint of its space, its method and its objectives; opening it again
with another space or other objectives is an error, not a silent mix.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from leanvision.errors import ConfigError
from leanvision.search.space import SearchSpace

__all__ = [
    "HEARTBEAT_S",
    "SAMPLERS",
    "Objective",
    "fixed_sampler",
    "make_sampler",
    "open_storage",
    "open_study",
    "requeue_dead_workers",
    "worker_tag",
]

SAMPLERS = ("tpe", "nsga2", "random")
HEARTBEAT_S = 30  # seconds between a worker's heartbeats (RDB storage)
RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "oracle", "mssql")


@dataclass(frozen=True)
class Objective:
    """One value a search optimises: a metric's name and ``maximize`` or ``minimize``."""

    name: str
    direction: str

    def __post_init__(self) -> None:
        if self.direction not in ("maximize", "minimize"):
            raise ConfigError(
                f"objective {self.name!r}: direction={self.direction!r} is not allowed; "
                "allowed: 'maximize', 'minimize'"
            )


def worker_tag() -> str:
    """``host:pid`` of this process (recorded on the trials it runs)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _is_rdb_url(storage: str) -> bool:
    scheme = storage.split("://", 1)[0].split("+", 1)[0] if "://" in storage else ""
    return scheme in RDB_SCHEMES


def open_storage(
    storage: str | os.PathLike[str] | None,
    out_dir: str | os.PathLike[str],
    *,
    heartbeat_s: int = HEARTBEAT_S,
) -> Any:
    """An Optuna storage for ``storage`` (see the module docstring).

    Raises:
        ConfigError: a URL whose database cannot be reached (naming it and the driver's
            message), a journal file whose folder does not exist.
    """
    from optuna.exceptions import ExperimentalWarning
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if storage is None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{(Path(out_dir) / 'search.db').resolve()}"
    storage = os.fspath(storage)
    if _is_rdb_url(storage):
        if storage.startswith("sqlite:///"):
            folder = Path(storage[len("sqlite:///") :]).parent
            if not folder.is_dir():
                raise ConfigError(f"storage {storage!r}: the folder {folder} does not exist")
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna since 2.8
                warnings.simplefilter("ignore", ExperimentalWarning)
                return RDBStorage(
                    storage,
                    heartbeat_interval=heartbeat_s,
                    grace_period=2 * heartbeat_s,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
                    engine_kwargs={"pool_pre_ping": True},
                )
        except Exception as e:  # sqlalchemy's OperationalError, a missing driver, ...
            raise ConfigError(
                f"storage {storage!r} cannot be reached: {type(e).__name__}: {e}"
            ) from e
    if "://" in storage:
        raise ConfigError(
            f"storage {storage!r}: unknown URL scheme; allowed: an RDB URL "
            f"({', '.join(s + '://' for s in RDB_SCHEMES)}), a journal file path, or None"
        )
    path = Path(storage.removeprefix("journal:"))
    if not path.parent.is_dir():
        raise ConfigError(f"journal storage {path}: the folder {path.parent} does not exist")
    return JournalStorage(JournalFileBackend(str(path)))


def make_sampler(name: str, seed: int | None, **kwargs: Any) -> Any:
    """Optuna's sampler by name: ``tpe``, ``nsga2`` (NSGA-II evolution) or ``random``."""
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, **kwargs)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, **kwargs)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"sampler={name!r} is not allowed; allowed: {list(SAMPLERS)}")


def fixed_sampler(fixed: dict[str, Any], base: Any) -> Any:
    """``base`` with some choices held at ``fixed`` values (Optuna's PartialFixedSampler)."""
    import optuna
    from optuna.exceptions import ExperimentalWarning

    with warnings.catch_warnings():  # "experimental" in Optuna since 2.4
        warnings.simplefilter("ignore", ExperimentalWarning)
        return optuna.samplers.PartialFixedSampler(fixed, base)


def open_study(
    space: SearchSpace,
    objectives: Sequence[Objective],
    *,
    storage: Any,
    study: str | None,
    method: str,
    sampler: Any,
) -> Any:
    """Create the study, or load it if it exists, and check that it is this search's.

    Raises:
        ConfigError: the study exists with another space, method or objectives.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # leanvision reports its own progress
    name = study or f"{method}-{space.name}"
    directions = [o.direction for o in objectives]
    try:
        existing = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    except KeyError:
        existing = None
    if existing is not None:
        attrs = existing.user_attrs
        want = {
            "lv_space": space.fingerprint(),
            "lv_method": method,
            "lv_objectives": [[o.name, o.direction] for o in objectives],
        }
        for key, value in want.items():
            if key in attrs and attrs[key] != value:
                what = key.removeprefix("lv_")
                extra = f" ({attrs.get('lv_space_name')!r})" if what == "space" else ""
                raise ConfigError(
                    f"study {name!r} exists with another {what}{extra}: {attrs[key]!r}, not "
                    f"{value!r}; choose another study name or storage"
                )
        return existing
    created = optuna.create_study(
        storage=storage, sampler=sampler, study_name=name, directions=directions,
        load_if_exists=True,
    )  # fmt: skip
    # another worker may have created it first: check again, then record (idempotent)
    if created.user_attrs.get("lv_space", space.fingerprint()) != space.fingerprint():
        raise ConfigError(f"study {name!r} exists with another space")
    created.set_user_attr("lv_space", space.fingerprint())
    created.set_user_attr("lv_space_name", space.name)
    created.set_user_attr("lv_method", method)
    created.set_user_attr("lv_objectives", [[o.name, o.direction] for o in objectives])
    return created


def requeue_dead_workers(study: Any) -> list[int]:
    """Fail and re-queue this host's RUNNING trials whose worker process is gone. Journal
    storage has no heartbeat, so this is its only check; on RDB storage it acts before the
    heartbeat's grace period ends. Returns the trial numbers re-queued."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    host = socket.gethostname()
    done = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        tag = t.user_attrs.get("lv_worker", "")
        h, _, pid = tag.rpartition(":")
        if h != host or not pid.isdigit() or _alive(int(pid)):
            continue
        try:  # another worker may fail it first: then it also re-queues it
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue
        study.enqueue_trial(t.params, user_attrs={"lv_retry_of": t.number})
        done.append(t.number)
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
