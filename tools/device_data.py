"""Pack a dataset for a lent GPU machine: the device tool sends the checkout (64 MiB at most)
and not ``../shared``, so one dataset travels per call.

- ``cifar10``: ``train.zip`` (a copy, 52 MiB) and a token ``test.zip`` (the first
  ``--test-per-class`` images of each class: the loader wants both zips; runs there train and
  validate only, and are tested here on all 10,000).
- ``sr``: the super-resolution folder as it is (T91, Set5, Set14, BSD100; 38 MiB).

    python tools/device_data.py cifar10 --out .gpu     # then carry .gpu (ignored by git)

See ``tools/device_pack.py`` for the whole round trip.
"""

from __future__ import annotations

import argparse
import shutil
import zipfile
from collections import defaultdict
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def token_test_zip(src: Path, dst: Path, per_class: int) -> int:
    """Copy the first ``per_class`` images of each class folder of ``src`` into ``dst``
    (stored, as the original); returns how many."""
    taken: dict[str, int] = defaultdict(int)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in sorted(zin.infolist(), key=lambda i: i.filename):
            parts = info.filename.split("/")
            if info.is_dir() or len(parts) != 3 or taken[parts[1]] >= per_class:
                continue
            taken[parts[1]] += 1
            zout.writestr(info, zin.read(info))
    return sum(taken.values())


def size_mib(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", choices=("cifar10", "sr"))
    p.add_argument("--data", type=Path, default=SHARED, help="the shared data folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--test-per-class", type=int, default=10)
    args = p.parse_args(argv)
    src, out = args.data / args.dataset, args.out / args.dataset
    if not src.is_dir():
        raise SystemExit(f"{src} is not a folder")
    if out.exists():
        shutil.rmtree(out)
    if args.dataset == "sr":
        shutil.copytree(src, out)
        print(f"{out}: {size_mib(out):.1f} MiB")
        return
    out.mkdir(parents=True)
    shutil.copyfile(src / "train.zip", out / "train.zip")
    n = token_test_zip(src / "test.zip", out / "test.zip", args.test_per_class)
    print(f"{out}: train.zip ({size_mib(out / 'train.zip'):.1f} MiB), test.zip with {n} images")


if __name__ == "__main__":
    main()
