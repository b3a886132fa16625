"""``coco128``: COCO128's YOLO boxes as COCO-style detection targets (see the data's README).

``root`` holds ``coco128.zip`` (read in place) or its extracted ``coco128/`` folder (or is that
folder). Training images are the train2017 half less ``val_fraction`` of them (the validation
split, by image, fixed by ``seed``); the test images are the val2017 half, held out. 80 classes,
ids 0-79 in ``classes.txt``'s order.

Each image is letterboxed to ``image_size`` (default 320): scaled so its longer side fits, padded
at the bottom and right with zeros; its boxes are scaled by the same factor, so every IoU, and
hence the COCO mAP over all sizes, is the one of the original image (the small/medium/large
split by area would differ; it is not reported).

Labels are checked as they are read:

* an image without a label file is kept as a negative (YOLO's convention);
* a label file for a missing image, a class id out of range, a malformed line (not five numbers,
  or a size not positive) is a :class:`~leanvision.errors.DataError` naming the file and line;
* boxes reaching outside the image are clipped to it and boxes left with no area are dropped;
  both are counted in one warning per dataset.
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from leanvision.errors import DataError

__all__ = ["COCO128", "build_coco128", "parse_yolo_labels"]


class COCO128(Dataset):
    """Letterboxed uint8 images (N, 3, S, S) and their targets."""

    def __init__(self, images: torch.Tensor, targets: list[dict[str, torch.Tensor]],
                 names: list[str]) -> None:  # fmt: skip
        self.images, self.targets, self.names = images, targets, names

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        t = self.targets[i]
        return self.images[i].float() / 255.0, {k: v.clone() for k, v in t.items()}

    def head(self, n: int | None) -> COCO128:
        if n is None or n >= len(self):
            return self
        return COCO128(self.images[:n], self.targets[:n], self.names[:n])


def parse_yolo_labels(
    text: str, where: str, num_classes: int, width: int, height: int, counts: dict[str, int]
) -> tuple[list[list[float]], list[int]]:
    """Boxes (xyxy pixels) and class ids of one YOLO label file's ``text``; ``counts`` gains
    the clipped and dropped boxes."""
    boxes, labels = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 5 or not all(np.isfinite(values)):
            raise DataError(f"{where}:{n}: expected 'class cx cy w h' (five numbers), got "
                            f"{line.strip()!r}")  # fmt: skip
        cls, cx, cy, w, h = values
        if not cls.is_integer() or not 0 <= cls < num_classes:
            raise DataError(
                f"{where}:{n}: class id {parts[0]} is out of range 0..{num_classes - 1}"
            )
        if w <= 0 or h <= 0:
            raise DataError(f"{where}:{n}: box size {w} x {h} is not positive")
        x0, y0 = (cx - w / 2) * width, (cy - h / 2) * height
        x1, y1 = (cx + w / 2) * width, (cy + h / 2) * height
        cx0, cy0 = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
        cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
        if cx1 - cx0 < 1e-3 or cy1 - cy0 < 1e-3:  # nothing left inside the image
            counts["dropped"] += 1
            continue
        if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
            counts["clipped"] += 1
        boxes.append([cx0, cy0, cx1, cy1])
        labels.append(int(cls))
    return boxes, labels


class _Source:
    """Files of coco128 in its zip or in a folder, by their path inside ``coco128/``."""

    def __init__(self, root: Path) -> None:
        self.zip: zipfile.ZipFile | None = None
        if (root / "coco128.zip").is_file():
            self.zip = zipfile.ZipFile(root / "coco128.zip")
            self.files = {n[len("coco128/"):] for n in self.zip.namelist()
                          if n.startswith("coco128/") and not n.endswith("/")}  # fmt: skip
        else:
            self.folder = root / "coco128" if (root / "coco128").is_dir() else root
            if not (self.folder / "classes.txt").is_file():
                raise DataError(f"coco128: no coco128.zip or coco128/classes.txt under {root} "
                                "(see ../shared/data/coco128/README.md)")  # fmt: skip
            self.files = {str(p.relative_to(self.folder)) for p in self.folder.rglob("*")
                          if p.is_file()}  # fmt: skip

    def read(self, name: str) -> bytes:
        if self.zip is not None:
            return self.zip.read(f"coco128/{name}")
        return (self.folder / name).read_bytes()


def _load_split(src: _Source, split: str, size: int, classes: int, counts: dict[str, int]):
    images = sorted(f for f in src.files if f.startswith(f"images/{split}/") and f.endswith(".jpg"))
    labels = {f for f in src.files if f.startswith(f"labels/{split}/") and f.endswith(".txt")}
    orphans = sorted(labels - {f.replace("images/", "labels/", 1)[:-4] + ".txt" for f in images})
    if orphans:
        raise DataError(f"coco128: label file {orphans[0]} has no image "
                        f"(images/{split}/{Path(orphans[0]).stem}.jpg)")  # fmt: skip
    out = torch.zeros(len(images), 3, size, size, dtype=torch.uint8)
    targets, names = [], []
    for i, name in enumerate(images):
        with Image.open(io.BytesIO(src.read(name))) as img:
            img = img.convert("RGB")  # one grayscale image a split
            w, h = img.size
            scale = size / max(w, h)
            nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
            arr = np.array(img.resize((nw, nh), Image.BILINEAR), dtype=np.uint8)
        out[i, :, :nh, :nw] = torch.from_numpy(arr).permute(2, 0, 1)
        label = name.replace("images/", "labels/", 1)[:-4] + ".txt"
        boxes, labs = [], []
        if label in src.files:
            boxes, labs = parse_yolo_labels(src.read(label).decode(), f"coco128/{label}", classes,
                                            w, h, counts)  # fmt: skip
        targets.append({
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4) * scale,
            "labels": torch.tensor(labs, dtype=torch.int64),
        })  # fmt: skip
        names.append(Path(name).stem)
    return out, targets, names


def build_coco128(
    root: str | os.PathLike[str] | None,
    *,
    val_fraction: float,
    seed: int,
    augment: bool,
    image_size: int | None,
    cache_dir: Any = None,
) -> dict[str, Any]:
    """The splits of ``load_data("coco128", root=...)`` (see the module docstring)."""
    if root is None:
        raise DataError("load_data('coco128') needs root= (e.g. ../shared/data/coco128)")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"coco128 root {root} is not a folder (e.g. ../shared/data/coco128)")
    src = _Source(root)
    class_names = [c.strip() for c in src.read("classes.txt").decode().splitlines() if c.strip()]
    size = image_size or 320
    counts = {"clipped": 0, "dropped": 0}
    train = _load_split(src, "train2017", size, len(class_names), counts)
    test = _load_split(src, "val2017", size, len(class_names), counts)
    if counts["clipped"] or counts["dropped"]:
        warnings.warn(f"coco128: {counts['clipped']} box(es) reaching outside their image were "
                      f"clipped and {counts['dropped']} with no area left were dropped",
                      stacklevel=3)  # fmt: skip
    from leanvision.tasks import Detection

    order = torch.randperm(len(train[0]), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = int(round(val_fraction * len(order)))
    val_idx, train_idx = sorted(order[:n_val]), sorted(order[n_val:])

    def pick(part: tuple, idx: list[int]) -> COCO128:
        return COCO128(part[0][idx], [part[1][i] for i in idx], [part[2][i] for i in idx])

    return {
        "train_set": pick(train, train_idx),
        "val_set": pick(train, val_idx),
        "test_set": COCO128(*test),
        "num_classes": len(class_names),
        "input_size": (3, size, size),
        "mean": (0.0, 0.0, 0.0),
        "std": (1.0, 1.0, 1.0),
        "class_names": class_names,
        "task": Detection(len(class_names)),
    }
