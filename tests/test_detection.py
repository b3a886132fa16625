"""The detection task: COCO mAP through faster-coco-eval on a hand-computed case, the digits_det
canvases (deterministic, boxes on ink, bounded overlap), and a torchvision detector on a timm
backbone trained and evaluated by the one trainer."""

from __future__ import annotations

import pytest
import torch

import leanvision as lv
from leanvision.data.digits_det import make_canvases
from leanvision.errors import ConfigError, InputShapeError
from leanvision.models.detection import create_detector
from leanvision.tasks import Detection


def _t(boxes, labels):
    return {
        "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.as_tensor(labels, dtype=torch.int64),
    }


def _d(boxes, scores, labels):
    out = _t(boxes, labels)
    out["scores"] = torch.tensor(scores)
    return out


def test_map_matches_the_hand_computed_coco_ap():
    """One class, two objects; detections: a hit (0.9), a miss (0.8), a hit (0.7). COCO's
    101-point AP: precision 1 up to recall 0.5, then 2/3: (51 + 50 * 2/3) / 101."""
    m = Detection(3).metrics()
    gt = _t([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 1])
    det = _d([[0, 0, 10, 10], [40, 40, 50, 50], [20, 20, 30, 30]], [0.9, 0.8, 0.7], [1, 1, 1])
    m.update([det], [gt])
    expected = 100 * (51 + 50 * 2 / 3) / 101
    out = m.compute()
    assert out["map"] == pytest.approx(expected, abs=1e-6)
    assert out["map50"] == pytest.approx(expected, abs=1e-6)
    perfect = Detection(3).metrics()
    perfect.update([_d([[0, 0, 10, 10]], [0.5], [2]), _d([], [], [])],
                   [_t([[0, 0, 10, 10]], [2]), _t(torch.zeros(0, 4), [])])  # fmt: skip
    assert perfect.compute()["map"] == pytest.approx(100.0)
    wrong_class = Detection(3).metrics()
    wrong_class.update([_d([[0, 0, 10, 10]], [0.5], [0])], [_t([[0, 0, 10, 10]], [2])])
    assert wrong_class.compute()["map"] == 0.0
    with pytest.raises(InputShapeError, match="one \\{'boxes'"):
        Detection(3).metrics().update(torch.zeros(2, 3), [gt, gt])


def test_digits_canvases_are_deterministic_with_boxes_on_ink():
    digits = torch.zeros(4, 28, 28, dtype=torch.uint8)
    digits[:, 6:22, 10:18] = 255  # a bar of ink
    labels = torch.tensor([3, 1, 4, 1])
    a = make_canvases(digits, labels, 20, seed=5, canvas_size=48, max_digits=3, max_iou=0.2)
    b = make_canvases(digits, labels, 20, seed=5, canvas_size=48, max_digits=3, max_iou=0.2)
    assert torch.equal(a[0], b[0])
    for canvas, t in zip(a[0], a[1], strict=True):
        assert 1 <= len(t["labels"]) <= 3 and set(t["labels"].tolist()) <= {1, 3, 4}
        boxes = t["boxes"]
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 48).all()
        for x0, y0, x1, y1 in boxes.int().tolist():
            assert canvas[y0:y1, x0:x1].float().mean() > 150  # the box is on the ink
        from torchvision.ops import box_iou

        iou = box_iou(boxes, boxes) - torch.eye(len(boxes))
        assert (iou <= 0.2 + 1e-6).all()


def test_load_digits_det_splits_and_checks():
    data = lv.load_data("digits_det", batch_size=4, n_train=8, n_val=4, n_test=6)
    assert (len(data.train_set), len(data.val_set), len(data.test_set)) == (8, 4, 6)
    images, targets = next(iter(data.train))
    assert images.shape == (4, 3, 64, 64) and len(targets) == 4
    assert isinstance(data.task, Detection) and data.num_classes == 10
    again = lv.load_data("digits_det", batch_size=4, n_train=8, n_val=4, n_test=6)
    assert torch.equal(data.test_set[0][0], again.test_set[0][0])
    with pytest.raises(ConfigError, match="n_train"):
        lv.load_data("digits_det", n_train=0)


