"""The fused Ghost module (layers/ghost.FusedGhost3x3, ``ghost3x3_nhwc``) and its place in
optimize_for_cpu: the kernel against the plain PyTorch ops, on odd shapes and wrong inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import leanvision as lv
from leanvision import kernels
from leanvision.deploy import cpu as dc
from leanvision.errors import ConfigError, InputShapeError
from leanvision.layers.ghost import FusedGhost3x3, GhostConv2d, ghost_eligible
from leanvision.methods.ghost import ghostify
from leanvision.profiling import count_ops

CL = torch.channels_last
needs_kernel = pytest.mark.skipif(
    kernels.capability() != "AVX512", reason="the conv3x3 kernels are built for AVX-512 only"
)


def _parts(c: int, n: int, seed: int = 0, primary_bias: bool = False):
    torch.manual_seed(seed)
    g = GhostConv2d(c, n, 3, 1, 1)
    if primary_bias:  # as after folding a Ghost module's inner BN
        g.primary.bias = nn.Parameter(torch.randn(g.init_channels))
    bn = nn.BatchNorm2d(n).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(-1, 2)
        bn.bias.uniform_(-1, 1)
    return g, bn


def _reference(g, bn, x, r, relu):
    y = bn(g(x))
    y = y + r if r is not None else y
    return F.relu(y) if relu else y


@needs_kernel
@pytest.mark.parametrize(
    "b,c,n,h,w",
    [
        (2, 16, 16, 8, 8),
        (1, 8, 16, 7, 5),
        (3, 3, 64, 6, 6),
        (1, 16, 48, 9, 11),
        (2, 24, 16, 1, 1),
        # m = 4, 12, 20, 28: the last m % 16 channels of a pruned Ghost module
        (2, 16, 8, 7, 9),
        (1, 8, 24, 5, 19),
        (2, 5, 40, 6, 3),
        (1, 32, 56, 4, 17),
        # the quad tiles (C % 4 == 0) at every tile width, and single pixels after them
        (1, 12, 8, 3, 21),
        (2, 4, 8, 5, 13),
    ],
)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_kernel_matches_ghost_bn_epilogue(b, c, n, h, w, residual, relu):
    g, bn = _parts(c, n, primary_bias=(c == 3))
    f = FusedGhost3x3(g.primary, g.cheap, bn, relu=relu, residual=residual)
    x = torch.randn(b, c, h, w).contiguous(memory_format=CL)
    r = torch.randn(b, n, h, w) if residual else None
    with torch.inference_mode():
        out = f(x, r)
        ref = _reference(g, bn, x, r, relu)
    assert out.shape == (b, n, h, w) and out.is_contiguous(memory_format=CL)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@needs_kernel
@pytest.mark.parametrize(("batch", "threads"), [(1, 2), (3, 2), (2, 3)])
def test_kernel_threads_and_bands_agree(batch, threads):
    """Fewer images than threads run in row bands (the primary rows split over the threads
    into one shared map, then the epilogue rows); at least as many, one image per task."""
    g, bn = _parts(16, 32, seed=1)
    f = FusedGhost3x3(g.primary, g.cheap, bn, relu=True)
    x = torch.randn(batch, 16, 13, 9)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with torch.inference_mode():
            one = f(x)
        torch.set_num_threads(threads)
        with torch.inference_mode():
            two = f(x)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, two)
    with torch.inference_mode():
        torch.testing.assert_close(one, _reference(g, bn, x, None, True), atol=1e-4, rtol=1e-4)


def test_fallback_path_is_the_same_arithmetic(monkeypatch):
    g, bn = _parts(8, 16)
    f = FusedGhost3x3(g.primary, g.cheap, bn, relu=True, residual=True)
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    r = torch.randn(2, 16, 6, 6)
    y = f(x, r)  # needs a gradient: the F.conv2d path
    y.sum().backward()
    assert x.grad is not None
    torch.testing.assert_close(y, _reference(g, bn, x, r, True), atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="without a residual"):
        f(x)
    derived = {"w_primary", "b_primary", "scale1", "bias1", "w_cheap", "bias2"}
    assert set(f.state_dict()) == derived  # the packed copies are derived


@needs_kernel
@pytest.mark.parametrize(
    "b,c,n,h,w", [(2, 16, 32, 8, 8), (1, 8, 16, 7, 5), (3, 5, 24, 9, 6), (2, 32, 64, 33, 17)]
)
@pytest.mark.parametrize("relu", [False, True])
def test_kernel_stride2_matches_ghost_bn_epilogue(b, c, n, h, w, relu):
    """A stage's first Ghost module halves the map: its primary convolution has stride 2."""
    torch.manual_seed(0)
    g = GhostConv2d(c, n, 3, 2, 1)
    _, bn = _parts(c, n)
    f = FusedGhost3x3(g.primary, g.cheap, bn, relu=relu)
    x = torch.randn(b, c, h, w).contiguous(memory_format=CL)
    with torch.inference_mode():
        out = f(x)
        ref = _reference(g, bn, x, None, relu)
        one = torch.cat([f(x[i : i + 1]) for i in range(b)])  # row bands of one image
    assert out.shape == ref.shape == (b, n, (h + 1) // 2, (w + 1) // 2)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(one, ref, atol=1e-4, rtol=1e-4)


@needs_kernel
def test_kernel_repacks_after_load_state_dict():
    g, bn = _parts(16, 32)
    f = FusedGhost3x3(g.primary, g.cheap, bn)
    x = torch.randn(1, 16, 5, 5)
    with torch.inference_mode():
        f(x)  # packs
    g2, bn2 = _parts(16, 32, seed=5)
    f.load_state_dict(FusedGhost3x3(g2.primary, g2.cheap, bn2).state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(f(x), _reference(g2, bn2, x, None, False), atol=1e-4, rtol=1e-4)


@needs_kernel
def test_op_and_layer_reject_bad_arguments():
    g, bn = _parts(16, 32)
    f = FusedGhost3x3(g.primary, g.cheap, bn)
    wp, wc = f.packed
    op = torch.ops.leanvision.ghost3x3_nhwc
    x = torch.randn(1, 16, 4, 4)
    args = (wp, f.b_primary, f.scale1, f.bias1, wc, f.bias2)
    with pytest.raises(RuntimeError, match=r"\(9\*C, m\)"):
        op(torch.randn(1, 15, 4, 4), *args, None, False)
    with pytest.raises(RuntimeError, match="multiple of 4"):
        op(x, torch.randn(144, 10), *args[1:], None, False)
    with pytest.raises(RuntimeError, match="16 values"):
        op(x, wp, f.b_primary, torch.ones(15), f.bias1, wc, f.bias2, None, False)
    with pytest.raises(RuntimeError, match="cheap weight"):
        op(x, *args[:4], torch.randn(9, 8), f.bias2, None, False)
    with pytest.raises(RuntimeError, match="residual"):
        op(x, *args, torch.zeros(1, 32, 4, 5), False)
    with pytest.raises(RuntimeError, match="float32"):
        op(x.double(), *args, None, False)
    with pytest.raises(InputShapeError):
        f(torch.randn(1, 15, 4, 4))


def test_eligible():
    g, bn = _parts(16, 32)
    assert ghost_eligible(g.primary, g.cheap, bn)
    assert not ghost_eligible(g.primary, g.cheap, nn.BatchNorm2d(32))  # training mode
    narrow = GhostConv2d(16, 8, 3, 1, 1)  # m = 4, as l1 pruning leaves Ghost-ResNet's stage 1
    assert ghost_eligible(narrow.primary, narrow.cheap, nn.BatchNorm2d(8).eval())
    odd = GhostConv2d(16, 20, 3, 1, 1)  # m = 10: not a multiple of 4
    assert not ghost_eligible(odd.primary, odd.cheap, nn.BatchNorm2d(20).eval())
    halving = GhostConv2d(16, 32, 3, 2, 1)  # a stage's first block: stride 2
    assert ghost_eligible(halving.primary, halving.cheap, bn)
    strided = GhostConv2d(16, 32, 3, 3, 1)
    assert not ghost_eligible(strided.primary, strided.cheap, bn)
    wide = GhostConv2d(16, 32, 3, 1, 1, dw_size=5)
    assert not ghost_eligible(wide.primary, wide.cheap, bn)
    with pytest.raises(ConfigError, match="cannot compute"):
        FusedGhost3x3(odd.primary, odd.cheap, nn.BatchNorm2d(20).eval())


def _ghost_resnet20():
    torch.manual_seed(0)
    m = ghostify(lv.create_model("resnet20_cifar", num_classes=10), ratio=2, dw_size=3)[0]
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


@needs_kernel
def test_optimize_for_cpu_fuses_every_ghost_module():
    model = _ghost_resnet20()
    fast, choices = lv.optimize_for_cpu(model, (3, 32, 32), batch=2, autotune=False)
    ghosts = [c for c in choices if c.fused.startswith("ghost")]
    # 9 blocks × 2 Ghost modules, the two stride-2 ones too; the stem conv stays a conv
    assert len(ghosts) == 18 and all(c.used == "kernel" for c in choices)
    assert sum(c.fused == "ghost+bn+add+relu" for c in ghosts) == 9
    assert sum(isinstance(m, FusedGhost3x3) for m in fast.modules()) == 18
    assert sum(getattr(m, "stride", 1) == 2 for m in fast.modules()) == 2
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x), atol=1e-4, rtol=1e-4)
    size = (3, 32, 32)
    assert count_ops(fast, size).macs == count_ops(model, size).macs


@needs_kernel
def test_optimize_for_cpu_times_ghost_against_aten_and_keeps_the_faster():
    model = _ghost_resnet20()
    fast, choices = lv.optimize_for_cpu(model, (3, 32, 32), batch=1, repeats=3)
    ghosts = [c for c in choices if c.fused.startswith("ghost")]
    assert ghosts and all(c.aten_ms > 0 and c.kernel_ms > 0 for c in ghosts)
    kept = sum(c.used == "kernel" for c in ghosts)
    assert sum(isinstance(m, FusedGhost3x3) for m in fast.modules()) == kept
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x), atol=1e-4, rtol=1e-4)


def test_optimize_for_cpu_without_kernel_keeps_ghost_modules(monkeypatch):
    monkeypatch.setattr(dc, "kernel_runs", lambda: False)
    model = _ghost_resnet20()
    fast, choices = lv.optimize_for_cpu(model, (3, 32, 32))
    assert choices == []
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), model(x), atol=1e-4, rtol=1e-4)
