"""Transformer-LS (arXiv 2107.02192): the long-short attention layer and the ViL-LS backbone."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import leanvision as lv
from leanvision.layers.long_short_attention import LongShortAttention
from leanvision.models.vil_ls import FullAttention2d, parse_arch
from leanvision.profiling import count_ops, count_params, peak_memory_mb


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    """One torch thread: on a loaded 2-core machine two spinning OpenMP threads are far slower."""
    torch.set_num_threads(1)


def _layer(dim=24, heads=3, w=3, r=4, g=1, rpe=False, seed=0) -> LongShortAttention:
    torch.manual_seed(seed)
    layer = LongShortAttention(dim, heads, window_size=w, dp_rank=r, nglo=g, rpe=rpe).eval()
    with torch.no_grad():  # non-trivial LayerNorm affine parameters
        for p in layer.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return layer


def _in_window(layer: LongShortAttention, qy: int, qx: int, ky: int, kx: int) -> bool:
    """Short-term rule written from the paper: a query's segment plus w//2 (>= 1) around it."""
    w, s = layer.window_size, max(layer.window_size // 2, 1)
    sy, sx = (qy // w) * w, (qx // w) * w
    return sy - s <= ky < sy + w + s and sx - s <= kx < sx + w + s


def _reference(layer: LongShortAttention, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Brute-force long-short attention: dense N×N scores with an explicit mask."""
    b, n, c = x.shape
    H, W = hw
    g, nh, d, r = layer.nglo, layer.num_heads, layer.head_dim, layer.dp_rank
    q, k, v = layer.qkv(x).chunk(3, dim=-1)
    k, v = layer.dual_ln_full(k), layer.dual_ln_full(v)
    q, k, v = (t.reshape(b, n, nh, d).transpose(1, 2) for t in (q * layer.scale, k, v))
    pos = [(i // W, i % W) for i in range(H * W)]
    allowed = torch.tensor([[_in_window(layer, *p, *o) for o in pos] for p in pos])
    bias = torch.zeros(nh, H * W, H * W).masked_fill(~allowed, float("-inf"))
    if layer.rpe:
        w, s = layer.window_size, max(layer.window_size // 2, 1)
        for (i, (qy, qx)), (j, (ky, kx)) in itertools.product(enumerate(pos), repeat=2):
            idx = (qy - ky + w + s - 1) * (w + 2 * s) + (qx - kx + w + s - 1)
            if allowed[i, j]:
                bias[:, i, j] += layer.local_relative_position_bias_table[idx]
    keys, vals, biases = [k[:, :, g:]], [v[:, :, g:]], [bias.expand(b, -1, -1, -1)]
    if r > 0:
        p = layer.to_dynamic_projection(x[:, g:]).reshape(b, H * W, nh, r).permute(0, 2, 3, 1)
        p = p.softmax(dim=-1)  # (B, h, r, HW)
        kp = layer.dual_ln_dp((p @ k[:, :, g:]).transpose(1, 2).reshape(b, r, c))
        vp = layer.dual_ln_dp((p @ v[:, :, g:]).transpose(1, 2).reshape(b, r, c))
        keys.append(kp.reshape(b, r, nh, d).transpose(1, 2))
        vals.append(vp.reshape(b, r, nh, d).transpose(1, 2))
        biases.append(torch.zeros(b, nh, H * W, r))
    keys.append(k[:, :, :g])
    vals.append(v[:, :, :g])
    biases.append(torch.zeros(b, nh, H * W, g))
    scores = q[:, :, g:] @ torch.cat(keys, 2).transpose(-1, -2) + torch.cat(biases, -1)
    out = scores.softmax(-1) @ torch.cat(vals, 2)
    if g > 0:  # global tokens: over their own keys and the image tokens' outputs
        kg = torch.cat([k[:, :, :g], out], 2)
        vg = torch.cat([v[:, :, :g], out], 2)
        out = torch.cat([(q[:, :, :g] @ kg.transpose(-1, -2)).softmax(-1) @ vg, out], 2)
    return layer.proj(out.transpose(1, 2).reshape(b, n, c))


@pytest.mark.parametrize(
    "hw, w, r, g, rpe",
    [
        ((6, 6), 2, 0, 0, False),
        ((6, 9), 3, 0, 1, False),
        ((7, 9), 3, 4, 1, True),  # sides not multiples of w: padded + masked
        ((8, 8), 4, 2, 2, True),
        ((5, 7), 1, 3, 1, False),  # w = 1 still sees one ring around itself
    ],
)
def test_matches_masked_dense_reference(hw, w, r, g, rpe):
    layer = _layer(w=w, r=r, g=g, rpe=rpe)
    x = torch.randn(2, g + hw[0] * hw[1], 24)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, hw), _reference(layer, x, hw), atol=2e-5, rtol=1e-4)


def test_window_covering_map_is_dense_attention():
    """w >= map side, no projection, no global token: plain softmax attention over all tokens."""
    layer = _layer(w=8, r=0, g=0)
    hw, x = (5, 6), torch.randn(2, 30, 24)
    with torch.no_grad():
        q, k, v = layer.qkv(x).chunk(3, dim=-1)
        k, v = layer.dual_ln_full(k), layer.dual_ln_full(v)
        q, k, v = (t.reshape(2, 30, 3, 8).transpose(1, 2) for t in (q, k, v))
        dense = F.scaled_dot_product_attention(q, k, v)
        dense = layer.proj(dense.transpose(1, 2).reshape(2, 30, 24))
        torch.testing.assert_close(layer(x, hw), dense, atol=2e-5, rtol=1e-4)


def _grad_support(out: torch.Tensor, wrt: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(out.sum(), wrt)
    return grad.abs().flatten(2).sum(-1) > 0  # (B, tokens) or (B, heads, tokens)


@pytest.mark.parametrize("query", [(0, 0), (4, 5), (8, 9)])
def test_receptive_field_without_projection(query):
    """Without the projection an image token depends exactly on its window and the globals."""
    layer, (H, W), g = _layer(w=3, r=0, g=1), (9, 10), 1
    x = torch.randn(1, g + H * W, 24, requires_grad=True)
    i = g + query[0] * W + query[1]
    support = _grad_support(layer(x, (H, W))[:, i], x)[0]
    expected = [True] * g + [_in_window(layer, *query, y, xx) for y in range(H) for xx in range(W)]
    assert support.tolist() == expected
    assert 0 < sum(expected[g:]) < H * W  # the window really is local here


def test_receptive_field_window_projection_global():
    """Per key type: local keys only in the window; every projected key; every global key."""
    layer, (H, W), g, r = _layer(w=3, r=4, g=2), (9, 10), 2, 4
    q, k, v = (torch.randn(1, 3, g + H * W, 8, requires_grad=True) for _ in range(3))
    kp, vp = (torch.randn(1, 3, r, 8, requires_grad=True) for _ in range(2))
    query = (4, 5)
    out = layer.attend(q, k, v, (H, W), kp, vp)[:, :, g + query[0] * W + query[1]]
    grads = torch.autograd.grad(out.sum(), (k, v, kp, vp))
    window = [_in_window(layer, *query, y, xx) for y in range(H) for xx in range(W)]
    for grad in grads[:2]:  # keys and values: globals + window, nothing else
        support = (grad.abs().sum(-1) > 0)[0]
        assert all(support[h].tolist() == [True] * g + window for h in range(3))
    for grad in grads[2:]:  # projected keys/values: all r of them
        assert (grad.abs().sum(-1) > 0).all()
    # ... and through P every image token reaches every output.
    x = torch.randn(1, g + H * W, 24, requires_grad=True)
    assert _grad_support(layer(x, (H, W))[:, g + query[0] * W + query[1]], x).all()


def test_dual_layernorm():
    layer = _layer(w=3, r=4, g=1)
    full, dp = layer.dual_ln_full, layer.dual_ln_dp
    assert isinstance(full, nn.LayerNorm) and isinstance(dp, nn.LayerNorm) and full is not dp
    hw, x = (6, 6), torch.randn(2, 37, 24)
    with torch.no_grad():
        base = layer(x, hw)
        # Keys and values (full and projected alike) are normalised: their scale is irrelevant.
        c = layer.qkv.out_features // 3
        layer.qkv.weight[c:] *= 5.0
        layer.qkv.bias[c:] *= 5.0
        torch.testing.assert_close(layer(x, hw), base, atol=1e-4, rtol=1e-3)
        # Each of the two LayerNorms is on the path.
        for ln in (layer.dual_ln_full, layer.dual_ln_dp):
            ln.weight.mul_(1.5)
            assert not torch.allclose(layer(x, hw), base, atol=1e-3)
            ln.weight.div_(1.5)


class _MaxNumel(TorchDispatchMode):
    """Largest tensor any aten op produces."""

    def __init__(self) -> None:
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


class _OnMap(nn.Module):
    """Attention on a fixed H×W map, callable with one tensor (for the profilers)."""

    def __init__(self, attn: nn.Module, hw: tuple[int, int]) -> None:
        super().__init__()
        self.attn, self.hw = attn, hw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, self.hw)


def test_no_quadratic_tensor():
    """64×64 token map: no op output reaches N² elements; the largest is the score tensor."""
    H = W = 64
    n, w, r, g, heads = H * W, 8, 4, 1, 2
    layer = LongShortAttention(16, heads, window_size=w, dp_rank=r, nglo=g, rpe=True).eval()
    x = torch.randn(1, g + n, 16)
    mode = _MaxNumel()
    with torch.no_grad(), mode:
        layer(x, (H, W))
    score_numel = heads * n * (r + layer.tile**2 + g)
    assert mode.max_numel <= score_numel < n * n // 4
    # The detector does see a dense attention's N×N scores (on a smaller map).
    small = torch.randn(1, 2, 1024, 8)
    mode = _MaxNumel()
    with torch.no_grad(), mode:
        (small @ small.transpose(-1, -2)).softmax(-1) @ small
    assert mode.max_numel >= 1024 * 1024


def test_peak_memory_grows_linearly():
    layer = LongShortAttention(32, 2, window_size=8, dp_rank=4, nglo=1, rpe=True)
    mem = [peak_memory_mb(_OnMap(layer, (s, s)), (1 + s * s, 32)) for s in (32, 64)]
    assert 3.0 < mem[1] / mem[0] < 5.0  # 4x tokens; dense scores would give ~16x


def test_layer_exports_on_uneven_map():
    layer, hw = _layer(w=4, r=3, g=1, rpe=True), (10, 11)
    x = torch.randn(2, 1 + 110, 24)
    ep = torch.export.export(_OnMap(layer, hw), (x,))
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(x), layer(x, hw))


def test_full_attention_relative_bias_layout():
    """Stage 3-4 attention: local bias indexed by the 2D offset; global biases at the borders."""
    attn, (H, W), g = FullAttention2d(12, 2, (3, 4), nglo=1), (3, 4), 1
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_()
        bias = attn._bias()
    table = attn.local_relative_position_bias_table
    for i, j in itertools.product(range(H * W), repeat=2):
        dy, dx = i // W - j // W, i % W - j % W
        entry = table[(dy + H - 1) * (2 * W - 1) + dx + W - 1]
        torch.testing.assert_close(bias[:, g + i, g + j], entry)
    torch.testing.assert_close(bias[:, 0, 0], attn.g2g_relative_position_bias[:, 0, 0])
    assert (bias[:, 0, g:] == attn.g2l_relative_position_bias[0]).all()
    assert (bias[:, g:, 0] == attn.g2l_relative_position_bias[1]).all()


def test_arch_string_and_stage_layout():
    cfgs = parse_arch("l1,h3,d96,n1,p4,r8_l2,d192")
    assert cfgs[0] | {"l": 1} == dict(l=1, h=3, d=96, n=1, s=1, g=1, p=4, f=7, a=1, r=8)
    assert cfgs[1]["d"] == 192 and cfgs[1]["r"] == 0  # official defaults fill the rest
    with pytest.raises(ValueError):
        parse_arch("l1,x3")
    with torch.device("meta"):
        model = lv.create_model("vil_ls_medium")
    kinds = [type(s.blocks[0].attn) for s in model.stages]
    assert kinds == [LongShortAttention, LongShortAttention, FullAttention2d, FullAttention2d]
    assert [len(s.blocks) for s in model.stages] == [1, 4, 16, 1]
    assert model.stages[0].blocks[0].attn.window_size == 7 and model.global_pool == "avg"
    assert [a.hw for a in (model.stages[2].blocks[0].attn, model.stages[3].blocks[0].attn)] == [
        (14, 14),
        (7, 7),
    ]


def test_cifar_rule():
    model = lv.create_model("vil_ls_medium", img_size=32, num_classes=10).eval()
    assert model.stages[0].blocks[0].attn.window_size == 4
    with torch.no_grad():
        maps = model.forward_intermediates(torch.randn(1, 3, 32, 32), intermediates_only=True)
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 2]
    assert model.pretrained_cfg["input_size"] == (3, 32, 32)


@pytest.mark.parametrize("name, params_m", [("vil_ls_medium", 39.8), ("vil_ls_base", 55.8)])
def test_param_counts(name, params_m):
    """Official README [R]: 39.8M / 55.8M (ours equal the official code's exact counts)."""
    with torch.device("meta"):
        model = lv.create_model(name)
    assert round(count_params(model) / 1e6, 1) == params_m


def test_macs_medium():
    """Official README [R]: 8.7G "FLOPs" = multiply-accumulates, all matrix products counted."""
    model = lv.create_model("vil_ls_medium")
    macs = count_ops(model, (3, 224, 224)).macs
    assert abs(macs / 8.7e9 - 1) < 0.03
