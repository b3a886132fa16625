"""PyramidTNT mechanics: word/sentence embedding, the inner → outer coupling, pyramid
down-sampling of both token sets, spatial-reduction attention, the CIFAR rule, and the exact
sizes of the four official variants (built on the meta device, so the big ones cost nothing)."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F

import leanvision as lv
from leanvision.errors import ConfigError, InputShapeError
from leanvision.models.pyramid_tnt import PyramidTNT, WordAggregation
from leanvision.profiling import count_ops, count_params

# name: (stage-1 outer dim, inner dim, outer heads, depths, img size, README params, README MACs)
VARIANTS = {
    "ptnt_ti": (80, 5, 2, (2, 6, 3, 2), 192, 10.6e6, 0.6e9),
    "ptnt_s": (128, 8, 4, (2, 8, 4, 2), 256, 32.0e6, 3.3e9),
    "ptnt_m": (192, 12, 4, (2, 8, 6, 2), 256, 85.0e6, 8.2e9),
    "ptnt_b": (256, 16, 4, (2, 10, 6, 2), 256, 157.0e6, 16.0e9),
}


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    torch.set_num_threads(1)


def _meta(name: str, **kwargs) -> PyramidTNT:
    with torch.device("meta"):
        return lv.create_model(name, **kwargs)


def _tiny(**kwargs) -> PyramidTNT:
    """A small PyramidTNT with the ImageNet stem (8×8 patches) and spatial reduction; stage 2 is
    deep enough (> 6 blocks) to have two inner blocks."""
    torch.manual_seed(0)
    cfg = dict(
        img_size=64,
        stem_stride=2,
        sr_ratios=(4, 2, 1, 1),
        outer_dims=(16, 32, 64, 64),
        inner_dims=(4, 8, 16, 16),
        outer_heads=(2, 2, 4, 4),
        inner_heads=(1, 2, 2, 2),
        depths=(1, 7, 1, 1),
        num_classes=7,
    )
    cfg.update(kwargs)
    return PyramidTNT(**cfg).eval()


def _expected_params(outer: int, inner: int, heads: int, depths, img: int) -> int:
    """Parameter count of the official architecture, written out layer by layer."""

    def conv(i, o):  # 3×3 conv with bias
        return 9 * i * o + o

    def lin(i, o, bias=True):
        return i * o + (o if bias else 0)

    d = [outer * m for m in (1, 2, 4, 4)]
    c = [inner * m for m in (1, 2, 4, 4)]
    h = [heads * m for m in (1, 2, 4, 4)]
    sr = (4, 2, 1, 1)
    c0 = c[0]
    total = conv(3, 2 * c0) + 4 * c0 + conv(2 * c0, c0) + 2 * c0  # shared conv, word conv (+BN)
    total += conv(2 * c0, 4 * c0) + 8 * c0 + conv(4 * c0, 8 * c0) + 16 * c0 + conv(8 * c0, d[0])
    total += 2 * d[0]
    g = img // 8
    total += g * g * d[0] + 16 * c0  # outer / inner position embeddings
    for i, depth in enumerate(depths):
        if i:  # word and sentence aggregation: LN + 3×3 stride-2 conv each
            total += 2 * c[i - 1] + conv(c[i - 1], c[i]) + 2 * d[i - 1] + conv(d[i - 1], d[i])
            g = math.ceil(g / 2)
        total += h[i] * g * g * (g // sr[i]) ** 2  # attention bias shared by the stage
        D, C = d[i], c[i]
        for j in range(depth):
            total += 4 * D + lin(D, D, False) + lin(D, 2 * D, False) + lin(D, D)  # LNs, q, kv, proj
            total += lin(D, 4 * D) + lin(4 * D, D)  # MLP
            if sr[i] > 1:
                total += lin(D, D) + 2 * D  # key/value reduction Linear + LN
            if j == 0 or (j == 1 and depth > 6):  # inner transformer + words → sentence proj
                total += 3 * 2 * 16 * C + lin(C, C, False) + lin(C, 2 * C, False) + lin(C, C)
                total += lin(C, 4 * C) + lin(4 * C, C) + lin(16 * C, D, False) + 2 * D
    return total + 2 * d[-1] + lin(d[-1], 1000)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_published_sizes(name):
    """Params equal the official architecture's count (within 1 % of the README); MACs (convs,
    linears and the attention matmuls) within 3 % of the README's "FLOPs"."""
    outer, inner, heads, depths, img, ref_params, ref_macs = VARIANTS[name]
    model = _meta(name)
    assert tuple(model.pretrained_cfg["input_size"]) == (3, img, img)
    params = count_params(model)
    assert params == _expected_params(outer, inner, heads, depths, img)
    assert math.isclose(params, ref_params, rel_tol=0.01), params
    macs = count_ops(model, (3, img, img)).macs
    assert math.isclose(macs, ref_macs, rel_tol=0.03), macs
    # The README gives one decimal of GMACs (one significant digit for Ti): ours rounds to it.
    assert round(macs / 1e9, 1) == round(ref_macs / 1e9, 1), macs


