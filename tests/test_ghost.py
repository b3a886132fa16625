"""Ghost modules (GhostNet, arXiv 1911.11907): the layer, ``ghostify`` and ``compress("ghost")``."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

import leanvision as lv
from leanvision.errors import ConfigError, UnsupportedModelError
from leanvision.layers.ghost import GhostConv2d
from leanvision.methods.ghost import ghostify
from leanvision.profiling import count_ops, count_params


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    """One torch thread: on a loaded 2-core machine two spinning OpenMP threads are far slower."""
    torch.set_num_threads(1)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _tiny_cnn(in_chans: int = 3, num_classes: int = 4) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            stem=nn.Conv2d(in_chans, 8, 3, padding=1, bias=False),
            act0=nn.ReLU(),
            body=nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=True),
            act1=nn.ReLU(),
            point=nn.Conv2d(12, 16, 1),
            pool=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            fc=nn.Linear(16, num_classes),
        )
    )


# ----------------------------------------------------------------------------- GhostConv2d


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(
    "in_ch, out_ch, k, pad, ratio",
    [(4, 8, 3, 1, 2), (5, 7, 3, 1, 3), (3, 9, 5, 2, 4), (6, 6, 1, 0, 2), (2, 3, 3, 0, 2)],
)
def test_ghost_conv_keeps_conv_shape(in_ch, out_ch, k, pad, ratio, stride, bias):
    """Output shape equals nn.Conv2d's for strides 1/2, odd channel counts, bias on/off."""
    conv = nn.Conv2d(in_ch, out_ch, k, stride, pad, bias=bias)
    ghost = GhostConv2d(in_ch, out_ch, k, stride, pad, bias=bias, ratio=ratio)
    x = torch.randn(2, in_ch, 11, 12)
    assert ghost(x).shape == conv(x).shape
    assert (ghost.bias is not None) == bias
    assert ghost.init_channels == math.ceil(out_ch / ratio)


@pytest.mark.parametrize(
    "in_ch, out_ch, k, ratio, d",
    [(16, 32, 3, 2, 3), (5, 7, 3, 3, 3), (8, 16, 3, 4, 5), (12, 10, 1, 2, 3)],
)
def test_ghost_conv_param_count(in_ch, out_ch, k, ratio, d):
    """Params = primary in·m·k² + cheap m(s−1)·d² with m = ceil(n/s) (+ n for a bias)."""
    m = math.ceil(out_ch / ratio)
    expected = in_ch * m * k * k + m * (ratio - 1) * d * d
    ghost = GhostConv2d(in_ch, out_ch, k, ratio=ratio, dw_size=d)
    assert _count(ghost) == expected
    with_bias = GhostConv2d(in_ch, out_ch, k, ratio=ratio, dw_size=d, bias=True)
    assert _count(with_bias) == expected + out_ch
    # Cost ≈ 1/s of the conv it replaces (for the k=3, d=3 paper setting).
    if k == 3 and d == 3 and out_ch % ratio == 0:
        conv = in_ch * out_ch * k * k
        assert expected < conv / ratio + m * (ratio - 1) * d * d + 1


def test_ghost_ratio_one_is_exactly_a_conv():
    """With s=1 there is no cheap op and the module equals nn.Conv2d with the same weight."""
    torch.manual_seed(0)
    ghost = GhostConv2d(4, 6, 3, stride=2, padding=1, bias=True, ratio=1)
    assert ghost.cheap is None and ghost.init_channels == 6
    with torch.no_grad():
        ghost.bias.copy_(torch.randn(6))
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(ghost.primary.weight)
        conv.bias.copy_(ghost.bias)
    x = torch.randn(2, 4, 9, 9)
    torch.testing.assert_close(ghost(x), conv(x))
    assert _count(ghost) == _count(conv)


def test_ghost_cheap_op_is_depthwise_and_builds_ghost_maps():
    """Cheap op: depthwise d×d conv (groups == m); output = [primary, cheap(primary)][:n]."""
    torch.manual_seed(0)
    ghost = GhostConv2d(5, 7, 3, padding=1, ratio=3, dw_size=5)
    m = ghost.init_channels
    assert m == 3
    cheap = ghost.cheap
    assert isinstance(cheap, nn.Conv2d)
    assert cheap.groups == m == cheap.in_channels
    assert cheap.out_channels == m * 2
    assert cheap.kernel_size == (5, 5) and cheap.stride == (1, 1) and cheap.padding == (2, 2)
    x = torch.randn(2, 5, 8, 8)
    intrinsic = ghost.primary(x)
    expected = torch.cat([intrinsic, cheap(intrinsic)], 1)[:, :7]
    torch.testing.assert_close(ghost(x), expected)


