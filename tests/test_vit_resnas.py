"""ViT-Res / ViT-ResNAS: residual spatial reduction, token counts, network_def, exact counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import leanvision as lv
from leanvision.models.vit_resnas import (
    NETWORK_DEFS,
    BlockSpec,
    ResidualSpatialReduction,
    StageSpec,
    ViTResArch,
    ViTResNAS,
    arch_from_network_def,
    arch_to_network_def,
    default_patch_size,
)
from leanvision.profiling import count_ops, count_params

VARIANTS = ["vit_res_tiny", "vit_resnas_tiny", "vit_resnas_small", "vit_resnas_medium"]

# A small two-level architecture for the mechanics tests (fast to build).
SMALL_DEF = (
    (5, 16, 8),
    (1, (16, 2, 8), (16, 32), 1),
    (1, (16, 4, 8), (16, 24), 0),  # dropped by the search
    (3, 16, 24),
    (1, (24, 3, 8), (24, 48), 1),
    (1, (24, 2, 16), (24, 40), 1),
    (3, 24, 40),
    (1, (40, 5, 8), (40, 80), 1),
    (2, 40, 10),
)


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    torch.set_num_threads(1)


def _small(**kwargs) -> ViTResNAS:
    kwargs.setdefault("num_classes", 10)
    return ViTResNAS(SMALL_DEF, **kwargs)


# ---------------------------------------------------------------------------- network_def


def test_network_def_converter_small_example():
    """Stems, stage widths, per-block specs and keep=0 removal are read as the format says."""
    arch = arch_from_network_def(SMALL_DEF)
    assert arch == ViTResArch(
        stages=(
            StageSpec(16, (BlockSpec(2, 8, 32),)),
            StageSpec(24, (BlockSpec(3, 8, 48), BlockSpec(2, 16, 40))),
            StageSpec(40, (BlockSpec(5, 8, 80),)),
        ),
        stem="conv",
        stem_chs=8,
    )
    # Back to the official format: identical except for the dropped block.
    kept = tuple(e for e in SMALL_DEF if not (e[0] == 1 and e[3] == 0))
    assert arch_to_network_def(arch, num_classes=10) == kept
    assert arch_from_network_def(((0, 8), (1, (8, 1, 8), (8, 16), 1), (2, 8, 5))).stem == "linear"
    assert arch_from_network_def(((4, 8), (2, 8, 5))).stem_chs == 24


@pytest.mark.parametrize(
    "bad",
    [
        ((4, 16), (1, (24, 2, 8), (24, 32), 1), (2, 24, 10)),  # block wider than the embedding
        ((4, 16), (3, 16, 8), (2, 8, 10)),  # a reduction that narrows
        ((4, 16), (3, 24, 32), (2, 32, 10)),  # reduction input != current width
        ((4, 16), (1, (16, 2, 8), (16, 32), 1)),  # no head
        ((1, (16, 2, 8), (16, 32), 1), (2, 16, 10)),  # no patch embedding
        ((4, 16), (2, 16, 10), (1, (16, 2, 8), (16, 32), 1)),  # head not last
    ],
)
def test_network_def_converter_rejects_malformed(bad):
    with pytest.raises(ValueError):
        arch_from_network_def(bad)


@pytest.mark.parametrize(
    "name, dims, depths, stage_heads",
    [
        ("vit_res_tiny", (192, 384, 768), (4, 4, 4), ({(3, 64)}, {(6, 64)}, {(12, 64)})),
        ("vit_resnas_tiny", (176, 352, 704), (5, 6, 5), None),
        ("vit_resnas_small", (220, 440, 880), (6, 6, 5), None),
        ("vit_resnas_medium", (240, 640, 880), (7, 7, 6), None),
    ],
)
def test_official_architectures(name, dims, depths, stage_heads):
    """Stage widths/depths of the official nets; searched head widths are 32/48/64 by stage."""
    arch = arch_from_network_def(NETWORK_DEFS[name])
    assert tuple(s.dim for s in arch.stages) == dims
    assert tuple(len(s.blocks) for s in arch.stages) == depths
    assert arch.stem == "conv" and arch.stem_chs == 24
    if stage_heads is None:
        stage_heads = ({32}, {48}, {64})
        got = tuple({b.head_dim for b in s.blocks} for s in arch.stages)
    else:
        got = tuple({(b.num_heads, b.head_dim) for b in s.blocks} for s in arch.stages)
    assert got == stage_heads


# ------------------------------------------------------------------ residual spatial reduction


@pytest.mark.parametrize("num_prefix", [1, 2])
def test_reduction_residual_path_is_added(num_prefix):
    """With the conv and token Linear zeroed, the output is the pooled, zero-padded input + pos."""
    torch.manual_seed(0)
    sr = ResidualSpatialReduction(6, 10, (4, 6), num_prefix_tokens=num_prefix)
    for p in (*sr.conv.parameters(), *sr.token_transform.parameters()):
        torch.nn.init.zeros_(p)
    x = torch.randn(3, num_prefix + 24, 6)
    out = sr(x)
    assert out.shape == (3, num_prefix + 6, 10)
    patches = x[:, num_prefix:].transpose(1, 2).reshape(3, 6, 4, 6)
    pooled = F.avg_pool2d(patches, 2).flatten(2).transpose(1, 2)  # (3, 6, 6)
    expect_patches = torch.cat([pooled, torch.zeros(3, 6, 4)], dim=2) + sr.pos_embed
    expect_tokens = torch.cat([x[:, :num_prefix], torch.zeros(3, num_prefix, 4)], dim=2)
    torch.testing.assert_close(out[:, num_prefix:], expect_patches)
    torch.testing.assert_close(out[:, :num_prefix], expect_tokens)


def test_reduction_main_path():
    """Main path: LayerNorm, 3×3/2 conv (pad 1) + pos for patches, a Linear for the tokens."""
    torch.manual_seed(0)
    sr = ResidualSpatialReduction(6, 10, (4, 4), num_prefix_tokens=1)
    assert (sr.conv.kernel_size, sr.conv.stride, sr.conv.padding) == ((3, 3), (2, 2), (1, 1))
    x = torch.randn(2, 17, 6)
    shortcut = ResidualSpatialReduction(6, 10, (4, 4), num_prefix_tokens=1)
    for p in shortcut.parameters():
        torch.nn.init.zeros_(p)
    n = F.layer_norm(x, (6,), sr.norm.weight, sr.norm.bias, eps=1e-6)
    conv = sr.conv(n[:, 1:].transpose(1, 2).reshape(2, 6, 4, 4)).flatten(2).transpose(1, 2)
    main = torch.cat([sr.token_transform(n[:, :1]), conv + sr.pos_embed], dim=1)
    torch.testing.assert_close(sr(x), main + shortcut(x))


def test_conv_patch_embedding_structure():
    """Conv stem: 3×3/2 to 24 ch, residual around conv2-conv3, (p/2)×(p/2) projection."""
    torch.manual_seed(0)
    pe = _small(img_size=32).eval().patch_embed
    assert (pe.conv1.stride, pe.conv1.out_channels, pe.proj.kernel_size) == ((2, 2), 8, (1, 1))
    big = ViTResNAS(NETWORK_DEFS["vit_resnas_tiny"][:1] + ((2, 176, 10),), num_classes=10)
    pe224 = big.patch_embed
    assert (pe224.conv1.out_channels, pe224.proj.kernel_size, pe224.proj.stride) == (
        24,
        (7, 7),
        (7, 7),
    )
    # With conv3's BN silenced the residual branch is 0: the projection sees conv1's output.
    torch.nn.init.zeros_(pe.bn3.weight)
    torch.nn.init.zeros_(pe.bn3.bias)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(pe(x), pe.proj(pe.act(pe.bn1(pe.conv1(x)))))


# ------------------------------------------------------------------------ tokens and stages


@pytest.mark.parametrize("img_size, patch", [(224, 14), (32, 2)])
@pytest.mark.parametrize("distilled", [False, True])
def test_token_counts_per_stage(img_size, patch, distilled):
    """16×16 → 8×8 → 4×4 patch tokens (+1 or +2 prefix tokens) at 224 and, adapted, at 32."""
    model = _small(img_size=img_size, distilled=distilled).eval()
    assert model.patch_size == patch == default_patch_size(img_size)
    seen = []
    for stage in model.stages:
        stage.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    prefix = 2 if distilled else 1
    with torch.no_grad():
        model(torch.randn(1, 3, img_size, img_size))
    assert seen == [(1, prefix + 256, 16), (1, prefix + 64, 24), (1, prefix + 16, 40)]


def test_forward_intermediates_are_stage_maps():
    """Intermediates are each stage's patch tokens as (B, C, H, W); features_only gives them too."""
    torch.manual_seed(0)
    model = _small(img_size=32, distilled=True).eval()
    x = torch.randn(2, 3, 32, 32)
    final, inter = model.forward_intermediates(x)
    torch.testing.assert_close(final, model.forward_features(x))
    assert [tuple(t.shape) for t in inter] == [(2, 16, 16, 16), (2, 24, 8, 8), (2, 40, 4, 4)]
    tokens = model.stages[0](model._embed(x))
    torch.testing.assert_close(inter[0], tokens[:, 2:].transpose(1, 2).reshape(2, 16, 16, 16))
    nlc = model.forward_intermediates(x, indices=[1], output_fmt="NLC", intermediates_only=True)
    torch.testing.assert_close(nlc[0], inter[1].flatten(2).transpose(1, 2))
    feats = lv.create_model(
        "vit_resnas_tiny", arch=SMALL_DEF, img_size=32, features_only=True, out_indices=(1,)
    )
    assert [tuple(f.shape) for f in feats(x)] == [(2, 24, 8, 8)]
    assert len(feats.model.stages) == 2  # the unused last stage is pruned


