"""Manifold distillation's relation losses (Hao et al., arXiv 2107.01378): their properties."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from leanvision.errors import ConfigError
from leanvision.methods.distillation.manifold import manifold_loss, manifold_terms


def _feats(b=4, n=9, c=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, n, c, generator=g)


def test_zero_for_identical_and_per_token_rescaled_features():
    t = _feats()
    assert manifold_loss(t.clone(), t).item() == 0.0
    scale = torch.rand(4, 9, 1) * 5 + 0.1  # a positive scale per token changes no cosine
    loss = manifold_loss(t * scale, t)
    assert loss.item() == pytest.approx(0.0, abs=1e-10)
    assert manifold_loss(_feats(seed=1), t).item() > 1e-3


def test_hand_computed_terms():
    """Two images of two tokens in 2-D: every term by hand."""
    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]])
    t = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]]])
    terms = manifold_terms(s, t)
    # intra: image 0 differs in its two off-diagonal entries (0 vs 1): 2 of 8 entries, each 1
    assert terms["patch"].item() == pytest.approx(2 / 8)
    # inter: position 0 agrees; position 1: student cos(img0, img1) = 0 vs teacher 1 -> 2 of 8
    assert terms["sample"].item() == pytest.approx(2 / 8)
    # random with K >= B*N uses all 4 rows: student row 1 is orthogonal to the other three
    assert terms["rand"].item() == pytest.approx(6 / 16)
    total = manifold_loss(s, t)
    assert total.item() == pytest.approx(4 * 2 / 8 + 0.1 * 2 / 8 + 0.2 * 6 / 16)


def test_consistent_under_batch_permutation_of_both():
    s, t = _feats(seed=2), _feats(seed=3)
    perm = torch.tensor([2, 0, 3, 1])
    a = manifold_terms(s, t, num_samples=10_000)  # all rows: the random term is order-free
    b = manifold_terms(s[perm], t[perm], num_samples=10_000)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_gradients_reach_the_student_only():
    s = _feats(seed=4).requires_grad_()
    t = _feats(seed=5).requires_grad_()
    manifold_loss(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_widths_may_differ_and_extra_student_tokens_are_dropped():
    t = _feats(c=32)
    s = F.pad(_feats(c=8), (0, 0, 2, 0), value=3.0)  # two extra leading (class) tokens
    assert s.shape == (4, 11, 8)
    torch.testing.assert_close(
        manifold_loss(s, t, num_samples=10_000), manifold_loss(s[:, 2:], t, num_samples=10_000)
    )


def test_random_term_samples_k_rows_reproducibly():
    s, t = _feats(b=8, n=49, seed=6), _feats(b=8, n=49, seed=7)
    a = manifold_terms(s, t, num_samples=20, generator=torch.Generator().manual_seed(0))
    b = manifold_terms(s, t, num_samples=20, generator=torch.Generator().manual_seed(0))
    c = manifold_terms(s, t, num_samples=20, generator=torch.Generator().manual_seed(1))
    assert a["rand"].item() == b["rand"].item() != c["rand"].item()


@pytest.mark.parametrize(
    "s, t, match",
    [
        (torch.randn(4, 9), torch.randn(4, 9, 8), "B, N, C"),
        (torch.randn(3, 9, 8), torch.randn(4, 9, 8), "batches differ"),
        (torch.randn(4, 4, 8), torch.randn(4, 9, 8), "fewer tokens"),
    ],
)
def test_bad_shapes_raise_config_error(s, t, match):
    with pytest.raises(ConfigError, match=match):
        manifold_loss(s, t)