def test_ghost_conv_bad_args():
    """ratio < 1 or an even dw_size is a ValueError."""
    with pytest.raises(ValueError, match="ratio"):
        GhostConv2d(4, 8, 3, ratio=0)
    with pytest.raises(ValueError, match="dw_size"):
        GhostConv2d(4, 8, 3, dw_size=2)


# --------------------------------------------------------------------------------- ghostify


@pytest.fixture(scope="module")
def resnet56():
    return lv.create_model("resnet56_cifar")


def test_ghostify_resnet56(resnet56):
    """Stem kept, every block 3×3 conv replaced, 1×1 shortcuts kept; MACs ~½, params < 0.55."""
    new, replaced = ghostify(resnet56)
    assert type(new.conv1) is nn.Conv2d
    block_convs = [
        n
        for n, m in resnet56.named_modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and n != "conv1"
    ]
    assert len(block_convs) == 54
    assert sorted(replaced) == sorted(block_convs)
    mods = dict(new.named_modules())
    assert all(isinstance(mods[n], GhostConv2d) for n in block_convs)
    for n in ("layer2.0.downsample.0", "layer3.0.downsample.0"):
        assert type(mods[n]) is nn.Conv2d and mods[n].kernel_size == (1, 1)
    assert type(resnet56.layer1[0].conv1) is nn.Conv2d  # the input model is untouched
    size = (3, 32, 32)
    mac_ratio = count_ops(new, size).macs / count_ops(resnet56, size).macs
    assert 0.5 < mac_ratio < 0.55, mac_ratio
    assert count_params(new) / count_params(resnet56) < 0.55
    assert new(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_ghostify_replace_pointwise_and_exclude(resnet56):
    """replace_pointwise also swaps 1×1 convs; exclude keeps the named layers."""
    new, replaced = ghostify(resnet56, replace_pointwise=True)
    assert len(replaced) == 56
    assert isinstance(new.layer2[0].downsample[0], GhostConv2d)
    assert isinstance(new.layer3[0].downsample[0], GhostConv2d)

    keep = ["layer1.0.conv1", "layer3.8.conv2"]
    new, replaced = ghostify(resnet56, exclude=keep)
    assert len(replaced) == 52 and not set(keep) & set(replaced)
    assert type(new.layer1[0].conv1) is nn.Conv2d and type(new.layer3[8].conv2) is nn.Conv2d
    assert isinstance(new.layer1[0].conv2, GhostConv2d)

    new, replaced = ghostify(resnet56, keep_first=False)
    assert "conv1" in replaced and isinstance(new.conv1, GhostConv2d)


def test_ghostify_timm_resnet18():
    """A timm CNN: stem kept, 3×3 convs replaced, output shape held at 64×64."""
    model = lv.create_model("resnet18", num_classes=10).eval()
    new, replaced = ghostify(model)
    assert type(new.conv1) is nn.Conv2d and "conv1" not in replaced
    assert len(replaced) == 16  # two 3×3 convs in each of the 8 basic blocks
    assert all(n.endswith(("conv1", "conv2")) for n in replaced)
    assert type(new.layer2[0].downsample[0]) is nn.Conv2d
    with torch.no_grad():
        assert new.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert count_params(new) < 0.6 * count_params(model)


def test_ghostify_user_sequential():
    """A plain user nn.Sequential: the body 3×3 conv becomes Ghost, the 1×1 and stem stay."""
    model = _tiny_cnn()
    new, replaced = ghostify(model)
    assert replaced == ["body"]
    assert isinstance(new.body, GhostConv2d) and new.body.bias is not None
    assert type(new.stem) is nn.Conv2d and type(new.point) is nn.Conv2d
    x = torch.randn(2, 3, 16, 16)
    assert new(x).shape == model(x).shape == (2, 4)


def _with(bad: nn.Module) -> nn.Sequential:
    return nn.Sequential(OrderedDict(stem=nn.Conv2d(3, 8, 3, padding=1), bad=bad, act=nn.ReLU()))


class _ScaledConv(nn.Conv2d):
    def forward(self, x):
        return 2.0 * super().forward(x)


@pytest.mark.parametrize(
    "bad, words",
    [
        (nn.Conv2d(8, 8, 3, padding=1, groups=2), "group"),
        (_ScaledConv(8, 8, 3, padding=1), "_ScaledConv"),
        (nn.ConvTranspose2d(8, 8, 3, padding=1), "ConvTranspose2d"),
    ],
)
def test_ghostify_unsupported_layers_named(bad, words):
    """Grouped (not depthwise) conv, Conv2d subclass, k>1 transposed conv: error names layer."""
    model = _with(bad)
    with pytest.raises(UnsupportedModelError) as info:
        ghostify(model)
    msg = str(info.value)
    assert "'bad'" in msg and words in msg
    assert "exclude" in msg
    assert isinstance(info.value, TypeError)
    with pytest.raises(UnsupportedModelError):  # through the public verb as well
        lv.compress(model, "ghost")


def test_ghostify_depthwise_and_1x1_transpose_are_kept():
    """Depthwise convs and 1×1 transposed convs are left alone (not errors)."""
    model = nn.Sequential(
        OrderedDict(
            stem=nn.Conv2d(3, 8, 3, padding=1),
            dw=nn.Conv2d(8, 8, 3, padding=1, groups=8),
            up=nn.ConvTranspose2d(8, 8, 1),
            body=nn.Conv2d(8, 8, 3, padding=1),
        )
    )
    new, replaced = ghostify(model)
    assert replaced == ["body"]
    assert type(new.dw) is nn.Conv2d and type(new.up) is nn.ConvTranspose2d


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2)
        ),
        nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 2)),
    ],
    ids=["stem-only", "mlp"],
)
def test_ghostify_nothing_to_replace(model):
    """A model with only the stem conv, or no conv at all, is an UnsupportedModelError."""
    with pytest.raises(UnsupportedModelError, match="no k×k convolution"):
        ghostify(model)


