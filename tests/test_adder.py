"""AdderNet: the adder layer (kernel and PyTorch paths), its gradients, counting, adderize."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import leanvision as lv
from leanvision import kernels
from leanvision.errors import ConfigError, UnsupportedModelError
from leanvision.layers import AdderConv2d, adder2d
from leanvision.layers import adder as la
from leanvision.methods.lowbit import AdderLRHook, adderize
from leanvision.profiling import count_ops

SHAPES = [  # n, c, o, h, w, k, stride, padding
    (2, 16, 16, 8, 8, 3, 1, 1),
    (2, 16, 32, 9, 7, 3, 2, 1),
    (1, 5, 20, 6, 6, 1, 2, 0),
    (1, 3, 17, 5, 9, 3, 1, 0),
    (2, 24, 48, 7, 13, 3, 1, 1),
    (1, 8, 8, 6, 6, 5, 1, 2),
]


def _brute_grads(x, w, gy, stride, padding):
    """The paper's gradients by explicit loops over the unfolded patches."""
    o, c, k, _ = w.shape
    cols = F.unfold(x, k, padding=padding, stride=stride)  # (N, C·k·k, L)
    g = gy.reshape(gy.shape[0], o, -1)
    flat = w.reshape(o, -1)
    gw = ((cols.unsqueeze(1) - flat[None, :, :, None]) * g.unsqueeze(2)).sum((0, 3))
    gcols = ((flat[None, :, :, None] - cols.unsqueeze(1)).clamp(-1, 1) * g.unsqueeze(2)).sum(1)
    gx = F.fold(gcols, x.shape[2:], k, padding=padding, stride=stride)
    return gx, gw.reshape(w.shape)


def _check(shape, dtype, atol):
    n, c, o, h, w, k, s, p = shape
    torch.manual_seed(0)
    x64, w64 = torch.randn(n, c, h, w, dtype=torch.float64), torch.randn(o, c, k, k).double()
    ref = la.adder2d_reference(x64, w64, s, p)
    x = x64.to(dtype).requires_grad_()
    wt = w64.to(dtype).requires_grad_()
    y = adder2d(x, wt, s, p)
    assert y.shape == ref.shape
    scale = ref.abs().max().item()
    assert (y.double() - ref).abs().max().item() <= atol * scale
    gy = torch.randn_like(ref)
    y.backward(gy.to(dtype))
    gx, gw = _brute_grads(x64, w64, gy, s, p)
    assert (x.grad.double() - gx).abs().max().item() <= atol * max(1.0, gx.abs().max().item())
    assert (wt.grad.double() - gw).abs().max().item() <= atol * max(1.0, gw.abs().max().item())


@pytest.mark.parametrize("shape", SHAPES)
def test_pytorch_path_exact_in_float64(shape):
    _check(shape, torch.float64, 1e-10)  # float64 always takes the PyTorch path


@pytest.mark.skipif(kernels.capability() != "AVX512", reason="the adder kernel is AVX-512 only")
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_matches_brute_force(shape):
    assert la._native(torch.zeros(1))
    _check(shape, torch.float32, 1e-5)


@pytest.mark.skipif(kernels.capability() != "AVX512", reason="the adder kernel is AVX-512 only")
def test_kernel_and_pytorch_paths_agree_and_threads(monkeypatch):
    torch.manual_seed(0)
    layer = AdderConv2d(16, 32, 3, stride=1, padding=1)
    x = torch.randn(3, 16, 10, 10)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = layer(x)
        torch.set_num_threads(2)
        two = layer(x)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two)
    monkeypatch.setattr(la, "_native", lambda x: False)
    torch.testing.assert_close(layer(x), one, rtol=1e-5, atol=1e-3)


def test_layer_arguments_and_bias():
    layer = AdderConv2d(4, 6, 3, padding=1, bias=True)
    with torch.no_grad():
        layer.bias.fill_(2.0)
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(layer(x), adder2d(x, layer.weight, 1, 1) + 2.0)
    with pytest.raises(ConfigError, match="channels"):
        layer(torch.randn(1, 3, 5, 5))
    with pytest.raises(ConfigError, match="≥ 1"):
        AdderConv2d(4, 6, 0)
    with pytest.raises(ConfigError, match="cannot replace"):
        AdderConv2d.from_conv(nn.Conv2d(4, 4, 3, groups=2))


def test_counts_additions_only():
    layer = AdderConv2d(16, 32, 3, padding=1)
    counts = count_ops(layer, (16, 8, 8), batch=2)
    terms = 2 * 32 * 8 * 8 * 16 * 9
    assert counts.adds == 2 * terms and counts.muls == 0 and counts.macs == 0


def test_adaptive_lr_hook_normalises_gradients():
    model = nn.Sequential(AdderConv2d(3, 4, 3), AdderConv2d(4, 8, 1))
    model(torch.randn(2, 3, 6, 6)).sum().backward()
    AdderLRHook(model, eta=0.2).before_optimizer_step(None)
    for m in model:
        k = m.weight.numel()
        assert math.isclose(m.weight.grad.norm().item(), 0.2 * math.sqrt(k), rel_tol=1e-5)


