"""Binary layers: FDA gradient, packing exactness, bit-op counts, the fda / bnn_ste methods."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import leanvision as lv
from leanvision.errors import ConfigError, UnsupportedModelError
from leanvision.layers import binary as lb
from leanvision.layers.binary import (
    BinaryConv2d,
    BinaryLinear,
    NoiseAdaptation,
    PackedBinaryConv2d,
    PackedBinaryLinear,
    binarize,
    fda_grad,
    sign_pm1,
)
from leanvision.methods.lowbit import FDAScheduleHook, binarize_model, pack_binary
from leanvision.profiling import count_ops


def test_sign_maps_zero_to_plus_one_and_ste_clips():
    t = torch.tensor([-2.0, -0.5, 0.0, -0.0, 0.5, 2.0], requires_grad=True)
    assert sign_pm1(t).tolist() == [-1, -1, 1, 1, 1, 1]
    binarize(t, "ste").sum().backward()
    assert t.grad.tolist() == [0, 1, 1, 1, 1, 0]
    with pytest.raises(ConfigError, match="mode"):
        binarize(t, "tanh")


@pytest.mark.parametrize("n", [0, 1, 9, 18])
def test_fda_gradient_is_the_fourier_series_derivative(n):
    """d/dt of (4/π) Σ_{i=0}^{n} sin((2i+1)ωt)/(2i+1) (n + 1 terms, as FDA's reference code's
    ``range(n + 1)``) by autograd equals the backward of binarize; ``inclusive=False`` is the
    n-term series i < n."""
    t = torch.linspace(-1.5, 1.5, 61, dtype=torch.float64, requires_grad=True)
    omega = 0.1

    def analytic(count: int) -> torch.Tensor:
        series = sum(torch.sin((2 * i + 1) * omega * t) / (2 * i + 1) for i in range(count))
        (g,) = torch.autograd.grad((4 / math.pi) * (series + 0 * t).sum(), t)
        return torch.where(t.abs() <= 1, g, torch.zeros_like(g))

    x = t.detach().clone().requires_grad_()
    binarize(x, "fda", n, omega).sum().backward()
    torch.testing.assert_close(x.grad, analytic(n + 1))
    torch.testing.assert_close(fda_grad(t.detach(), n, omega), analytic(n + 1))
    torch.testing.assert_close(fda_grad(t.detach(), n, omega, inclusive=False), analytic(n))
    y = t.detach().clone().requires_grad_()
    binarize(y, "fda", n, omega, inclusive=False).sum().backward()
    torch.testing.assert_close(y.grad, analytic(n))


def test_fda_terms_inclusive_reaches_the_layers():
    """n = 0: one cosine with the reference's n + 1 terms, none (zero gradient) with n terms."""
    from leanvision.methods.lowbit import FDAConfig

    assert FDAConfig().terms_inclusive is True
    for inclusive, nonzero in ((True, True), (False, False)):
        layer = BinaryLinear(8, 4, mode="fda")
        FDAScheduleHook(nn.Sequential(layer), n0=0, n1=0, inclusive=inclusive)
        assert layer.terms_inclusive is inclusive
        layer.terms = 0
        x = (torch.rand(3, 8) - 0.5).requires_grad_()
        layer(x).sum().backward()
        assert bool(x.grad.abs().sum() > 0) is nonzero


def test_noise_adaptation_starts_as_the_sine_term():
    m = NoiseAdaptation(128)
    assert m.fc1.out_features == 2  # d/64
    t = torch.randn(3, 128)
    torch.testing.assert_close(m(t), 0.1 * torch.sin(t))
    assert NoiseAdaptation(16).fc1.out_features == 4  # d/4 below 64


def test_binary_conv_uses_scaled_signs():
    torch.manual_seed(0)
    layer = BinaryConv2d(4, 8, 3, padding=1, bias=False).eval()
    x = torch.randn(2, 4, 5, 5)
    w = layer.weight
    wb = sign_pm1(w) * w.abs().mean((1, 2, 3), keepdim=True)
    want = torch.nn.functional.conv2d(sign_pm1(x), wb, padding=1)
    torch.testing.assert_close(layer(x), want)


