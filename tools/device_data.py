"""Pack CIFAR-10 for a lent GPU machine: the device tool sends the checkout (64 MiB at most)
and not ``../shared``, and the training zip alone nearly fills it. This writes
``<out>/cifar10/train.zip`` (a copy) and a token ``test.zip`` (the first ``--test-per-class``
images of each class: the loader wants both zips; runs there train and validate only, and are
tested here on all 10,000).

    python tools/device_data.py --out .gpu        # then carry .gpu (ignored by git)
"""

from __future__ import annotations

import argparse
import shutil
import zipfile
from collections import defaultdict
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"


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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--test-per-class", type=int, default=10)
    args = p.parse_args(argv)
    out = args.out / "cifar10"
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.data / "train.zip", out / "train.zip")
    n = token_test_zip(args.data / "test.zip", out / "test.zip", args.test_per_class)
    print(f"{out}: train.zip ({(out / 'train.zip').stat().st_size / 2**20:.1f} MiB), "
          f"test.zip with {n} images")  # fmt: skip


if __name__ == "__main__":
    main()
