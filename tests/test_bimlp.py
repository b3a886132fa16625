"""BiMLP's own mechanics: uni-shortcuts, the multi-branch block, the cheap down-sampling, which
layers are binary, OPs of the plain baseline, and that the model trains.

The zoo conventions (timm interface, CIFAR build, export, ...) are checked in test_zoo.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import leanvision as lv
from leanvision.errors import ConfigError
from leanvision.layers import BinaryConv2d
from leanvision.models.bimlp import (
    POOL_KERNELS,
    BiMLPBlock,
    BinaryFC,
    CheapDownsample,
    LearnableBias,
    RPReLU,
    UniShortcut,
    channel_shortcut,
)
from leanvision.profiling import count_ops

TINY = dict(layers=(1, 1, 1, 1), embed_dims=(16, 32, 32, 64), img_size=32, num_classes=10)


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    torch.set_num_threads(1)


def _ops(model: nn.Module, size: int) -> float:
    """OPs as binary-network papers count them: BOPs / 64 + full-precision MACs."""
    c = count_ops(model, (3, size, size))
    return c.bitops / 64 + c.macs


# ------------------------------------------------------------------------- uni-shortcut


def test_shortcut_expand_tiles_channels():
    x = torch.randn(2, 3, 4, 5)
    y = channel_shortcut(x, 12)
    assert y.shape == (2, 12, 4, 5)
    for j in range(12):
        torch.testing.assert_close(y[:, j], x[:, j % 3])


def test_shortcut_reduce_averages_consecutive_groups():
    x = torch.randn(2, 12, 3, 3)
    y = channel_shortcut(x, 3)
    assert y.shape == (2, 3, 3, 3)
    for j in range(3):
        torch.testing.assert_close(y[:, j], x[:, 4 * j : 4 * j + 4].mean(1))
    assert channel_shortcut(x, 12) is x


def test_shortcut_needs_divisible_widths():
    with pytest.raises(ConfigError, match="divide"):
        UniShortcut(6, 4)
    with pytest.raises(ConfigError, match="divide"):
        channel_shortcut(torch.randn(1, 6, 2, 2), 4)


def test_token_fc_shortcut_is_the_pair_mean():
    """With the binary path silenced, a grouped 2C → C token FC outputs RPReLU(pair mean)."""
    c = 4
    layer = BinaryFC(2 * c, c, (1, 7), groups=c).eval()
    with torch.no_grad():
        layer.conv.weight.zero_()  # binary weights × scale mean|W| = 0
        layer.move.bias.normal_()
    x = torch.randn(2, 2 * c, 5, 9)
    shifted = x + layer.move.bias
    pair_mean = (shifted[:, 0::2] + shifted[:, 1::2]) / 2
    expected = F.prelu(pair_mean, torch.full((c,), 0.25))  # RPReLU at init: shifts are zero
    torch.testing.assert_close(layer(x), expected)


def test_expanding_fc_shortcut_has_norm_and_rprelu():
    mlp_fc1 = lv.create_model("bimlp_s", **TINY).stages[0].blocks[0].mlp.fc1
    assert isinstance(mlp_fc1.shortcut.norm, nn.BatchNorm2d)
    assert mlp_fc1.conv.out_channels == 4 * mlp_fc1.conv.in_channels


# ------------------------------------------------------------------- multi-branch block


def test_mbb_starts_as_the_mlp_branch_and_mixes_with_its_weights():
    torch.manual_seed(0)
    block = BiMLPBlock(16).eval()
    assert torch.equal(block.branch_weight.detach(), torch.zeros(2))
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        x1 = x + block.attn(block.norm1(x))
        m = block.norm2(x1)
        torch.testing.assert_close(block(x), x1 + block.mlp(m))
        block.branch_weight.copy_(torch.tensor([1.0, 0.0]))
        torch.testing.assert_close(block(x), x1 + block.branch_h(m))
        block.branch_weight.copy_(torch.tensor([0.25, 0.5]))
        mix = 0.25 * block.branch_h(m) + 0.5 * block.branch_w(m) + 0.25 * block.mlp(m)
        torch.testing.assert_close(block(x), x1 + mix)


def test_plain_block_has_no_extra_branches():
    block = BiMLPBlock(16, plain=True)
    assert block.branch_weight is None and block.branch_h is None
    fcs = [m for m in block.modules() if isinstance(m, BinaryFC)]
    assert fcs and all(f.shortcut is None and isinstance(f.act, nn.Hardtanh) for f in fcs)


# --------------------------------------------------------------------- down-sampling


@pytest.mark.parametrize("hw", [(8, 8), (7, 10), (2, 2)])
def test_cheap_downsample_shape(hw):
    ds = CheapDownsample(8, 16, nn.BatchNorm2d).eval()
    h, w = hw
    assert ds(torch.randn(2, 8, h, w)).shape == (2, 16, math.ceil(h / 2), math.ceil(w / 2))


def _same_maxpool_reference(x: torch.Tensor, k: int) -> torch.Tensor:
    """Stride-2 max-pool with TensorFlow "same" padding, window by window."""
    h, w = x.shape[-2:]
    oh, ow = -(-h // 2), -(-w // 2)
    ph = max((oh - 1) * 2 + k - h, 0) // 2
    pw = max((ow - 1) * 2 + k - w, 0) // 2
    out = torch.empty(*x.shape[:-2], oh, ow)
    for i in range(oh):
        for j in range(ow):
            r0, c0 = 2 * i - ph, 2 * j - pw
            win = x[..., max(r0, 0) : r0 + k, max(c0, 0) : c0 + k]
            out[..., i, j] = win.amax(dim=(-2, -1))
    return out


@pytest.mark.parametrize("hw", [(6, 6), (5, 7)])
def test_cheap_downsample_is_mean_of_four_same_maxpools(hw):
    ds = CheapDownsample(3, 3, nn.BatchNorm2d).eval()
    with torch.no_grad():  # make conv + norm + RPReLU the identity
        ds.proj.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        ds.proj.bias.zero_()
        ds.norm.eps = 0.0
        ds.act.prelu.weight.fill_(1.0)
    x = torch.randn(2, 3, *hw)
    expected = torch.stack([_same_maxpool_reference(x, k) for k in POOL_KERNELS]).mean(0)
    torch.testing.assert_close(ds(x), expected)


# ------------------------------------------------------------------ binary vs real layers


@pytest.mark.parametrize("plain", [False, True])
def test_inner_layers_binary_stem_head_downsample_real(plain):
    model = lv.create_model("bimlp_s", plain=plain, **TINY)
    assert type(model.stem.proj) is nn.Conv2d and type(model.head) is nn.Linear
    for stage in list(model.stages)[1:]:
        assert type(stage.downsample.proj) is nn.Conv2d
        assert stage.downsample.proj.kernel_size == ((3, 3) if plain else (1, 1))
    for stage in model.stages:
        convs = [m for m in stage.blocks.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        assert convs and all(isinstance(m, BinaryConv2d) for m in convs)
    # per block: PATM (θ_h, θ_w, fc_h, fc_w, fc_c, tfc_h, tfc_w, proj + 2 reweight FCs),
    # the channel MLP's 2 FCs, and in BiMLP the MBB's 2 depthwise branches
    per_block = 12 + (0 if plain else 2)
    n_binary = sum(isinstance(m, BinaryConv2d) for m in model.modules())
    assert n_binary == per_block * sum(TINY["layers"])
    if not plain:
        dw = model.stages[0].blocks[0].branch_h.conv
        assert dw.groups == dw.in_channels == dw.out_channels and dw.kernel_size == (1, 7)


def test_mode_reaches_every_binary_layer():
    model = lv.create_model("bimlp_s", mode="fda", **TINY)
    modes = {m.mode for m in model.modules() if isinstance(m, BinaryConv2d)}
    assert modes == {"fda"}


def test_binary_ops_are_counted_as_bitops():
    """Binary layers count as bit-ops, not MACs: the real MACs are the stem, down-sampling and
    head alone."""
    model = lv.create_model("bimlp_s", **TINY).eval()
    counts = count_ops(model, (3, 32, 32))
    real = 0
    shapes = {}
    hooks = [
        m.register_forward_hook(lambda mod, i, o: shapes.__setitem__(mod, o.shape))
        for m in model.modules()
        if type(m) in (nn.Conv2d, nn.Linear)
    ]
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    for m, shape in shapes.items():
        per_out = (
            m.in_features if isinstance(m, nn.Linear) else m.in_channels * math.prod(m.kernel_size)
        )
        real += math.prod(shape) * per_out
    assert counts.macs == real
    assert counts.bitops > 0


@pytest.mark.parametrize("size", ["s", "m"])
def test_plain_baseline_matches_ops_within_10_percent(size):
    """The registered plain baselines cost the same OPs as BiMLP at 32×32 (±10 %)."""
    bimlp = lv.create_model(f"bimlp_{size}", img_size=32, num_classes=10)
    plain = lv.create_model(f"bimlp_plain_{size}", img_size=32, num_classes=10)
    a, b = _ops(bimlp, 32), _ops(plain, 32)
    assert abs(b / a - 1) <= 0.10, (a, b)


def test_cifar_stem_and_reductions():
    model = lv.create_model("bimlp_s", **TINY).eval()
    assert model.stem.proj.stride == (2, 2)
    maps = model.forward_intermediates(torch.randn(1, 3, 32, 32), intermediates_only=True)
    assert [m.shape[-1] for m in maps] == [32 // f["reduction"] for f in model.feature_info]
    assert lv.create_model("bimlp_s").stem.proj.stride == (4, 4)


# --------------------------------------------------------------------------- training


def test_tiny_bimlp_trains_on_a_fixed_batch():
    torch.manual_seed(0)
    model = lv.create_model("bimlp_s", **TINY)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-3:]) < 0.8 * losses[0], losses
    grads = [p.grad for n, p in model.named_parameters() if "branch_weight" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_pack_binary_keeps_the_outputs():
    """Every binary layer packs to 1 bit: the 1×1 FCs (popcount) and the grouped 1×7 / 7×1
    token FCs (the grouped kernel); outputs agree."""
    from leanvision.layers import PackedBinaryConv2d
    from leanvision.methods.lowbit import pack_binary

    torch.manual_seed(0)
    model = lv.create_model("bimlp_s", **TINY).eval()
    with torch.no_grad():  # trained-looking statistics and shifts, so the folds matter
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
            if isinstance(m, LearnableBias):
                m.bias.uniform_(-0.2, 0.2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        packed = pack_binary(model)
        out = packed(x)
    fcs = [m for m in packed.modules() if isinstance(m, BinaryFC)]
    assert fcs and all(isinstance(m.norm, nn.Identity) for m in fcs)  # BN folded in
    assert all(isinstance(m.act.move1, nn.Identity) for m in fcs if isinstance(m.act, RPReLU))
    kinds = {type(m) for m in packed.modules()}
    assert PackedBinaryConv2d in kinds and BinaryConv2d not in kinds
    grouped = [m for m in packed.modules() if getattr(m, "grouped", False)]
    assert grouped and {m.kernel_size for m in grouped} == {(1, 7), (7, 1)}
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
