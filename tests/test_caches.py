"""Layers that keep copies derived from their weights never serve stale ones.

For every caching layer: load a different state dict while in eval mode (after a forward has
built the copies), edit a weight in place, replace a tensor, move it; the output must equal
the reference op on the new weights, or a freshly built module.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import leanvision as lv
from leanvision.derived import DerivedCache, structure_version, tensor_key
from leanvision.layers import adder as la
from leanvision.layers.adder import AdderConv2d, QuantAdderConv2d
from leanvision.layers.binary import (
    BinaryConv2d,
    BinaryLinear,
    PackedBinaryConv2d,
    PackedBinaryLinear,
)
from leanvision.layers.conv3x3 import FusedConv3x3
from leanvision.layers.gated import GatedBasicBlock, GatedStage
from leanvision.methods.pruning.manidp import gate_model

# ----------------------------------------------------------------------- the helper


def test_derived_cache_rebuilds_on_every_kind_of_change():
    w = nn.Parameter(torch.randn(4, 3))
    cache: DerivedCache[torch.Tensor] = DerivedCache()
    builds = []

    def get(t: torch.Tensor, extra: object = None) -> torch.Tensor:
        return cache.get((t,), lambda: builds.append(1) or t.detach().clone(), extra)

    first = get(w)
    assert get(w) is first and len(builds) == 1  # unchanged: served
    assert not cache.stale() and not DerivedCache().stale()
    with torch.no_grad():
        w.mul_(2)  # in place: version counter
    assert cache.stale()
    torch.testing.assert_close(get(w), w.detach())
    w.data = torch.randn(4, 3)  # same object, new storage: data pointer
    torch.testing.assert_close(get(w), w.detach())
    other = nn.Parameter(w.detach().clone())  # another tensor: identity
    torch.testing.assert_close(get(other), other.detach())
    n = len(builds)
    get(other, extra="flag")  # a setting the value depends on
    assert len(builds) == n + 1
    assert copy.deepcopy(cache).value is None  # copies start empty
    assert tensor_key([w])[0][0] == id(w)


def test_structure_version_moves_on_replacements():
    m = nn.Linear(3, 2)
    v = structure_version()
    m.weight = nn.Parameter(torch.randn(2, 3))
    assert structure_version() != v
    v = structure_version()
    m.load_state_dict(m.state_dict())  # an in-place copy: versions, not structure
    assert structure_version() == v


# ----------------------------------------------------------------------- fused 3x3 conv


def _fused() -> tuple[FusedConv3x3, torch.Tensor]:
    torch.manual_seed(0)
    f = FusedConv3x3(nn.Conv2d(8, 16, 3, padding=1), relu=True).eval()
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        f(x)  # packs the weight
    return f, x


def _conv_ref(f: FusedConv3x3, x: torch.Tensor) -> torch.Tensor:
    return F.relu(F.conv2d(x, f.weight, f.bias, padding=1))


def test_fused_conv3x3_repacks_after_load_state_dict():
    f, x = _fused()
    other = FusedConv3x3(nn.Conv2d(8, 16, 3, padding=1), relu=True)
    f.load_state_dict(other.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(f(x), _conv_ref(other, x), atol=1e-5, rtol=1e-5)


def test_fused_conv3x3_repacks_after_in_place_edit_and_replacement():
    f, x = _fused()
    with torch.no_grad():
        f.weight.mul_(-0.5)
        torch.testing.assert_close(f(x), _conv_ref(f, x), atol=1e-5, rtol=1e-5)
        f.weight = torch.randn(16, 8, 3, 3)  # a new buffer
        torch.testing.assert_close(f(x), _conv_ref(f, x), atol=1e-5, rtol=1e-5)
        f.double().float()  # moves replace the buffers
        torch.testing.assert_close(f(x), _conv_ref(f, x), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------- integer adder


def _quant(bits: int, seed: int = 0) -> QuantAdderConv2d:
    torch.manual_seed(seed)
    layer = AdderConv2d(12, 10, 3, padding=1, bias=True)
    nn.init.normal_(layer.bias)
    scale = layer.weight.abs().max().item() / (2 ** (bits - 1) - 1)
    return QuantAdderConv2d(layer, scale, bits=bits).eval()


def _quant_ref(q: QuantAdderConv2d, x: torch.Tensor) -> torch.Tensor:
    xq = q.quantize_input(x).double()
    y = la.adder2d_reference(xq, q.weight_q.double(), q.stride, q.padding) * float(q.scale)
    return (y + q.bias.double().view(1, -1, 1, 1)).float()


@pytest.mark.parametrize("bits", [8, 16])
def test_quant_adder_repacks_after_load_and_in_place_edit(bits):
    q, x = _quant(bits), torch.randn(2, 12, 7, 7)
    q(x)  # packs the weights
    fresh = _quant(bits, seed=1)
    q.load_state_dict(fresh.state_dict())
    torch.testing.assert_close(q(x), fresh(x), atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(q(x), _quant_ref(q, x), atol=1e-3, rtol=1e-5)
    with torch.no_grad():
        q.weight_q.copy_(-q.weight_q)  # in place, no load_state_dict
    torch.testing.assert_close(q(x), _quant_ref(q, x), atol=1e-3, rtol=1e-5)
    q.weight_q = fresh.weight_q.clone()  # a new buffer
    torch.testing.assert_close(q(x), _quant_ref(q, x), atol=1e-3, rtol=1e-5)


# ----------------------------------------------------------------------- packed binary


def test_packed_binary_layers_follow_a_loaded_state_dict():
    torch.manual_seed(0)
    conv = [PackedBinaryConv2d(BinaryConv2d(70, 20, 3, padding=1).eval()) for _ in range(2)]
    lin = [PackedBinaryLinear(BinaryLinear(100, 12).eval()) for _ in range(2)]
    for layers, x, view in ((conv, torch.randn(2, 70, 5, 5), (1, -1, 1, 1)),
                            (lin, torch.randn(3, 100), (1, -1))):  # fmt: skip
        a, b = layers
        with torch.no_grad():
            before, want = a(x), b(x)
            assert not torch.allclose(before, want)
            a.load_state_dict(b.state_dict())
            torch.testing.assert_close(a(x), want)
            a.scale.mul_(2)  # in place: doubles the output without its bias
            bias = b.bias.view(view)
            torch.testing.assert_close(a(x), 2 * (want - bias) + bias, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------- ManiDP blocks


def _gated(seed: int, thre: float = 0.9) -> nn.Module:
    torch.manual_seed(seed)
    model = gate_model(lv.create_model("resnet20_cifar", num_classes=10))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    for blk in model.modules():
        if isinstance(blk, GatedBasicBlock):
            for g in (blk.gate1, blk.gate2):
                g.fc2.weight.data.normal_(0.0, 0.05)
                g.thre.fill_(thre)
    return model.eval()


def _blocks(model: nn.Module) -> list[GatedBasicBlock]:
    return [m for m in model.modules() if isinstance(m, GatedBasicBlock)]


def _check_batch1(model: nn.Module, x: torch.Tensor) -> None:
    """Batch-1 outputs (kept channels only, from the derived copies) equal the masked dense
    network's (batch 2 computes everything from the modules' tensors directly)."""
    with torch.no_grad():
        dense = model(x)
        scale = dense.abs().max().item()
        for i in range(x.shape[0]):
            got = model(x[i : i + 1])
            torch.testing.assert_close(got, dense[i : i + 1], atol=1e-4 * scale, rtol=1e-4)


@pytest.fixture(params=["kernel", "aten"])
def gated(request):
    model = _gated(0)
    for b in _blocks(model):
        b.use_native = request.param == "kernel"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(x[:1])  # batch 1 once: every block and stage sets up its copies
    return model, x


def test_gated_model_follows_a_state_dict_loaded_in_eval_mode(gated):
    model, x = gated
    other = _gated(1, thre=0.95)
    model.load_state_dict(other.state_dict())  # model stays in eval mode
    _check_batch1(model, x)
    with torch.no_grad():
        torch.testing.assert_close(model(x[:1]), other(x[:1]), atol=1e-5, rtol=1e-5)


def test_gated_model_follows_in_place_edits(gated):
    model, x = gated
    blocks = _blocks(model)
    with torch.no_grad():
        blocks[0].block.conv1.weight.mul_(-1.0)
        blocks[1].block.bn2.running_mean.add_(0.5)  # new BN statistics
        blocks[3].block.bn1.weight.mul_(2.0)
        blocks[4].gate1.fc1.weight.mul_(1.5)
        blocks[5].gate2.thre.fill_(1.02)  # a new threshold
    _check_batch1(model, x)


def test_gated_model_follows_replaced_tensors_and_moves(gated):
    model, x = gated
    blocks = _blocks(model)
    conv = blocks[2].block.conv2
    conv.weight = nn.Parameter(torch.randn_like(conv.weight) * 0.2)
    blocks[6].block.bn1.running_var = torch.rand(blocks[6].block.bn1.num_features) + 0.5
    blocks[7].gate1.thre = torch.tensor(0.97)
    blocks[8].block.conv1.weight.data = torch.randn_like(blocks[8].block.conv1.weight) * 0.2
    _check_batch1(model, x)
    model.double()
    _check_batch1(model, x.double())  # the ATen path in float64
    model.float()
    _check_batch1(model, x)
    fresh = copy.deepcopy(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x[:1]), fresh(x[:1]), atol=0, rtol=0)


def test_gated_model_in_channels_last_follows_edits(gated):
    """Channels-last weights reach the kernel as contiguous copies: made again on a change."""
    model, x = gated
    model.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    _check_batch1(model, xc)
    blocks = _blocks(model)
    with torch.no_grad():
        blocks[1].block.conv2.weight.mul_(-1.0)
        blocks[4].block.conv1.weight.add_(0.1)
    _check_batch1(model, xc)
    model.load_state_dict(_gated(3).state_dict())
    _check_batch1(model, xc)


def test_stage_plan_follows_the_blocks():
    model = _gated(0)
    stage = model.layer1
    assert isinstance(stage, GatedStage)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(x[:1])
    assert [type(s).__name__ for s in stage._plan] == ["_Chain"]
    stage[1].use_native = False  # the middle block leaves the chain
    assert [type(s).__name__ for s in stage._plan] == ["GatedBasicBlock"] * 3
    _check_batch1(model, x)
    stage[1].use_native = True
    assert [type(s).__name__ for s in stage._plan] == ["_Chain"]
    model.load_state_dict(_gated(2).state_dict())
    _check_batch1(model, x)
