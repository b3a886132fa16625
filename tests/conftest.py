"""Shared fixtures: small data, fixed threads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CIFAR_ROOT = ROOT.parent / "shared" / "data" / "cifar10"


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (benchmarks are scripts, not a package)."""
    import importlib.util

    path = ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture()
def benchmark_module(tmp_path, monkeypatch):
    """``load(name)``: ``benchmarks/<name>.py`` as a module writing its results under
    ``tmp_path`` (its ``SMOKE`` left as it is)."""

    def load(name: str):
        mod = load_benchmark(name)
        monkeypatch.setattr(mod, "OUT", tmp_path / "out")
        return mod

    yield load
    torch.set_num_threads(1)


@pytest.fixture()
def smoke_benchmark(tmp_path, monkeypatch):
    """``load(name)``: ``benchmarks/<name>.py`` as a module in SMOKE mode, writing its runs and
    results under ``tmp_path`` (skips when its data is not in the shared folder)."""

    def load(name: str):
        mod = load_benchmark(name)
        marker = getattr(mod, "DATA_MARKER", "train.zip")  # what its data folder must hold
        if not (mod.DATA / marker).exists():
            pytest.skip(f"no {marker} in {mod.DATA}")
        monkeypatch.setattr(mod, "RUNS", tmp_path / "runs")
        monkeypatch.setattr(mod, "OUT", tmp_path / "out")
        monkeypatch.setattr(mod, "SMOKE", True)
        return mod

    yield load
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture(scope="session")
def mnist_small():
    import leanvision as lv

    return lv.load_data("mnist5k", batch_size=32, max_train=256, max_val=64, max_test=64)


@pytest.fixture(scope="session")
def cifar_tiny():
    """16 training, 8 validation and 8 test CIFAR-10 images (32x32 models need 32x32 data)."""
    import leanvision as lv

    if not (CIFAR_ROOT / "train.zip").exists():
        pytest.skip(f"CIFAR-10 not found at {CIFAR_ROOT}")
    return lv.load_data("cifar10", root=CIFAR_ROOT, batch_size=8, max_train=16, max_val=8,
                        max_test=8)  # fmt: skip


@pytest.fixture
def tiny_augvit():
    """A 4-block, width-32 Aug-ViT at 32x32 / patch 4 (our plain-ViT family), seeded, eval."""

    def build():
        import leanvision as lv

        torch.manual_seed(0)
        return lv.create_model(
            "augvit_tiny",
            img_size=32,
            patch_size=4,
            num_classes=10,
            depth=4,
            embed_dim=32,
            num_heads=2,
        ).eval()

    return build
