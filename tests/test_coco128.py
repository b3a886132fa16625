"""coco128: the real zip's counts (README), letterboxed boxes, and bad labels on a synthetic
folder: negatives kept, boxes clipped or dropped with one warning, clear errors naming the file
and line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import leanvision as lv
from leanvision.errors import DataError

COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128"


@pytest.mark.skipif(not (COCO / "coco128.zip").is_file(), reason=f"no {COCO}")
def test_real_coco128_matches_its_readme():
    with pytest.warns(UserWarning, match="clipped"):
        data = lv.load_data("coco128", root=COCO, batch_size=2, image_size=160)
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (115, 13, 128)
    train = [t for ds in (data.train_set, data.val_set) for _, t in ds]
    assert sum(len(t["labels"]) for t in train) == 929  # README: train2017 boxes
    assert sum(len(t["labels"]) for _, t in data.test_set) == 898
    assert sum(len(t["labels"]) == 0 for t in train) == 2  # the two unlabelled images
    assert data.num_classes == 80 and data.class_names[0] == "person"
    images, targets = next(iter(data.test))
    assert images.shape[1:] == (3, 160, 160)
    assert all((t["boxes"] >= 0).all() and (t["boxes"] <= 160).all() for t in targets)


def _folder(tmp: Path, labels: dict[str, str], images: tuple[str, ...] = ("a", "b")) -> Path:
    root = tmp / "coco128"
    (root / "classes.txt").parent.mkdir(parents=True)
    (root / "classes.txt").write_text("cat\ndog\n")
    for split in ("train2017", "val2017"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for name in images:
            Image.new("RGB", (40, 20), (120, 30, 60)).save(root / "images" / split / f"{name}.jpg")
    for name, text in labels.items():
        (root / "labels" / name).write_text(text)
    return tmp


def test_bad_labels_are_kept_clipped_dropped_or_refused(tmp_path):
    root = _folder(tmp_path / "ok", {
        "train2017/a.txt": "0 0.5 0.5 0.5 0.5\n1 0.95 0.5 0.3 0.2\n0 1.2 0.5 0.1 0.1\n",
        "val2017/a.txt": "1 0.5 0.5 1.0 1.0\n",
    })  # fmt: skip
    with pytest.warns(UserWarning, match="1 box\\(es\\) .* clipped and 1 .* dropped"):
        data = lv.load_data("coco128", root=root, image_size=40, val_fraction=0.0)
    by_name = dict(zip(data.train_set.names, data.train_set.targets, strict=True))
    assert len(by_name["b"]["labels"]) == 0  # no label file: a negative, kept
    boxes = by_name["a"]["boxes"]
    assert torch.allclose(boxes[0], torch.tensor([10.0, 5.0, 30.0, 15.0]))
    assert torch.allclose(boxes[1], torch.tensor([32.0, 8.0, 40.0, 12.0]))  # clipped at x = 40
    assert len(boxes) == 2  # the box wholly outside is dropped
    cases = {
        "malformed": ({"train2017/a.txt": "0 0.5 0.5 0.5\n"}, "a.txt:1: expected"),
        "class": ({"train2017/a.txt": "0 0.5 0.5 0.1 0.1\n2 0.5 0.5 0.1 0.1\n"},
                  "a.txt:2: class id 2 is out of range 0..1"),
        "size": ({"val2017/b.txt": "1 0.5 0.5 0 0.1\n"}, "b.txt:1: box size"),
        "orphan": ({"train2017/zzz.txt": "0 0.5 0.5 0.1 0.1\n"}, "zzz.txt has no image"),
    }  # fmt: skip
    for name, (labels, match) in cases.items():
        with pytest.raises(DataError, match=match):
            lv.load_data("coco128", root=_folder(tmp_path / name, labels), image_size=40)
    with pytest.raises(DataError, match="needs root"):
        lv.load_data("coco128")
    with pytest.raises(DataError, match="no coco128.zip"):
        lv.load_data("coco128", root=tmp_path / "ok" / "coco128" / "images")
