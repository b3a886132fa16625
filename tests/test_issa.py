"""Interlaced Sparse Self-Attention (ISSA, arXiv 1907.12273) and the dense non-local baseline."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from leanvision.layers.issa import InterlacedSparseAttention, NonLocal2d, SelfAttention2d
from leanvision.profiling import count_ops, peak_memory_mb


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    torch.set_num_threads(1)


def _randomize_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine terms, so eval-mode BN is not an identity."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
            m.weight.data.copy_(1 + 0.2 * torch.randn(n, generator=g))
            m.bias.data.copy_(0.2 + 0.1 * torch.randn(n, generator=g))  # keep ReLUs mostly open
    return module


def _issa(channels=6, factors=(4, 4), **kw) -> InterlacedSparseAttention:
    torch.manual_seed(0)
    m = InterlacedSparseAttention(
        channels, key_channels=4, value_channels=5, down_factors=factors, **kw
    )
    return _randomize_bn(m).double().eval()


def _masked_attention(sa: SelfAttention2d, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Dense attention on the whole map with the module's projections, restricted to the pairs
    ``allowed`` (HW, HW): what each sparse step must compute."""
    b, _, h, w = x.shape
    q = sa.query(x).flatten(2).transpose(1, 2)
    k = sa.key(x).flatten(2).transpose(1, 2)
    v = sa.value(x).flatten(2).transpose(1, 2)
    logits = (q @ k.transpose(1, 2)) * sa.key_channels**-0.5
    logits = logits.masked_fill(~allowed, float("-inf"))
    ctx = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, -1, h, w)
    return sa.proj(ctx)


def _pair_mask(h: int, w: int, key) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    k = key(ys.flatten(), xs.flatten())
    return (k[:, None] == k[None, :]).all(-1)


