"""Patch slimming (arXiv 2106.02852): nested static keep sets, gathering, compress()."""

from __future__ import annotations

import pytest
import torch

import leanvision as lv
from leanvision.errors import ConfigError, UnsupportedModelError
from leanvision.layers import SlimmedViT
from leanvision.methods.pruning.patch_slimming import attention_maps, slim_keep_sets


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    torch.set_num_threads(1)


def _vit(depth: int = 6, **kw):
    torch.manual_seed(0)
    kw = {"img_size": 32, "patch_size": 4, "num_classes": 10, "embed_dim": 32, "num_heads": 2, **kw}
    return lv.create_model("deit_tiny_patch16_224", depth=depth, **kw).eval()


def test_keep_sets_are_nested_and_shrink_with_tolerance():
    vit = _vit()
    attn = attention_maps(vit, torch.randn(8, 3, 32, 32))
    assert len(attn) == 6 and attn[0].shape == (65, 65)
    torch.testing.assert_close(attn[0].sum(-1), torch.ones(65))
    sizes = []
    for eps in (0.0, 0.1, 0.3):
        sets = slim_keep_sets(attn, 1, eps)
        for above, below in zip(sets[1:], sets[:-1]):
            assert set(above) <= set(below)  # kept at l+1 ⊆ kept at l
        assert all(0 in s for s in sets)  # the class token is always kept
        sizes.append(sum(len(s) for s in sets))
    assert sizes[0] == 6 * 65 and sizes[0] > sizes[1] > sizes[2]


def test_keep_sets_follow_the_attention():
    """A token nobody attends to is dropped first; one the class token attends to is kept."""
    n = 5
    a = torch.full((n, n), 0.2)
    a[:, 3] = 0.0  # nobody looks at token 3
    a[0] = torch.tensor([0.1, 0.0, 0.9, 0.0, 0.0])  # the class token looks at token 2
    a = a / a.sum(-1, keepdim=True)
    sets = slim_keep_sets([a, a], 1, 0.2)
    assert 2 in sets[-1] and 3 not in sets[-1]


def test_slimmed_vit_runs_fewer_tokens_and_equals_dense_when_nothing_is_dropped():
    vit = _vit()
    x = torch.randn(2, 3, 32, 32)
    full = SlimmedViT(vit, [list(range(65))] * 6)
    with torch.no_grad():
        torch.testing.assert_close(full(x), vit(x))
    keep = [list(range(65))] * 2 + [list(range(40))] * 2 + [[0, 5, 9]] * 2
    slim = SlimmedViT(vit, keep)
    with torch.no_grad():
        out = slim(x)
    assert out.shape == (2, 10)
    assert slim.last_tokens_per_block == [65, 65, 40, 40, 3, 3]
    with pytest.raises(ConfigError, match="nested"):
        SlimmedViT(vit, [[0, 1]] + [[0, 2]] * 5)
    with pytest.raises(ConfigError, match="one keep set per block"):
        SlimmedViT(vit, [[0]])
    with pytest.raises(UnsupportedModelError):
        SlimmedViT(lv.create_model("resnet20_cifar"), [[0]])


def test_compress_patch_slimming_hits_the_macs_target_and_round_trips(tmp_path):
    data = lv.load_data(
        "mnist5k", batch_size=8, image_size=32, max_train=32, max_val=16, max_test=16
    )
    vit = _vit(in_chans=1)
    slim = lv.compress(
        vit,
        "patch_slimming",
        data,
        target_macs_ratio=0.6,
        calib_images=16,
        finetune_epochs=1,
        max_steps=2,
        progress=False,
        log=False,
    )
    assert isinstance(slim, SlimmedViT)
    from leanvision.profiling import count_ops

    ratio = count_ops(slim, (1, 32, 32)).macs / count_ops(vit, (1, 32, 32)).macs
    assert abs(ratio - 0.6) < 0.05
    with torch.no_grad():
        slim(torch.randn(1, 1, 32, 32))
    assert slim.last_tokens_per_block[-1] < 65
    back = lv.load(lv.save(slim, tmp_path / "slim.pt"))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back(x), slim(x))
    with pytest.raises(ConfigError, match="exactly one"):
        lv.compress(vit, "patch_slimming", data)


def test_patch_slimming_on_our_augvit(tiny_augvit):
    aug = tiny_augvit()
    attn = attention_maps(aug, torch.randn(4, 3, 32, 32))
    keep = slim_keep_sets(attn, 1, 0.3)
    slim = SlimmedViT(aug, keep)
    with torch.no_grad():
        assert slim(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert slim.last_tokens_per_block == [len(k) for k in keep]
    assert slim.last_tokens_per_block[-1] < 65