SHAPES = [  # n, c, o, h, w, k, stride, padding
    (2, 16, 16, 8, 8, 3, 1, 1),
    (2, 16, 32, 9, 7, 3, 2, 1),
    (1, 70, 20, 6, 6, 1, 2, 0),
    (2, 64, 64, 8, 8, 3, 1, 1),
    (1, 3, 17, 5, 9, 3, 1, 0),
    (2, 130, 72, 5, 11, 3, 1, 1),
]


@pytest.mark.parametrize("shape", SHAPES)
def test_packed_conv_equals_float_binary_conv(shape, monkeypatch):
    n, c, o, h, w, k, s, p = shape
    torch.manual_seed(0)
    layer = BinaryConv2d(c, o, k, s, p, bias=True).eval()
    x = torch.randn(n, c, h, w)
    x[0, 0, 0, 0] = 0.0  # zero is +1 in both
    with torch.no_grad():
        ref = layer(x)
        packed = PackedBinaryConv2d(layer)
        out = packed(x)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        monkeypatch.setattr(lb, "_binary_kernel", lambda x=None: False)  # the unpacking path
        torch.testing.assert_close(packed(x), ref, rtol=1e-5, atol=1e-5)


# grouped, depthwise (BiMLP's 1x7 / 7x1 token FCs) and rectangular: the binary_gconv2d kernel
GROUPED = [  # n, c, o, groups, kernel, stride, padding, h, w
    (1, 32, 32, 32, (1, 7), 1, (0, 3), 16, 16),
    (2, 64, 32, 32, (7, 1), 1, (3, 0), 9, 5),
    (1, 70, 140, 70, (3, 5), (2, 1), (1, 2), 7, 9),
    (2, 96, 48, 4, 3, 1, 1, 6, 6),
    (1, 130, 65, 65, (1, 7), 1, (0, 3), 3, 10),
    (1, 12, 8, 1, (2, 3), (1, 2), 0, 5, 7),
    (1, 16, 48, 16, 1, 1, 0, 4, 4),  # depthwise, 3 outputs per channel (og > 1, cg = 1)
    (1, 66, 33, 33, (3, 1), 1, (1, 0), 5, 3),  # pairs across a word boundary
    (1, 8, 8, 8, 17, 1, 8, 17, 17),  # 289 taps: more than the byte counters of the vector path hold
]


