"""Checkpoints: written atomically, loaded safely with ``weights_only=True``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from leanvision.errors import CheckpointError
from leanvision.fileio import atomic_write

FORMAT = "leanvision.checkpoint/1"


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` through a temporary file and an atomic rename.

    A crash mid-write leaves the previous checkpoint intact, never a half file.
    """
    state = {"format": FORMAT, **state}
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a leanvision checkpoint with ``weights_only=True``.

    Raises:
        CheckpointError: the file is missing, corrupt, not loadable without running code, or
            was not written by leanvision.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} is not a file (a directory?)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # the unpickler raises many kinds on garbage input
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or holds objects that cannot be loaded safely "
            f"(weights_only=True): {str(e).splitlines()[0] if str(e) else type(e).__name__}. "
            "Delete it to start over, or point to a checkpoint written by leanvision."
        ) from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{str(path)!r} is not a leanvision checkpoint (format {found!r}, "
            f"expected {FORMAT!r}). "
            "For plain weights use leanvision.load (files from leanvision.save) or "
            "model.load_state_dict(torch.load(path, weights_only=True))."
        )
    return state


def describe(value: Any) -> str:
    """A short description of a value's type for error messages (``"str 'abc'"``, ``"list"``)."""
    name = type(value).__name__
    if isinstance(value, (str, int, float, bool)) or value is None:
        text = repr(value)
        return f"{name} {text[:40]}{'...' if len(text) > 40 else ''}"
    return name


def check_state_dict(weights: Any, path: str | os.PathLike, key: str) -> dict[str, torch.Tensor]:
    """Check that ``weights`` is a ``{name: tensor}`` dict; ``key`` names it in the file.

    Raises:
        CheckpointError: Not a dict, or a key that is not a string, or a value that is not a
            tensor; the message names the file and the entry.
    """
    if not isinstance(weights, Mapping):
        raise CheckpointError(
            f"checkpoint {str(path)!r} is malformed: {key!r} must be a state dict "
            f"(name -> tensor), got {describe(weights)}"
        )
    for name, value in weights.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"checkpoint {str(path)!r} is malformed: {key!r} must map names to tensors, "
                f"got {describe(name)} -> {describe(value)}"
            )
    return dict(weights)


# Keys of a training checkpoint (Trainer._state): name -> (types allowed, required).
_TRAINING_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "model": ((), True),  # checked by check_state_dict below
    "epoch": ((int,), True),
    "global_step": ((int,), True),
    "optimizer": ((Mapping,), False),
    "scheduler": ((Mapping,), False),
    "history": ((list,), False),
    "best": ((Mapping,), False),
    "hooks": ((Mapping,), False),
    "config": ((Mapping,), False),
    "stretches": ((list,), False),
}


