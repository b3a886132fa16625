"""DeFeat (arXiv 2103.14475): the box masks, the decoupled feature and classification terms
against hand computations, and the method trained through the one trainer's hook."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import leanvision as lv
from leanvision.errors import ConfigError
from leanvision.methods.distillation.defeat import (
    DeFeatHook,
    binary_kl,
    box_masks,
    decoupled_feature_loss,
)


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    torch.set_num_threads(1)


def test_box_masks_mark_the_cells_a_box_overlaps():
    boxes = [torch.tensor([[8.0, 0.0, 24.0, 9.0]]), torch.tensor([[30.0, 30.0, 31.0, 31.0]]),
             torch.zeros(0, 4)]  # fmt: skip
    m8, m16 = box_masks(boxes, [(4, 4), (2, 2)], [8, 16])
    want = torch.zeros(4, 4)
    want[0:2, 1:3] = 1  # x 8..24 -> cells 1, 2; y 0..9 -> cells 0, 1
    assert torch.equal(m8[0], want)
    assert m8[1].sum() == 1 and m8[1, 3, 3] == 1  # a 1-pixel box still marks its cell
    assert m8[2].sum() == 0  # an image without boxes is all background
    assert torch.equal(m16[0], torch.tensor([[1.0, 1.0], [0.0, 0.0]]))


def test_decoupled_feature_loss_matches_the_papers_normalisation():
    torch.manual_seed(0)
    s, t = [torch.randn(2, 3, 4, 4)], [torch.randn(2, 3, 4, 4)]
    m = [torch.zeros(2, 4, 4)]
    m[0][0, 1:3, 1:3] = 1  # 4 foreground positions out of 32
    fg, bg = decoupled_feature_loss(s, t, m)
    sq, mask = (s[0] - t[0]).pow(2), m[0][:, None].expand(-1, 3, -1, -1)  # mask per element
    assert torch.allclose(fg, sq[mask > 0].mean() / 2)  # the official code: 2 x masked elements
    assert torch.allclose(bg, sq[mask == 0].mean() / 2)
    fg0, _ = decoupled_feature_loss(s, t, [torch.zeros(2, 4, 4)])
    assert fg0 == 0  # no boxes: no foreground term, and no division by zero


def test_binary_kl_is_the_bernoulli_kl_summed_over_classes():
    torch.manual_seed(0)
    s, t = torch.randn(5, 3), torch.randn(5, 3)
    p, q = torch.sigmoid(t / 2), torch.sigmoid(s / 2)
    want = (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).sum(1) * 4
    assert torch.allclose(binary_kl(s, t, 2.0), want, atol=1e-6)
    assert torch.allclose(binary_kl(t, t, 1.0), torch.zeros(5), atol=1e-6)
    assert (binary_kl(s, t, 1.0) > 0).all()
    # its gradient is the soft-target BCE's: σ(s) − σ(t)
    s1 = s.clone().requires_grad_()
    binary_kl(s1, t, 1.0).sum().backward()
    assert torch.allclose(s1.grad, torch.sigmoid(s) - torch.sigmoid(t), atol=1e-6)
    ref = F.binary_cross_entropy_with_logits(s, torch.sigmoid(t), reduction="none").sum(1)
    ent = F.binary_cross_entropy_with_logits(t, torch.sigmoid(t), reduction="none").sum(1)
    assert torch.allclose(binary_kl(s, t, 1.0), ref - ent, atol=1e-5)


def _det(backbone: str, channels: int = 16, size: int = 64) -> torch.nn.Module:
    return lv.create_detector("retinanet", backbone, num_classes=10, image_size=size,
                              fpn_channels=channels)  # fmt: skip


def _terms(student, teacher, data, **weights):
    """The loss terms DeFeat adds on one training batch."""
    seen = {}

    class Spy(DeFeatHook):
        def on_loss(self, trainer, ctx):
            super().on_loss(trainer, ctx)
            seen.update({k: float(v.detach()) for k, v in ctx.losses.items()})

    import leanvision.methods.distillation.defeat as defeat

    original = defeat.DeFeatHook
    defeat.DeFeatHook = Spy
    try:
        lv.compress(student, "defeat", data=data, teacher=teacher, max_steps=1, progress=False,
                    log=False, **weights)  # fmt: skip
    finally:
        defeat.DeFeatHook = original
    return seen


def test_defeat_trains_a_student_through_the_hook_and_leaves_the_teacher():
    data = lv.load_data("digits_det", batch_size=4, n_train=8, n_val=4, n_test=4)
    torch.manual_seed(0)
    teacher, student = _det("test_resnet", 32), _det("test_efficientnet", 16)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    terms = _terms(student, teacher, data)
    assert {"task", "feat_fg", "feat_bg", "cls_pos", "cls_neg"} <= set(terms)
    assert all(v > 0 for v in terms.values())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    off = _terms(student, teacher, data, feat_bg_weight=0.0, cls_pos_weight=0.0,
                 cls_neg_weight=0.0)  # fmt: skip
    assert off["feat_fg"] > 0 and off["feat_bg"] == off["cls_pos"] == off["cls_neg"] == 0
    # a student given as a spec is built at the data's image size and the data's classes
    out = lv.compress(student, "defeat", data=data, teacher=teacher, max_steps=1,
                      student={"name": "retinanet_detector", "backbone": "test_efficientnet",
                               "fpn_channels": 16}, progress=False, log=False)  # fmt: skip
    assert out.lv_spec["kwargs"]["image_size"] == 64 and out.num_classes == 10
    assert set(lv.evaluate(out, data.test)) == {"map", "map50", "map75", "n"}


def test_defeat_refuses_what_cannot_align():
    data = lv.load_data("digits_det", batch_size=4, n_train=8, n_val=4, n_test=4)
    student = _det("test_efficientnet")
    with pytest.raises(ConfigError, match="torchvision-style one-stage detector"):
        lv.compress(student, "defeat", data=data, teacher=lv.create_model("resnet20_cifar"))
    fcos = lv.create_detector("fcos", "test_resnet", num_classes=10, image_size=64,
                              fpn_channels=32)  # fmt: skip
    with pytest.raises(ConfigError, match="classification outputs differ"):
        lv.compress(student, "defeat", data=data, teacher=fcos, max_steps=1, progress=False)
    shallow = lv.create_detector("retinanet", "test_resnet", num_classes=10, image_size=64,
                                 fpn_channels=16, out_indices=(1, 2, 3))  # fmt: skip
    with pytest.raises(ConfigError, match="strides"):
        lv.compress(student, "defeat", data=data, teacher=shallow, max_steps=1, progress=False)
    with pytest.raises(ConfigError, match="detection set"):
        lv.compress(student, "defeat", data=lv.load_data("mnist5k", max_train=8),
                    teacher=_det("test_resnet"))  # fmt: skip