def test_distillation_token_and_heads():
    """Inference averages the two heads; distilled training returns both; main head is `head`."""
    torch.manual_seed(0)
    model = _small(img_size=32, distilled=True).eval()
    assert model.get_classifier() is model.head and model.head_dist is not None
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    expect = (model.head(feats[:, 0]) + model.head_dist(feats[:, 1])) / 2
    torch.testing.assert_close(model(x), expect)
    torch.testing.assert_close(
        model.forward_head(feats, pre_logits=True), (feats[:, 0] + feats[:, 1]) / 2
    )
    model.train()
    assert isinstance(model(x), torch.Tensor)  # plain training: still the average
    model.set_distilled_training(True)
    cls_logits, dist_logits = model(x)
    assert cls_logits.shape == dist_logits.shape == (2, 10)
    model.reset_classifier(5)
    assert model.head.out_features == model.head_dist.out_features == 5
    plain = _small(img_size=32)
    assert plain.dist_token is None and plain.head_dist is None and plain.num_prefix_tokens == 1


def test_drop_path_grows_linearly_over_all_blocks():
    """Stochastic depth 0 → rate linearly over the blocks of all stages (first block has none)."""
    model = _small(img_size=32, drop_path_rate=0.3)
    blocks = [b for s in model.stages for b in s.blocks]
    probs = [getattr(b.drop_path1, "drop_prob", 0.0) for b in blocks]
    assert probs == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_input_size_is_checked():
    model = _small(img_size=32)
    with pytest.raises(ValueError):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError):
        _small(img_size=36)  # 36 / 2 = 18 tokens: not divisible by the two reductions
    assert _small(img_size=32, patch_size=4).grid_size == (8, 8)  # explicit override


