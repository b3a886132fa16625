"""DynamicViT (arXiv 2106.02034): masked attention, token gathering, losses, compress()."""

from __future__ import annotations

import math

import pytest
import torch

import leanvision as lv
from leanvision.engine import Hook
from leanvision.errors import ConfigError, UnsupportedModelError
from leanvision.layers.token_pruning import DynamicViT, _block, softmax_with_policy


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    torch.set_num_threads(1)


def _vit(depth: int = 4, **kw):
    torch.manual_seed(0)
    kw = {"img_size": 32, "patch_size": 4, "num_classes": 10, "embed_dim": 32, "num_heads": 2, **kw}
    return lv.create_model("deit_tiny_patch16_224", depth=depth, **kw)


def test_softmax_with_policy():
    """All kept: the softmax. Dropped keys get no weight (but a token's own); rows sum to 1."""
    torch.manual_seed(0)
    a = torch.randn(2, 3, 5, 5)
    ones = torch.ones(2, 5, 1)
    torch.testing.assert_close(softmax_with_policy(a, ones), a.softmax(-1), atol=1e-5, rtol=0)
    policy = torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0]] * 2).unsqueeze(-1)
    w = softmax_with_policy(a, policy)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 5), atol=1e-5, rtol=0)
    assert w[:, :, 0, 1].max() < 1e-5 and w[:, :, 2, 3].max() < 1e-5  # dropped keys
    assert w[:, :, 1, 1].min() > 1e-3  # a dropped query still attends to itself
    kept = a[..., [0, 2, 4]].softmax(-1)  # kept queries: the softmax over kept keys
    torch.testing.assert_close(w[:, :, 0][..., [0, 2, 4]], kept[:, :, 0], atol=1e-5, rtol=0)


def test_block_with_full_policy_is_the_timm_block():
    vit = _vit().eval()
    x = torch.randn(2, 65, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            _block(vit.blocks[0], x, torch.ones(2, 65, 1)), vit.blocks[0](x), atol=1e-5, rtol=0
        )


def test_our_augvit_trains_with_policy_attention_through_its_own_block(tiny_augvit):
    """Aug-ViT's augmented shortcuts stay in the masked forward (its block's forward runs)."""
    aug = tiny_augvit()
    x = torch.randn(2, 65, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            _block(aug.blocks[1], x, torch.ones(2, 65, 1)), aug.blocks[1](x), atol=1e-5, rtol=0
        )
    assert "forward" not in vars(aug.blocks[1].attn)  # the patch is removed after the call
    dyn = DynamicViT(aug, keep_ratio=0.7).train()
    dyn(torch.randn(2, 3, 32, 32)).sum().backward()
    dyn.eval()
    with torch.no_grad():
        dyn(torch.randn(1, 3, 32, 32))
    assert dyn.last_tokens_per_block == [65, 45, 32, 22]


def test_inference_runs_fewer_tokens_and_keeps_the_top_scored():
    """ρ = 0.7 on 64 patches: ⌊44.8⌋, ⌊31.36⌋, ⌊21.95⌋ = 44, 31, 21 tokens (+ class token)
    after the three stages, as the official ``int(init_n * token_ratio)``."""
    dyn = DynamicViT(_vit(depth=12), keep_ratio=0.7).eval()
    assert dyn.prune_locs == [3, 6, 9]
    with torch.no_grad():
        out = dyn(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 10)
    kept = [math.floor(64 * 0.7**s) + 1 for s in (1, 2, 3)]
    assert kept == [45, 32, 22]
    assert dyn.last_tokens_per_block == [65] * 3 + [kept[0]] * 3 + [kept[1]] * 3 + [kept[2]] * 3
    # the gathered tokens are the highest-scored ones: score = minus the token's position
    seen = {}

    def fake(tokens, policy):
        pos = (
            torch.arange(tokens.shape[1], dtype=tokens.dtype)
            .view(1, -1)
            .expand(tokens.shape[0], -1)
        )
        seen.setdefault("in", tokens.detach().clone())
        return torch.stack([-pos, pos], -1)

    dyn.predictors[0].forward = fake
    captured = {}
    dyn.backbone.blocks[3].register_forward_pre_hook(lambda m, a: captured.setdefault("x", a[0]))
    with torch.no_grad():
        dyn(torch.randn(1, 3, 32, 32))
    torch.testing.assert_close(captured["x"][:, 1:], seen["in"][:, :44])


