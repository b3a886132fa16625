"""Bring runs trained on a lent GPU machine back: pack there, unpack here.

The device tool sends the checkout (64 MiB at most; ``tools/device_data.py`` packs one dataset
to carry) and returns at most 8 files of 16 MiB each from ``$OUT``. ``pack`` puts the files
under the given paths (run folders, logs) into at most 8 gzip tar archives of at most
``--max-mib`` each (``<name>_<i>.tgz``; files already in ``--out`` count against the 8), by
path relative to the checkout; ``unpack`` extracts them here, where the benchmarks' ``report``
(and the Winograd benchmark's ``part``) test and time the trained networks on the CPU. The
round trip, e.g. for the super-resolution benchmarks (``benchmarks/gpu_session.sh`` runs
whole batches)::

    python tools/device_data.py sr --out .gpu            # here
    # device tool, from a clean commit, carry .gpu; the copy has no .git, so declare it:
    export LEANVISION_SOURCE_COMMIT=<hash>
    python3 benchmarks/sr_x2.py --data .gpu/sr --device cuda train --model edsr & ...; wait
    python3 tools/device_pack.py pack --out $OUT runs/bench_sr_x2
    # here, with the files it returned:
    python tools/device_pack.py unpack /work/.device/<call>/   # then each benchmark's report
"""

from __future__ import annotations

import argparse
import tarfile
from pathlib import Path

MAX_FILES = 8  # what the device tool returns


def _files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file())
        else:
            raise SystemExit(f"{p}: no such file or folder")
    return out


def plan(sizes: dict[Path, int], max_bytes: int, max_files: int = MAX_FILES) -> list[list[Path]]:
    """Files into at most ``max_files`` groups of at most ``max_bytes`` (uncompressed, so the
    archive stays under it), largest first into the first group with room."""
    groups: list[list[Path]] = []
    room: list[int] = []
    for f, n in sorted(sizes.items(), key=lambda kv: (-kv[1], str(kv[0]))):
        if n > max_bytes:
            raise SystemExit(f"{f}: {n / 2**20:.1f} MiB, more than one archive may hold")
        k = next((i for i, r in enumerate(room) if r >= n), None)
        if k is None:
            groups.append([])
            room.append(max_bytes)
            k = len(groups) - 1
        groups[k].append(f)
        room[k] -= n
    if len(groups) > max_files:
        total = sum(sizes.values()) / 2**20
        raise SystemExit(f"{total:.0f} MiB need {len(groups)} archives; {max_files} come back")
    return groups


def pack(paths: list[Path], out: Path, max_mib: float, name: str = "runs") -> list[Path]:
    files = _files(paths)
    out.mkdir(parents=True, exist_ok=True)
    there = sum(1 for f in out.iterdir() if f.is_file())  # earlier batches count
    groups = plan({f: f.stat().st_size for f in files}, int(max_mib * 2**20), MAX_FILES - there)
    written = []
    for i, group in enumerate(groups):
        archive = out / f"{name}_{i}.tgz"
        if archive.exists():
            raise SystemExit(f"{archive} exists: pack each batch under its own --name")
        with tarfile.open(archive, "w:gz") as tar:
            for f in group:
                tar.add(f, arcname=str(f))
        written.append(archive)
        print(f"{archive}: {len(group)} files, {archive.stat().st_size / 2**20:.1f} MiB")
    return written


def unpack(folder: Path, dest: Path) -> None:
    archives = sorted(folder.glob("*.tgz"))
    if not archives:
        raise SystemExit(f"no .tgz archives in {folder}")
    for a in archives:
        with tarfile.open(a) as tar:
            tar.extractall(dest, filter="data")  # relative paths only, no links out
            print(f"{a.name}: {len(tar.getnames())} files into {dest}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack")
    pk.add_argument("paths", nargs="+", type=Path, help="run folders and files, relative")
    pk.add_argument("--out", type=Path, required=True)
    pk.add_argument("--max-mib", type=float, default=15.0)
    pk.add_argument("--name", default="runs", help="archive names: <name>_<i>.tgz")
    un = sub.add_parser("unpack")
    un.add_argument("folder", type=Path)
    un.add_argument("--dest", type=Path, default=Path("."))
    args = p.parse_args(argv)
    if args.cmd == "pack":
        if any(p.is_absolute() for p in args.paths):
            raise SystemExit("give the paths relative to the checkout: they unpack there")
        pack(args.paths, args.out, args.max_mib, args.name)
    else:
        unpack(args.folder, args.dest)


if __name__ == "__main__":
    main()
