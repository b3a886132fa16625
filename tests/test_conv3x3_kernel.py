"""The direct 3×3 convolution kernel (layers/conv3x3) and optimize_for_cpu (deploy/cpu)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import leanvision as lv
from leanvision import kernels
from leanvision.deploy import cpu as dc
from leanvision.errors import ConfigError
from leanvision.layers import conv3x3 as kc
from leanvision.profiling import count_ops

CL = torch.channels_last
needs_kernel = pytest.mark.skipif(
    kernels.capability() != "AVX512", reason="the conv3x3 kernel is built for AVX-512 only"
)


def _reference(x, w, b, r, relu, stride=1):
    y = F.conv2d(x, w, b, stride=stride, padding=1)
    y = y + r if r is not None else y
    return F.relu(y) if relu else y


def _op(x, w, b, r, relu, stride=1):
    packed = w.permute(2, 3, 1, 0).reshape(-1, w.shape[0]).contiguous()
    return torch.ops.leanvision.conv3x3_nhwc(x, packed, b, r, relu, stride)


@needs_kernel
@pytest.mark.parametrize(
    "n,c,o,h,w",
    [
        (2, 16, 16, 8, 8),
        (3, 3, 32, 7, 13),
        (1, 24, 48, 17, 5),
        (2, 64, 64, 1, 1),
        (1, 5, 96, 4, 35),
    ],
)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_op_matches_conv2d(n, c, o, h, w, residual, relu, stride):
    assert kernels.load("conv3x3")
    torch.manual_seed(0)
    x = torch.randn(n, c, h, w).contiguous(memory_format=CL)
    wt, b = torch.randn(o, c, 3, 3), torch.randn(o)
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    r = torch.randn(n, o, ho, wo) if residual else None  # NCHW: the op converts it
    out = _op(x, wt, b, r, relu, stride)
    assert out.shape == (n, o, ho, wo) and out.is_contiguous(memory_format=CL)
    ref = _reference(x, wt, b, r, relu, stride)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@needs_kernel
def test_op_threads_agree_and_nchw_input():
    assert kernels.load("conv3x3")
    torch.manual_seed(1)
    x, wt, b = torch.randn(3, 16, 9, 11), torch.randn(32, 16, 3, 3), torch.randn(32)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _op(x, wt, b, None, True)
        torch.set_num_threads(2)
        two = _op(x, wt, b, None, True)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two)
    torch.testing.assert_close(one, _reference(x, wt, b, None, True), atol=1e-4, rtol=1e-4)


@needs_kernel
def test_op_rejects_bad_arguments():
    assert kernels.load("conv3x3")
    x = torch.randn(1, 16, 4, 4)
    good = torch.randn(144, 16)
    with pytest.raises(RuntimeError, match="multiple of 16"):
        torch.ops.leanvision.conv3x3_nhwc(x, torch.randn(144, 8), torch.zeros(8), None, False)
    with pytest.raises(RuntimeError, match=r"\(9\*C, O\)"):
        torch.ops.leanvision.conv3x3_nhwc(x, torch.randn(72, 16), torch.zeros(16), None, False)
    with pytest.raises(RuntimeError, match="bias"):
        torch.ops.leanvision.conv3x3_nhwc(x, good, torch.zeros(3), None, False)
    with pytest.raises(RuntimeError, match="residual"):
        torch.ops.leanvision.conv3x3_nhwc(x, good, torch.zeros(16), torch.zeros(1, 16, 4, 5), False)
    r4 = torch.zeros(1, 16, 4, 4)
    with pytest.raises(RuntimeError, match="residual"):  # stride 2: the output is 2x2
        torch.ops.leanvision.conv3x3_nhwc(x, good, torch.zeros(16), r4, False, 2)
    with pytest.raises(RuntimeError, match="stride must be 1 or 2"):
        torch.ops.leanvision.conv3x3_nhwc(x, good, torch.zeros(16), None, False, 3)
    with pytest.raises(RuntimeError, match="float32"):
        torch.ops.leanvision.conv3x3_nhwc(x.double(), good, torch.zeros(16), None, False)


def test_eligible():
    assert kc.eligible(nn.Conv2d(3, 16, 3, padding=1))
    assert not kc.eligible(nn.Conv2d(16, 24, 3, padding=1))  # 24 outputs
    assert kc.eligible(nn.Conv2d(16, 16, 3, stride=2, padding=1))
    assert not kc.eligible(nn.Conv2d(16, 16, 3, stride=(1, 2), padding=1))
    assert not kc.eligible(nn.Conv2d(16, 16, 3, stride=3, padding=1))
    assert not kc.eligible(nn.Conv2d(16, 16, 1))
    assert not kc.eligible(nn.Conv2d(16, 16, 3, padding=1, groups=2))
    assert not kc.eligible(nn.Conv2d(16, 16, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ConfigError, match="cannot compute"):
        kc.FusedConv3x3(nn.Conv2d(16, 16, 3, stride=3, padding=1))


def test_fused_module_autograd_path_and_arguments():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, padding=1)
    f = kc.FusedConv3x3(conv, relu=True, residual=True)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    r = torch.randn(2, 16, 6, 6)
    y = f(x, r)  # needs a gradient: the F.conv2d path
    y.sum().backward()
    assert x.grad is not None
    with torch.no_grad():
        torch.testing.assert_close(f(x, r), F.relu(conv(x) + r), atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="without a residual"):
        f(x)
    assert set(f.state_dict()) == {"weight", "bias"}  # the packed copy is derived


def _fused(model: nn.Module) -> list[kc.FusedConv3x3]:
    return [m for m in model.modules() if isinstance(m, kc.FusedConv3x3)]


@needs_kernel
def test_optimize_resnet20_fuses_blocks_and_keeps_outputs_and_macs():
    torch.manual_seed(0)
    model = lv.create_model("resnet20_cifar", num_classes=10).eval()
    fast, choices = lv.optimize_for_cpu(model, (3, 32, 32), batch=2, autotune=False)
    # stem conv + 9 blocks × 2 convs (the two stride-2 ones too) = 19 eligible convs
    assert len(choices) == 19 and all(c.used == "kernel" for c in choices)
    kinds = [c.fused for c in choices]
    assert kinds.count("add+relu") == 9 and kinds.count("relu") == 10
    assert len(_fused(fast)) == 19
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x), atol=1e-4, rtol=1e-4)
    size = (3, 32, 32)
    assert count_ops(fast, size).macs == count_ops(model, size).macs


@needs_kernel
def test_optimize_timm_resnet_and_pruned_model():
    torch.manual_seed(0)
    model = lv.create_model("resnet18").eval()  # Identity modules and `x += shortcut`
    fast, choices = lv.optimize_for_cpu(model, (3, 64, 64), autotune=False)
    # 16 3x3 convs (3 of stride 2), the 7x7 stem and the 1x1 downsamples not: 16 fused
    assert len(choices) == 16 and len(_fused(fast)) == 16
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x), atol=1e-4, rtol=1e-4)
    small = lv.compress(
        lv.create_model("resnet20_cifar", num_classes=10), "l1_filter", data=None,
        input_size=[3, 32, 32], target_macs_ratio=0.5, round_to=16, finetune_epochs=0,
        recalibrate_batches=0,
    ).eval()  # fmt: skip
    fast, choices = lv.optimize_for_cpu(small, (3, 32, 32), batch=2)
    assert choices and {c.used for c in choices} <= {"kernel", "aten"}
    assert all(c.aten_ms > 0 and c.kernel_ms > 0 for c in choices)
    assert len(_fused(fast)) == sum(c.used == "kernel" for c in choices)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), small(x), atol=1e-4, rtol=1e-4)


def test_optimize_without_kernel_folds_only(monkeypatch):
    monkeypatch.setattr(dc, "kernel_runs", lambda: False)
    model = lv.create_model("resnet20_cifar", num_classes=10).eval()
    fast, choices = lv.optimize_for_cpu(model, (3, 32, 32))
    assert choices == [] and not _fused(fast)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x), atol=1e-4, rtol=1e-4)


def test_optimize_errors():
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x  # data-dependent control flow: fx cannot trace

    with pytest.raises(ConfigError, match="cannot trace"):
        lv.optimize_for_cpu(Branchy(), (3, 8, 8))
    with pytest.raises(ConfigError, match=r"input_size must be one image's shape \(C, H, W\)"):
        lv.optimize_for_cpu(nn.Linear(8, 4), (8,))  # runs, but is no image model
