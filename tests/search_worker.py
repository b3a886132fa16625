"""A search worker process for tests/test_search.py: a toy space and a synthetic objective (no
training), so that several processes can share one study in a second.

    python tests/search_worker.py STORAGE N_TRIALS SLEEP_S [HANG_MARKER]

With HANG_MARKER, the worker's first trial writes its number there and hangs (the test kills the
process there)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from leanvision.search import (
    Choice,
    ModelSpec,
    Objective,
    SearchSpace,
    make_sampler,
    open_storage,
    open_study,
    run_study,
)


def toy_space(name: str = "toy") -> SearchSpace:
    return SearchSpace(
        name,
        [Choice("a", tuple(range(6))), Choice("b", tuple(range(6)))],
        lambda s: ModelSpec("resnet8_cifar", {}),
    )


def main() -> None:
    marker = Path(sys.argv[4]) if len(sys.argv) > 4 else None
    run_worker(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), marker)


def run_worker(storage_url: str, n_trials: int, sleep_s: float, marker: Path | None = None):
    """One worker's share of the toy study (a subprocess's, or the test's own)."""
    storage = open_storage(storage_url, ".", heartbeat_s=1)
    space, objectives = toy_space(), [Objective("score", "maximize")]
    study = open_study(
        space, objectives, storage=storage, study="toy", method="test",
        sampler=make_sampler("random", None),
    )  # fmt: skip

    def evaluate(sample: dict, spec: ModelSpec, trial) -> dict:
        if marker is not None and not marker.exists():
            marker.write_text(str(trial.number))
            time.sleep(600)  # killed here
        time.sleep(sleep_s)
        return {"score": sample["a"] * 10 + sample["b"]}

    run_study(study, space, objectives, evaluate, n_trials=n_trials, progress=False)


if __name__ == "__main__":
    main()
