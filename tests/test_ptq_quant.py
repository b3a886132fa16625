"""PTQ for ViT building blocks: fake quantization, interval search, ranking loss, bits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from leanvision.errors import ConfigError
from leanvision.methods.lowbit.quant import (
    allocate_bits,
    bias_correction,
    fake_quant,
    nuclear_norm,
    ranking_loss,
    search_intervals,
)


def test_fake_quant_grid_and_clipping():
    x = torch.tensor([-3.0, -0.26, 0.24, 0.76, 5.0])
    out = fake_quant(x, 0.5, bits=3)  # levels −4..3 × 0.5
    assert out.tolist() == [-2.0, -0.5, 0.0, 1.0, 1.5]
    with pytest.raises(ConfigError):
        fake_quant(x, 0.5, bits=1)


def test_ranking_loss_zero_exactly_when_order_kept():
    torch.manual_seed(0)
    a = torch.randn(2, 3, 5, 7)  # (batch, heads, queries, keys)
    kept = a * 0.5 + 3.0  # any strictly increasing map keeps every order
    assert ranking_loss(a, kept).item() == 0.0
    flipped = kept.clone()
    flipped[0, 1, 2, [0, 1]] = flipped[0, 1, 2, [1, 0]]  # swap two unequal scores
    loss = ranking_loss(a, flipped)
    diff = (kept[0, 1, 2, 0] - kept[0, 1, 2, 1]).abs()
    assert loss.item() == pytest.approx(diff.item() / 2)  # one pair, averaged over batch 2
    assert ranking_loss(a, kept, theta=0.1).item() > 0  # a margin also penalises close pairs
    with pytest.raises(ConfigError):
        ranking_loss(a, a[..., :3])


def test_search_beats_the_max_interval_and_stays_on_the_grid():
    torch.manual_seed(0)
    x = torch.randn(256, 64)
    x[0, 0] = 40.0  # one outlier makes the max-based step too coarse
    w = torch.randn(32, 64) * 0.1

    def lin(a, b):
        return F.linear(a, b)

    dw, dx, best = search_intervals(lin, x, w, bits_w=4, bits_x=4)
    ref = lin(x, w)
    base_x = 40.0 / 7
    naive = F.cosine_similarity(
        ref.flatten(), lin(fake_quant(x, base_x, 4), fake_quant(w, w.abs().max() / 7, 4)).flatten(),
        dim=0,
    )  # fmt: skip
    assert best > naive.item()
    assert any(abs(dx - a * base_x) < 1e-9 for a in (0.5 + 0.05 * i for i in range(15)))


def test_allocate_bits_follows_sensitivity_under_budget():
    sens = {"a": 10.0, "b": 1.0, "c": 5.0}
    sizes = {"a": 100, "b": 100, "c": 100}
    bits = allocate_bits(sens, sizes, budget=6.0)
    assert sum(bits[k] * sizes[k] for k in bits) / 300 <= 6.0
    assert bits["a"] >= bits["c"] >= bits["b"]
    assert allocate_bits(sens, sizes, budget=8.0) == {"a": 8, "b": 8, "c": 8}
    with pytest.raises(ConfigError, match="budget"):
        allocate_bits(sens, sizes, budget=3.0)


def test_nuclear_norm_and_bias_correction():
    f = torch.zeros(2, 4, 3)
    f[:, 0, 0], f[:, 1, 1] = 3.0, 4.0
    assert nuclear_norm(f) == pytest.approx(7.0)
    ref = torch.randn(10, 6)
    corr = bias_correction(ref, ref + torch.arange(6.0))
    torch.testing.assert_close(corr, torch.arange(6.0))


# ----------------------------------------------------------------------- ViT quantization


def _tiny_vit():
    import leanvision as lv

    torch.manual_seed(0)
    return lv.create_model(
        "deit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10, depth=2,
        embed_dim=64, num_heads=2,
    ).eval()  # fmt: skip


def _cos(a, b):
    return F.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()


def test_quantize_vit_runs_full_precision_until_calibrated_then_tracks_it():
    from leanvision.methods.lowbit.ptq_vit import PTQViTConfig, QuantMatMul, calibrate, quantize_vit

    model = _tiny_vit()
    x = torch.randn(16, 3, 32, 32)
    q = quantize_vit(model)
    assert sum(isinstance(m, QuantMatMul) for m in q.modules()) == 4  # Q·Kᵀ and A·V per block
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(q(x), ref, rtol=1e-4, atol=1e-4)  # explicit = fused SDPA
    sims = {}
    for bits in (8, 4):
        qb = quantize_vit(model)
        record = calibrate(qb, x, PTQViTConfig(bits=bits, num_images=16, rows_per_image=8))
        assert {r["bits"] for r in record.values()} == {bits}
        with torch.no_grad():
            sims[bits] = _cos(qb(x), ref)
    assert sims[8] > 0.99 and sims[8] > sims[4]


def test_mixed_precision_respects_the_budget():
    from leanvision.methods.lowbit.ptq_vit import PTQViTConfig, QuantLinear, calibrate, quantize_vit

    q = quantize_vit(_tiny_vit())
    cfg = PTQViTConfig(bit_budget=6.0, num_images=8, nuclear_images=8)
    record = calibrate(q, torch.randn(8, 3, 32, 32), cfg)
    linear = {n: m for n, m in q.named_modules() if isinstance(m, QuantLinear)}
    bits = {n: record[n]["bits"] for n in linear}
    assert set(bits.values()) <= {4, 6, 8} and len(set(bits.values())) > 1
    sizes = {n: m.weight.numel() for n, m in linear.items()}
    assert sum(bits[n] * sizes[n] for n in bits) / sum(sizes.values()) <= 6.0
    assert all(r["bits"] == 8 for n, r in record.items() if n not in linear)  # matmuls: bits


def test_quantize_vit_rejects_other_models():
    from leanvision.errors import UnsupportedModelError
    from leanvision.methods.lowbit.ptq_vit import quantize_vit

    with pytest.raises(UnsupportedModelError, match="blocks"):
        quantize_vit(torch.nn.Linear(3, 4))