def test_adderize_resnet20_matches_paper_layout_and_saves(tmp_path):
    model = lv.create_model("resnet20_cifar", num_classes=10)
    new, arch = adderize(model)
    adders = [n for n, m in new.named_modules() if isinstance(m, AdderConv2d)]
    assert len(adders) == 20 and arch["add_bn"] == []  # 18 block convs + 2 1×1 shortcuts
    assert type(new.conv1) is nn.Conv2d and isinstance(new.fc, nn.Linear)
    counts = count_ops(new, (3, 32, 32))
    assert counts.muls < 0.02 * counts.adds  # only the stem and the classifier multiply
    zoo = lv.create_model("resnet20_adder")
    assert [n for n, m in zoo.named_modules() if isinstance(m, AdderConv2d)] == adders
    small = lv.compress(model, "adder", data=None)
    lv.save(small, tmp_path / "a.pt")
    back = lv.load(tmp_path / "a.pt")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(back.eval()(x), small.eval()(x))


def test_adderize_adds_bn_where_missing_and_names_bad_layers():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1),
    )  # fmt: skip
    new, arch = adderize(net)
    assert arch["add_bn"] == ["3", "5"]
    assert isinstance(new[3], nn.Sequential) and isinstance(new[3][1], nn.BatchNorm2d)
    assert type(new[0]) is nn.Conv2d  # the stem stays real
    bad = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=8))
    with pytest.raises(UnsupportedModelError, match="'1'"):
        adderize(bad)
    with pytest.raises(UnsupportedModelError, match="no convolution"):
        adderize(nn.Sequential(nn.Conv2d(3, 8, 3)))


def test_compress_adder_trains_with_the_hook(mnist_small):
    torch.manual_seed(0)
    model = lv.create_model("resnet8_cifar", num_classes=10, in_chans=1)
    small = lv.compress(
        model, "adder", data=mnist_small, finetune_epochs=1, max_steps=3, progress=False,
        log=False,
    )  # fmt: skip
    assert any(isinstance(m, AdderConv2d) for m in small.modules())
    out = small(torch.randn(2, 1, 28, 28))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


# ----------------------------------------------------------------------- integer adder