def test_inner_blocks_per_stage():
    """Only the first block of a stage (and the second in stages deeper than 6) has the inner
    transformer and the words → sentence projection."""
    for name, expected in (("ptnt_ti", (1, 1, 1, 1)), ("ptnt_b", (1, 2, 1, 1))):
        model = _meta(name)
        for stage, n_inner in zip(model.stages, expected):
            flags = [blk.has_inner for blk in stage.blocks]
            assert flags == [j < n_inner for j in range(len(flags))]
            assert all(hasattr(b, "proj") == b.has_inner for b in stage.blocks)


def _stage_shapes(model: PyramidTNT, size: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    shapes = []
    hooks = [
        s.register_forward_hook(
            lambda m, i, o: shapes.append((tuple(o[0].shape), tuple(o[1].shape)))
        )
        for s in model.stages
    ]
    with torch.no_grad():
        model(torch.randn(1, 3, size, size, device=next(model.parameters()).device))
    for hk in hooks:
        hk.remove()
    return shapes


@pytest.mark.parametrize(
    "img, grids, srs", [(192, (24, 12, 6, 3), (4, 2, 1, 1)), (32, (8, 4, 2, 1), (1, 1, 1, 1))]
)
def test_token_counts_per_stage(img, grids, srs):
    """Each stage halves the sentence grid, keeps 16 words per sentence and widens both token
    sets; outer attention sees the grid pooled by sr_ratio (ImageNet and CIFAR builds)."""
    model = _meta("ptnt_ti", img_size=img)
    shapes = _stage_shapes(model, img)
    for (words, sentences), g, mult, stage, sr in zip(
        shapes, grids, (1, 2, 4, 4), model.stages, srs
    ):
        assert sentences == (1, g * g, 80 * mult)
        assert words == (g * g, 16, 5 * mult)
        assert stage.grid == (g, g)
        assert stage.attn_bias.shape == (1, 2 * mult, g * g, (g // sr) ** 2)
        assert stage.blocks[0].outer_attn.sr_ratio == sr


def test_stem_cuts_word_map_into_4x4_words():
    """Words are the 4×4 unfold of the word map, sentences the stride-8 sentence map."""
    model = _tiny()
    stem, x = model.stem, torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        words, sentences = stem(x)
        common = stem.common(x)
        ref = F.unfold(stem.inner(common), 4, stride=4)  # (B, c·16, N)
        ref = ref.transpose(1, 2).reshape(2 * 64, 4, 16).transpose(1, 2)
        ref_sent = stem.outer(common).flatten(2).transpose(1, 2)
    assert words.shape == (2 * 64, 16, 4) and sentences.shape == (2, 64, 16)
    torch.testing.assert_close(words, ref)
    torch.testing.assert_close(sentences, ref_sent)


def test_word_aggregation_builds_group_maps():
    """Word aggregation = conv over the 8×8 word map of each 2×2 patch group, laid out as in the
    image, with zero-padding of an odd grid (here 3×5 patches)."""
    torch.manual_seed(0)
    agg = WordAggregation(4, 6).eval()
    b, h, w, k = 2, 3, 5, 4
    x = torch.randn(b * h * w, k * k, 4)
    with torch.no_grad():
        out = agg(x, (h, w))
        y = agg.norm(x).reshape(b, h, w, k, k, 4)
        gh, gw = math.ceil(h / 2), math.ceil(w / 2)
        maps = torch.zeros(b, gh, gw, 2 * k, 2 * k, 4)
        for bi in range(b):
            for i in range(gh):
                for j in range(gw):
                    for dr in range(2):
                        for dc in range(2):
                            pi, pj = 2 * i + dr, 2 * j + dc
                            if pi < h and pj < w:
                                maps[bi, i, j, dr * k : dr * k + k, dc * k : dc * k + k] = y[
                                    bi, pi, pj
                                ]
        ref = agg.conv(maps.reshape(-1, 2 * k, 2 * k, 4).permute(0, 3, 1, 2))
        ref = ref.flatten(2).transpose(1, 2)
    assert out.shape == (b * gh * gw, k * k, 6)
    torch.testing.assert_close(out, ref)


def _perturbed(model: PyramidTNT, x: torch.Tensor, param: torch.nn.Parameter) -> torch.Tensor:
    with torch.no_grad():
        saved = param.clone()
        param.add_(torch.randn_like(param))
        out = model(x)
        param.copy_(saved)
    return out


def test_inner_tokens_feed_outer_tokens():
    """The word branch reaches the logits through every stage's inner projection, and only
    through it: with the projections zeroed, the words no longer matter."""
    model = _tiny()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        base = model(x)
    for stage in model.stages:
        out = _perturbed(model, x, stage.blocks[0].proj.weight)
        assert not torch.allclose(out, base, atol=1e-5)
    word_params = [
        model.inner_pos,
        model.stem.inner[0].weight,
        model.stages[1].word_merge.conv.weight,
    ]
    for p in word_params:
        assert not torch.allclose(_perturbed(model, x, p), base, atol=1e-5)
    with torch.no_grad():
        for blk in model.modules():
            if getattr(blk, "has_inner", False):
                blk.proj.weight.zero_()
        cut = model(x)
    for p in word_params:  # LN of a zero projection is zero: the words are cut off
        torch.testing.assert_close(_perturbed(model, x, p), cut)


def test_outer_attention_reduces_keys_and_uses_stage_bias():
    """Stage-1 keys/values come from the 8×8 grid pooled by 4 (4 tokens); the stage's attention
    bias, shared by its blocks, enters the logits."""
    model = _tiny()
    seen = []
    attn = model.stages[0].blocks[0].outer_attn
    hook = attn.kv.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        base = model(x)
    hook.remove()
    assert seen == [(2, 4, 16)]
    assert model.stages[0].attn_bias.shape == (1, 2, 64, 4)
    for stage in model.stages[:3]:  # a one-token stage has softmax 1 whatever the bias
        assert not torch.allclose(_perturbed(model, x, stage.attn_bias), base, atol=1e-5)


def test_cifar_rule_and_overrides():
    """img_size <= 64 selects the stride-1 stem and no spatial reduction; explicit keywords win."""
    cifar, imnet = _meta("ptnt_ti", img_size=32), _meta("ptnt_ti")
    assert cifar.stem.common[0].stride == (1, 1) and imnet.stem.common[0].stride == (2, 2)
    assert [s.blocks[0].outer_attn.sr_ratio for s in cifar.stages] == [1, 1, 1, 1]
    assert [s.blocks[0].outer_attn.sr_ratio for s in imnet.stages] == [4, 2, 1, 1]
    assert [f["reduction"] for f in cifar.feature_info] == [4, 8, 16, 32]
    assert [f["reduction"] for f in imnet.feature_info] == [8, 16, 32, 64]
    forced = _meta("ptnt_ti", img_size=64, stem_stride=2, sr_ratios=(2, 1, 1, 1))
    assert forced.stem.common[0].stride == (2, 2) and forced.stages[0].grid == (8, 8)
    assert forced.stages[0].blocks[0].outer_attn.sr_ratio == 2
    with pytest.raises(ConfigError, match="multiple"):
        _meta("ptnt_ti", img_size=100)
    with pytest.raises(InputShapeError, match="built for"):
        _tiny()(torch.randn(1, 3, 32, 32))


def test_forward_intermediates_and_features_only():
    model = _tiny()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert [tuple(m.shape) for m in maps] == [
            (2, 16, 8, 8), (2, 32, 4, 4), (2, 64, 2, 2), (2, 64, 1, 1)
        ]  # fmt: skip
        nlc = model.forward_intermediates(x, indices=[0], output_fmt="NLC", intermediates_only=True)
        torch.testing.assert_close(nlc[0], maps[0].flatten(2).transpose(1, 2))
        normed = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
        torch.testing.assert_close(normed[0], final.transpose(1, 2).reshape(2, 64, 1, 1))

    torch.manual_seed(0)
    full = lv.create_model("ptnt_ti", img_size=32).eval()
    torch.manual_seed(0)
    feat = timm.create_model("ptnt_ti", features_only=True, img_size=32, out_indices=(1, 3)).eval()
    assert feat.feature_info.channels() == [160, 320]
    assert feat.feature_info.reduction() == [8, 32]
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        got = feat(x)
        ref = full.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
    assert [tuple(m.shape) for m in got] == [(1, 160, 4, 4), (1, 320, 1, 1)]
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)


def test_export_with_odd_grid():
    """torch.export follows the odd-grid padding path (7×7 → 4×4 sentences) exactly."""
    model = _tiny(img_size=56)
    assert [s.grid for s in model.stages] == [(7, 7), (4, 4), (2, 2), (1, 1)]
    x = torch.randn(2, 3, 56, 56)
    program = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-4, atol=1e-4)


def test_drop_path_grows_linearly():
    model = _tiny(drop_path_rate=0.3, depths=(1, 1, 1, 1))
    rates = [s.blocks[0].drop_path.drop_prob for s in model.stages[1:]]
    assert rates == pytest.approx([0.1, 0.2, 0.3])
    assert isinstance(model.stages[0].blocks[0].drop_path, torch.nn.Identity)