def test_one_trainer_trains_and_evaluates_a_torchvision_detector():
    data = lv.load_data("digits_det", batch_size=4, n_train=8, n_val=4, n_test=4)
    torch.manual_seed(0)
    model = lv.create_detector("fcos", "resnet18", num_classes=10, image_size=64, fpn_channels=32)
    res = lv.train(model, data, epochs=1, max_steps=2, lr=0.01, progress=False)
    assert res.steps == 2 and "val_map" in res.history[-1]
    scores = lv.evaluate(res.model, data.test)
    assert set(scores) == {"map", "map50", "map75", "n"} and scores["n"] == 4
    assert 0.0 <= scores["map"] <= 100.0
    with pytest.raises(ConfigError, match="kind"):
        create_detector("yolo")
    with pytest.raises(ConfigError, match="multiple of 32"):
        create_detector("fcos", fpn_channels=48)


def test_a_detector_saves_loads_and_profiles(tmp_path):
    torch.manual_seed(0)
    model = lv.create_detector("retinanet", "resnet18", num_classes=5, image_size=64,
                               fpn_channels=32, score_thresh=0.0).eval()  # fmt: skip
    assert model.lv_spec["name"] == "retinanet_detector"
    lv.save(model, tmp_path / "det.pt")
    back = lv.load(tmp_path / "det.pt").eval()
    state, loaded = model.state_dict(), back.state_dict()
    assert state.keys() == loaded.keys() and all(torch.equal(state[k], loaded[k]) for k in state)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), back(x)
    assert len(a[0]["boxes"]) > 0 and torch.equal(a[0]["boxes"], b[0]["boxes"])
    assert lv.profile(model, input_size=(3, 64, 64), threads=1).macs > 0
    with pytest.raises(ConfigError, match="no pretrained weights"):
        lv.create_model("fcos_detector", pretrained=True)


def test_a_pruned_backbone_inside_a_detector_trains_evaluates_saves_loads_and_profiles(tmp_path):
    """Issue 23: a classifier pruned by l1_filter, plugged in as a detector's backbone."""
    data = lv.load_data("digits_det", batch_size=4, n_train=8, n_val=4, n_test=4)
    torch.manual_seed(0)
    backbone = lv.create_model("test_resnet", num_classes=10)
    pruned = lv.compress(backbone, "l1_filter", pruning_ratio=0.5, round_to=8,
                         input_size=[3, 64, 64])  # fmt: skip
    full = lv.create_detector("fcos", "test_resnet", num_classes=10, image_size=64,
                              fpn_channels=32)  # fmt: skip
    det = lv.create_detector("fcos", pruned, num_classes=10, image_size=64, fpn_channels=32)
    widths = [b[0].in_channels for b in det.backbone.fpn.inner_blocks]
    assert all(w < f for w, f in zip(widths, [b[0].in_channels for b in
                                               full.backbone.fpn.inner_blocks]))  # fmt: skip
    assert det.lv_spec["kwargs"]["backbone"]["history"][0]["method"] == "l1_filter"
    res = lv.train(det, data, epochs=1, max_steps=2, lr=0.01, progress=False)
    scores = lv.evaluate(res.model, data.test)
    assert set(scores) == {"map", "map50", "map75", "n"}
    lv.save(res.model, tmp_path / "pruned_det.pt")
    back = lv.load(tmp_path / "pruned_det.pt").eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = res.model.eval()(x), back(x)
    assert torch.equal(a[0]["scores"], b[0]["scores"])
    macs = lv.profile(back, input_size=(3, 64, 64), threads=1).macs
    assert 0 < macs < lv.profile(full, input_size=(3, 64, 64), threads=1).macs
    with pytest.raises(ConfigError, match="forward_intermediates"):
        lv.create_detector("fcos", torch.nn.Conv2d(3, 8, 3), num_classes=10, image_size=64)
