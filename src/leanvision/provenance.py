"""Which code made a result: the git commit, whether the tree was dirty, and a hash of the diff.

A result names its code with three fields (in the ``run`` object and in every model row of
``results.json``):

- ``git_commit``: ``git rev-parse HEAD`` of the leanvision checkout, or ``"unknown"``;
- ``git_dirty``: True when the checkout had uncommitted changes, False when clean, None when
  unknown (not a git checkout, no git, or a file written before this field existed);
- ``git_diff_sha256``: for a dirty tree, the SHA-256 of those changes; None when clean.

What counts as a change (the same set is listed, hashed and reported):

- every tracked file whose content differs from ``HEAD`` (staged or not), anywhere in the
  checkout except the generated outputs under :data:`OUTPUT_PATHS` (benchmark results, perf
  JSON, ``docs/``): writing one result must not make the next benchmark's tree dirty;
- every untracked, non-ignored file under :data:`CODE_PATHS` (``src/``, ``benchmarks/``,
  ``recipes/``; outputs excluded): new code that a run may import. Untracked scratch files
  elsewhere do not count.

The hash covers ``git diff HEAD --binary`` of those tracked files followed by, for each
untracked file in path order, its path and content; two trees with the same changes on the
same commit hash alike, and any edit changes it.

Outside git (a tree copied without ``.git``: a container, a lent GPU machine) the commit is
``"unknown"`` unless whoever copied the tree declares it in ``LEANVISION_SOURCE_COMMIT``
(:data:`SOURCE_COMMIT_ENV`); the dirty flag then stays None (unknown).

Results meant to be committed (written under ``benchmarks/results`` of the checkout, or marked
``committed=True``) are refused from a dirty tree unless ``allow_dirty=True`` or
``LEANVISION_ALLOW_DIRTY=1`` (:func:`check_committable`).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from leanvision.errors import ConfigError, DirtyTreeError

__all__ = [
    "ALLOW_DIRTY_ENV",
    "CODE_PATHS",
    "COMMITTED_RESULTS_DIR",
    "OUTPUT_PATHS",
    "SOURCE_COMMIT_ENV",
    "GitState",
    "allow_dirty_from_env",
    "check_committable",
    "git_state",
    "is_committed_location",
    "source_repo",
]

ALLOW_DIRTY_ENV = "LEANVISION_ALLOW_DIRTY"
# The commit a copied tree (no .git) was made from, declared by whoever copied it.
SOURCE_COMMIT_ENV = "LEANVISION_SOURCE_COMMIT"
# Generated outputs: changes to them never make a tree dirty.
OUTPUT_PATHS = ("benchmarks/results", "benchmarks/perf", "docs")
# Folders whose untracked files are code a run may have used.
CODE_PATHS = ("src", "benchmarks", "recipes")
# Results written here are the committed ones (docs/RESULTS.md is built from them).
COMMITTED_RESULTS_DIR = "benchmarks/results"
_HASH_FORMAT = b"leanvision.diff/1\n"
_SHOWN_FILES = 20


@dataclass(frozen=True)
class GitState:
    """The state of the checkout a result came from.

    Attributes:
        commit: ``HEAD`` commit hash, or ``"unknown"``.
        dirty: True with uncommitted changes, False when clean, None when unknown.
        diff_sha256: SHA-256 (hex) of the changes when dirty, else None.
        dirty_files: Changed tracked and new untracked files, relative to the checkout.
    """

    commit: str = "unknown"
    dirty: bool | None = None
    diff_sha256: str | None = None
    dirty_files: tuple[str, ...] = field(default_factory=tuple)


def _git(repo: Path, *args: str) -> bytes:
    """Output of ``git -C repo args``; raises OSError/SubprocessError on failure."""
    out = subprocess.run(
        ["git", "-C", str(repo), "-c", "core.quotepath=off", *args],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return out.stdout


@lru_cache(maxsize=1)
def source_repo() -> Path | None:
    """Top folder of the git checkout leanvision's own source is tracked in, or None.

    None when leanvision is installed from a wheel, git is missing, or the enclosing repository
    does not track leanvision (e.g. a virtual environment inside someone else's project).
    """
    package = Path(__file__).resolve().parent
    try:
        top = _git(package, "rev-parse", "--show-toplevel").decode().strip()
        _git(package, "ls-files", "--error-unmatch", "--", "__init__.py")
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError):
        return None
    return Path(top) if top else None


def _excludes() -> list[str]:
    return [f":(exclude){p}" for p in OUTPUT_PATHS]


def _file_bytes(path: Path) -> bytes:
    """Content of an untracked file as hashed: a link's target, a file's bytes, else nothing."""
    if path.is_symlink():
        return b"symlink:" + os.readlink(path).encode()
    try:
        return path.read_bytes()
    except OSError:  # gone since it was listed, or not a regular file
        return b""


def git_state(repo: str | os.PathLike[str] | None = None) -> GitState:
    """Commit, dirty flag and diff hash of a checkout (see the module docstring).

    Args:
        repo: A folder inside the checkout; default: the one holding leanvision's source.

    Returns:
        The state; ``GitState()`` (commit ``"unknown"``, dirty None) outside git.
    """
    root = source_repo() if repo is None else Path(repo)
    if root is None:
        return _declared()
    try:
        commit = _git(root, "rev-parse", "--verify", "HEAD").decode().strip()
        top = Path(_git(root, "rev-parse", "--show-toplevel").decode().strip())
        tracked_spec = ["--", ".", *_excludes()]
        changed = _git(
            top, "diff", "HEAD", "--name-only", "-z", "--no-renames", *tracked_spec
        ).split(b"\0")
        untracked = _git(
            top,
            "ls-files",
            "--others",
            "--exclude-standard",
            "-z",
            "--",
            *CODE_PATHS,
            *_excludes(),
        ).split(b"\0")
        changed_names = sorted(p.decode() for p in changed if p)
        untracked_names = sorted(p.decode() for p in untracked if p)
        if not changed_names and not untracked_names:
            return GitState(commit=commit, dirty=False)
        digest = hashlib.sha256(_HASH_FORMAT)
        digest.update(
            _git(
                top,
                "diff",
                "HEAD",
                "--binary",
                "--no-color",
                "--no-ext-diff",
                "--no-textconv",
                "--no-renames",
                "--src-prefix=a/",
                "--dst-prefix=b/",
                *tracked_spec,
            )
        )
        for name in untracked_names:
            data = _file_bytes(top / name)
            digest.update(b"\0untracked\0" + name.encode() + b"\0%d\0" % len(data) + data)
    except (OSError, subprocess.SubprocessError, UnicodeDecodeError):
        return _declared()
    return GitState(
        commit=commit or "unknown",
        dirty=True,
        diff_sha256=digest.hexdigest(),
        dirty_files=tuple(sorted({*changed_names, *untracked_names})),
    )


def _declared() -> GitState:
    """Outside git: the commit ``LEANVISION_SOURCE_COMMIT`` declares (dirty unknown), else
    ``GitState()``.

    Raises:
        ConfigError: The variable is set but is not a commit hash (7 to 40 hex digits).
    """
    value = os.environ.get(SOURCE_COMMIT_ENV, "").strip().lower()
    if not value:
        return GitState()
    if not 7 <= len(value) <= 40 or any(ch not in "0123456789abcdef" for ch in value):
        raise ConfigError(
            f"{SOURCE_COMMIT_ENV}={os.environ[SOURCE_COMMIT_ENV]!r} is not a commit hash "
            "(7 to 40 hex digits, e.g. the output of `git rev-parse HEAD`)"
        )
    return GitState(commit=value)


def allow_dirty_from_env() -> bool:
    """Whether ``LEANVISION_ALLOW_DIRTY`` allows committed results from a dirty tree.

    Raises:
        ConfigError: The variable holds something other than 1/0, true/false, yes/no, on/off.
    """
    value = os.environ.get(ALLOW_DIRTY_ENV, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ConfigError(
        f"{ALLOW_DIRTY_ENV}={os.environ[ALLOW_DIRTY_ENV]!r} is not a yes/no value; "
        f"set {ALLOW_DIRTY_ENV}=1 to allow results from a dirty tree, or unset it"
    )


def is_committed_location(path: str | os.PathLike[str], repo: Path | None) -> bool:
    """True when ``path`` lies in ``repo``'s ``benchmarks/results`` (the committed results)."""
    if repo is None:
        return False
    target = Path(path).resolve()
    return target.is_relative_to(Path(repo).resolve() / COMMITTED_RESULTS_DIR)


def check_committable(state: GitState, what: str, *, allow_dirty: bool | None = None) -> None:
    """Refuse results meant to be committed from a dirty tree.

    Args:
        state: The checkout's state (:func:`git_state`).
        what: The results being written, named in the message (e.g. a path).
        allow_dirty: True allows it; None (default) reads ``LEANVISION_ALLOW_DIRTY``.

    Raises:
        DirtyTreeError: ``state.dirty`` and not allowed; the message names the changed files
            and both ways to override.
    """
    if not state.dirty:
        return
    if allow_dirty is None:
        allow_dirty = allow_dirty_from_env()
    if allow_dirty:
        return
    files = list(state.dirty_files)
    shown = ", ".join(files[:_SHOWN_FILES])
    if len(files) > _SHOWN_FILES:
        shown += f", ... ({len(files) - _SHOWN_FILES} more)"
    raise DirtyTreeError(
        f"refusing to write {what} from a dirty tree: commit {state.commit[:12]} plus "
        f"uncommitted changes in {shown}. Committed results must name the code that made "
        "them: commit (or stash) these changes and re-run. To write them anyway, recorded "
        'with "git_dirty": true and the diff hash, pass --allow-dirty to the benchmark '
        f"(allow_dirty=True to write_results) or set {ALLOW_DIRTY_ENV}=1."
    )
