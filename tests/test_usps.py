"""``load_data("usps")``: the HDF5 file of ../shared/data/usps read as its README describes
(counts per class, polarity, splits), and clear errors for a missing or malformed file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import leanvision as lv
from leanvision.data.usps import read_usps
from leanvision.errors import DataError

ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "usps"
pytestmark = pytest.mark.skipif(not (ROOT / "usps.h5").exists(), reason=f"no usps.h5 in {ROOT}")


def test_usps_matches_its_readme():
    parts = read_usps(ROOT)
    (xtr, ytr), (xte, yte) = parts["train"], parts["test"]
    assert xtr.shape == (7291, 1, 16, 16) and xte.shape == (2007, 1, 16, 16)
    assert np.bincount(ytr).tolist() == [1194, 1005, 731, 658, 652, 556, 664, 645, 542, 644]
    assert np.bincount(yte).tolist() == [359, 264, 198, 166, 200, 160, 170, 147, 166, 177]
    assert ytr[0] == 6  # the README's first training image
    assert abs(xtr.mean() / 255 - 0.2545) < 1e-3  # white strokes on black, as MNIST


def test_load_usps_splits_and_resizes_for_an_mnist_model():
    data = lv.load_data("usps", root=ROOT, image_size=28, batch_size=8)
    assert data.input_size == (1, 28, 28) and data.num_classes == 10
    assert len(data.test_set) == 2007 and len(data.train_set) + len(data.val_set) == 7291
    x, y = next(iter(data.test))
    assert x.shape[1:] == (1, 28, 28) and y.dtype == torch.int64
    native = lv.load_data("usps", root=ROOT, augment=False, max_test=4)
    assert native.input_size == (1, 16, 16)


def test_usps_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="usps.h5"):
        lv.load_data("usps", root=tmp_path)
    with pytest.raises(DataError, match="needs root"):
        lv.load_data("usps")
    import h5py

    with h5py.File(tmp_path / "usps.h5", "w") as f:
        f["train/data"] = np.zeros((2, 256), np.float32)
        f["train/target"] = np.zeros(2, np.int32)
    with pytest.raises(DataError, match=r"lacks the key\(s\) \['test/data'"):
        lv.load_data("usps", root=tmp_path)
    (tmp_path / "bad").mkdir()
    with h5py.File(tmp_path / "bad" / "usps.h5", "w") as f:
        for split in ("train", "test"):
            f[f"{split}/data"] = np.full((2, 256), 2.0, np.float32)
            f[f"{split}/target"] = np.zeros(2, np.int32)
    with pytest.raises(DataError, match=r"pixels must be in \[0, 1\]"):
        lv.load_data("usps", root=tmp_path / "bad")