@pytest.mark.parametrize("shape", GROUPED)
def test_packed_grouped_conv_equals_float_binary_conv(shape, monkeypatch):
    n, c, o, g, k, s, p, h, w = shape
    torch.manual_seed(0)
    layer = BinaryConv2d(c, o, k, s, p, groups=g, bias=True).eval()
    x = torch.randn(n, c, h, w)
    x[0, 0, 0, 0] = 0.0
    with torch.no_grad():
        ref = layer(x)
        packed = PackedBinaryConv2d(layer)
        assert packed.grouped and packed.weight_bits.dtype == torch.int64
        torch.testing.assert_close(packed(x), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(packed.float_weight(), layer.binary_weight())
        monkeypatch.setattr(lb, "_binary_kernel", lambda x=None: False)
        torch.testing.assert_close(packed(x), ref, rtol=1e-5, atol=1e-5)


def test_packed_net_compiles_as_one_graph_with_the_native_ops():
    """lv.deploy(..., "inductor") of a packed binary net: the ops' shape contracts
    (kernels/fake.py) let torch.compile trace it without a graph break, and it computes what
    the eager packed net does, at two batch sizes."""
    if not lb._binary_kernel():
        pytest.skip("the binary kernel is not built here (its fallback is tested above)")
    torch.manual_seed(0)
    net = nn.Sequential(
        BinaryConv2d(8, 16, 3, 1, 1), nn.Hardtanh(),
        BinaryConv2d(16, 16, (1, 7), 1, (0, 3), groups=16), nn.BatchNorm2d(16), nn.Hardtanh(),
        BinaryConv2d(16, 32, 3, 2, 1), nn.Flatten(), BinaryLinear(32 * 4 * 4, 10),
    ).eval()  # fmt: skip
    packed = pack_binary(net).eval()
    x = torch.randn(3, 8, 8, 8)
    with torch.no_grad():
        ref = packed(x)
    explained = torch._dynamo.explain(packed)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    ops = {str(n.target) for g in explained.graphs for n in g.graph.nodes}
    native = {"leanvision.binary_pack", "leanvision.binary_gconv2d", "leanvision.binary_linear"}
    assert native <= ops
    d = lv.deploy(packed, "inductor", "fp32", (8, 8, 8), threads=1)
    torch.testing.assert_close(d(x), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(d(x[:1]), ref[:1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("groups", [1, 8])
def test_fold_output_affine_equals_the_affine_after_the_layer(groups):
    torch.manual_seed(0)
    packed = PackedBinaryConv2d(BinaryConv2d(16, 8, 3, padding=1, groups=groups).eval())
    x = torch.randn(2, 16, 6, 6)
    a, c = torch.randn(8), torch.randn(8)
    with torch.no_grad():
        want = packed(x) * a.view(1, -1, 1, 1) + c.view(1, -1, 1, 1)
        packed.fold_output_affine(a, c)
        torch.testing.assert_close(packed(x), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="expected 8 values"):
        packed.fold_output_affine(torch.ones(4), torch.zeros(8))


def test_dilated_binary_conv_is_not_packed():
    with pytest.raises(ConfigError, match="no dilation"):
        PackedBinaryConv2d(BinaryConv2d(8, 8, 3, dilation=2).eval())


def test_packed_linear_equals_float_and_storage_is_one_bit():
    torch.manual_seed(0)
    layer = BinaryLinear(200, 30).eval()
    x = torch.randn(5, 3, 200)
    packed = PackedBinaryLinear(layer)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), layer(x), rtol=1e-5, atol=1e-5)
    assert packed.weight_bits.numel() * 64 == 4 * 32 * 64  # ⌈200/64⌉ words × 32 outputs
    conv = PackedBinaryConv2d(BinaryConv2d(64, 64, 3, padding=1))
    assert conv.weight_bits.numel() * 8 * 32 == 64 * 64 * 9 * 4  # 1/32 of the fp32 bytes


def test_bitop_counts():
    layer = BinaryConv2d(16, 32, 3, padding=1)
    counts = count_ops(layer, (16, 8, 8), batch=2)
    assert counts.bitops == 2 * 32 * 8 * 8 * 16 * 9 and counts.macs == 0
    assert count_ops(PackedBinaryConv2d(layer), (16, 8, 8), batch=2).bitops == counts.bitops
    assert count_ops(BinaryLinear(10, 4), (10,), batch=3).bitops == 120


def test_binarize_model_keeps_stem_and_classifier():
    model = lv.create_model("resnet20_cifar", num_classes=10)
    new, done = binarize_model(model)
    assert type(new.conv1) is nn.Conv2d and type(new.fc) is nn.Linear
    assert len(done) == 20 and all(isinstance(new.get_submodule(n), BinaryConv2d) for n in done)
    # sign() of a ReLU output is constant: binary inputs need Hardtanh instead
    assert not any(type(m) is nn.ReLU for m in new.modules())
    assert any(type(m) is nn.Hardtanh for m in new.modules())
    with pytest.raises(UnsupportedModelError, match="nothing|no convolution"):
        binarize_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2)))
    packed = pack_binary(new)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert packed(x).shape == (2, 10)
    assert sum(isinstance(m, PackedBinaryConv2d) for m in packed.modules()) == 20


def test_fda_schedule_hook():
    model, _ = binarize_model(lv.create_model("resnet8_cifar"), mode="fda", noise=True)
    hook = FDAScheduleHook(model)

    class T:
        class config:  # noqa: N801 - a stand-in for the trainer's config
            epochs = 10

    hook.on_epoch_start(T, 0)
    layer = model.layer1[0].conv1
    assert layer.terms == 9 and math.isclose(layer.alpha, 0.05 * (1 + math.cos(math.pi / 10)))
    hook.on_epoch_start(T, 9)
    assert layer.terms == 17 and layer.alpha == pytest.approx(0.0, abs=1e-12)
    hook.on_train_end(T)
    assert layer.alpha == 0.0


