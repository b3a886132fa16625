"""PTQ for ViT building blocks: fake quantization, interval search, ranking loss, bits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from leanvision.errors import ConfigError
from leanvision.layers.quant import QuantLinear, QuantMatMul, fake_quant
from leanvision.methods.lowbit.quant import (
    allocate_bits,
    bias_correction,
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


def test_fake_quant_unsigned_grid_uses_every_level_on_zero_to_max():
    """Probabilities on 4 bits: 16 levels 0..15·Δ (a signed grid has 8 non-negative ones)."""
    x = torch.linspace(0, 1, 1001)
    out = fake_quant(x, 1 / 15, bits=4, unsigned=True)
    levels = torch.unique(out)
    assert levels.numel() == 16 and levels.min() == 0
    torch.testing.assert_close(levels, torch.arange(16.0) / 15)
    assert torch.unique(fake_quant(x, 1 / 7, bits=4)).numel() == 8  # signed: 0..7 only
    clipped = fake_quant(torch.tensor([-0.3, 2.0]), 0.1, bits=3, unsigned=True)
    torch.testing.assert_close(clipped, torch.tensor([0.0, 0.7]))


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


def test_ranking_loss_is_the_papers_sum_over_pairs():
    """Eq. 13: Σ_heads Σ_rows Σ_{i<j} (θ − (â_i − â_j)·sign(a_i − a_j))₊ per image, averaged
    over images; written out as explicit loops."""
    torch.manual_seed(0)
    a = torch.randn(2, 2, 4, 5)
    a_hat = a + 0.3 * torch.randn_like(a)
    theta = 0.2
    total = 0.0
    for img in range(2):
        for h in range(2):
            for r in range(4):
                for i in range(5):
                    for j in range(i + 1, 5):
                        sign = float(torch.sign(a[img, h, r, i] - a[img, h, r, j]))
                        p = float(a_hat[img, h, r, i] - a_hat[img, h, r, j]) * sign
                        total += max(0.0, theta - p)
    assert ranking_loss(a, a_hat, theta).item() == pytest.approx(total / 2, rel=1e-5)


def test_allocate_bits_walks_omega_with_perturbation():
    """Equal sensitivity and size: the unit whose perturbation drops more gets the bits."""
    sens, sizes = {"a": 1.0, "b": 1.0}, {"a": 10, "b": 10}
    pert = {"a": {4: 1.0, 8: 0.0}, "b": {4: 5.0, 8: 0.5}}
    assert allocate_bits(sens, sizes, budget=6.0, choices=(4, 8), perturbation=pert) == {
        "a": 4,
        "b": 8,
    }
    sens["a"] = 10.0  # σ·Δe: 10 × 1 > 1 × 4.5
    assert allocate_bits(sens, sizes, 6.0, (4, 8), perturbation=pert) == {"a": 8, "b": 4}
    with pytest.raises(ConfigError, match="same units"):
        allocate_bits(sens, sizes, 6.0, (4, 8), perturbation={"a": pert["a"]})


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
    from leanvision.methods.lowbit.ptq_vit import PTQViTConfig, calibrate, quantize_vit

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
    """bit_groups="module" (the paper): one width per MSA (qkv, Q·Kᵀ, A·V, proj) and per MLP;
    "linear" (before issue 17): one per linear layer, the attention matmuls at ``bits``."""
    from leanvision.methods.lowbit.ptq_vit import PTQViTConfig, calibrate, quantize_vit

    x = torch.randn(8, 3, 32, 32)
    for groups in ("module", "linear"):
        q = quantize_vit(_tiny_vit())
        cfg = PTQViTConfig(
            bit_budget=6.0, num_images=8, nuclear_images=8, bit_groups=groups, rounds=0
        )
        record = calibrate(q, x, cfg)
        linear = {n: m for n, m in q.named_modules() if isinstance(m, QuantLinear)}
        bits = {n: record[n]["bits"] for n in linear}
        assert set(bits.values()) <= {4, 6, 8} and len(set(bits.values())) > 1
        sizes = {n: m.weight.numel() for n, m in linear.items()}
        assert sum(bits[n] * sizes[n] for n in bits) / sum(sizes.values()) <= 6.0
        matmuls = {n: r["bits"] for n, r in record.items() if n not in linear}
        if groups == "linear":
            assert set(matmuls.values()) == {8}  # the attention matmuls keep bits
            continue
        for i in range(2):
            for mod, ops in (("attn", ("qkv", "qk", "av", "proj")), ("mlp", ("fc1", "fc2"))):
                widths = {record[f"blocks.{i}.{mod}.{op}"]["bits"] for op in ops}
                assert len(widths) == 1, (i, mod, widths)


def test_mixed_precision_follows_the_attention_maps_nuclear_norm(monkeypatch):
    """Block 0 with uniform attention (zero queries and keys: every map is 𝟙𝟙ᵀ/N, nuclear norm
    exactly 1, nothing to perturb) leaves the one MSA upgrade the budget allows to block 1;
    with peaked, diverse maps block 0's MSA, matmuls included, gets it."""
    from leanvision.methods.lowbit import ptq_vit
    from leanvision.methods.lowbit.ptq_vit import PTQViTConfig, calibrate, quantize_vit

    seen = {}

    def spy(sens, sizes, budget, choices, perturbation=None):
        seen.update(sens)
        return allocate_bits(sens, sizes, budget, choices, perturbation)

    monkeypatch.setattr(ptq_vit, "allocate_bits", spy)
    x = torch.randn(8, 3, 32, 32)
    qk_bits = {}
    for diversity in ("uniform", "peaked"):
        model = _tiny_vit()
        qkv = model.blocks[0].attn.qkv
        with torch.no_grad():
            if diversity == "uniform":
                qkv.weight[:128].zero_()  # the query and key rows (embed 64)
                qkv.bias[:128].zero_()
            else:
                qkv.weight[:128].mul_(4.0)
        # choices 4/8 at 5 bits per weight: one MSA (a third of a block's weights) fits 8
        cfg = PTQViTConfig(
            bit_budget=5.0, bit_choices=(4, 8), num_images=8, nuclear_images=8, rounds=0
        )
        record = calibrate(quantize_vit(model), x, cfg)
        if diversity == "uniform":
            assert seen["blocks.0.attn"] == pytest.approx(1.0, abs=1e-4)
        else:
            assert seen["blocks.0.attn"] > 1.5
        qk_bits[diversity] = (
            record["blocks.0.attn.qk"]["bits"],
            record["blocks.1.attn.qk"]["bits"],
        )
        assert record["blocks.0.attn.av"]["bits"] == qk_bits[diversity][0]
    assert qk_bits == {"uniform": (4, 8), "peaked": (8, 4)}


def test_quantize_vit_rejects_other_models():
    from leanvision.errors import UnsupportedModelError
    from leanvision.methods.lowbit.ptq_vit import quantize_vit

    with pytest.raises(UnsupportedModelError, match="blocks"):
        quantize_vit(torch.nn.Linear(3, 4))


def test_quant_matmul_transpose_b_quantizes_b_before_the_transpose():
    """``qk(a, k, transpose_b=True)`` is ``q(a) @ q(k)ᵀ``: the values of ``qk(a, kᵀ)`` (a
    per-tensor grid commutes with the transpose), and calibration records ``kᵀ``."""
    from leanvision.layers import QuantMatMul

    torch.manual_seed(0)
    op = QuantMatMul(8, 8)
    a, k = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 6, 4)
    torch.testing.assert_close(op(a, k, transpose_b=True), a @ k.transpose(-2, -1))
    op.delta_w.fill_(0.05)
    op.delta_x.fill_(0.03)
    torch.testing.assert_close(op(a, k, transpose_b=True), op(a, k.transpose(-2, -1)))
    seen = []
    op.record = lambda x, y: seen.append(y.shape)
    op(a, k, transpose_b=True)
    assert seen == [torch.Size([2, 3, 4, 6])]
