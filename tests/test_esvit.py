"""EsViT: DINO's cross-entropy, the region matching, the teacher's EMA against hand
computations; pre-training through the public API that never reads a label; the k-NN and
linear-probe evaluation on separable features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import leanvision as lv
from leanvision.data.multicrop import MultiCrop
from leanvision.errors import ConfigError
from leanvision.layers.self_distillation import dino_ce, esvit_loss
from leanvision.methods.selfsup import ESViTConfig, knn_accuracy, linear_probe_accuracy
from leanvision.models.self_distillation import SelfDistillationLearner, backbone_tokens

TINY = (
    "l1,h1,d16,n1,s0,g0,p2,f7,a0,r8_l2,h2,d32,n1,s0,g0,p2,f7,a0,r8_l3,h2,d32,n1,s0,g0,p1,f7,a0,r8"
)


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    torch.set_num_threads(1)


def _vil(num_classes: int = 10, in_chans: int = 1):
    torch.manual_seed(0)
    return lv.create_model("vil_ls_medium", arch=TINY, img_size=28, num_classes=num_classes,
                           in_chans=in_chans)  # fmt: skip


def test_dino_cross_entropy_centres_sharpens_and_stops_the_teachers_gradient():
    torch.manual_seed(0)
    t, s = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6, requires_grad=True)
    c = torch.randn(6)
    want = -(F.softmax((t - c) / 0.04, -1) * F.log_softmax(s / 0.1, -1)).sum(-1).mean()
    got = dino_ce(t, s, c, 0.04, 0.1)
    assert torch.allclose(got, want)
    got.backward()
    assert t.grad is None and s.grad is not None


def test_region_loss_pairs_each_student_token_with_its_most_similar_teacher_token():
    torch.manual_seed(0)
    b, n, d, k = 2, 5, 8, 7
    t_tok = torch.randn(b, n, d)
    perm = torch.tensor([3, 0, 4, 1, 2])
    s_tok = t_tok[:, perm] * 2.0  # same directions, another order and scale
    t_reg, s_reg = torch.randn(b, n, k), torch.randn(b, n, k)
    t_view, s_view = [torch.randn(b, k)], [torch.randn(b, k), torch.randn(b, k)]
    centers = (torch.zeros(k), torch.zeros(k))
    view, region = esvit_loss(s_view, t_view, [s_reg, s_reg], [t_reg], [s_tok, s_tok], [t_tok],
                              centers, 0.04, 0.1, 1.0)  # fmt: skip
    want = dino_ce(t_reg[:, perm], s_reg, centers[1], 0.04, 0.1)
    assert torch.allclose(region, want)  # one pair: teacher view 0, student view 1
    assert torch.allclose(view, dino_ce(t_view[0], s_view[1], centers[0], 0.04, 0.1))
    _, none = esvit_loss(s_view, t_view, [s_reg, s_reg], [t_reg], [s_tok, s_tok], [t_tok],
                         centers, 0.04, 0.1, 0.0)  # fmt: skip
    assert float(none) == 0.0


def test_the_teacher_is_an_exponential_moving_average_of_the_student():
    learner = SelfDistillationLearner(_vil(), out_dim=16, hidden=8, bottleneck=4)
    with torch.no_grad():
        for p in learner.student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in learner.teacher.parameters()]
    learner.update_teacher(0.9)
    for t0, t1, s in zip(before, learner.teacher.parameters(), learner.student.parameters(),
                         strict=True):  # fmt: skip
        assert torch.allclose(t1, 0.9 * t0 + 0.1 * s)
    assert not any(p.requires_grad for p in learner.teacher.parameters())


def test_backbone_tokens_of_a_token_model_and_of_a_cnn():
    vil, x = _vil(), torch.randn(2, 1, 28, 28)
    pooled, regions = backbone_tokens(vil, x)
    h, w = vil.forward_intermediates(x, intermediates_only=True)[-1].shape[-2:]
    assert pooled.shape == (2, 32) and regions.shape == (2, h * w, 32)  # no global token
    cnn = lv.create_model("resnet20_cifar", num_classes=10)
    pooled, regions = backbone_tokens(cnn, torch.randn(2, 3, 32, 32))
    assert pooled.shape == (2, 64) and regions.shape == (2, 64, 64)  # 8x8 map, 64 channels


def test_multicrop_views_are_stacked_globals_then_locals():
    base = [(torch.rand(3, 32, 32) * 2 - 1, 7)]
    views, label = MultiCrop(base, (0.5,) * 3, (0.5,) * 3, 32, 2, 3)[0]
    assert views.shape == (5, 3, 32, 32) and label == 7
    with pytest.raises(ConfigError, match="global_crops >= 1"):
        MultiCrop(base, (0.5,) * 3, (0.5,) * 3, 32, 0, 2)


def test_esvit_pretrains_through_the_api_and_never_reads_a_label(monkeypatch):
    data = lv.load_data("mnist5k", batch_size=8, seed=0, max_train=16, max_val=8, max_test=8)
    kw = dict(epochs=1, max_steps=2, out_dim=32, hidden=16, bottleneck=8, local_crops=1,
              warmup_epochs=0, progress=False, log=False)  # fmt: skip
    model = _vil()
    out = lv.compress(model, "esvit", data=data, **kw)
    assert type(out) is type(model) and out.lv_pretraining["region_weight"] == 1.0
    assert out.lv_pretraining["terms"]["region"] > 0
    changed = [not torch.equal(a, b) for a, b in zip(out.parameters(), model.parameters(),
                                                     strict=True)]  # fmt: skip
    assert any(changed)
    # the same run with every training label replaced: the same weights
    base = data.train_set
    monkeypatch.setattr(base, "labels", np.random.default_rng(0).permutation(base.labels))
    again = lv.compress(model, "esvit", data=data, **kw)
    pairs = zip(out.state_dict().values(), again.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    view_only = lv.compress(model, "esvit", data=data, **{**kw, "region_weight": 0.0})
    assert view_only.lv_pretraining["terms"]["region"] == 0.0


def test_esvit_configs_are_checked_at_the_door():
    with pytest.raises(ConfigError, match="two views or more"):
        ESViTConfig(global_crops=1, local_crops=0)
    with pytest.raises(ConfigError, match="teacher_momentum"):
        ESViTConfig(teacher_momentum=1.0)
    with pytest.raises(ConfigError, match="data"):
        lv.compress(_vil(), "esvit")


def test_knn_and_linear_probe_on_separable_and_on_random_features():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    centres = np.eye(3, 8) * 5
    x = centres[y] + rng.normal(size=(120, 8)) * 0.3
    assert knn_accuracy(x[::2], y[::2], x[1::2], y[1::2], k=5) == 100.0
    assert linear_probe_accuracy(x[::2], y[::2], x[1::2], y[1::2]) == 100.0
    noise = rng.normal(size=(120, 8))
    assert knn_accuracy(noise[::2], y[::2], noise[1::2], y[1::2], k=5) < 60.0