def load_training_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a trainer checkpoint (``last.pt``) and check it has what a resume needs.

    Raises:
        CheckpointError: Everything :func:`load_checkpoint` raises for, plus a missing key
            (``model``, ``epoch``, ``global_step``) or a value of the wrong type; the message
            names the file, the key and what was found.
    """
    state = load_checkpoint(path, map_location=map_location)
    for key, (types, required) in _TRAINING_KEYS.items():
        if key not in state:
            if required:
                raise CheckpointError(
                    f"checkpoint {str(path)!r} cannot resume a training run: it has no "
                    f"{key!r} (keys: {', '.join(map(str, state))}). It was not written by the "
                    "leanvision trainer; delete it (or use another out_dir) to start over."
                )
            continue
        value = state[key]
        if types and (isinstance(value, bool) or not isinstance(value, types)):
            wanted = " or ".join("dict" if t is Mapping else t.__name__ for t in types)
            raise CheckpointError(
                f"checkpoint {str(path)!r} is malformed: {key!r} must be a {wanted}, got "
                f"{describe(value)}; delete it (or use another out_dir) to start over."
            )
        if key in ("epoch", "global_step") and value < 0:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is malformed: {key!r} is {value}, not >= 0"
            )
    check_state_dict(state["model"], path, "model")
    for record in state.get("stretches", []):
        if not isinstance(record, Mapping):
            raise CheckpointError(
                f"checkpoint {str(path)!r} is malformed: 'stretches' must hold dicts, got "
                f"{describe(record)}; delete it (or use another out_dir) to start over."
            )
    return state


def training_record(path: str | os.PathLike) -> dict[str, Any]:
    """A trainer checkpoint's account of its run, summed over the stretches it trained in.

    A run killed and resumed trains in stretches (see :mod:`leanvision.engine.trainer`); a
    benchmark that times only its own call sees the last one. This reads them all.

    Returns:
        ``epochs`` trained; ``wall_s``, the wall time of the recorded stretches; ``cpu_s``,
        their CPU time (None when a stretch was recorded without it, by an older trainer);
        ``stretches``, their records; ``commits``, the distinct ``(commit, dirty)`` pairs
        they ran at, oldest first; ``devices``, the distinct devices they ran on (``"cpu"`` or
        a GPU's name; none for stretches recorded before devices were); ``unrecorded_epochs``,
        epochs trained before stretches were recorded (an older checkpoint), and
        ``unrecorded_train_s``, their training time from the history (without validation), so
        a total can say what it leaves out.
    """
    state = load_training_checkpoint(path)
    stretches = [dict(r) for r in state.get("stretches", [])]
    first = min((int(r.get("after_epoch", 0)) for r in stretches), default=int(state["epoch"]))
    early = [row for row in state.get("history", []) if row.get("epoch", 0) <= first]
    commits: list[tuple[str, bool | None]] = []
    for r in stretches:
        git = r.get("git") or {}
        pair = (str(git.get("commit", "unknown")), git.get("dirty"))
        if pair not in commits:
            commits.append(pair)
    return {
        "epochs": int(state["epoch"]),
        "wall_s": sum(float(r.get("wall_s", 0.0)) for r in stretches),
        "cpu_s": (
            sum(float(r["cpu_s"]) for r in stretches)
            if all("cpu_s" in r for r in stretches)
            else None
        ),  # fmt: skip
        "stretches": stretches,
        "commits": commits,
        "devices": list(dict.fromkeys(str(r["device"]) for r in stretches if r.get("device"))),
        "unrecorded_epochs": first,
        "unrecorded_train_s": sum(float(row.get("time_s", 0.0)) for row in early),
    }


def training_note(
    record: dict[str, Any], threads: int | None = None, finished_at: Mapping | None = None
) -> str:
    """One sentence from a :func:`training_record`: epochs, time, stretches and commits.

    e.g. ``"10 epochs, 134 min at 1 thread(s) in 2 stretches, at commit 4c02ea1a2b"`` (``"on
    NVIDIA H100 80GB HBM3"`` in place of the threads for a run trained on a GPU); an
    older checkpoint's unrecorded epochs are named with their history time, apart.
    ``finished_at``: the git state (``commit``, ``dirty``) a caller recorded when the run
    ended, named for such a run (it covers the last stretch only).
    """
    at = f" at {threads} thread(s)" if threads else ""
    gpus = [d for d in record.get("devices", []) if d != "cpu"]
    if gpus:  # the CPU threads did not set the pace
        at = f" on {' and '.join(gpus)}" + (" and the CPU" if "cpu" in record["devices"] else "")
    n = len(record["stretches"])
    text = f"{record['epochs']} epochs"
    if n:
        text += f", {record['wall_s'] / 60:.0f} min{at}"
        if n > 1:
            text += f" in {n} stretches (resumed)"
        labels = [c[:10] + (" (dirty tree)" if d else "") for c, d in record["commits"]]
        text += f", at commit{'s' if len(labels) > 1 else ''} {', '.join(labels)}"
    if record["unrecorded_epochs"]:
        k = record["unrecorded_epochs"]
        text += (
            f"; {f'epochs 1-{k}' if k > 1 else 'epoch 1'} predate{'s' if k == 1 else ''} the "
            "stretch records: "
            f"{record['unrecorded_train_s'] / 60:.0f} min of training (without validation), "
            "commit not recorded"
        )
        if finished_at and finished_at.get("commit"):
            dirty = " (dirty tree)" if finished_at.get("dirty") else ""
            text += f"; its last stretch ran at commit {str(finished_at['commit'])[:10]}{dirty}"
    return text
