"""Aug-ViT: block-circulant projections, augmented-shortcut blocks, counts, feature diversity."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.linalg import circulant
from timm.models.vision_transformer import Block
from torch import nn

import leanvision as lv
from leanvision.analysis import FeatureDiversity, feature_diversity, token_diversity
from leanvision.errors import ConfigError, UnknownNameError
from leanvision.layers.circulant import CirculantLinear
from leanvision.models.augvit import AugBlock
from leanvision.profiling import count_ops, count_params


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # after conftest's setting: the machine's cores are shared


# --------------------------------------------------------------------------- CirculantLinear


def _hand_dense(layer: CirculantLinear) -> torch.Tensor:
    """The block-circulant matrix written out entry by entry: C_ij[r, c] = w_ij[(r - c) mod b]."""
    b, w = layer.block_size, layer.weight.detach()
    dense = torch.zeros(layer.out_features, layer.in_features)
    for i in range(layer.num_out_blocks):
        for j in range(layer.num_in_blocks):
            for r in range(b):
                for c in range(b):
                    dense[i * b + r, j * b + c] = w[i, j, (r - c) % b]
    return dense


@pytest.mark.parametrize(
    ("fin", "fout", "blocks"),
    [(8, 8, 4), (12, 8, 2), (8, 12, 4), (16, 16, 1), (6, 6, 6), (24, 12, 3)],
)
def test_circulant_dense_weight_matches_hand_built_matrix(fin: int, fout: int, blocks: int) -> None:
    torch.manual_seed(0)
    layer = CirculantLinear(fin, fout, num_blocks=blocks)
    b = min(fin, fout) // blocks
    assert layer.block_size == b
    assert layer.weight.numel() == (fout // b) * (fin // b) * b
    assert count_params(layer) == (fout // b) * (fin // b) * b + fout
    dense = _hand_dense(layer)
    torch.testing.assert_close(layer.dense_weight(), dense, rtol=0, atol=0)
    # Same pattern as scipy's circulant (first column = the block's vector), as the official code.
    torch.testing.assert_close(
        dense[:b, :b], torch.from_numpy(circulant(layer.weight[0, 0].detach().numpy()))
    )
    x = torch.randn(3, 5, fin)
    expected = x @ dense.T + layer.bias.detach()
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.forward_fft(x), expected, rtol=1e-4, atol=1e-5)
    layer.use_fft = True
    torch.testing.assert_close(layer(x), expected, rtol=1e-4, atol=1e-5)


def test_circulant_parameter_count_is_d_over_b_squared_times_b() -> None:
    layer = CirculantLinear(384, 384, num_blocks=4, bias=False)
    assert layer.block_size == 96
    assert count_params(layer) == 4 * 4 * 96 == 4 * 384  # instead of 384² for nn.Linear
    assert not any(n == "index" for n, _ in layer.state_dict().items())  # pattern not saved


def test_circulant_fft_and_dense_gradients_agree() -> None:
    torch.manual_seed(1)
    dense, fft = CirculantLinear(12, 8, num_blocks=2), CirculantLinear(12, 8, num_blocks=2)
    fft.load_state_dict(dense.state_dict())
    fft.use_fft = True
    x = torch.randn(4, 12)
    target = torch.randn(4, 8)
    for layer in (dense, fft):
        ((layer(x) - target) ** 2).sum().backward()
    torch.testing.assert_close(fft.weight.grad, dense.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fft.bias.grad, dense.bias.grad, rtol=1e-5, atol=1e-6)


def test_circulant_official_init_bounds() -> None:
    torch.manual_seed(2)
    layer = CirculantLinear(256, 256, num_blocks=4)
    bound = 1 / math.sqrt(256)  # kaiming-uniform a=√5 with fan-in = in_features
    w, bias = layer.weight.detach(), layer.bias.detach()
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    assert bias.abs().max() <= bound and bias.abs().max() > 0.9 * bound
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.1 * bound


def test_circulant_rejects_bad_block_counts() -> None:
    with pytest.raises(ValueError, match="num_blocks"):
        CirculantLinear(10, 10, num_blocks=4)
    with pytest.raises(ValueError, match="block size"):
        CirculantLinear(6, 4, num_blocks=1)  # b = 4 does not divide 6


def test_circulant_exports() -> None:
    layer = CirculantLinear(16, 8, num_blocks=2).eval()
    x = torch.randn(2, 3, 16)
    ep = torch.export.export(layer, (x,))
    torch.testing.assert_close(ep.module()(x), layer(x))


# --------------------------------------------------------------------------- blocks


def _block(mode: str, dim: int = 32, seed: int = 0) -> AugBlock:
    torch.manual_seed(seed)
    blk = AugBlock(dim, num_heads=4, aug_mode=mode, qkv_bias=True).eval()
    with torch.no_grad():  # non-trivial LayerNorm affine so "normalised input" is unambiguous
        for norm in (blk.norm1, blk.norm2):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    return blk


def _zero_aug(blk: AugBlock) -> None:
    with torch.no_grad():
        for m in blk.modules():
            if isinstance(m, CirculantLinear):
                m.weight.zero_()
                m.bias.zero_()


def test_zeroed_circulant_block_is_the_plain_deit_block() -> None:
    blk = _block("circulant")
    x = torch.randn(2, 7, 32)
    plain = Block(32, num_heads=4, qkv_bias=True).eval()
    missing, unexpected = plain.load_state_dict(blk.state_dict(), strict=False)
    assert not missing and all(k.startswith("aug_") for k in unexpected)
    assert not torch.allclose(blk(x), plain(x), atol=1e-3)  # the paths change the output
    _zero_aug(blk)
    torch.testing.assert_close(blk(x), plain(x))


@pytest.mark.parametrize("mode", ["circulant", "linear"])
def test_single_path_block_adds_projection_of_the_normalised_input(mode: str) -> None:
    blk = _block(mode)
    x = torch.randn(2, 7, 32) * 3 + 1
    ta, tm = blk.aug_attn[0], blk.aug_mlp[0]
    n1 = blk.norm1(x)
    y = x + blk.attn(n1) + ta(n1)
    n2 = blk.norm2(y)
    expected = y + blk.mlp(n2) + tm(n2)
    torch.testing.assert_close(blk(x), expected)
    # Feeding the raw input to the paths instead would give a different output.
    wrong = x + blk.attn(n1) + ta(x)
    wrong = wrong + blk.mlp(blk.norm2(wrong)) + tm(wrong)
    assert not torch.allclose(blk(x), wrong, atol=1e-3)


@pytest.mark.parametrize("mode", ["circulant2", "linear2"])
def test_two_path_block_sums_gelu_paths_and_rescales_by_three_quarters(mode: str) -> None:
    blk = _block(mode)
    assert len(blk.aug_attn) == len(blk.aug_mlp) == 2
    assert all(isinstance(p[1], nn.GELU) for p in (*blk.aug_attn, *blk.aug_mlp))
    x = torch.randn(2, 7, 32)
    n1 = blk.norm1(x)
    y = 0.75 * (x + blk.attn(n1) + blk.aug_attn[0](n1) + blk.aug_attn[1](n1))
    n2 = blk.norm2(y)
    expected = 0.75 * (y + blk.mlp(n2) + blk.aug_mlp[0](n2) + blk.aug_mlp[1](n2))
    torch.testing.assert_close(blk(x), expected)


def test_zeroed_circulant2_block_is_three_quarters_of_the_plain_residual() -> None:
    blk = _block("circulant2")
    _zero_aug(blk)  # GELU(0) = 0: only the 3/4 rescale remains
    x = torch.randn(2, 7, 32)
    y = 0.75 * (x + blk.attn(blk.norm1(x)))
    torch.testing.assert_close(blk(x), 0.75 * (y + blk.mlp(blk.norm2(y))))


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="aug_mode"):
        AugBlock(32, num_heads=4, aug_mode="circulant3")


# --------------------------------------------------------------------------- models


def _vit_params(dim: int, depth: int, tokens: int, patch: int, classes: int = 1000) -> int:
    """DeiT parameter count: patch embed, cls + pos, blocks (12d² + 13d), final LN, head."""
    embed = 3 * patch * patch * dim + dim
    return (
        embed
        + dim
        + tokens * dim
        + depth * (12 * dim * dim + 13 * dim)
        + 2 * dim
        + (dim * classes + classes)
    )


@pytest.mark.parametrize(
    ("name", "deit", "dim"),
    [
        ("augvit_tiny", "deit_tiny_patch16_224", 192),
        ("augvit_small", "deit_small_patch16_224", 384),
        ("augvit_base_circulant2", "deit_base_patch16_224", 768),
    ],
)
def test_exact_parameter_counts(name: str, deit: str, dim: int) -> None:
    with torch.device("meta"):
        ours, base = lv.create_model(name), lv.create_model(deit)
    assert ours.aug_mode == "circulant2"
    # Per block: 4 circulant projections of 4·4·(dim/4) weights + dim biases = 20·dim.
    overhead = 12 * 4 * (4 * dim + dim)
    assert count_params(base) == _vit_params(dim, 12, 197, 16)
    assert count_params(ours) == count_params(base) + overhead


def test_single_circulant_mode_halves_the_overhead() -> None:
    with torch.device("meta"):
        ours = lv.create_model("augvit_small", aug_mode="circulant")
    assert count_params(ours) == _vit_params(384, 12, 197, 16) + 12 * 2 * 5 * 384


def test_cifar_adaptation_and_dense_mac_overhead() -> None:
    ours = lv.create_model("augvit_tiny", img_size=32, num_classes=10)
    base = lv.create_model("deit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=10)
    assert ours.patch_embed.patch_size == (4, 4) and ours.pos_embed.shape[1] == 65
    assert ours.pretrained_cfg["input_size"] == (3, 32, 32)
    assert count_params(ours) == _vit_params(192, 12, 65, 4, classes=10) + 12 * 20 * 192
    # The dense circulant forward costs dim² MACs per token and projection (4 per block).
    extra = count_ops(ours, (3, 32, 32)).macs - count_ops(base, (3, 32, 32)).macs
    assert extra == 12 * 4 * 192 * 192 * 65
    assert lv.create_model("augvit_tiny", img_size=32, patch_size=8).pos_embed.shape[1] == 17


def test_fft_forward_of_whole_model_matches_dense() -> None:
    model = lv.create_model("augvit_tiny", img_size=32, num_classes=10, depth=2).eval()
    x = torch.randn(2, 3, 32, 32)
    dense = model(x)
    for m in model.modules():
        if isinstance(m, CirculantLinear):
            m.use_fft = True
    torch.testing.assert_close(model(x), dense, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------- feature diversity


def test_identical_tokens_give_exactly_zero() -> None:
    torch.manual_seed(3)
    row = torch.randn(1, 1, 16) * 0.1 + 0.1
    z = row.expand(2, 9, 16).clone()
    for norm in ("fro", "l1_linf"):
        assert torch.equal(token_diversity(z, norm), torch.zeros(2, dtype=torch.float64))
    assert token_diversity(torch.zeros(4, 5)).item() == 0.0
    z[1, 3, 0] += 1e-3
    assert token_diversity(z)[0] == 0 and token_diversity(z)[1] > 0


def test_diversity_is_scale_invariant_and_positive() -> None:
    torch.manual_seed(4)
    z = torch.randn(3, 10, 8)
    for norm in ("fro", "l1_linf"):
        r = token_diversity(z, norm)
        assert (r > 0).all()
        torch.testing.assert_close(token_diversity(7.5 * z, norm), r)
        torch.testing.assert_close(token_diversity(-0.01 * z, norm), r)
    assert (token_diversity(z) <= 1).all()


def test_diversity_known_values() -> None:
    eye = torch.eye(2)  # residual [[.5, -.5], [-.5, .5]]
    assert token_diversity(eye).item() == pytest.approx(1 / math.sqrt(2))
    assert token_diversity(eye, "l1_linf").item() == pytest.approx(1.0)
    z = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])  # mean token (3, 4)
    assert token_diversity(z).item() == pytest.approx(4 / math.sqrt(91))
    # l1_linf: residual col sums (4, 4), row sums (4, 0, 4); Z col sums (9, 12), rows (3, 7, 11)
    assert token_diversity(z, "l1_linf").item() == pytest.approx(math.sqrt(16 / (12 * 11)))
    # The mean token is the Frobenius minimiser: any other centring is farther.
    resid = torch.linalg.matrix_norm(z - z.mean(0))
    assert torch.linalg.matrix_norm(z - (z.mean(0) + 0.1)) > resid


class _Fixed(nn.Module):
    """A 'block' that ignores its input and returns fixed tokens."""

    def __init__(self, tokens: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("tokens", tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens.expand(x.shape[0], -1, -1)


class _Toy(nn.Module):
    num_prefix_tokens = 1

    def __init__(self) -> None:
        super().__init__()
        cls_differs = torch.tensor([[9.0, 9.0], [1.0, 2.0], [1.0, 2.0]])
        self.blocks = nn.Sequential(
            _Fixed(torch.ones(1, 4, 3)), _Fixed(torch.eye(2)[None]), _Fixed(cls_differs[None])
        )
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.blocks(x))


def test_feature_diversity_hooks_every_block_with_known_values() -> None:
    toy = _Toy().train()
    res = feature_diversity(toy, torch.zeros(3, 1))
    assert isinstance(res, FeatureDiversity) and len(res) == 3
    assert res.names == ["blocks.0", "blocks.1", "blocks.2"]
    assert res.values[0] == 0.0
    assert res.values[1] == pytest.approx(1 / math.sqrt(2))
    assert res.values[2] > 0
    patches_only = feature_diversity(toy, torch.zeros(3, 1), exclude_prefix_tokens=True)
    assert patches_only.values[2] == 0.0  # the patch tokens are identical, the cls differs
    assert toy.training and toy.drop.training and toy.blocks[0].training  # flags restored
    assert all(not b._forward_hooks for b in toy.blocks)
    only = feature_diversity(toy, torch.zeros(1, 1), blocks=["blocks.1"])
    assert only.as_dict() == {"blocks.1": pytest.approx(1 / math.sqrt(2))}


def test_feature_diversity_on_timm_deit_and_augvit() -> None:
    torch.manual_seed(5)
    x = torch.randn(2, 3, 32, 32)
    deit = lv.create_model("deit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=10)
    deit.train()
    res = feature_diversity(deit, x)
    assert len(res) == len(deit.blocks) == 12
    assert all(0 < v <= 1 for v in res.values)
    assert deit.training and all(m.training for m in deit.modules())
    assert all(not b._forward_hooks for b in deit.blocks)
    # Same numbers as computing r by hand on the block outputs.
    with torch.no_grad():
        deit.eval()
        tokens = deit.blocks[:4](deit.norm_pre(deit._pos_embed(deit.patch_embed(x))))
    assert res.values[3] == pytest.approx(token_diversity(tokens).mean().item(), rel=1e-5)
    aug = lv.create_model("augvit_tiny", img_size=32, num_classes=10)
    assert len(feature_diversity(aug, x, blocks=["blocks.0", "blocks.11", "norm"])) == 3


def test_feature_diversity_errors_remove_hooks_and_restore_mode() -> None:
    deit = lv.create_model("deit_tiny_patch16_224", img_size=32, patch_size=4, num_classes=10)
    deit.train()
    with pytest.raises(RuntimeError):
        feature_diversity(deit, torch.randn(1, 5, 32, 32))  # wrong channel count
    assert deit.training and all(not b._forward_hooks for b in deit.blocks)
    with pytest.raises(UnknownNameError):
        feature_diversity(deit, torch.randn(1, 3, 32, 32), blocks=["blocks.99"])
    with pytest.raises(ConfigError, match="blocks"):
        feature_diversity(nn.Linear(3, 3), torch.randn(1, 3))
    with pytest.raises(ConfigError, match="norm"):
        token_diversity(torch.randn(3, 3), norm="nuclear")
