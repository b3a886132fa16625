"""``usps``: the USPS zip-code digits (7,291 training and 2,007 test 16x16 images), read from the
HDF5 file of ``../shared/data/usps`` (its README: ``train/data``, ``train/target``,
``test/data``, ``test/target``; rows of 256 values in [0, 1], white strokes on black, as MNIST).

The target domain of MNIST -> USPS adaptation: by default the images are normalised with MNIST's
statistics (a source model trained on ``mnist5k`` reads them as it reads its own), and
``image_size=28`` resizes them (bilinear) to MNIST's side. The validation split is carved from
the training images (stratified, fixed by ``seed``); the test split is the file's own.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from leanvision.data.datasets import TensorImageDataset, stratified_split
from leanvision.data.mnist import MNIST_MEAN, MNIST_STD
from leanvision.data.transforms import TensorImageTransform
from leanvision.errors import DataError

__all__ = ["build_usps", "read_usps"]

_KEYS = ("train/data", "train/target", "test/data", "test/target")


def read_usps(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images uint8 (N, 1, 16, 16), labels), "test": ...}`` from ``usps.h5``.

    Raises:
        DataError: the file is missing, unreadable, or lacks a key, or holds values outside
            [0, 1], labels outside 0-9 or rows that are not 256 pixels.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "usps.h5"
    if not path.is_file():
        raise DataError(f"USPS file not found at {path}; expected usps.h5 (../shared/data/usps)")
    import h5py

    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in _KEYS if k not in f]
            if missing:
                raise DataError(f"{path} lacks the key(s) {missing}; expected {list(_KEYS)}")
            raw = {k: np.asarray(f[k]) for k in _KEYS}
    except OSError as e:
        raise DataError(f"cannot read USPS file {path}: {e}") from e
    out = {}
    for split in ("train", "test"):
        data, target = raw[f"{split}/data"], raw[f"{split}/target"]
        if data.ndim != 2 or data.shape[1] != 256 or len(data) != len(target):
            raise DataError(f"{path}: {split}/data must be (N, 256) beside N targets, got "
                            f"{data.shape} and {target.shape}")  # fmt: skip
        if data.min() < 0 or data.max() > 1 or target.min() < 0 or target.max() > 9:
            raise DataError(f"{path}: {split} pixels must be in [0, 1] and labels in 0..9")
        pixels = np.rint(data * 255).astype(np.uint8).reshape(-1, 1, 16, 16)
        out[split] = (pixels, target.astype(np.int64))
    return out


def build_usps(
    root: str | os.PathLike | None,
    *,
    val_fraction: float,
    seed: int,
    augment: bool,
    image_size: int | None,
    **_: object,
) -> dict:
    """USPS splits (see the module docstring). ``augment`` shifts training images by up to one
    pixel (at 16x16; scaled with ``image_size``)."""
    if root is None:
        raise DataError("dataset 'usps' needs root= (the folder holding usps.h5, e.g. "
                        "../shared/data/usps)")  # fmt: skip
    parts = read_usps(root)
    size = image_size or 16
    x_train, y_train = parts["train"]
    x_test, y_test = parts["test"]
    images = torch.from_numpy(np.concatenate([x_train, x_test]))
    labels = np.concatenate([y_train, y_test])
    pool = np.arange(len(y_train))
    val_idx, train_idx = stratified_split(
        labels, [round(val_fraction * len(pool))], seed, indices=pool
    )
    test_idx = np.arange(len(y_train), len(labels))
    eval_tf = TensorImageTransform(MNIST_MEAN, MNIST_STD, size=size)
    pad = max(1, round(size / 16))
    train_tf = TensorImageTransform(MNIST_MEAN, MNIST_STD, pad=pad, size=size)
    train_tf = train_tf if augment else eval_tf
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
