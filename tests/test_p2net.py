"""P2Net: the dual part-aligned block's two branches against hand computations, the model's
training and retrieval outputs, the batch-hard triplet loss, and the re-id metrics (CMC, mAP)
against scikit-learn's average precision under the same-camera protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score

from leanvision.errors import ConfigError
from leanvision.models.p2net import DualPartAligned, P2Net
from leanvision.tasks import ReID, batch_hard_triplet, reid_metrics


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    torch.set_num_threads(1)


def test_human_parts_give_each_pixel_the_mean_feature_of_its_part():
    x = torch.arange(2 * 3 * 4 * 2, dtype=torch.float32).view(2, 3, 4, 2)
    masks = torch.zeros(2, 2, 4, 2)
    masks[:, 0, :2] = 1  # top half: part 0; bottom half: part 1
    masks[:, 1, 2:] = 1
    z = DualPartAligned.human_parts(x, masks)
    top, bottom = x[:, :, :2].mean((2, 3)), x[:, :, 2:].mean((2, 3))
    assert torch.allclose(z[:, :, 0, 0], top) and torch.allclose(z[:, :, 3, 1], bottom)
    none = DualPartAligned.human_parts(x, torch.zeros(2, 2, 4, 2))
    assert torch.count_nonzero(none) == 0  # a pixel in no part gets nothing


def test_latent_parts_are_softmax_self_attention_over_the_pixels():
    torch.manual_seed(0)
    block = DualPartAligned(8, human=False, latent=True)
    x = torch.randn(2, 8, 3, 3)
    q, k, v = (f(x).flatten(2) for f in (block.theta, block.phi, block.g))
    want = torch.zeros_like(v)
    for b in range(2):
        a = torch.softmax(q[b].T @ k[b] / 2.0, dim=-1)  # sqrt(4 channels)
        want[b] = v[b] @ a.T
    assert torch.allclose(block.latent_parts(x), want.view(2, 4, 3, 3), atol=1e-6)
    assert torch.allclose(block(x), x)  # its BN starts at zero: the identity at first
    with pytest.raises(ValueError, match="part masks"):
        DualPartAligned(8)(x)


def test_p2net_trains_with_masks_and_retrieves_with_a_feature():
    model = P2Net(num_classes=5, backbone="resnet18")
    x, masks = torch.randn(4, 3, 64, 32), torch.rand(4, 3, 64, 32)
    logits, feat = model(x, masks)
    assert logits.shape == (4, 5) and feat.shape == (4, 512)
    loss = ReID().loss((logits, feat), {"pid": torch.tensor([0, 0, 1, 1])})
    loss.backward()
    assert model.dpb.human_proj[0].weight.grad is not None
    assert model.eval()(x, masks).shape == (4, 512)
    glob = P2Net(num_classes=5, backbone="resnet18", human=False, latent=False)
    assert glob.eval()(x).shape == (4, 512)
    n_global = sum(p.numel() for p in glob.parameters())
    assert sum(p.numel() for p in model.parameters()) > n_global


def test_batch_hard_triplet_against_a_hand_computation():
    feats = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.0, 0.5], [5.0, 5.0]])
    pids = torch.tensor([0, 0, 1, 1, 2])  # pid 2 has no positive: not an anchor
    want = []
    for a in range(5):
        pos = [
            float((feats[a] - feats[p]).norm()) for p in range(5) if p != a and pids[p] == pids[a]
        ]
        neg = [float((feats[a] - feats[n]).norm()) for n in range(5) if pids[n] != pids[a]]
        if pos and neg:
            want.append(max(0.0, 0.3 + max(pos) - min(neg)))
    assert len(want) == 4 and max(want) > 0  # some anchors violate the margin
    assert batch_hard_triplet(feats, pids, 0.3).item() == pytest.approx(np.mean(want), rel=1e-5)
    assert batch_hard_triplet(feats[:1], pids[:1], 0.3).item() == 0.0


def test_reid_metrics_match_sklearn_under_the_camera_protocol():
    rng = np.random.default_rng(0)
    g_pid = torch.tensor(np.repeat(np.arange(6), 4))
    g_cam = torch.tensor(np.tile([0, 1, 0, 1], 6))
    q_pid, q_cam = torch.arange(6), torch.zeros(6, dtype=torch.long)
    q, g = torch.tensor(rng.normal(size=(6, 8))), torch.tensor(rng.normal(size=(24, 8)))
    got = reid_metrics(q, q_pid, q_cam, g, g_pid, g_cam, ranks=(1, 5))
    sim = (F.normalize(q, dim=1) @ F.normalize(g, dim=1).T).numpy()
    aps, r1, r5 = [], [], []
    for i in range(6):
        keep = ~((g_pid == q_pid[i]) & (g_cam == q_cam[i])).numpy()
        truth, score = (g_pid == q_pid[i]).numpy()[keep], sim[i][keep]
        aps.append(average_precision_score(truth, score))
        order = np.argsort(-score)
        r1.append(truth[order[:1]].any())
        r5.append(truth[order[:5]].any())
    assert got["mAP"] == pytest.approx(100 * np.mean(aps), abs=1e-4)
    assert got["rank1"] == pytest.approx(100 * np.mean(r1))
    assert got["rank5"] == pytest.approx(100 * np.mean(r5))
    perfect = reid_metrics(g, g_pid, 1 - g_cam, g, g_pid, g_cam)  # itself, from another camera
    assert perfect["rank1"] == 100.0
    with pytest.raises(ConfigError, match="no query has a true match"):
        reid_metrics(q, q_pid, q_cam, g[:2], torch.tensor([0, 0]), torch.tensor([0, 0]))


def test_proxy_views_alternate_cameras_and_carry_the_box_stripes():
    from leanvision.data.reid_proxy import Identity, PersonViews

    image = torch.randint(0, 255, (3, 100, 100), dtype=torch.uint8)
    views = PersonViews([Identity(image, (20.0, 10.0, 40.0, 90.0))], jitter=0.0, fixed=True)
    x, t = views[0]
    assert x.shape == (4, 3, 64, 32) and t["cam"].tolist() == [0, 1, 0, 1]
    rows = t["masks"][0, :, :, 0]  # without jitter the crop is the box: exact stripes
    assert rows[0].nonzero().flatten().tolist() == list(range(0, 13))  # top 20 % of 64 rows
    assert rows[1].sum() == 22 and rows[2].sum() == 29 and bool((rows.sum(0) == 1).all())
    assert torch.equal(views[0][0], x)  # fixed views: the same every time
    assert not torch.allclose(x[0], x[1])  # camera 1's style
