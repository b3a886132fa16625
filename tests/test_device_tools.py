"""tools/device_data.py and tools/device_pack.py: what a lent GPU machine is sent and what comes
back must fit the device tool's limits and unpack where the reports look."""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_plan_fits_the_limits_and_refuses_what_cannot_come_back():
    pack = _tool("device_pack")
    mib = 2**20
    sizes = {Path(f"r/{i}.pt"): n * mib for i, n in enumerate([10, 9, 5, 4, 1, 1])}
    groups = pack.plan(sizes, 15 * mib)
    assert sorted(f for g in groups for f in g) == sorted(sizes)  # every file, once
    assert all(sum(sizes[f] for f in g) <= 15 * mib for g in groups)
    assert len(groups) == 2  # 10+5, 9+4+1+1
    with pytest.raises(SystemExit, match="r/big.pt: 16.0 MiB, more than one archive"):
        pack.plan({Path("r/big.pt"): 16 * mib}, 15 * mib)
    with pytest.raises(SystemExit, match="need 9 archives; 8 come back"):
        pack.plan({Path(f"r/{i}"): 10 * mib for i in range(9)}, 15 * mib)


def test_pack_then_unpack_restores_the_runs(tmp_path, monkeypatch):
    pack = _tool("device_pack")
    monkeypatch.chdir(tmp_path)
    run = Path("runs/bench_x/a")
    run.mkdir(parents=True)
    (run / "last.pt").write_bytes(b"\1" * 3000)
    (run / "summary.json").write_text("{}")
    Path("a.log").write_text("l" * 2000)
    with pytest.raises(SystemExit, match="relative"):
        pack.main(["pack", str(tmp_path / "runs"), "--out", "out"])
    with pytest.raises(SystemExit, match="no such file"):
        pack.main(["pack", "runs/missing", "--out", "out"])
    pack.main(["pack", "runs", "a.log", "--out", "out", "--max-mib", "0.004"])
    assert sorted(p.name for p in Path("out").iterdir()) == ["runs_0.tgz", "runs_1.tgz"]
    pack.main(["unpack", "out", "--dest", "back"])
    assert (Path("back") / run / "last.pt").read_bytes() == b"\1" * 3000
    assert (Path("back") / "a.log").read_text() == "l" * 2000
    with pytest.raises(SystemExit, match="no .tgz archives"):
        pack.main(["unpack", "back"])
    with pytest.raises(SystemExit, match="exists: pack each batch under its own --name"):
        pack.main(["pack", "a.log", "--out", "out"])
    pack.main(["pack", "a.log", "--out", "out", "--name", "logs"])
    assert (Path("out") / "logs_0.tgz").exists()
    for i in range(5):
        (Path("out") / f"x{i}").write_text("")  # 8 files there now: nothing more comes back
    with pytest.raises(SystemExit, match="need 1 archives; 0 come back"):
        pack.main(["pack", "a.log", "--out", "out", "--name", "more"])


def test_token_test_zip_keeps_every_class(tmp_path):
    data = _tool("device_data")
    src = tmp_path / "test.zip"
    with zipfile.ZipFile(src, "w") as z:
        for c in ("cat", "dog"):
            for i in range(5):
                z.writestr(f"test/{c}/{i:04d}.jpg", b"x")
    n = data.token_test_zip(src, tmp_path / "small.zip", per_class=2)
    names = zipfile.ZipFile(tmp_path / "small.zip").namelist()
    assert n == 4 and sorted(names) == [
        "test/cat/0000.jpg", "test/cat/0001.jpg", "test/dog/0000.jpg", "test/dog/0001.jpg",
    ]  # fmt: skip
