"""The W8A8 fused 3×3 layers (layers/int8_conv3x3, ``conv3x3_u8s8_nhwc`` and
``ghost3x3_u8s8_nhwc``): the VNNI kernel against the same arithmetic in PyTorch on odd shapes,
the quantization against the fp32 layer, wrong inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import leanvision as lv
from leanvision import kernels
from leanvision.deploy.cpu import freeze_kernel_calls, quantize_for_cpu
from leanvision.errors import ConfigError, InputShapeError
from leanvision.layers.conv3x3 import FusedConv3x3
from leanvision.layers.ghost import FusedGhost3x3, GhostConv2d
from leanvision.layers.int8_conv3x3 import (
    Int8Conv3x3,
    Int8Ghost3x3,
    has_int8_kernel,
    pack_u8s8,
    quantize_weight,
)
from leanvision.methods.ghost import ghostify

CL = torch.channels_last
needs_vnni = pytest.mark.skipif(
    kernels.capability() != "AVX512" or not has_int8_kernel(),
    reason="the int8 ops need the AVX-512 build of conv3x3 and an AVX512-VNNI CPU",
)


def _conv(c: int, o: int, seed: int = 0) -> FusedConv3x3:
    torch.manual_seed(seed)
    conv = nn.Conv2d(c, o, 3, 1, 1)
    return conv


def _ghost(c, n, seed=0, relu=False, residual=False, stride=1):
    torch.manual_seed(seed)
    g = GhostConv2d(c, n, 3, stride, 1)
    bn = nn.BatchNorm2d(n).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(-1, 2)
        bn.bias.uniform_(-1, 1)
    return FusedGhost3x3(g.primary, g.cheap, bn, relu=relu, residual=residual)


def _fallback(layer, x, r, monkeypatch):
    """The layer's PyTorch path (what runs without VNNI), on the same input."""
    with monkeypatch.context() as m:
        m.setattr("leanvision.layers.int8_conv3x3.has_int8_kernel", lambda: False)
        return layer(x, r)


