"""Source-free adaptation (SFDA-DE, SHOT-IM): the k-means, Gaussians and CDD against hand
computations, and MNIST -> USPS adaptation that never reads a source sample nor a target label
and leaves the source classifier as it was."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import leanvision as lv
from leanvision.errors import ConfigError
from leanvision.methods.adaptation import (
    cdd,
    class_gaussians,
    information_maximisation,
    spherical_kmeans,
)

USPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "usps"


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    torch.set_num_threads(1)


def test_spherical_kmeans_starts_at_the_anchors_and_keeps_empty_centres():
    torch.manual_seed(0)
    anchors = torch.eye(3)
    pts = torch.cat([anchors[0] + 0.1 * torch.randn(20, 3), anchors[1] + 0.1 * torch.randn(20, 3)])
    pts = F.normalize(pts, dim=1)
    centres, labels = spherical_kmeans(pts, anchors, iters=5)
    assert labels[:20].eq(0).all() and labels[20:].eq(1).all()
    assert torch.allclose(centres[2], anchors[2])  # nobody near the third anchor: it stays
    assert torch.allclose(centres[0], F.normalize(pts[:20].sum(0), dim=0), atol=1e-6)


def test_class_gaussians_are_the_shrunk_covariances():
    torch.manual_seed(0)
    feats = torch.randn(50, 4) * torch.tensor([1.0, 2.0, 0.5, 1.0])
    labels = torch.cat([torch.zeros(49, dtype=torch.long), torch.ones(1, dtype=torch.long)])
    chol = class_gaussians(feats, labels, 2, shrinkage=0.25)
    cov = torch.cov(feats[:49].T)
    want = 0.75 * cov + 0.25 * cov.diagonal().mean() * torch.eye(4)
    assert torch.allclose(chol[0] @ chol[0].T, want, atol=1e-4)
    pooled = torch.cov(feats.T)  # one member: the pooled covariance, shrunk
    want1 = 0.75 * pooled + 0.25 * pooled.diagonal().mean() * torch.eye(4)
    assert torch.allclose(chol[1] @ chol[1].T, want1, atol=1e-4)


@pytest.mark.parametrize("on_sphere", [True, False])
def test_surrogates_follow_the_class_gaussians(on_sphere):
    from leanvision.methods.adaptation.sfda_de import SFDADEConfig, SFDADEHook

    hook = SFDADEHook(None, SFDADEConfig(on_sphere=on_sphere, seed=0))
    hook.anchors = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), dim=1)
    hook.chol = torch.stack([torch.eye(3) * 0.05, torch.eye(3) * 0.05])
    feats, labels = hook.surrogates(torch.tensor([3000, 1000]))
    assert labels.tolist() == [0] * 3000 + [1] * 1000
    mean0 = feats[:3000].mean(0)
    assert torch.allclose(F.normalize(mean0, dim=0), hook.anchors[0], atol=0.01)
    norms = feats.norm(dim=1)
    if on_sphere:  # projected onto the unit sphere, where the target features lie
        assert torch.allclose(norms, torch.ones_like(norms))
    else:  # a Gaussian around a unit anchor: norms above one on average, spread 0.05
        assert norms.mean() > 1.0 and abs(feats[:3000, 1].std().item() - 0.05) < 0.005


def test_cdd_is_intra_class_mmd_minus_inter_class_mmd():
    torch.manual_seed(0)
    x = torch.randn(12, 5)
    y = torch.arange(12) % 3
    same = cdd(x, y, x.clone(), y)
    assert same < 0  # identical domains: no intra-class discrepancy, the classes apart
    moved = cdd(x, y, x + 3.0, y)
    assert moved > same  # a shifted source: the discrepancy grows
    # one class on each side only: no inter-class pairs, the intra MMD² alone (>= 0)
    zeros = torch.zeros(4, dtype=torch.long)
    assert cdd(x[:4], zeros, x[4:8] + 1, zeros) > 0


def test_information_maximisation_on_known_logits():
    confident = torch.tensor([[10.0, -10.0], [-10.0, 10.0]])
    ent, div = information_maximisation(confident)
    assert ent < 1e-3 and math.isclose(float(div), -math.log(2), abs_tol=1e-3)
    collapsed = torch.tensor([[10.0, -10.0], [10.0, -10.0]])
    assert information_maximisation(collapsed)[1] > div  # one class for all: less diverse


@pytest.fixture(scope="module")
def source_model():
    torch.manual_seed(0)
    model = lv.create_model("resnet8_cifar", num_classes=10, in_chans=1, width=0.5)
    mnist = lv.load_data("mnist5k", batch_size=32, max_train=256, max_val=32)
    return lv.train(model, mnist, epochs=1, max_steps=8, lr=0.05, progress=False).model.eval()


@pytest.mark.skipif(not (USPS / "usps.h5").exists(), reason=f"no usps.h5 in {USPS}")
@pytest.mark.parametrize("method", ["sfda_de", "shot_im"])
def test_adaptation_reads_no_source_sample_nor_target_label(method, source_model, monkeypatch):
    import leanvision.data.load as load

    def no_source(*a, **k):
        raise AssertionError("the source data was read during adaptation")

    monkeypatch.setitem(load._BUILDERS, "mnist5k", no_source)
    head = source_model.get_classifier()
    before = {k: v.clone() for k, v in head.state_dict().items()}

    def run(shuffle_labels: bool):
        data = lv.load_data("usps", root=USPS, image_size=28, batch_size=16, max_train=64,
                            max_val=16, max_test=64, seed=0)  # fmt: skip
        if shuffle_labels:  # the target labels are replaced: the adaptation must not notice
            ds = data.train_set
            ds.labels = ds.labels[torch.randperm(len(ds.labels)).numpy()]
        torch.manual_seed(0)
        return lv.compress(source_model, method, data=data, finetune_epochs=1, max_steps=3,
                           progress=False, log=False), data  # fmt: skip

    adapted, data = run(False)
    shuffled, _ = run(True)
    a, b = adapted.state_dict(), shuffled.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "a target label changed the adaptation"
    assert all(torch.equal(before[k], v) for k, v in adapted.get_classifier().state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in head.state_dict().items())
    changed = [k for k, v in source_model.state_dict().items() if not torch.equal(v, a[k])]
    assert changed and not any(k.startswith(("fc.", "head.")) for k in changed)
    assert set(lv.evaluate(adapted, data.test)) >= {"top1"}


def test_adaptation_refuses_another_label_set(source_model):
    data = lv.load_data("mnist5k", max_train=8, max_val=8, max_test=8)
    other = lv.create_model("resnet8_cifar", num_classes=5, in_chans=1, width=0.5)
    with pytest.raises(ConfigError, match="5"):
        lv.compress(other, "sfda_de", data=data, finetune_epochs=1, max_steps=1)
    with pytest.raises(ConfigError, match="shrinkage=1.5"):
        lv.compress(source_model, "sfda_de", data=data, shrinkage=1.5)