@pytest.mark.parametrize("size, factors", [((8, 12), (4, 4)), ((7, 10), (3, 4)), ((9, 5), (2, 3))])
def test_both_steps_equal_masked_dense_attention(size, factors):
    """Long range = dense attention restricted to pixels equal modulo P (in padded coordinates);
    short range = restricted to the same P_h×P_w block; odd sizes pad evenly and crop back."""
    m = _issa(factors=factors)
    h, w = size
    ph, pw = factors
    x = torch.randn(2, 6, h, w, dtype=torch.float64)
    pad_h, pad_w = -h % ph, -w % pw
    top, left = pad_h // 2, pad_w // 2
    xp = F.pad(x, (left, pad_w - left, top, pad_h - top))
    hh, ww = xp.shape[-2:]
    same_group = _pair_mask(hh, ww, lambda y, x_: torch.stack([y % ph, x_ % pw], -1))
    same_block = _pair_mask(hh, ww, lambda y, x_: torch.stack([y // ph, x_ // pw], -1))
    with torch.no_grad():
        long_ctx = _masked_attention(m.long_range, xp, same_group)
        ctx = _masked_attention(m.short_range, long_ctx, same_block)
        crop = (slice(None), slice(None), slice(top, top + h), slice(left, left + w))
        torch.testing.assert_close(m.forward_long_range(x), long_ctx[crop])
        torch.testing.assert_close(m.forward_context(x), ctx[crop])
        out = m.fuse(torch.cat([x, ctx[crop]], 1))
        torch.testing.assert_close(m(x), out)
    assert m(x).shape == (2, 6, h, w)


@pytest.mark.parametrize("size, factors", [((12, 12), (4, 4)), ((10, 11), (4, 3))])
def test_receptive_field(size, factors):
    """After the long-range step one output pixel sees exactly its interlaced group; after
    both steps it sees every input position."""
    m = _issa(factors=factors)
    h, w = size
    ph, pw = factors
    top, left = (-h % ph) // 2, (-w % pw) // 2
    x = torch.randn(1, 6, h, w, dtype=torch.float64, requires_grad=True)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    for y0, x0 in [(0, 0), (h // 2, w - 1), (h - 1, 1)]:
        (grad,) = torch.autograd.grad(m.forward_long_range(x)[0, :, y0, x0].sum(), x)
        seen = grad.abs().sum(1)[0] > 0
        group = ((ys + top) % ph == (y0 + top) % ph) & ((xs + left) % pw == (x0 + left) % pw)
        assert torch.equal(seen, group), (y0, x0)
        assert group.sum() < h * w / 2  # a real restriction, not the whole map
        (grad,) = torch.autograd.grad(m.forward_context(x)[0, :, y0, x0].sum(), x)
        assert (grad.abs().sum(1)[0] > 0).all(), (y0, x0)


def _copy(dst: nn.Module, src: nn.Module) -> None:
    dst.load_state_dict(src.state_dict())


def _pointwise(sa: SelfAttention2d, x: torch.Tensor) -> torch.Tensor:
    """Attention over a single position: softmax of one logit is 1, so context = value."""
    return sa.proj(sa.value(x))


def test_degenerate_factors_equal_dense_attention():
    """P = 1×1: one long-range group holding every pixel (dense) and 1-pixel blocks;
    P = H×W: 1-pixel groups and one block holding the whole map (dense)."""
    h, w = 6, 8
    x = torch.randn(2, 6, h, w, dtype=torch.float64)
    torch.manual_seed(1)
    dense = NonLocal2d(6, key_channels=4, value_channels=5).double().eval()
    with torch.no_grad():
        m = _issa(factors=(1, 1))
        _copy(dense.attention, m.long_range)
        _copy(dense.fuse, m.fuse)
        torch.testing.assert_close(m.forward_long_range(x), dense.attention(x))
        ctx = _pointwise(m.short_range, dense.attention(x))
        torch.testing.assert_close(m(x), dense.fuse(torch.cat([x, ctx], 1)))

        m = _issa(factors=(h, w))
        _copy(dense.attention, m.short_range)
        _copy(dense.fuse, m.fuse)
        torch.testing.assert_close(m.forward_long_range(x), _pointwise(m.long_range, x))
        ctx = dense.attention(_pointwise(m.long_range, x))
        torch.testing.assert_close(m(x), dense.fuse(torch.cat([x, ctx], 1)))
        # and the dense block itself is attention-then-fusion
        torch.testing.assert_close(dense(x), dense.fuse(torch.cat([x, dense.attention(x)], 1)))


def test_fused_kernel_matches_explicit_softmax():
    m = _issa(factors=(3, 4))
    mf = _issa(factors=(3, 4), fused=True)
    _copy(mf, m)
    x = torch.randn(2, 6, 7, 9, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(mf(x), m(x))


def test_attention_cost_scales_with_group_sizes():
    """Attention MACs: ISSA HW·(QhQw + PhPw)·(key + value) vs dense (HW)²·(key + value);
    the explicit dense block holds HW×HW affinities, ISSA only the groups'."""
    c, k, v, hw = 8, 4, 8, (32, 32)
    n = hw[0] * hw[1]
    issa = InterlacedSparseAttention(c, k, v, down_factors=(4, 4))
    dense = NonLocal2d(c, k, v)
    ops_issa = count_ops(issa, (c, *hw)).by_op
    ops_dense = count_ops(dense, (c, *hw)).by_op
    assert ops_issa["bmm"] == n * (8 * 8 + 4 * 4) * (k + v)
    assert ops_dense["bmm"] == n * n * (k + v)
    affinity_mb = n * n * 4 / 2**20  # one float32 HW×HW matrix
    assert peak_memory_mb(dense, (c, *hw)) >= affinity_mb
    assert peak_memory_mb(issa, (c, *hw)) < affinity_mb / 4


def test_export_matches_eager_with_padding():
    m = _issa(factors=(4, 4)).float()
    x = torch.randn(1, 6, 10, 13)
    ep = torch.export.export(m, (x,))
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), m(x))


def test_bad_factors():
    with pytest.raises(ValueError, match="down_factors"):
        InterlacedSparseAttention(8, down_factors=(0, 4))


def _marker_batch(g: torch.Generator, n: int = 16, s: int = 16):
    """One marker pixel per image carries the class (±1 in channel 1); every pixel's label is
    that class, so a pixel far from the marker needs context from across the image."""
    x = torch.zeros(n, 2, s, s)
    pos = torch.randint(0, s * s, (n,), generator=g)
    cls = torch.randint(0, 2, (n,), generator=g)
    idx = torch.arange(n)
    x[:, 0].view(n, -1)[idx, pos] = 1.0
    x[:, 1].view(n, -1)[idx, pos] = cls.float() * 2 - 1
    x += 0.05 * torch.randn(x.shape, generator=g)
    return x, cls.view(n, 1, 1).expand(n, s, s)


def _seg_model(attention: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(2, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)]
    layers.append(nn.ReLU())
    if attention:
        layers.append(InterlacedSparseAttention(16, down_factors=(4, 4)))
    layers.append(nn.Conv2d(16, 2, 1))  # per-pixel classifier
    return nn.Sequential(*layers)


def _train(attention: bool, steps: int = 40) -> tuple[list[float], float]:
    torch.manual_seed(0)
    model = _seg_model(attention)
    g = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        x, y = _marker_batch(g)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    x, y = _marker_batch(torch.Generator().manual_seed(5), n=32)
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    return losses, acc


def test_segmentation_needs_and_gets_long_range_context():
    """A conv encoder + ISSA + 1×1 classifier learns the task; the same model without ISSA
    (3×3 receptive field) stays near chance."""
    losses, acc = _train(attention=True)
    assert sum(losses[-5:]) / 5 < 0.25 * sum(losses[:5]) / 5
    assert acc > 0.95
    _, acc_local = _train(attention=False, steps=20)
    assert acc_local < 0.7
