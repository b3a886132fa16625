"""Shared fixtures: small data, fixed threads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CIFAR_ROOT = ROOT.parent / "shared" / "data" / "cifar10"


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def mnist_small():
    import leanvision as lv

    return lv.load_data("mnist5k", batch_size=32, max_train=256, max_val=64, max_test=64)