def test_quantize_and_pack():
    w = torch.randn(5, 6, 3, 3)
    q, s = quantize_weight(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127 and s.shape == (5,)
    assert torch.allclose(q.float() * s.view(-1, 1, 1, 1), w, atol=float(s.max()) / 2 + 1e-6)
    p = pack_u8s8(q)
    assert p.shape == (9, 2, 5, 4)  # 6 channels padded to 8
    # [ky][kx][ci/4][co][ci%4]
    assert int(p[4, 1, 3, 1]) == int(q[3, 5, 1, 1]) and int(p[4, 1, 3, 2]) == 0
    assert int(p[0, 0, 2, 3]) == int(q[2, 3, 0, 0])


@needs_vnni
@pytest.mark.parametrize(
    "b,c,o,h,w",
    [(2, 16, 16, 8, 8), (1, 3, 32, 7, 5), (3, 6, 48, 5, 13), (1, 17, 16, 1, 1), (2, 64, 64, 4, 9)],
)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_kernel_matches_its_arithmetic(b, c, o, h, w, residual, relu, stride, monkeypatch):
    conv = _conv(c, o)
    conv.stride = (stride, stride)
    layer = Int8Conv3x3(FusedConv3x3(conv, relu=relu, residual=residual), 0.02)
    x = (torch.rand(b, c, h, w) * 6).contiguous(memory_format=CL)  # up past 255 steps: clamps
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    r = torch.randn(b, o, ho, wo) if residual else None
    with torch.inference_mode():
        out = layer(x, r)
        ref = _fallback(layer, x, r, monkeypatch)
    assert out.shape == (b, o, ho, wo) and out.is_contiguous(memory_format=CL)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@needs_vnni
@pytest.mark.parametrize(
    "b,c,n,h,w",
    [(2, 16, 16, 8, 8), (1, 16, 8, 7, 21), (3, 5, 24, 6, 6), (1, 32, 40, 9, 11), (2, 8, 64, 1, 3)],
)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_ghost_kernel_matches_its_arithmetic(b, c, n, h, w, residual, relu, monkeypatch):
    layer = Int8Ghost3x3(_ghost(c, n, relu=relu, residual=residual), 0.03)
    x = (torch.rand(b, c, h, w) * 4).contiguous(memory_format=CL)
    r = torch.randn(b, n, h, w) if residual else None
    with torch.inference_mode():
        out = layer(x, r)
        ref = _fallback(layer, x, r, monkeypatch)
    assert out.shape == (b, n, h, w) and out.is_contiguous(memory_format=CL)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@needs_vnni
@pytest.mark.parametrize(
    "b,c,n,h,w", [(2, 16, 32, 8, 8), (1, 8, 16, 7, 5), (3, 6, 24, 9, 6), (2, 16, 8, 9, 39)]
)
def test_ghost_stride2_kernel_matches_its_arithmetic(b, c, n, h, w, monkeypatch):
    layer = Int8Ghost3x3(_ghost(c, n, relu=True, stride=2), 0.03)
    x = (torch.rand(b, c, h, w) * 4).contiguous(memory_format=CL)
    with torch.inference_mode():
        out = layer(x)
        one = torch.cat([layer(x[i : i + 1]) for i in range(b)])
        ref = _fallback(layer, x, None, monkeypatch)
    assert out.shape == (b, n, (h + 1) // 2, (w + 1) // 2)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(one, ref, atol=1e-4, rtol=1e-4)


@needs_vnni
def test_ghost_bands_at_batch_one_agree_with_whole_images():
    layer = Int8Ghost3x3(_ghost(16, 32, relu=True), 0.02)
    x = torch.rand(3, 16, 10, 10).contiguous(memory_format=CL)
    with torch.inference_mode():
        torch.set_num_threads(2)
        whole = layer(x)
        one = torch.cat([layer(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(one, whole, atol=1e-5, rtol=1e-5)


def test_int8_is_close_to_the_fp32_layer():
    """Quantization error only: at this input scale the int8 output stays within a few
    percent of the fp32 layer's range (kernel or not)."""
    fp = FusedConv3x3(_conv(32, 32), relu=True)
    x = torch.rand(2, 32, 8, 8).contiguous(memory_format=CL)
    layer = Int8Conv3x3(fp, float(x.max()) / 255)
    with torch.inference_mode():
        y, ref = layer(x), fp(x)
    assert (y - ref).abs().max() < 0.02 * ref.abs().max()
    g = _ghost(16, 32, relu=True)
    lg = Int8Ghost3x3(g, float(x.max()) / 255)
    xg = x[:, :16].contiguous(memory_format=CL)
    with torch.inference_mode():
        y, ref = lg(xg), g(xg)
    assert (y - ref).abs().max() < 0.03 * ref.abs().max()


@needs_vnni
def test_ops_and_layers_reject_bad_arguments():
    layer = Int8Conv3x3(FusedConv3x3(_conv(16, 16)), 0.1)
    op = torch.ops.leanvision.conv3x3_u8s8_nhwc
    x = torch.rand(1, 16, 4, 4)
    args = (layer.packed, layer._scale(), layer.bias)
    with pytest.raises(RuntimeError, match=r"\(9, 4, O, 4\)"):
        op(x, layer.packed.float().to(torch.int16), *args[1:], None, False, 10.0)
    with pytest.raises(RuntimeError, match="packed weight"):
        op(torch.rand(1, 20, 4, 4), *args, None, False, 10.0)  # 20 channels: 5 quads
    with pytest.raises(RuntimeError, match="scale must be"):
        op(x, layer.packed, torch.ones(15), layer.bias, None, False, 10.0)
    with pytest.raises(RuntimeError, match="inverse scale"):
        op(x, *args, None, False, 0.0)
    with pytest.raises(RuntimeError, match="residual"):
        op(x, *args, torch.zeros(1, 16, 4, 5), False, 10.0)
    with pytest.raises(RuntimeError, match="float32"):
        op(x.double(), *args, None, False, 10.0)
    with pytest.raises(InputShapeError):
        layer(torch.rand(1, 15, 4, 4))
    with pytest.raises(ConfigError, match="input_scale"):
        Int8Conv3x3(FusedConv3x3(_conv(16, 16)), 0.0)
    g = Int8Ghost3x3(_ghost(16, 16), 0.1)
    wq, wc = g.packed
    gop = torch.ops.leanvision.ghost3x3_u8s8_nhwc
    gargs = (wq, g._scale(), g.b_primary, g.scale1, g.bias1, wc, g.bias2)
    with pytest.raises(RuntimeError, match="cheap weight"):
        gop(x, *gargs[:5], torch.randn(9, 4), g.bias2, None, False, 10.0)
    with pytest.raises(RuntimeError, match="8 values"):  # m = 8
        gop(x, wq, g._scale(), g.b_primary, torch.ones(7), g.bias1, wc, g.bias2, None, False, 1.0)


@needs_vnni
@pytest.mark.parametrize("ghost", [False, True], ids=["resnet20", "ghost_resnet20"])
def test_quantize_for_cpu_takes_the_layers_that_read_relu_outputs(ghost):
    torch.manual_seed(0)
    model = lv.create_model("resnet20_cifar", num_classes=10)
    if ghost:
        model = ghostify(model, ratio=2, dw_size=3)[0]
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    model.eval()
    fast, choices = lv.optimize_for_cpu(model, (3, 16, 16), batch=4, autotune=False)
    calib = [torch.randn(4, 3, 16, 16) for _ in range(3)]
    q, names = quantize_for_cpu(fast, calib)
    fused = [c.layer for c in choices]
    # the stem reads the image (negative values): fp32; every other fused layer reads a ReLU
    assert "conv1" in fused and "conv1" not in names and len(names) == len(fused) - 1
    kinds = (Int8Ghost3x3, Int8Conv3x3) if ghost else (Int8Conv3x3,)
    assert sum(isinstance(m, kinds) for m in q.modules()) == len(names)
    assert not any(isinstance(m, (Int8Conv3x3, Int8Ghost3x3)) for m in fast.modules())
    x = torch.randn(4, 3, 16, 16).contiguous(memory_format=CL)
    run = freeze_kernel_calls(q)
    with torch.inference_mode():
        ref, out, frozen = fast(x), q(x), run(x)
    assert 0 < (out - ref).abs().max() < 0.1 * ref.abs().max()
    torch.testing.assert_close(frozen, out, rtol=0, atol=0)


@needs_vnni
def test_quantize_for_cpu_leaves_layers_whose_input_can_be_negative():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)).eval()
    fast, _ = lv.optimize_for_cpu(model, (3, 8, 8), batch=2, autotune=False)
    q, names = quantize_for_cpu(fast, [torch.rand(2, 3, 8, 8)])
    assert names == []
    with pytest.raises(ConfigError, match="calibration batch"):
        quantize_for_cpu(fast, [])


def _u8(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8).contiguous(memory_format=CL)


def _u8_layers(c: int, o: int, stride: int) -> list[nn.Module]:
    ghost = Int8Ghost3x3(_ghost(c, o, relu=True, residual=True, stride=stride), 0.02)
    if stride == 2:
        return [ghost]
    return [Int8Conv3x3(FusedConv3x3(_conv(c, o), relu=True, residual=True), 0.02), ghost]


@needs_vnni
@pytest.mark.parametrize(
    "b,c,o,h,w,stride",
    [(2, 16, 16, 8, 8, 1), (1, 6, 32, 7, 5, 1), (3, 16, 48, 5, 13, 1), (1, 32, 8, 6, 9, 2)],
)
def test_u8_maps_in_and_out(b, c, o, h, w, stride, monkeypatch):
    """u8 input on the layer's grid, u8 residual, u8 output: the same values as the fp32 maps
    they stand for, and as the PyTorch fallback."""
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    x8, r8 = _u8(b, c, h, w), _u8(b, o, ho, wo, seed=1)
    for layer in _u8_layers(c, o, stride):
        with torch.inference_mode():
            x32 = (x8.float() * layer.input_scale).contiguous(memory_format=CL)
            fp32 = layer(x32, r8.float() * 0.03)  # fp32 maps in and out
            layer.set_u8_maps(0.02, 0.03)
            out = layer(x8, r8)
            ref = _fallback(layer, x8, r8, monkeypatch)
            layer.set_u8_maps(None, 0.03)
            mixed = layer(x8, r8)  # u8 in, fp32 out
        assert out.dtype == torch.uint8 and out.shape == (b, o, ho, wo)
        assert out.is_contiguous(memory_format=CL)
        torch.testing.assert_close(mixed, fp32, atol=1e-4, rtol=1e-5)
        # the u8 output is the fp32 output on the grid: round(y / 0.02), saturated at 255
        grid = torch.round(mixed * (1.0 / 0.02)).clamp(0, 255).to(torch.uint8)
        assert (out.int() - grid.int()).abs().max() <= 1
        assert (out == grid).float().mean() > 0.999
        assert (out.int() - ref.int()).abs().max() <= 1 and (out == ref).float().mean() > 0.99
        assert (mixed * 50 > 255.5).any() and (mixed * 50 < 254.5).float().mean() > 0.5


@needs_vnni
def test_u8_maps_reject_bad_arguments(monkeypatch):
    layer = Int8Conv3x3(FusedConv3x3(_conv(16, 16), relu=False, residual=True), 0.1)
    op = torch.ops.leanvision.conv3x3_u8s8_nhwc
    x, r8 = _u8(1, 16, 4, 4), _u8(1, 16, 4, 4)
    args = (layer.packed, layer._scale(), layer.bias)
    with pytest.raises(RuntimeError, match="needs relu"):
        op(x, *args, None, False, 10.0, out_inv=20.0)
    with pytest.raises(RuntimeError, match="res_scale"):
        op(x, *args, r8, True, 10.0, out_inv=20.0, res_scale=0.0)
    with pytest.raises(RuntimeError, match="out_inv"):
        op(x, *args, None, True, 10.0, out_inv=-1.0)
    with pytest.raises(RuntimeError, match="uint8"):
        op(x.to(torch.int8), *args, None, True, 10.0)
    with pytest.raises(ConfigError, match="ReLU"):
        layer.set_u8_maps(0.1, None)
    with pytest.raises(ConfigError, match="residual_scale must be finite"):
        layer.set_u8_maps(None, float("nan"))
    with pytest.raises(ConfigError, match="residual_scale"):  # the fallback needs the scale
        _fallback(layer, x, r8, monkeypatch)


@needs_vnni
@pytest.mark.parametrize("ghost", [False, True], ids=["resnet20", "ghost_resnet20"])
def test_quantize_for_cpu_keeps_maps_u8_between_int8_layers(ghost):
    torch.manual_seed(0)
    model = lv.create_model("resnet20_cifar", num_classes=10)
    if ghost:
        model = ghostify(model, ratio=2, dw_size=3)[0]
    model.eval()
    fast, _ = lv.optimize_for_cpu(model, (3, 16, 16), batch=4, autotune=False)
    calib = [torch.randn(4, 3, 16, 16) for _ in range(3)]
    plain, names = quantize_for_cpu(fast, calib, u8_maps=False)
    q, same = quantize_for_cpu(fast, calib)
    assert same == names
    layers = {n: m for n, m in q.named_modules() if isinstance(m, (Int8Conv3x3, Int8Ghost3x3))}
    u8_out = [n for n, m in layers.items() if m.out_scale is not None]
    assert u8_out and len(u8_out) < len(layers)  # the last map (read by the pooling) is fp32
    assert not any(m.out_scale for m in plain.modules() if isinstance(m, type(layers[u8_out[0]])))
    for n in u8_out:  # written on the grid its int8 readers quantize to
        node = next(nd for nd in q.graph.nodes if nd.target == n)
        for user in node.users:
            reader = layers[user.target]
            if user.args[0] is node:
                assert reader.input_scale == layers[n].out_scale
            else:
                assert reader.residual_scale == layers[n].out_scale
    x = torch.randn(4, 3, 16, 16).contiguous(memory_format=CL)
    run = freeze_kernel_calls(q)
    with torch.inference_mode():
        ref, out, frozen = plain(x), q(x), run(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(frozen, out, rtol=0, atol=0)
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()