# -------------------------------------------------------------------------------- counts


def _expected_params(arch: ViTResArch, img: int, patch: int, classes: int, prefix: int) -> int:
    """Parameter count written out from the architecture (independent of the module code)."""
    mid, c = arch.stem_chs, arch.stages[0].dim
    n = (img // patch) ** 2
    total = 3 * mid * 9 + 2 * mid * mid * 9 + 3 * 2 * mid  # stem convs + BNs
    total += mid * (patch // 2) ** 2 * c + c  # projection
    total += prefix * c + (n + prefix) * c  # prefix tokens + positional embedding
    prev = c
    for i, stage in enumerate(arch.stages):
        d = stage.dim
        if i > 0:
            n //= 4
            total += 2 * prev + prev * 9 * d + d + prev * d + d + n * d  # LN, conv, Linear, pos
        for b in stage.blocks:
            a, h = b.num_heads * b.head_dim, b.mlp_hidden
            total += 4 * d + (d * 3 * a + 3 * a) + (a * d + d) + (d * h + h) + (h * d + d)
        prev = d
    heads = 2 if prefix == 2 else 1
    return total + 2 * prev + heads * (prev * classes + classes)


def _official_macs(network_def: tuple, img: int = 224, patch: int = 14, prefix: int = 1) -> int:
    """MACs by the formula of the official estimator (network_utils/compute_flop_mac.py)."""
    mid, c = 24, network_def[0][1]
    g = img // patch
    n = prefix + g * g
    half = (img // 2) ** 2
    macs = 3 * mid * 9 * half + 2 * mid * mid * 9 * half + c * mid * (patch // 2) ** 2 * g * g
    for e in network_def[1:]:
        if e[0] == 1 and e[3]:
            (d, heads, hd), hidden = e[1], e[2][1]
            macs += 3 * d * heads * hd * n + 2 * n * n * heads * hd + n * heads * hd * d
            macs += 2 * n * d * hidden
        elif e[0] == 3:
            g //= 2
            macs += g * g * e[2] * 9 * e[1] + prefix * e[1] * e[2]
            n, c = prefix + g * g, e[2]
    return macs + c * network_def[-1][2] * (2 if prefix == 2 else 1)


# Paper MACs at 224 ([M], arXiv 2109.00642), and the official search constraint for ViT-Res-Tiny
# (scripts/vit-sr-nas/evolutionary_search/tiny.sh: --constraint-value 1794400000).
PAPER_MACS = {
    "vit_res_tiny": 1.7944e9,
    "vit_resnas_tiny": 1.8e9,
    "vit_resnas_small": 2.8e9,
    "vit_resnas_medium": 4.5e9,
}


@pytest.mark.parametrize(
    "name, distilled", [(n, False) for n in VARIANTS] + [("vit_resnas_small", True)]
)
def test_exact_counts(name, distilled):
    """Params match the closed form; MACs match the official estimator's formula and the paper."""
    with torch.device("meta"):
        model = lv.create_model(name, distilled=distilled)
    prefix = 2 if distilled else 1
    arch = arch_from_network_def(NETWORK_DEFS[name])
    assert count_params(model) == _expected_params(arch, 224, 14, 1000, prefix)
    macs = count_ops(model, (3, 224, 224)).macs
    assert macs == _official_macs(NETWORK_DEFS[name], prefix=prefix)
    if not distilled:
        assert abs(macs / PAPER_MACS[name] - 1) < 0.03


def test_cifar_counts():
    """At 32×32 (patch 2) the token counts equal ImageNet's: MACs differ only in the stem."""
    with torch.device("meta"):
        model = lv.create_model("vit_resnas_small", img_size=32, num_classes=10)
    arch = arch_from_network_def(NETWORK_DEFS["vit_resnas_small"])
    assert count_params(model) == _expected_params(arch, 32, 2, 10, 1)
    assert count_ops(model, (3, 32, 32)).macs == _official_macs(
        arch_to_network_def(arch, 10), img=32, patch=2
    )
