"""``cifar10`` from a local folder, in torchvision's pickled layout or as zipped JPEGs.

The zipped JPEGs are decoded once and cached as uint8 ``.npy`` arrays (N, 32, 32, 3) under
``cache_dir``, keyed by the zip's size, mtime and first/last bytes, so a changed zip is decoded
again. Images stay uint8 in memory; transforms run on tensors.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from leanvision.data.datasets import TensorImageDataset, stratified_split
from leanvision.data.transforms import TensorImageTransform
from leanvision.errors import DataError
from leanvision.fileio import atomic_write

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "build_cifar10", "default_cache_dir"]

# The canonical CIFAR-10 training-set statistics (fixed, whatever the split).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

LAYOUTS = (
    "expected one of two CIFAR-10 layouts: "
    "(a) torchvision's 'cifar-10-batches-py' folder (data_batch_1..data_batch_5, test_batch, "
    "batches.meta), with root pointing at that folder or at its parent; or "
    "(b) a folder with 'train.zip' (train/<class>/<image>.jpg) and 'test.zip' "
    "(test/<class>/<image>.jpg), as in the project's ../shared/data/cifar10"
)
_PICKLE_DIR = "cifar-10-batches-py"
_PICKLE_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
_IMAGE_EXTS = (".jpg", ".jpeg", ".png")
_CACHE_VERSION = "1"


def default_cache_dir() -> Path:
    """``$LEANVISION_CACHE`` if set, else ``~/.cache/leanvision``."""
    env = os.environ.get("LEANVISION_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "leanvision"


# ----------------------------------------------------------------------- pickled layout


def _numpy_function(module: str, name: str) -> Any:
    """``numpy._core.<module>.<name>`` (numpy 2), else ``numpy.core.<module>.<name>`` (1.x)."""
    try:
        return getattr(importlib.import_module(f"numpy._core.{module}"), name)
    except (ImportError, AttributeError):
        return getattr(importlib.import_module(f"numpy.core.{module}"), name)


def _refuse(path: Path, what: str) -> DataError:
    return DataError(
        f"refusing to read CIFAR-10 batch {path}: it asks to load {what}, which a CIFAR-10 "
        "batch never holds (only numpy arrays, lists, dicts, bytes and numbers). The file is "
        "not from the CIFAR-10 python release, or it was tampered with; nothing in it was run. "
        f"Replace it with the original from https://www.cs.toronto.edu/~kriz/cifar.html. {LAYOUTS}"
    )


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10's python batches and nothing else: no code runs from the file.

    A batch is a dict of bytes keys, lists of ints/bytes and one uint8 numpy array. The only
    globals its pickle names are numpy's array rebuilders (``_reconstruct``, ``ndarray``,
    ``dtype``; ``_frombuffer`` for protocol 5) and, in files written by Python 3 at protocol
    2, ``_codecs.encode`` for bytes. Each is replaced by a checked stand-in; any other global
    is a DataError, raised before anything from the file is called.
    """

    def __init__(self, file: BinaryIO, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self.path = path
        reconstruct = _numpy_function("multiarray", "_reconstruct")
        frombuffer = _numpy_function("numeric", "_frombuffer")

        def safe_reconstruct(cls: Any, shape: Any, dtype: Any) -> np.ndarray:
            if cls is not np.ndarray:
                raise _refuse(path, f"an array of type {cls!r}")
            # ``dtype`` is a placeholder type code (b"b"): the real dtype comes with the state.
            return reconstruct(np.ndarray, shape, safe_dtype(dtype))

        def safe_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
            return frombuffer(buf, self._dtype(dtype), shape, order)

        def safe_dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
            if isinstance(spec, bytes):  # Python 2's str, read with encoding="bytes"
                spec = spec.decode("latin1")
            if not isinstance(spec, str):
                raise _refuse(path, f"a dtype built from {type(spec).__name__}")
            return self._dtype(np.dtype(spec, bool(align), bool(copy)))

        def safe_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
            if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
                raise _refuse(path, f"_codecs.encode({type(text).__name__}, {encoding!r})")
            return text.encode("latin1")

        reconstructs = ("numpy.core.multiarray", "numpy._core.multiarray")
        numerics = ("numpy.core.numeric", "numpy._core.numeric")
        self._allowed: dict[tuple[str, str], Any] = {
            **{(m, "_reconstruct"): safe_reconstruct for m in reconstructs},
            **{(m, "_frombuffer"): safe_frombuffer for m in numerics},
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): safe_dtype,
            ("_codecs", "encode"): safe_encode,
        }

    def _dtype(self, dtype: Any) -> np.dtype:
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise _refuse(self.path, f"an array of Python objects (dtype {dtype!r})")
        return dtype

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None:
            raise _refuse(self.path, f"the Python object {module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise _refuse(self.path, "a persistent object")


def _unpickle(path: Path) -> dict:
    """Read one file of the ``cifar-10-batches-py`` layout without running code from it."""
    if not path.is_file():
        raise DataError(f"missing CIFAR-10 file {path}; {LAYOUTS}")
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as e:  # truncated or garbage: the unpickler raises many kinds
        raise DataError(f"cannot read CIFAR-10 batch {path}: {type(e).__name__}: {e}") from e
    if not isinstance(batch, dict):
        raise DataError(
            f"{path} is not a CIFAR-10 batch: it holds a {type(batch).__name__}, not a dict"
        )
    # Python 2 files read with encoding="bytes" have bytes keys; re-pickled ones may have str.
    return {k.encode() if isinstance(k, str) else k: v for k, v in batch.items()}


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (KeyError, ValueError, TypeError) as e:
        raise DataError(
            f"{path} is not a CIFAR-10 batch (needs b'data' (N, 3072) uint8 and b'labels'): {e}"
        ) from e
    if len(data) != len(labels):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data, labels


def _load_pickled(folder: Path) -> tuple[np.ndarray, ...]:
    """(train_images (N,3,32,32), train_labels, test_images, test_labels, class_names)."""
    train = [_read_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    test_images, test_labels = _read_batch(folder / "test_batch")
    meta_path = folder / "batches.meta"
    try:
        names = [
            n.decode() if isinstance(n, bytes) else str(n)
            for n in _unpickle(meta_path)[b"label_names"]
        ]
    except (KeyError, TypeError) as e:
        raise DataError(f"{meta_path} lacks b'label_names': {e}") from e
    images = np.concatenate([d for d, _ in train])
    labels = np.concatenate([lab for _, lab in train])
    return images, labels, test_images, test_labels, names


# ----------------------------------------------------------------------- zipped JPEG layout


def _zip_key(path: Path) -> str:
    """Cheap fingerprint of a zip: size, mtime and its first and last 64 KiB."""
    st = path.stat()
    h = hashlib.sha256(f"{_CACHE_VERSION}|{st.st_size}|{st.st_mtime_ns}".encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 16))
        f.seek(max(0, st.st_size - (1 << 16)))
        h.update(f.read())  # the end holds the central directory, with every member's CRC
    return h.hexdigest()[:16]


def _decode_member(path: Path, zf: zipfile.ZipFile, name: str) -> np.ndarray:
    data = zf.read(name)  # a bad zip member raises here, reported by the caller
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:  # what Pillow raises for bad image data
        raise DataError(f"{path}:{name} is not a readable image: {e}") from e


def _decode_zip(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode ``<split>/<class>/<image>`` members of a zip into (N,32,32,3) uint8 + labels."""
    try:
        with zipfile.ZipFile(path) as zf:
            members = []
            for name in zf.namelist():
                parts = name.split("/")
                if (
                    len(parts) == 3
                    and parts[0] == split
                    and parts[1]
                    and parts[2].lower().endswith(_IMAGE_EXTS)
                ):
                    members.append((parts[1], parts[2], name))
            if not members:
                raise DataError(f"{path} holds no images under {split}/<class>/; {LAYOUTS}")
            members.sort()
            class_names = sorted({cls for cls, _, _ in members})
            index = {cls: i for i, cls in enumerate(class_names)}
            images = np.empty((len(members), 32, 32, 3), dtype=np.uint8)
            labels = np.array([index[cls] for cls, _, _ in members], dtype=np.int64)
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=Console(stderr=True)) as progress:
                task = progress.add_task(f"decoding {path.name}", total=len(members))
                for i, (_, _, name) in enumerate(members):
                    img = _decode_member(path, zf, name)
                    if img.shape != (32, 32, 3):
                        raise DataError(
                            f"{path}:{name} is {img.shape[1]}x{img.shape[0]}, "
                            "CIFAR-10 images are 32x32"
                        )
                    images[i] = img
                    if i % 1000 == 999:
                        progress.advance(task, 1000)
                progress.update(task, completed=len(members))
    except DataError:
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:
        raise DataError(f"cannot read {path} (corrupt or not a zip?): {e}; {LAYOUTS}") from e
    return images, labels, class_names


def _load_zip_split(path: Path, split: str, cache_dir: Path) -> tuple[np.ndarray, ...]:
    """Decoded (images (N,32,32,3), labels, class_names) of one zip, through the cache."""
    folder = cache_dir / "cifar10" / f"{split}-{_zip_key(path)}"
    img_path, lab_path, meta_path = (folder / n for n in ("images.npy", "labels.npy", "meta.json"))
    if meta_path.is_file():  # meta.json is written last: its presence marks a complete cache
        try:
            meta = json.loads(meta_path.read_text())
            images = np.load(img_path, allow_pickle=False)
            labels = np.load(lab_path, allow_pickle=False)
            if images.shape == (meta["count"], 32, 32, 3) and labels.shape == (meta["count"],):
                return images, labels, meta["class_names"]
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache: decode again (same result)
    images, labels, class_names = _decode_zip(path, split)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(img_path, lambda f: np.save(f, images))
        atomic_write(lab_path, lambda f: np.save(f, labels))
        meta = {"count": len(labels), "class_names": class_names, "source": str(path)}
        atomic_write(meta_path, lambda f: f.write(json.dumps(meta).encode()))
    except OSError as e:
        raise DataError(
            f"cannot write the CIFAR-10 cache under {folder}: {e}; pass a "
            "writable cache_dir= or set LEANVISION_CACHE"
        ) from e
    return images, labels, class_names


def _load_zipped(root: Path, cache_dir: Path) -> tuple[np.ndarray, ...]:
    train_images, train_labels, names = _load_zip_split(root / "train.zip", "train", cache_dir)
    test_images, test_labels, test_names = _load_zip_split(root / "test.zip", "test", cache_dir)
    if test_names != names:
        raise DataError(f"{root}: test.zip classes {test_names} differ from train.zip's {names}")
    return _to_chw(train_images), train_labels, _to_chw(test_images), test_labels, names


def _to_chw(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


# ----------------------------------------------------------------------- builder


def _find_layout(root: str | os.PathLike | None) -> tuple[str, Path]:
    if root is None:
        raise DataError(
            "dataset 'cifar10' needs root= (no download): the folder holding "
            "CIFAR-10; the project's CI copy lives at ../shared/data/cifar10 "
            f"relative to the repository; {LAYOUTS}"
        )
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"CIFAR-10 root {root} does not exist or is not a folder; {LAYOUTS}")
    if (root / _PICKLE_DIR).is_dir():
        return "pickle", root / _PICKLE_DIR
    if any((root / name).exists() for name in _PICKLE_FILES):
        return "pickle", root
    if (root / "train.zip").is_file() and (root / "test.zip").is_file():
        return "zip", root
    found = sorted(p.name for p in root.iterdir())[:10]
    raise DataError(f"CIFAR-10 root {root} holds neither layout (found: {found}); {LAYOUTS}")


def build_cifar10(
    root: str | os.PathLike | None,
    *,
    val_fraction: float,
    seed: int,
    augment: bool,
    image_size: int | None,
    cache_dir: str | os.PathLike | None = None,
    **_: object,
) -> dict:
    """CIFAR-10: 50k train split into train/val (stratified, from ``seed``), 10k test.

    Args:
        root: Folder in either layout (see ``LAYOUTS``).
        val_fraction: Fraction of the training images held out for validation.
        seed: Seed of the train/val split.
        augment: Random crop 32 with 4-pixel zero padding + horizontal flip on train.
        image_size: Resize (bilinear) to (image_size, image_size) if given and not 32.
        cache_dir: Where decoded zips are cached; default ``default_cache_dir()``.
    """
    layout, folder = _find_layout(root)
    if layout == "pickle":
        train_images, train_labels, test_images, test_labels, names = _load_pickled(folder)
    else:
        cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        train_images, train_labels, test_images, test_labels, names = _load_zipped(folder, cache)
    for labels in (train_labels, test_labels):
        if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
            raise DataError(f"{folder}: labels outside 0..{len(names) - 1} ({len(names)} classes)")
    val_idx, train_idx = stratified_split(
        train_labels, [round(val_fraction * len(train_labels))], seed
    )
    # The test set is fixed; only its order is class-interleaved (so max_test stays balanced).
    (test_idx,) = stratified_split(test_labels, [], seed=0)
    size = image_size or 32
    eval_tf = TensorImageTransform(CIFAR10_MEAN, CIFAR10_STD, size=size)
    train_tf = (
        TensorImageTransform(CIFAR10_MEAN, CIFAR10_STD, pad=4, hflip=True, size=size)
        if augment
        else eval_tf
    )
    train_tensor = torch.from_numpy(train_images)
    return {
        "train_set": TensorImageDataset(train_tensor, train_labels, train_idx, train_tf),
        "val_set": TensorImageDataset(train_tensor, train_labels, val_idx, eval_tf),
        "test_set": TensorImageDataset(
            torch.from_numpy(test_images), test_labels, test_idx, eval_tf
        ),
        "num_classes": len(names),
        "input_size": (3, size, size),
        "mean": CIFAR10_MEAN,
        "std": CIFAR10_STD,
        "class_names": names,
    }
