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
    return state
