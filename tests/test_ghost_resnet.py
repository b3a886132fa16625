"""Ghost-ResNet-50 (GhostNet, arXiv 1911.11907): placement of the Ghost modules and exact counts."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

import leanvision as lv
from leanvision.layers.ghost import GhostConv2d
from leanvision.profiling import count_ops, count_params

STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # ResNet-50: planes, blocks, stride


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    torch.set_num_threads(1)


def _meta_model(**kw) -> nn.Module:
    with torch.device("meta"):  # counts need shapes only
        return lv.create_model("ghost_resnet50", **kw)


def _expected_counts(s: int, d: int, size: int = 224) -> tuple[int, int]:
    """Params and MACs of ResNet-50 (BN after every conv) with every residual-stage conv and
    projection shortcut as a Ghost module, from the architecture alone."""
    params = macs = 0

    def ghost(cin: int, cout: int, k: int, hw: int) -> None:
        nonlocal params, macs
        m = math.ceil(cout / s)
        params += m * cin * k * k + m * (s - 1) * d * d + 2 * cout  # primary, cheap, BN
        macs += (m * cin * k * k + m * (s - 1) * d * d) * hw * hw

    res = size // 2
    params += 3 * 64 * 49 + 2 * 64  # 7×7 stem conv + BN, unchanged
    macs += 3 * 64 * 49 * res * res
    res //= 2  # max-pool
    inp = 64
    for planes, blocks, stride in STAGES:
        for j in range(blocks):
            st = stride if j == 0 else 1
            out_res = res // st
            ghost(inp, planes, 1, res)
            ghost(planes, planes, 3, out_res)
            ghost(planes, 4 * planes, 1, out_res)
            if j == 0:
                ghost(inp, 4 * planes, 1, out_res)
            inp, res = 4 * planes, out_res
    params += 2048 * 1000 + 1000
    macs += 2048 * 1000
    return params, macs


@pytest.mark.parametrize("s, d", [(2, 3), (3, 5)])
def test_counts_match_the_architecture(s, d):
    model = _meta_model(s=s, d=d)
    params, macs = _expected_counts(s, d)
    assert count_params(model) == params
    assert count_ops(model, (3, 224, 224)).macs == macs


def test_ghost_modules_where_the_official_code_puts_them():
    """Every bottleneck conv (1×1, strided 3×3, 1×1) and every projection shortcut is a
    Ghost module with s, d; the stem conv and the classifier are untouched."""
    model = _meta_model(s=3, d=5)
    ghosts = {n: m for n, m in model.named_modules() if isinstance(m, GhostConv2d)}
    expected = set()
    for i, (_, blocks, _) in enumerate(STAGES):
        for j in range(blocks):
            expected |= {f"layer{i + 1}.{j}.conv{k}" for k in (1, 2, 3)}
        expected.add(f"layer{i + 1}.0.downsample.0")
    assert set(ghosts) == expected
    assert all(g.ratio == 3 and g.dw_size == 5 for g in ghosts.values())
    assert {g.primary.kernel_size for n, g in ghosts.items() if n.endswith("conv2")} == {(3, 3)}
    strided = {n for n, g in ghosts.items() if g.primary.stride == (2, 2)}
    assert strided == {f"layer{i}.0.{c}" for i in (2, 3, 4) for c in ("conv2", "downsample.0")}
    # the only dense convs left are the stem and the Ghost modules' own primary convs
    plain = {
        n
        for n, m in model.named_modules()
        if type(m) is nn.Conv2d and not n.endswith((".primary", ".cheap"))
    }
    assert plain == {"conv1"}
    assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)
    # each Ghost module is followed by the BN of the ResNet it replaces
    assert isinstance(model.layer2[0].bn2, nn.BatchNorm2d)
    assert isinstance(model.layer2[0].downsample[1], nn.BatchNorm2d)


def test_about_half_of_resnet50_and_falling_with_s():
    with torch.device("meta"):
        base = timm.create_model("resnet50")
    base_p, base_m = count_params(base), count_ops(base, (3, 224, 224)).macs
    ps, ms = [], []
    for s in (2, 3, 4):
        model = _meta_model(s=s)
        ps.append(count_params(model))
        ms.append(count_ops(model, (3, 224, 224)).macs)
    assert 0.5 < ps[0] / base_p < 0.6  # the fc (2.05M) and stem are not halved
    assert 0.5 < ms[0] / base_m < 0.55
    assert ps[0] > ps[1] > ps[2] and ms[0] > ms[1] > ms[2]


def test_cifar_stem_is_chosen_from_img_size():
    model = lv.create_model("ghost_resnet50", img_size=32, num_classes=10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)
    assert [f["reduction"] for f in model.feature_info] == [1, 1, 2, 4, 8]
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_intermediates(x, intermediates_only=True)
    assert [f.shape[-1] for f in feats] == [32, 32, 16, 8, 4]
    # an explicit small_stem overrides the size rule
    big = _meta_model(img_size=32, small_stem=False)
    assert big.conv1.kernel_size == (7, 7) and isinstance(big.maxpool, nn.MaxPool2d)


def test_features_only_small_input():
    model = lv.create_model("ghost_resnet50", img_size=32, features_only=True, out_indices=(2, 4))
    out = model(torch.randn(1, 3, 32, 32))
    assert [tuple(o.shape[1:]) for o in out] == [(512, 16, 16), (2048, 4, 4)]
