"""CIFAR-10's python batches are read without running code from the data folder."""

from __future__ import annotations

import io
import os
import pickle
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from leanvision.data import load_data
from leanvision.errors import DataError


class _Py2Pickler(pickle._Pickler):
    """Writes a pickle the way Python 2's cPickle wrote CIFAR-10's batches (protocol 2).

    Strings are 8-bit STRING opcodes (read back as bytes with ``encoding="bytes"``) and numpy's
    array rebuilder is named ``numpy.core.multiarray._reconstruct``, as in the real files.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=2)

    def save_bytes(self, obj: bytes) -> None:
        head = bytes([len(obj)]) if len(obj) < 256 else struct.pack("<i", len(obj))
        self.write((pickle.SHORT_BINSTRING if len(obj) < 256 else pickle.BINSTRING) + head + obj)
        self.memoize(obj)

    def save_str(self, obj: str) -> None:
        self.save_bytes(obj.encode("latin1"))

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def _py2_dumps(obj: Any) -> bytes:
    f = io.BytesIO()
    _Py2Pickler(f).dump(obj)
    return f.getvalue()


def _write_batches(
    folder: Path, dumps: Callable[[Any], bytes], n: int = 10
) -> tuple[np.ndarray, Path]:
    """A tiny cifar-10-batches-py folder written with ``dumps``; (training data, folder)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = []
    for i in range(1, 6):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        train.append(data)
        batch = {
            b"batch_label": f"training batch {i} of 5".encode(),
            b"labels": [j % 10 for j in range(n)],
            b"data": data,
            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n)],
        }
        (folder / f"data_batch_{i}").write_bytes(dumps(batch))
    test = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(n))}
    (folder / "test_batch").write_bytes(dumps(test))
    meta = {b"label_names": [f"c{c}".encode() for c in range(10)], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(dumps(meta))
    return np.concatenate(train), folder


@pytest.mark.parametrize(
    "dumps",
    [_py2_dumps] + [lambda o, p=p: pickle.dumps(o, protocol=p) for p in (2, 3, 4, 5)],
    ids=["python2", "protocol2", "protocol3", "protocol4", "protocol5"],
)
def test_well_formed_batches_load(tmp_path: Path, dumps: Callable[[Any], bytes]) -> None:
    data, _ = _write_batches(tmp_path / "cifar-10-batches-py", dumps)
    bundle = load_data("cifar10", root=tmp_path, augment=False, val_fraction=0.2)
    assert bundle.class_names == [f"c{c}" for c in range(10)]
    assert len(bundle.train_set) + len(bundle.val_set) == len(data) == 50
    images = bundle.train_set.images.numpy()  # all 50 training images, in file order
    assert np.array_equal(images, data.reshape(-1, 3, 32, 32))
    assert bundle.test_set.labels.tolist() == list(range(10))


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


class _Open:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


class _Exec:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("payload", [_System, _Open, _Exec])
@pytest.mark.parametrize("where", ["data_batch_1", "test_batch", "batches.meta"])
def test_malicious_pickle_never_runs(tmp_path: Path, payload: type, where: str) -> None:
    _, folder = _write_batches(tmp_path / "cifar-10-batches-py", pickle.dumps)
    marker = tmp_path / "pwned"
    evil = {b"data": payload(marker), b"labels": [0], b"label_names": payload(marker)}
    (folder / where).write_bytes(pickle.dumps(evil, protocol=2))
    assert pickle.loads((folder / where).read_bytes()) and marker.exists()  # it is live
    marker.unlink()
    with pytest.raises(DataError) as err:
        load_data("cifar10", root=tmp_path)
    assert not marker.exists()
    msg = str(err.value)
    assert str(folder / where) in msg and "refusing" in msg and "nothing in it was run" in msg


@pytest.mark.parametrize(
    "obj",
    [
        np.array([1, "a"], dtype=object),  # object arrays rebuild arbitrary elements
        np.ma.masked_array([1, 2], mask=[0, 1]),  # an ndarray subclass
        {b"data": __import__("collections").OrderedDict()},  # any other class
    ],
    ids=["object-array", "array-subclass", "other-class"],
)
def test_disallowed_objects_are_refused(tmp_path: Path, obj: Any) -> None:
    _, folder = _write_batches(tmp_path / "cifar-10-batches-py", pickle.dumps)
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": obj, b"labels": []}, protocol=2))
    with pytest.raises(DataError, match="refusing to read CIFAR-10 batch"):
        load_data("cifar10", root=tmp_path)


def test_codecs_encode_is_only_latin1(tmp_path: Path) -> None:
    """Protocol-2 bytes go through _codecs.encode(str, 'latin1'); no other codec is run."""
    _, folder = _write_batches(tmp_path / "cifar-10-batches-py", pickle.dumps)
    crafted = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    (folder / "test_batch").write_bytes(crafted)
    with pytest.raises(DataError, match="rot13"):
        load_data("cifar10", root=tmp_path)


def test_truncated_batch_is_a_data_error(tmp_path: Path) -> None:
    _, folder = _write_batches(tmp_path / "cifar-10-batches-py", pickle.dumps)
    full = (folder / "data_batch_4").read_bytes()
    (folder / "data_batch_4").write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match="data_batch_4"):
        load_data("cifar10", root=tmp_path)