def test_keep_rounding_ceil_keeps_the_old_counts_and_old_saves_load_as_they_ran():
    """keep_rounding="ceil": ⌈ρ_s·N⌉ (46, 33, 23 with the class token); a model saved before
    the option existed (no keep_rounding in its record) rebuilds with ceil."""
    from leanvision.methods.pruning.dynamicvit import _rebuild

    dyn = DynamicViT(_vit(depth=12), keep_ratio=0.7, keep_rounding="ceil").eval()
    with torch.no_grad():
        dyn(torch.randn(1, 3, 32, 32))
    assert dyn.last_tokens_per_block == [65] * 3 + [46] * 3 + [33] * 3 + [23] * 3
    assert [dyn.num_keep(64, s) for s in range(3)] == [45, 32, 22]
    floor = DynamicViT(_vit(depth=12), keep_ratio=0.7)
    assert floor.keep_rounding == "floor"
    assert [floor.num_keep(64, s) for s in range(3)] == [44, 31, 21]
    assert [floor.num_keep(196, s) for s in range(3)] == [137, 96, 67]  # DeiT-S at 224, ρ 0.7
    old = _rebuild(_vit(depth=12), {"keep_ratio": 0.7, "prune_locs": [3, 6, 9]})
    assert old.keep_rounding == "ceil"
    with pytest.raises(ConfigError, match="keep_rounding"):
        DynamicViT(_vit(), keep_rounding="round")


def test_training_masks_instead_of_dropping():
    dyn = DynamicViT(_vit(), keep_ratio=0.5).train()
    out = dyn(torch.randn(4, 3, 32, 32))
    decisions = dyn.aux["decisions"]
    assert out.shape == (4, 10) and len(decisions) == 3
    assert all(d.shape == (4, 64) for d in decisions)
    for prev, cur in zip(decisions, decisions[1:]):
        assert torch.all(cur <= prev)  # kept sets shrink
    out.sum().backward()
    assert dyn.predictors[0].out_conv[0].weight.grad.abs().sum() > 0  # gradients reach them


def test_bad_models_and_values():
    with pytest.raises(UnsupportedModelError):
        DynamicViT(lv.create_model("resnet20_cifar"))
    with pytest.raises(UnsupportedModelError, match="class-token"):
        DynamicViT(_vit(global_pool="avg"))
    with pytest.raises(ConfigError):
        DynamicViT(_vit(), keep_ratio=0.0)
    with pytest.raises(ConfigError):
        DynamicViT(_vit(), prune_locs=[2, 1])


class _Recorder(Hook):
    def __init__(self) -> None:
        self.terms: list[dict[str, float]] = []

    def on_loss(self, trainer, ctx) -> None:
        self.terms.append({k: float(v.detach()) for k, v in ctx.losses.items()})


def test_compress_dynamicvit_trains_and_round_trips(tmp_path):
    data = lv.load_data(
        "mnist5k", batch_size=8, image_size=32, max_train=32, max_val=16, max_test=16
    )
    vit = _vit(in_chans=1)
    dyn = lv.compress(
        vit,
        "dynamicvit",
        data,
        keep_ratio=0.7,
        finetune_epochs=1,
        max_steps=2,
        progress=False,
        log=False,
    )
    assert isinstance(dyn, DynamicViT) and not dyn.training
    # the backbone trained at 1/100 of the predictors' rate: it moved much less
    moved = (dyn.backbone.blocks[0].attn.qkv.weight - vit.blocks[0].attn.qkv.weight).abs().max()
    assert 0 < moved < 1e-3
    back = lv.load(lv.save(dyn, tmp_path / "dyn.pt"))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back(x), dyn(x))
    assert back.last_tokens_per_block == dyn.last_tokens_per_block


def test_dynamicvit_losses():
    from leanvision.methods.pruning.dynamicvit import DynamicViTHook

    data = lv.load_data("mnist5k", batch_size=8, image_size=32, max_train=16, max_val=8, max_test=8)
    vit = _vit(in_chans=1)
    dyn = DynamicViT(vit, keep_ratio=0.7)
    rec = _Recorder()
    import copy

    lv.train(
        dyn,
        data,
        hooks=[DynamicViTHook(copy.deepcopy(vit)), rec],
        epochs=1,
        max_steps=1,
        progress=False,
        log=False,
    )
    terms = rec.terms[0]
    assert set(terms) == {"task", "keep_ratio", "kd", "token_kd"}
    assert all(v >= 0 for v in terms.values()) and terms["keep_ratio"] > 0
