"""Native ops check every argument before any arithmetic; the layers check their inputs.

Each op gets a wrong channel count, a short bias, stride 0, a wrong dtype, out-of-range sizes;
each must raise (``RuntimeError`` from the op, a ``leanvision.errors`` type from the layer)
instead of returning garbage or reading out of bounds.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from leanvision import kernels
from leanvision.errors import InputShapeError, KernelError
from leanvision.layers.adder import AdderConv2d, QuantAdderConv2d
from leanvision.layers.binary import (
    BinaryConv2d,
    BinaryLinear,
    PackedBinaryConv2d,
    PackedBinaryLinear,
)
from leanvision.layers.conv3x3 import FusedConv3x3
from leanvision.layers.gated import GatedBasicBlock
from leanvision.methods.pruning.manidp import gate_model

ops = torch.ops.leanvision


@pytest.fixture(scope="module", autouse=True)
def _built():
    for name in ("binary", "adder_int8", "adder", "conv3x3", "gated_block"):
        assert kernels.load(name), kernels.status()[name].error


# ----------------------------------------------------------------------- binary


def _packed_conv(c: int = 64, o: int = 20, k: int = 3, bias: bool = True) -> PackedBinaryConv2d:
    torch.manual_seed(0)
    return PackedBinaryConv2d(BinaryConv2d(c, o, k, padding=1, bias=bias).eval())


def test_binary_conv_layer_rejects_wrong_channels():
    layer = _packed_conv(64)
    with pytest.raises(InputShapeError, match=r"PackedBinaryConv2d\(64, 20.*\(N, 64, H, W\).*60"):
        layer(torch.randn(1, 60, 8, 8))  # once garbage: 60 and 64 channels are both one word
    with pytest.raises(InputShapeError, match="expects an input"):
        layer(torch.randn(64, 8, 8))
    with pytest.raises(InputShapeError, match="smaller than"):
        PackedBinaryConv2d(BinaryConv2d(8, 8, 5).eval())(torch.randn(1, 8, 3, 3))
    lin = PackedBinaryLinear(BinaryLinear(100, 10).eval())
    with pytest.raises(InputShapeError, match=r"\(\.\.\., 100\).*\(4, 90\)"):
        lin(torch.randn(4, 90))


def test_binary_ops_check_arguments():
    layer = _packed_conv(64)
    x = torch.randn(1, 64, 8, 8)
    wb, sc, b = layer.weight_bits, layer.scale, layer.bias
    xp = ops.binary_pack(x, 64)
    good = (xp, wb, sc, b, 64, 20, 3, 1, 1)
    assert ops.binary_conv2d(*good).shape == (1, 20, 8, 8)

    def conv(**kw):  # type: ignore[no-untyped-def]
        names = ["xp", "wp", "scale", "bias", "channels", "out", "kernel", "stride", "padding"]
        args = dict(zip(names, good)) | kw
        return ops.binary_conv2d(*args.values())

    with pytest.raises(RuntimeError, match="expected 64 channels"):
        ops.binary_pack(torch.randn(1, 60, 8, 8), 64)
    with pytest.raises(RuntimeError, match="float32"):
        ops.binary_pack(x.double(), 64)
    with pytest.raises(RuntimeError, match="stride must be >= 1"):
        conv(stride=0)  # once a division by zero before any check
    with pytest.raises(RuntimeError, match="padding >= 0"):
        conv(padding=-1)
    with pytest.raises(RuntimeError, match="kernel and stride"):
        conv(kernel=0)
    with pytest.raises(RuntimeError, match="bias must be a float32 vector of 20"):
        conv(bias=torch.zeros(19))  # once read past its end
    with pytest.raises(RuntimeError, match="bias must be a float32"):
        conv(bias=torch.zeros(20, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="scale must be a float32 vector of 20"):
        conv(scale=torch.ones(8))
    with pytest.raises(RuntimeError, match="130 channels need 3 words"):
        conv(channels=130)
    with pytest.raises(RuntimeError, match="packed weight must be int64"):
        conv(out=30)
    with pytest.raises(RuntimeError, match="smaller than the kernel"):
        conv(xp=ops.binary_pack(torch.randn(1, 64, 2, 2), 64), padding=0)
    with pytest.raises(RuntimeError, match="packed input must be int64"):
        conv(xp=xp.int())
    lin = PackedBinaryLinear(BinaryLinear(100, 10).eval())
    xl = ops.binary_pack(torch.randn(4, 100), 100)
    with pytest.raises(RuntimeError, match="bias must be a float32 vector of 10"):
        ops.binary_linear(xl, lin.weight_bits, lin.scale, torch.zeros(3), 100, 10)
    with pytest.raises(RuntimeError, match="200 features need 4 words"):
        ops.binary_linear(xl, lin.weight_bits, lin.scale, lin.bias, 200, 10)
    with pytest.raises(RuntimeError, match="out_features must be >= 1"):
        ops.binary_linear(xl, lin.weight_bits, lin.scale, lin.bias, 100, 0)


def test_grouped_binary_op_checks_arguments():
    """binary_gconv2d (grouped / rectangular binary convs) refuses what would read past its
    buffers: groups that do not divide the channels, wrong plane shapes, short biases."""
    torch.manual_seed(0)
    layer = PackedBinaryConv2d(BinaryConv2d(64, 32, (1, 7), padding=(0, 3), groups=32).eval())
    assert layer.grouped
    xp = ops.binary_pack(torch.randn(1, 64, 8, 8), 64)
    names = ["xp", "wp", "scale", "bias", "channels", "out", "groups", "kh", "kw", "sh", "sw",
             "ph", "pw"]  # fmt: skip
    good = dict(zip(names, (xp, layer.weight_bits, layer.scale, layer.bias, 64, 32, 32, 1, 7,
                            1, 1, 0, 3)))  # fmt: skip
    assert ops.binary_gconv2d(*good.values()).shape == (1, 32, 8, 8)

    def conv(**kw):  # type: ignore[no-untyped-def]
        return ops.binary_gconv2d(*(good | kw).values())

    with pytest.raises(RuntimeError, match="groups 3 must divide"):
        conv(groups=3)
    with pytest.raises(RuntimeError, match="groups must be >= 1"):
        conv(groups=0)
    with pytest.raises(RuntimeError, match="packed weight must be int64 .O / groups"):
        conv(groups=16)  # two planes expected, one given
    with pytest.raises(RuntimeError, match="packed weight"):
        conv(kw=5)
    with pytest.raises(RuntimeError, match="must be >= 1"):
        conv(sw=0)
    with pytest.raises(RuntimeError, match="padding .* >= 0"):
        conv(ph=-1)
    with pytest.raises(RuntimeError, match="bias must be a float32 vector of 32"):
        conv(bias=torch.zeros(31))
    with pytest.raises(RuntimeError, match="scale must be a float32 vector of 32"):
        conv(scale=torch.ones(16))
    with pytest.raises(RuntimeError, match="130 channels need 3 words"):
        conv(channels=130, groups=2)
    with pytest.raises(RuntimeError, match="smaller than the kernel"):
        conv(xp=ops.binary_pack(torch.randn(1, 64, 8, 3), 64), pw=1)
    with pytest.raises(InputShapeError, match=r"\(N, 64, H, W\).*60"):
        layer(torch.randn(1, 60, 8, 8))
    with pytest.raises(InputShapeError, match="smaller than the 1x7 kernel"):
        PackedBinaryConv2d(BinaryConv2d(8, 8, (1, 7), groups=8).eval())(torch.randn(1, 8, 9, 6))


# ----------------------------------------------------------------------- integer adder


@pytest.mark.parametrize("bits", [8, 16])
def test_quant_adder_layer_rejects_wrong_channels(bits):
    q = QuantAdderConv2d(AdderConv2d(64, 16, 3, padding=1), 0.05, bits=bits)
    with pytest.raises(InputShapeError, match=rf"int{bits}.*\(N, 64, H, W\).*63"):
        q(torch.randn(1, 63, 6, 6))  # once garbage: 9*63 and 9*64 pad to the same length
    with pytest.raises(InputShapeError, match="smaller than"):
        QuantAdderConv2d(AdderConv2d(4, 4, 5), 0.05, bits=bits)(torch.randn(1, 4, 3, 3))


@pytest.mark.parametrize("bits", [8, 16])
def test_integer_adder_ops_check_arguments(bits):
    q = QuantAdderConv2d(AdderConv2d(64, 16, 3, padding=1, bias=True), 0.05, bits=bits)
    op = ops.adder_int8_forward if bits == 8 else ops.adder_int16_forward
    dtype = torch.uint8 if bits == 8 else torch.int16
    x = torch.randint(0, 100, (1, 64, 6, 6)).to(dtype)
    wq = q._pack()
    bias = torch.zeros(16)
    assert op(x, wq, bias, 0.05, 64, 3, 1, 1).shape == (1, 16, 6, 6)
    with pytest.raises(RuntimeError, match="64 input channels, xq has 63"):
        op(torch.randint(0, 100, (1, 63, 6, 6)).to(dtype), wq, bias, 0.05, 64, 3, 1, 1)
    with pytest.raises(RuntimeError, match="wq must be"):
        op(x, wq[:, :128].contiguous(), bias, 0.05, 64, 3, 1, 1)  # too short a reduction
    with pytest.raises(RuntimeError, match="bias must be a float32 CPU vector of 16"):
        op(x, wq, torch.zeros(15), 0.05, 64, 3, 1, 1)
    with pytest.raises(RuntimeError, match="stride must be >= 1"):
        op(x, wq, bias, 0.05, 64, 3, 0, 1)
    with pytest.raises(RuntimeError, match="padding >= 0"):
        op(x, wq, bias, 0.05, 64, 3, 1, -1)
    with pytest.raises(RuntimeError, match="scale must be a finite number > 0"):
        op(x, wq, bias, 0.0, 64, 3, 1, 1)
    with pytest.raises(RuntimeError, match="xq must be a 4-D"):
        op(x.float(), wq, bias, 0.05, 64, 3, 1, 1)
    with pytest.raises(RuntimeError, match="wq must be"):
        op(x, wq.float(), bias, 0.05, 64, 3, 1, 1)
    with pytest.raises(RuntimeError, match="smaller than the kernel"):
        op(x[:, :, :1, :1], wq, bias, 0.05, 64, 3, 1, 0)


# ----------------------------------------------------------------------- fp32 adder, conv3x3


def test_fp32_adder_ops_check_arguments():
    w = torch.randn(16, 8, 3, 3)
    packed = w.permute(2, 3, 1, 0).reshape(72, 16).contiguous()
    wsum = w.sum((1, 2, 3))
    x = torch.randn(1, 8, 6, 6)
    if kernels.path("adder") == "none":  # this build has no path: the op refuses outright
        with pytest.raises(RuntimeError, match="no AVX-512"):
            ops.adder_forward(x, packed, wsum, 16, 3, 1, 1)
        return
    assert ops.adder_forward(x, packed, wsum, 16, 3, 1, 1).shape == (1, 16, 6, 6)
    with pytest.raises(RuntimeError, match="packed weight must be float32"):
        ops.adder_forward(torch.randn(1, 7, 6, 6), packed, wsum, 16, 3, 1, 1)
    with pytest.raises(RuntimeError, match="stride and out_channels must be >= 1"):
        ops.adder_forward(x, packed, wsum, 16, 3, 0, 1)
    with pytest.raises(RuntimeError, match="w_sum must hold 16"):
        ops.adder_forward(x, packed, wsum[:8], 16, 3, 1, 1)
    with pytest.raises(RuntimeError, match="4-D float32"):
        ops.adder_forward(x.double(), packed, wsum, 16, 3, 1, 1)
    e = torch.randn(1, 16, 8, 8)
    wt = w.permute(2, 3, 0, 1).reshape(144, 8)
    wt = F.pad(wt, (0, 8)).contiguous()
    assert ops.adder_backward_input(e, x, wt, 3).shape == x.shape
    with pytest.raises(RuntimeError, match="kernel must be >= 1"):
        ops.adder_backward_input(e, x, wt, 0)
    with pytest.raises(RuntimeError, match="wt_packed float32"):
        ops.adder_backward_input(e, x, wt.double(), 3)
    with pytest.raises(RuntimeError, match="e must be"):
        ops.adder_backward_input(e[:, :, :7], x, wt, 3)


def test_conv3x3_op_and_layer_check_arguments():
    f = FusedConv3x3(nn.Conv2d(16, 16, 3, padding=1))
    with pytest.raises(InputShapeError, match=r"\(N, 16, H, W\).*15"):
        f(torch.randn(1, 15, 4, 4))
    x = torch.randn(1, 16, 4, 4)
    if kernels.path("conv3x3") == "none":
        with pytest.raises(RuntimeError, match="no AVX-512"):
            ops.conv3x3_nhwc(x, f.packed, f.bias, None, False)
        return
    with pytest.raises(RuntimeError, match="bias must be float32 with 16"):
        ops.conv3x3_nhwc(x, f.packed, torch.zeros(15), None, False)
    with pytest.raises(RuntimeError, match=r"\(9\*C, O\)"):
        ops.conv3x3_nhwc(torch.randn(1, 15, 4, 4), f.packed, f.bias, None, False)
    with pytest.raises(RuntimeError, match="float32"):
        ops.conv3x3_nhwc(x, f.packed.double(), f.bias, None, False)


# ----------------------------------------------------------------------- gated blocks


@pytest.fixture(scope="module")
def gated_block():
    import leanvision as lv

    torch.manual_seed(0)
    model = gate_model(lv.create_model("resnet20_cifar", num_classes=10)).eval()
    block = next(m for m in model.modules() if isinstance(m, GatedBasicBlock))
    return block


def test_gated_block_ops_check_arguments(gated_block):
    native = gated_block._native
    assert native is not None
    x = torch.randn(1, 16, 8, 8)
    p, meta, eps, cap = list(native.params), list(native.meta), list(native.eps), native.cap
    out, counts = ops.gated_basic_block(x, x, p, meta, eps, cap)
    assert out.shape == x.shape and counts.tolist() == [16, 16]

    def call(index: int | None = None, t: torch.Tensor | None = None, **kw):  # type: ignore[no-untyped-def]
        params = list(p)
        if index is not None:
            params[index] = t
        args = {"x": x, "shortcut": x, "meta": meta, "eps": eps, "cap": cap} | kw
        return ops.gated_basic_block(
            args["x"], args["shortcut"], params, args["meta"], args["eps"], args["cap"]
        )

    fc1, fc2w, fc2b = p[12], p[13], p[14]
    cases = [
        ({"index": 12, "t": fc1[:, :8].contiguous()}, r"gate 1 fc1 must be \(hidden, 16\)"),
        ({"index": 13, "t": fc2w[:8].contiguous()}, r"gate 1 fc2 weight must be \(16, "),
        ({"index": 14, "t": fc2b[:15].contiguous()}, "gate 1 fc2 bias must hold 16"),
        ({"index": 18, "t": p[18][:3].contiguous()}, "gate 2 fc2 bias must hold 16"),
        ({"index": 15, "t": torch.zeros(2)}, "threshold must be one value"),
        ({"index": 1, "t": torch.zeros(15)}, "conv 1 bias must hold 16"),
        ({"index": 5, "t": torch.ones(15)}, "batch norm tensors must hold 16"),
        ({"index": 0, "t": torch.randn(16, 16, 9, 9)}, r"1 <= k <= 8"),
        ({"index": 6, "t": torch.randn(16, 8, 3, 3)}, r"conv 2 weight must be \(O, 16"),
        ({"index": 2, "t": p[2].double()}, "bn1_weight must be a float32"),
        ({"meta": [0, 1, 1, 1]}, "strides must be >= 1"),
        ({"meta": [1, -1, 1, 1]}, "paddings >= 0"),
        ({"eps": [-1.0, 1e-5]}, "eps must be a finite number >= 0"),
        ({"cap": float("nan")}, "cap must be a finite number"),
        ({"x": torch.randn(2, 16, 8, 8)}, r"x must be \(1, C, H, W\)"),
        ({"x": torch.randn(1, 12, 8, 8)}, r"conv 1 weight must be \(O, 12"),
        ({"shortcut": torch.randn(1, 16, 8, 7)}, r"shortcut must be \(1, 16, 8, 8\)"),
        ({"x": torch.randn(1, 16, 1, 1), "meta": [1, 0, 1, 1]}, "smaller than its kernel"),
    ]
    for kw, match in cases:
        with pytest.raises(RuntimeError, match=match):
            call(**kw)
    with pytest.raises(RuntimeError, match="20 tensors, 4 ints and 2 eps per block"):
        ops.gated_block_chain(x, p, meta, eps[:1], cap)
    bad = list(p)
    bad[14] = fc2b[:15].contiguous()
    with pytest.raises(RuntimeError, match="gate 1 fc2 bias must hold 16"):
        ops.gated_block_chain(x, p + bad, meta * 2, eps * 2, cap)


# ----------------------------------------------------------------------- required kernels


def test_required_kernel_raises_kernel_error(monkeypatch):
    monkeypatch.setattr(kernels, "_state", {})
    monkeypatch.setattr(kernels, "_errors", {})
    monkeypatch.setenv("LEANVISION_NO_KERNELS", "1")
    assert not kernels.load("binary")  # not required: the PyTorch path, no error
    with pytest.raises(KernelError, match="'binary' is required.*LEANVISION_NO_KERNELS"):
        kernels.load("binary", required=True)
    monkeypatch.setenv("LEANVISION_REQUIRE_KERNELS", "1")
    with pytest.raises(KernelError, match="'adder_int8' is required"):
        kernels.load("adder_int8")
    assert kernels.status()["binary"].error == "disabled by LEANVISION_NO_KERNELS=1"
    # built, but for an instruction set its ops have no path on (AVX-512-only kernels)
    monkeypatch.setattr(kernels, "_state", {"conv3x3": True})
    monkeypatch.setattr(kernels, "_paths", {"conv3x3": "none"})
    assert kernels.load("conv3x3", required=False)
    with pytest.raises(KernelError, match="'conv3x3' is required but its .* build has no path"):
        kernels.load("conv3x3", required=True)


def test_failed_build_warns_and_reports_the_compiler_error(monkeypatch, tmp_path):
    (tmp_path / "broken.cpp").write_text("#error deliberately broken kernel\n")
    monkeypatch.setattr(kernels, "_CSRC", tmp_path)
    monkeypatch.setattr(kernels, "_state", {})
    monkeypatch.setattr(kernels, "_errors", {})
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    monkeypatch.delenv("LEANVISION_NO_KERNELS", raising=False)
    with pytest.warns(RuntimeWarning, match="'broken' unavailable"):
        assert not kernels.load("broken")
    st = kernels.status()["broken"]
    assert not st.built and st.path is None and "deliberately broken" in st.error
    with pytest.raises(KernelError, match="'broken' is required.*deliberately broken"):
        kernels.load("broken", required=True)