# ------------------------------------------------------------------------ compress("ghost")


def test_compress_ghost_leaves_input_unchanged():
    """compress returns a new smaller model; the input's state_dict and module types stay."""
    model = lv.create_model("resnet20_cifar", width=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [(n, type(m)) for n, m in model.named_modules()]
    small = lv.compress(model, "ghost")
    assert small is not model
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [(n, type(m)) for n, m in model.named_modules()] == types
    assert count_params(small) < 0.6 * count_params(model)
    assert any(isinstance(m, GhostConv2d) for m in small.modules())
    assert not small.training


def test_compress_ghost_finetunes_with_distillation(mnist_small):
    """finetune + distill trains the ghost model: weights move from the ghostified init."""
    model = lv.create_model("resnet20_cifar", in_chans=1, width=0.25)
    torch.manual_seed(123)
    init = lv.compress(model, "ghost")  # the untrained ghostified model
    torch.manual_seed(123)  # same RNG state → same Ghost init before fine-tuning
    tuned = lv.compress(
        model,
        "ghost",
        data=mnist_small,
        finetune_epochs=1,
        max_steps=3,
        distill=True,
        progress=False,
        log=False,
    )
    assert not tuned.training
    assert all(not m.training for m in tuned.modules())
    s0, s1 = init.state_dict(), tuned.state_dict()
    assert s0.keys() == s1.keys()
    # The Ghost layers start identical, then training moves them.
    assert not torch.equal(s0["layer1.0.conv1.primary.weight"], s1["layer1.0.conv1.primary.weight"])
    assert not torch.equal(s0["layer1.0.conv1.cheap.weight"], s1["layer1.0.conv1.cheap.weight"])
    assert not torch.equal(s0["fc.weight"], s1["fc.weight"])
    assert s1["layer1.0.bn1.num_batches_tracked"].item() == 3  # max_steps honoured
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert tuned(x).shape == (2, 10)


def test_compress_ghost_finetune_without_data():
    """finetune_epochs > 0 with no data is a ConfigError that says what to pass."""
    model = lv.create_model("resnet20_cifar", width=0.25)
    with pytest.raises(ConfigError, match="data"):
        lv.compress(model, "ghost", finetune_epochs=1)


def test_compress_ghost_unknown_hparam():
    """A misspelt hyper-parameter is a ConfigError naming it and the allowed ones."""
    model = lv.create_model("resnet20_cifar", width=0.25)
    with pytest.raises(ConfigError) as info:
        lv.compress(model, "ghost", ratoi=2)
    msg = str(info.value)
    assert "ratoi" in msg and "ratio" in msg and "dw_size" in msg