def _pack_u8(wq: torch.Tensor) -> torch.Tensor:
    flat = wq.permute(0, 2, 3, 1).reshape(wq.shape[0], -1) + 128
    kp = -(-flat.shape[1] // 64) * 64
    return F.pad(flat, (0, kp - flat.shape[1]), value=128).to(torch.uint8).contiguous()


@pytest.mark.parametrize("shape", SHAPES)
def test_int8_kernel_is_exact(shape):
    n, c, o, h, w, k, s, p = shape
    assert kernels.load("adder_int8")
    torch.manual_seed(0)
    xq, wq = torch.randint(-127, 128, (n, c, h, w)), torch.randint(-127, 128, (o, c, k, k))
    bias = torch.randn(o)
    xu = (xq + 128).to(torch.uint8).contiguous(memory_format=torch.channels_last)
    y = torch.ops.leanvision.adder_int8_forward(xu, _pack_u8(wq), bias, 0.25, c, k, s, p)
    ref = la.adder2d_reference(xq.double(), wq.double(), s, p) * 0.25 + bias.double()[:, None, None]
    torch.testing.assert_close(y.double(), ref, rtol=0, atol=1e-3)
    with pytest.raises(RuntimeError, match="uint8"):
        torch.ops.leanvision.adder_int8_forward(xq.float(), _pack_u8(wq), None, 1.0, c, k, s, p)


@pytest.mark.parametrize("shape", SHAPES)
def test_int16_kernel_is_exact(shape):
    n, c, o, h, w, k, s, p = shape
    assert kernels.load("adder_int8")
    torch.manual_seed(0)
    xq = torch.randint(-32767, 32768, (n, c, h, w))
    wq = torch.randint(-32767, 32768, (o, c, k, k))
    flat = wq.permute(0, 2, 3, 1).reshape(o, -1)
    kp = -(-flat.shape[1] // 32) * 32
    packed = F.pad(flat, (0, kp - flat.shape[1])).to(torch.int16).contiguous()
    x16 = xq.to(torch.int16).contiguous(memory_format=torch.channels_last)
    y = torch.ops.leanvision.adder_int16_forward(x16, packed, None, 1.0, c, k, s, p)
    ref = la.adder2d_reference(xq.double(), wq.double(), s, p)  # integers below 2^31
    torch.testing.assert_close(y.double(), ref, rtol=1e-7, atol=0)  # fp32 rounding of the sum


def test_quant_adder_layer_paths_agree_and_approximate_float(monkeypatch):
    torch.manual_seed(0)
    layer = AdderConv2d(16, 32, 3, padding=1)
    x = torch.randn(2, 16, 9, 9)
    scale = max(x.abs().max().item(), layer.weight.abs().max().item()) / 127
    q = la.QuantAdderConv2d(layer, scale, bits=8)
    assert q.weight_q.dtype == torch.int8 and set(q.state_dict()) == {"weight_q", "scale"}
    y = q(x)
    monkeypatch.setattr(la, "_int8_kernel", lambda x=None: False)
    torch.testing.assert_close(q(x), y, rtol=1e-5, atol=1e-3)  # same integers, float path
    exact = layer(x)
    assert ((y - exact).norm() / exact.norm()).item() < 0.01
    q16 = la.QuantAdderConv2d(layer, scale / 256, bits=16)
    assert q16.weight_q.dtype == torch.int16
    monkeypatch.undo()
    y16 = q16(x)  # the int16 kernel where there is one
    assert ((y16 - exact).norm() / exact.norm()).item() < 1e-4
    monkeypatch.setattr(la, "_int8_kernel", lambda x=None: False)
    torch.testing.assert_close(q16(x), y16, rtol=1e-5, atol=1e-2)
    with pytest.raises(ConfigError, match="bits"):
        la.QuantAdderConv2d(layer, scale, bits=1)


def test_adder_quant_method_counts_energy_and_saves(mnist_small, tmp_path):
    torch.manual_seed(0)
    model = lv.compress(lv.create_model("resnet8_cifar", num_classes=10, in_chans=1), "adder")
    model.train()
    with torch.no_grad():  # settle BN statistics so the float net has sane outputs
        for i, (x, _) in enumerate(mnist_small.train):
            model(x)
            if i == 3:
                break
    model.eval()
    with pytest.raises(ConfigError, match="data"):
        lv.compress(model, "adder_quant")
    q = lv.compress(model, "adder_quant", data=mnist_small, calib_batches=2)
    assert not any(type(m) is AdderConv2d for m in q.modules())
    x = next(iter(mnist_small.test))[0]
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.9
    size = (1, 28, 28)
    fp, iq = lv.profile(model, size, latency=False), lv.profile(q, size, latency=False)
    assert iq.int_adds == iq.adds - count_ops(q, size).muls and fp.int_adds == 0
    assert iq.energy_uj < 0.3 * fp.energy_uj
    lv.save(q, tmp_path / "q.pt")
    with torch.no_grad():
        torch.testing.assert_close(lv.load(tmp_path / "q.pt").eval()(x), out)
    with pytest.raises(UnsupportedModelError, match="no AdderConv2d"):
        lv.compress(lv.create_model("resnet8_cifar"), "adder_quant", data=mnist_small)


# ----------------------------------------------------------------------- PKKD


def test_pkkd_kernels_match_brute_force():
    from leanvision.methods.lowbit.pkkd import gauss_kernel, laplace_kernel

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, stride=2)
    x = torch.randn(2, 3, 7, 7)
    cols = F.unfold(x, 3, padding=1, stride=2)  # (N, 27, L)
    d2 = ((cols.unsqueeze(1) - conv.weight.reshape(1, 4, -1, 1)) ** 2).sum(2)  # (N, O, L)
    want = torch.exp(-d2 / d2.mean()).reshape(2, 4, 4, 4)
    torch.testing.assert_close(gauss_kernel(conv, x, conv(x)), want, rtol=1e-4, atol=1e-5)
    y = adder2d(x, conv.weight, 2, 1)
    torch.testing.assert_close(laplace_kernel(y), torch.exp(y / (-y).mean()))


def test_pkkd_trains_teacher_and_student_together(mnist_small, tmp_path):
    from leanvision.methods.lowbit.pkkd import default_pkkd_layers

    torch.manual_seed(0)
    model = lv.create_model("resnet8_cifar", num_classes=10, in_chans=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = {}

    class Spy(lv.engine.hooks.Hook):
        def on_loss(self, trainer, ctx):
            seen.update({k: float(v.detach()) for k, v in ctx.losses.items()})

    import leanvision.methods.lowbit.pkkd as pk

    real = pk.finetune
    pk.finetune = lambda m, d, c, hooks, method: real(m, d, c, [*hooks, Spy()], method=method)
    try:
        small = lv.compress(
            model, "pkkd", data=mnist_small, finetune_epochs=1, max_steps=3, progress=False,
            log=False,
        )  # fmt: skip
    finally:
        pk.finetune = real
    assert {"task", "teacher_ce", "kd", "pkkd_features"} <= set(seen)
    teacher = small.pkkd_teacher
    assert "pkkd_teacher" not in dict(small.named_modules())
    moved = [k for k, v in teacher.state_dict().items() if v.is_floating_point()
             and not torch.equal(v, before[k])]  # fmt: skip
    assert any(k.endswith("conv1.weight") for k in moved)  # the CNN trained too
    assert default_pkkd_layers(small, (1, 28, 28)) == [
        "layer1.0.conv2", "layer2.0.conv2", "layer3.0.conv2",
    ]  # fmt: skip
    lv.save(small, tmp_path / "s.pt")
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(lv.load(tmp_path / "s.pt").eval()(x), small(x))
    with pytest.raises(ConfigError, match="not adder layers"):
        lv.compress(model, "pkkd", data=mnist_small, finetune_epochs=1, layers=["fc"])
