"""GhostSR: the shift equals the one-hot depthwise convolution it stands for, the training
kernel is one-hot with a straight-through gradient, the conversion halves the replaced
convolutions' MACs and keeps head, upsampler, tail and the body's closing convolution, a
clustered conversion of a layer whose filters come in pairs is exact, and the method trains,
saves and loads through the public API."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import leanvision as lv
from leanvision.errors import ConfigError, UnsupportedModelError
from leanvision.layers import ShiftGhostConv2d, shift2d
from leanvision.methods.ghostsr import GhostNoiseHook, ghostsr_convert, ghostsr_layers
from leanvision.profiling import count_ops

SR_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "sr"


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 1, 9), (1, 2, 6, 1)])
def test_shift_equals_the_one_hot_depthwise_convolution(shape):
    x = torch.randn(shape)
    for k in range(9):
        onehot = torch.zeros(9)
        onehot[k] = 1.0
        ref = F.conv2d(x, onehot.view(1, 1, 3, 3).expand(shape[1], 1, 3, 3), padding=1,
                       groups=shape[1])  # fmt: skip
        assert torch.equal(shift2d(x, k // 3 - 1, k % 3 - 1), ref), k
    with pytest.raises(ValueError, match="at most one pixel"):
        shift2d(x, 2, 0)


def test_layer_trains_a_one_hot_kernel_straight_through_and_infers_by_shifting():
    torch.manual_seed(0)
    layer = ShiftGhostConv2d(6, 8, 3, ratio=0.5)
    assert layer.intrinsic == 4 and layer.ghosts == 4
    with torch.no_grad():
        layer.shift_logits.copy_(torch.tensor([[0.1, -0.2, 0.0], [0.3, 0.0, 0.1], [0, 0, -0.9]]))
    assert layer.offset() == (1, 1)  # argmax of |logits|: bottom-right
    x = torch.randn(2, 6, 9, 11)
    y = layer.primary(x)
    layer.eval()
    out = layer(x)
    assert torch.equal(out[:, :4], y) and torch.equal(out[:, 4:], shift2d(y, 1, 1))
    layer.train()
    layer.noise_scale = 0.0  # no noise: the hard choice is the inference one
    out_t = layer(x)
    assert torch.allclose(out_t, out, atol=1e-6)
    # straight through: d loss / d logits = d loss / d (one-hot depthwise kernel)
    g = torch.randn_like(out_t)
    (out_t * g).sum().backward()
    ker = torch.zeros(3, 3).index_put_((torch.tensor(2), torch.tensor(2)), torch.tensor(1.0))
    ker.requires_grad_(True)
    ref = F.conv2d(y.detach(), ker.expand(4, 1, 3, 3), padding=1, groups=4)
    (ref * g[:, 4:]).sum().backward()
    assert torch.allclose(layer.shift_logits.grad, ker.grad, atol=1e-4)
    # with noise the training choice varies, and is always one-hot
    layer.noise_scale = 5.0
    picks = {int(layer._kernel().detach().flatten().argmax()) for _ in range(50)}
    assert len(picks) > 1
    assert all(layer._kernel().detach().sum() == pytest.approx(1.0) for _ in range(5))


def test_conversion_keeps_head_tail_and_closing_conv_and_halves_body_macs():
    model = lv.create_model("edsr_cpu", scale=2).eval()
    names = ghostsr_layers(model)
    n_blocks = len(model.body) - 1
    assert names == [f"body.{i}.body.{j}" for i in range(n_blocks) for j in (0, 2)]
    new, replaced = ghostsr_convert(model, intrinsic="first")
    assert replaced == names and all(isinstance(new.get_submodule(n), ShiftGhostConv2d)
                                     for n in names)  # fmt: skip
    for kept in ("head", f"body.{n_blocks}", "tail.1"):
        assert type(new.get_submodule(kept)) is nn.Conv2d
    size = (3, 24, 24)
    before, after = count_ops(model, size).macs, count_ops(new.eval(), size).macs
    conv = model.get_submodule(names[0])
    per_conv = conv.weight.numel() * 24 * 24
    assert before - after == len(names) * per_conv // 2  # each replaced conv exactly halves
    x = torch.rand(1, 3, 24, 24)
    assert new(x).shape == model(x).shape == (1, 3, 48, 48)


def test_clustered_conversion_of_paired_filters_is_exact():
    """Filters in pairs (j and j + 4 equal): clustering keeps one of each pair and the ghost of
    the other, shifted by (0, 0), reproduces the original convolution exactly."""
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    with torch.no_grad():
        conv.weight[4:] = conv.weight[:4]
        conv.bias[4:] = conv.bias[:4]
        perm = torch.tensor([3, 0, 6, 1, 7, 2, 4, 5])  # pairs not in order
        conv.weight.copy_(conv.weight[perm])
        conv.bias.copy_(conv.bias[perm])
    net = nn.Sequential(conv)
    new, _ = ghostsr_convert(net, intrinsic="cluster")
    layer = new[0]
    assert not layer._is_plain()
    with torch.no_grad():
        layer.shift_logits.zero_()
        layer.shift_logits[1, 1] = 1.0  # no shift
    x = torch.randn(2, 8, 7, 6)
    assert torch.allclose(layer.eval()(x), conv(x), atol=1e-6)
    # the layout is in the state dict: a fresh layer loads it and gives the same output
    fresh = ShiftGhostConv2d(8, 8, 3)
    fresh.load_state_dict(layer.state_dict())
    assert torch.equal(fresh.eval()(x), layer(x))


def test_errors_name_the_problem():
    with pytest.raises(UnsupportedModelError, match="no k×k stride-1 convolution"):
        ghostsr_convert(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1)))
    with pytest.raises(UnsupportedModelError, match="does not have"):
        ghostsr_convert(lv.create_model("edsr_cpu"), exclude=["body.99"])
    with pytest.raises(ConfigError, match="ratio"):
        ghostsr_convert(lv.create_model("edsr_cpu"), ratio=1.0)
    with pytest.raises(ValueError, match="no ghost feature"):
        ShiftGhostConv2d(4, 1, 3)
    with pytest.raises(ConfigError, match="intrinsic"):
        lv.compress(lv.create_model("edsr_cpu"), "ghostsr", intrinsic="random")


def test_noise_hook_decays_per_epoch():
    new, _ = ghostsr_convert(lv.create_model("edsr_cpu"), intrinsic="first")
    hook = GhostNoiseHook(new, 0.5)
    hook.on_epoch_start(None, 3)
    assert {m.noise_scale for m in hook.layers} == {0.125} and len(hook.layers) > 0


@pytest.mark.skipif(not (SR_ROOT / "Set5").is_dir(), reason=f"no {SR_ROOT}")
def test_compress_trains_saves_and_loads_an_edsr(tmp_path):
    data = lv.load_data("sr", root=SR_ROOT, scale=2, batch_size=4, patch_size=16, repeat=1,
                        max_val=1, max_test=1)  # fmt: skip
    torch.manual_seed(0)
    model = lv.create_model("edsr_cpu", scale=2)
    new = lv.compress(model, "ghostsr", data=data, finetune_epochs=1, max_steps=2,
                      progress=False)  # fmt: skip
    assert any(isinstance(m, ShiftGhostConv2d) for m in new.modules())
    scores = lv.evaluate(new, data.test)
    assert scores["psnr"] > 10
    lv.save(new, tmp_path / "g.pt")
    back = lv.load(tmp_path / "g.pt").eval()
    x = torch.rand(1, 3, 20, 20)
    assert (back(x) - new(x)).abs().max() < 1e-5, (back(x) - new(x)).abs().max()