@pytest.mark.parametrize("method", ["fda", "bnn_ste"])
def test_binary_methods_train_pack_and_save(method, mnist_small, tmp_path):
    torch.manual_seed(0)
    model = lv.create_model("resnet8_cifar", num_classes=10, in_chans=1)
    small = lv.compress(
        model, method, data=mnist_small, finetune_epochs=1, max_steps=2, progress=False,
        log=False,
    )  # fmt: skip
    assert any(isinstance(m, PackedBinaryConv2d) for m in small.modules())
    assert not any(isinstance(m, BinaryConv2d) for m in small.modules())
    x = torch.randn(2, 1, 28, 28)
    lv.save(small, tmp_path / "b.pt")
    with torch.no_grad():
        torch.testing.assert_close(lv.load(tmp_path / "b.pt").eval()(x), small(x))
    assert count_ops(small, (1, 28, 28)).bitops > 0


# ----------------------------------------------------------------------- LNS


def test_noisy_label_loss_is_unbiased():
    from leanvision.methods.lowbit.binary import noisy_label_loss

    z, y = torch.randn(50, dtype=torch.float64), torch.randint(0, 2, (50,)).double() * 2 - 1
    clean = torch.nn.functional.softplus(-y * z)
    torch.testing.assert_close(noisy_label_loss(z, y, 0.0), clean)
    for rho in (0.1, 0.3):  # the expectation over label flips at rate rho is the clean loss
        expect = (1 - rho) * noisy_label_loss(z, y, rho) + rho * noisy_label_loss(z, -y, rho)
        torch.testing.assert_close(expect, clean)


def test_lns_layer_starts_as_sign_and_packs_exactly():
    from leanvision.layers.binary import LNSBinaryConv2d

    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, padding=1)
    lns = LNSBinaryConv2d.from_conv(conv).eval()
    plain = BinaryConv2d.from_conv(conv).eval()
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(lns(x), plain(x))  # zero-initialised mapping
        torch.nn.init.normal_(lns.mapper.fc2.weight, std=0.5)
        torch.testing.assert_close(PackedBinaryConv2d(lns)(x), lns(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(lns(x), plain(x))


def test_lns_method_trains_the_mapping(mnist_small, tmp_path):
    from leanvision.layers.binary import LNSBinaryConv2d
    from leanvision.methods.lowbit import LNSHook, binarize_model

    torch.manual_seed(0)
    model, _ = binarize_model(lv.create_model("resnet8_cifar", in_chans=1), lns=True)
    layer = next(m for m in model.modules() if isinstance(m, LNSBinaryConv2d))
    out = model(torch.randn(4, 1, 28, 28))

    class Ctx:
        losses = {"task": out.square().mean()}

    LNSHook(model, rho=0.2).on_loss(None, Ctx)
    sum(Ctx.losses.values()).backward()
    assert layer.mapper.fc2.weight.grad.abs().sum() > 0  # task and noisy-label terms reach it
    with pytest.raises(ConfigError, match="rho"):
        LNSHook(model, rho=0.5)
    small = lv.compress(
        lv.create_model("resnet8_cifar", num_classes=10, in_chans=1), "lns", data=mnist_small,
        finetune_epochs=1, max_steps=2, progress=False, log=False,
    )  # fmt: skip
    assert any(isinstance(m, PackedBinaryConv2d) for m in small.modules())
    lv.save(small, tmp_path / "l.pt")
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(lv.load(tmp_path / "l.pt").eval()(x), small(x))


def test_bit_packing_stays_on_the_tensors_device():
    """Packing and unpacking build their bit masks on the words' device: a packed layer moved
    to a GPU unpacks there (a GPU check found the masks on the CPU: a device-mismatch error)."""
    signs = torch.ones(3, 70, device="meta")
    words = lb._pack_bits(signs)
    assert words.device.type == "meta" and words.shape == (3, 2)
    back = lb._unpack_bits(torch.zeros(3, 2, dtype=torch.int64, device="meta"), 70)
    assert back.device.type == "meta" and back.shape == (3, 70)
    cpu = torch.randn(5, 130).sign()
    torch.testing.assert_close(
        lb._unpack_bits(lb._pack_bits(cpu), 130), torch.where(cpu < 0, -1.0, 1.0)
    )
