"""Results name the code that made them: commit, dirty flag, diff hash; dirty committed results
are refused unless allowed; old results files without these fields still render."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from leanvision import provenance
from leanvision.errors import ConfigError, DirtyTreeError
from leanvision.report import (
    ModelResult,
    build_summary,
    load_results_file,
    write_report,
)
from leanvision.report.documents import _meta
from leanvision.report.writer import write_results

ROOT = Path(__file__).resolve().parents[1]


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
         "-c", "commit.gpgsign=false", *args],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small committed checkout: src/, benchmarks/, an ignored runs/ folder."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.delenv(provenance.ALLOW_DIRTY_ENV, raising=False)
    root = tmp_path / "repo"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "benchmarks" / "results" / "old").mkdir(parents=True)
    (root / "src" / "pkg" / "code.py").write_text("X = 1\n")
    (root / "benchmarks" / "bench.py").write_text("print('bench')\n")
    (root / "benchmarks" / "results" / "old" / "results.json").write_text("{}\n")
    (root / ".gitignore").write_text("runs/\n__pycache__/\n")
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "init")
    monkeypatch.setattr(provenance, "source_repo", lambda: root)
    return root


def _row(name: str = "net") -> dict:
    return {"name": name, "dataset": "cifar10", "split": "test", "params": 10, "macs": 20}


# -- git state ----------------------------------------------------------------------------------


def test_clean_tree(repo: Path) -> None:
    state = provenance.git_state(repo)
    assert state.commit == _git(repo, "rev-parse", "HEAD") and len(state.commit) == 40
    assert state.dirty is False and state.diff_sha256 is None and state.dirty_files == ()


def test_dirty_flag_and_diff_hash_follow_the_diff(repo: Path) -> None:
    code = repo / "src" / "pkg" / "code.py"
    code.write_text("X = 2\n")
    first = provenance.git_state(repo)
    assert first.dirty is True and first.dirty_files == ("src/pkg/code.py",)
    assert first.diff_sha256 is not None and len(first.diff_sha256) == 64
    assert first.commit == _git(repo, "rev-parse", "HEAD")
    assert provenance.git_state(repo) == first  # deterministic

    code.write_text("X = 3\n")
    assert provenance.git_state(repo).diff_sha256 != first.diff_sha256
    _git(repo, "add", "src/pkg/code.py")  # staged changes count too
    staged = provenance.git_state(repo)
    assert staged.dirty is True and staged.diff_sha256 != first.diff_sha256
    code.write_text("X = 2\n")
    _git(repo, "add", "src/pkg/code.py")
    assert provenance.git_state(repo).diff_sha256 == first.diff_sha256  # same diff, same hash

    code.write_text("X = 1\n")  # back to HEAD: clean again
    _git(repo, "add", "src/pkg/code.py")
    assert provenance.git_state(repo).dirty is False


def test_untracked_code_counts_but_outputs_and_scratch_do_not(repo: Path) -> None:
    (repo / "notes.txt").write_text("scratch\n")  # untracked outside src/benchmarks/recipes
    (repo / "runs").mkdir()
    (repo / "runs" / "x.py").write_text("ignored\n")
    (repo / "src" / "pkg" / "__pycache__").mkdir()
    (repo / "src" / "pkg" / "__pycache__" / "code.pyc").write_bytes(b"\0")  # ignored
    (repo / "benchmarks" / "results" / "old" / "results.json").write_text('{"new": 1}\n')
    (repo / "benchmarks" / "results" / "new").mkdir()
    (repo / "benchmarks" / "results" / "new" / "results.json").write_text("{}\n")
    assert provenance.git_state(repo).dirty is False

    new = repo / "src" / "pkg" / "helper.py"
    new.write_text("Y = 1\n")
    state = provenance.git_state(repo)
    assert state.dirty is True and state.dirty_files == ("src/pkg/helper.py",)
    new.write_text("Y = 2\n")
    assert provenance.git_state(repo).diff_sha256 != state.diff_sha256


def test_outside_git_is_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    state = provenance.git_state(tmp_path)
    assert state == provenance.GitState(commit="unknown", dirty=None, diff_sha256=None)


def test_outside_git_a_declared_commit_is_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copied tree (no .git) names the commit its copier declares; dirty stays unknown."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.setenv(provenance.SOURCE_COMMIT_ENV, "0123ABCD" * 5)
    assert provenance.git_state(tmp_path) == provenance.GitState(commit="0123abcd" * 5)
    monkeypatch.setenv(provenance.SOURCE_COMMIT_ENV, "main")
    with pytest.raises(ConfigError, match="LEANVISION_SOURCE_COMMIT='main' is not a commit"):
        provenance.git_state(tmp_path)


def test_inside_git_a_declared_commit_is_ignored(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(provenance.SOURCE_COMMIT_ENV, "f" * 40)
    assert provenance.git_state(repo).commit not in ("f" * 40, "unknown")


# -- write_results ------------------------------------------------------------------------------


def test_clean_results_record_commit_and_clean_flag(repo: Path) -> None:
    path = write_results(repo / "benchmarks" / "results" / "run", [_row()])
    doc = json.loads(path.read_text())
    head = _git(repo, "rev-parse", "HEAD")
    assert doc["run"]["git_commit"] == head
    assert doc["run"]["git_dirty"] is False and doc["run"]["git_diff_sha256"] is None
    assert doc["run"]["git_dirty_files"] == []
    row = doc["models"][0]
    assert (row["git_commit"], row["git_dirty"], row["git_diff_sha256"]) == (head, False, None)
    assert provenance.git_state(repo).dirty is False  # writing results does not dirty the tree


def test_committed_results_from_dirty_tree_are_refused(repo: Path) -> None:
    (repo / "src" / "pkg" / "code.py").write_text("X = 2\n")
    out = repo / "benchmarks" / "results" / "run"
    with pytest.raises(DirtyTreeError) as err:
        write_results(out, [_row()])
    msg = str(err.value)
    assert "src/pkg/code.py" in msg and "--allow-dirty" in msg
    assert "allow_dirty=True" in msg and "LEANVISION_ALLOW_DIRTY=1" in msg
    assert not (out / "results.json").exists()
    with pytest.raises(DirtyTreeError):  # any folder, when the caller says it is committed
        write_results(repo / "runs" / "mine", [_row()], committed=True)


def test_dirty_results_allowed_by_flag_or_env(
    repo: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (repo / "src" / "pkg" / "code.py").write_text("X = 2\n")
    state = provenance.git_state(repo)
    out = repo / "benchmarks" / "results" / "run"
    doc = json.loads(write_results(out, [_row()], allow_dirty=True).read_text())
    assert doc["run"]["git_dirty"] is True
    assert doc["run"]["git_diff_sha256"] == state.diff_sha256
    assert doc["run"]["git_dirty_files"] == ["src/pkg/code.py"]
    assert doc["models"][0]["git_dirty"] is True
    assert doc["models"][0]["git_diff_sha256"] == state.diff_sha256

    monkeypatch.setenv(provenance.ALLOW_DIRTY_ENV, "1")
    assert write_results(out, [_row()]).is_file()
    monkeypatch.setenv(provenance.ALLOW_DIRTY_ENV, "0")
    with pytest.raises(DirtyTreeError):
        write_results(out, [_row()])
    assert write_results(out, [_row()], allow_dirty=True).is_file()  # the argument wins
    monkeypatch.setenv(provenance.ALLOW_DIRTY_ENV, "maybe")
    with pytest.raises(ConfigError, match="LEANVISION_ALLOW_DIRTY"):
        write_results(out, [_row()])


def test_runs_outside_committed_results_are_recorded_not_refused(
    repo: Path, tmp_path: Path
) -> None:
    (repo / "src" / "pkg" / "code.py").write_text("X = 2\n")
    for out in (tmp_path / "user_run", repo / "runs" / "quickstart"):
        doc = json.loads(write_results(out, [_row()]).read_text())
        assert doc["run"]["git_dirty"] is True and doc["models"][0]["git_dirty"] is True


def test_run_info_cannot_set_provenance(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="git_dirty"):
        write_results(tmp_path / "r", [_row()], run_info={"git_dirty": False})


def test_schema_checks_provenance_fields() -> None:
    with pytest.raises(ConfigError, match="git_dirty"):
        ModelResult.from_dict(dict(_row(), git_dirty="yes"))
    with pytest.raises(ConfigError, match="git_diff_sha256"):
        ModelResult.from_dict(dict(_row(), git_dirty=True, git_diff_sha256="abc"))
    with pytest.raises(ConfigError, match="dirty tree only"):
        ModelResult.from_dict(dict(_row(), git_dirty=False, git_diff_sha256="0" * 64))


# -- reports ------------------------------------------------------------------------------------


def test_reports_mark_dirty_runs(repo: Path, tmp_path: Path) -> None:
    (repo / "src" / "pkg" / "code.py").write_text("X = 2\n")
    state = provenance.git_state(repo)
    dirty = write_results(tmp_path / "dirty", [_row()])
    summary = build_summary([dirty], tmp_path / "RESULTS.md").read_text()
    assert f"{state.commit} (DIRTY TREE: uncommitted changes, diff sha256 " in summary
    assert state.diff_sha256[:12] in summary
    report = write_report(tmp_path / "dirty")
    assert "DIRTY TREE" in report["markdown"].read_text()
    assert "DIRTY TREE" in report["html"].read_text()

    (repo / "src" / "pkg" / "code.py").write_text("X = 1\n")
    clean = write_results(tmp_path / "clean", [_row()])
    assert f"{state.commit} (clean)" in build_summary([clean], tmp_path / "C.md").read_text()


def test_old_results_without_dirty_flag_still_render(tmp_path: Path) -> None:
    """The committed benchmark JSON predates the dirty flag: it loads and reads 'unknown'."""
    old = ROOT / "benchmarks" / "results" / "ghost_cifar10" / "results.json"
    doc = json.loads(old.read_text())
    for entry in [doc["run"], *doc["models"]]:
        entry.pop("git_dirty", None)
        entry.pop("git_diff_sha256", None)
    run = tmp_path / "old"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(doc))
    loaded = load_results_file(run)
    assert all(m.git_dirty is None and m.git_diff_sha256 is None for m in loaded.models)
    text = build_summary([run], tmp_path / "RESULTS.md").read_text()
    assert f"{doc['run']['git_commit']} (dirty: unknown)" in text
    assert "(dirty: unknown)" in write_report(run)["html"].read_text()


def test_committed_benchmark_results_all_load_with_a_commit_label() -> None:
    files = sorted((ROOT / "benchmarks" / "results").glob("*/results.json"))
    assert files
    for path in files:
        rf = load_results_file(path)
        meta = dict(_meta(rf.run, rf.models))
        label = meta.get("Git commit") or meta["Git commits"]
        assert re.search(r"\((clean|dirty: unknown|DIRTY TREE: [^)]*)\)$", label), (path, label)


def test_results_name_the_cpu_model(repo: Path, tmp_path: Path) -> None:
    """Latencies depend on the CPU, and hosts change between runs: the results record its
    model name and the summary's Host line shows it."""
    from leanvision.report.writer import cpu_model

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: X\nmodel name\t: Test CPU 9000 @ 3 GHz\n")
    assert cpu_model(info) == "Test CPU 9000 @ 3 GHz"
    assert isinstance(cpu_model(tmp_path / "missing"), str)  # platform's answer, maybe ""
    path = write_results(repo / "benchmarks" / "results" / "run", [_row()])
    host = json.loads(path.read_text())["run"]["host"]
    assert host["cpu_model"] == cpu_model()
    summary = build_summary([path], tmp_path / "RESULTS.md").read_text()
    if host["cpu_model"]:
        assert f"CPUs ({host['cpu_model']})" in summary
