"""Checkpoints: written atomically, loaded safely with ``weights_only=True``."""

from __future__ import annotations

import os
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
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
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
