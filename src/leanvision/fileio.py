"""Atomic file writes: a temporary file beside the target, fsync, then ``os.replace``.

A reader never sees a half-written file and a crash leaves the previous file intact. Used by
checkpoints, results files and the dataset cache (no torch import here).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Create or replace ``path`` with what ``write(binary_file)`` writes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Create or replace ``path`` with UTF-8 ``text`` (newlines kept as ``\\n``)."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))
