"""Winograd AdderNet: exactness of the transforms, the p = 2 identity, gradients, the balance of
the tile outputs, additions counted, the p schedule, compress/save/load."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import leanvision as lv
from leanvision import kernels
from leanvision.errors import ConfigError, InputShapeError
from leanvision.layers import AdderConv2d, WinogradAdderConv2d, winograd_adder2d
from leanvision.layers import winograd_adder as wa
from leanvision.methods.lowbit import PScheduleHook, adderize, winograd_adderize
from leanvision.methods.lowbit.winograd_adder import p_at
from leanvision.profiling import count_ops

SHAPES = [(2, 5, 7, 9), (1, 3, 8, 8), (2, 4, 1, 1), (1, 16, 6, 11)]  # n, c, h, w


CASES = [(s, p) for s in SHAPES for p in (0, 1, 2) if min(s[2:]) + 2 * p >= 3]


@pytest.mark.parametrize("transform", wa.EXACT)
@pytest.mark.parametrize(("shape", "padding"), CASES)
def test_exact_transforms_compute_conv2d_with_a_product_core(transform, shape, padding):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64)
    w = torch.randn(6, shape[1], 3, 3, dtype=torch.float64)
    y = winograd_adder2d(x, w, transform, padding=padding, core="product")
    torch.testing.assert_close(y, F.conv2d(x, w, padding=padding), rtol=1e-12, atol=1e-11)


def test_window_sum_is_not_exact():
    torch.manual_seed(0)
    x, w = torch.randn(1, 4, 8, 8).double(), torch.randn(5, 4, 3, 3).double()
    y = winograd_adder2d(x, w, "window_sum", core="product")
    assert (y - F.conv2d(x, w, padding=1)).abs().max() > 1.0


@pytest.mark.parametrize("transform", wa.TRANSFORMS)
def test_p2_is_twice_the_product_minus_square_terms(transform):
    """−Σ(U − V)² = 2ΣUV − ΣU² − ΣV²: the weight-only term is the layer on a zero input, the
    input-only term the layer with zero weights; for an exact transform 2ΣUV is 2·conv."""
    torch.manual_seed(1)
    x, w = torch.randn(2, 5, 7, 9).double(), torch.randn(6, 5, 3, 3).double()
    y = winograd_adder2d(x, w, transform, p=2.0)
    weight_only = winograd_adder2d(torch.zeros_like(x), w, transform, p=2.0)
    input_only = winograd_adder2d(x, torch.zeros_like(w), transform, p=2.0)
    product = winograd_adder2d(x, w, transform, core="product")
    torch.testing.assert_close(y, 2 * product + weight_only + input_only, rtol=1e-10, atol=1e-9)
    if transform in wa.EXACT:
        conv = F.conv2d(x, w, padding=1)
        torch.testing.assert_close(y, 2 * conv + weight_only + input_only, rtol=1e-10, atol=1e-9)
        assert torch.allclose(input_only[:, :1].expand_as(input_only), input_only)  # shared by O


def test_p1_matches_brute_force_tiles():
    """At p = 1 each Winograd position of each tile holds −Σ_c |U − V|: against the tiles
    cut by unfold and transformed one by one, for every transform, odd sizes included."""
    torch.manual_seed(2)
    x, w = torch.randn(2, 4, 6, 5).double(), torch.randn(3, 4, 3, 3).double()
    for t in wa.TRANSFORMS:
        bt, g, at = wa.transform_matrices(t, torch.float64)
        xp, h, wd, th, tw = wa._tiles(x, 1)
        tiles = xp.unfold(2, 4, 2).unfold(3, 4, 2)  # (N, C, th, tw, 4, 4)
        v = torch.einsum("ia,nctsab,jb->nctsij", bt, tiles, bt)
        u = torch.einsum("ia,ocab,jb->ocij", g, w, g)
        m = -(u[None, :, :, None, None] - v[:, None]).abs().sum(2)  # (N, O, th, tw, 4, 4)
        y = torch.einsum("ia,notsab,jb->notisj", at, m, at).reshape(2, 3, 2 * th, 2 * tw)
        torch.testing.assert_close(winograd_adder2d(x, w, t), y[:, :, :h, :wd])


def test_gradients_are_true_above_p1_and_addernet_at_p1():
    torch.manual_seed(3)
    x = torch.randn(1, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    for p in (1.5, 2.0):
        layer = lambda a, b, p=p: winograd_adder2d(a, b, "balanced_a", p)  # noqa: E731
        assert torch.autograd.gradcheck(layer, (x, w))
    # p = 1: AdderNet's rule on the core (weights: V − U, inputs: HardTanh(U − V)), the
    # transforms' chain rule around it
    v = torch.randn(16, 7, 5, dtype=torch.float64, requires_grad=True)
    u = torch.randn(16, 3, 5, dtype=torch.float64, requires_grad=True)
    gm = torch.randn(16, 7, 3, dtype=torch.float64)
    wa._Core.apply(v, u, 1.0).backward(gm)
    diff = u[:, None] - v[:, :, None]  # (16, L, O, C)
    gu = -(gm[..., None] * diff).sum(1)
    gv = (gm[..., None] * diff.clamp(-1, 1)).sum(2)
    torch.testing.assert_close(u.grad, gu.detach())
    torch.testing.assert_close(v.grad, gv.detach())


def test_balanced_transforms_balance_the_tile_outputs():
    """The note's simulation: ReLU inputs, N(0, 1) weights, 16 channels. The standard
    transform's four outputs per tile have means of both signs; the balanced ones do not, and
    their means lie within a factor 1.5 of each other."""
    torch.manual_seed(4)
    x, w = torch.randn(8, 16, 16, 16).relu(), torch.randn(16, 16, 3, 3)
    means = {}
    for t in wa.TRANSFORMS:
        y = winograd_adder2d(x, w, t)
        means[t] = y.reshape(8, 16, 8, 2, 8, 2).mean((0, 1, 2, 4)).flatten()
    std = means["standard"]
    assert (std > 0).any() and (std < 0).any()
    for t in ("balanced_a", "balanced_b", "window_sum"):
        assert (means[t] < 0).all()
        assert means[t].min() / means[t].max() < 1.5  # all negative: min is the largest magnitude


def test_layer_and_function_check_their_arguments():
    with pytest.raises(ConfigError, match="unknown Winograd transform"):
        WinogradAdderConv2d(4, 4, transform="optimal")
    with pytest.raises(ConfigError, match="p must be in"):
        WinogradAdderConv2d(4, 4, p=0.5)
    layer = WinogradAdderConv2d(4, 6, bias=True)
    with pytest.raises(InputShapeError, match=r"\(N, 4, H, W\)"):
        layer(torch.randn(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="3×3"):
        winograd_adder2d(torch.randn(1, 4, 8, 8), torch.randn(6, 4, 5, 5))
    with pytest.raises(ConfigError, match="cannot replace"):
        WinogradAdderConv2d.from_conv(nn.Conv2d(4, 4, 3, stride=2, padding=1))
    y = layer(torch.randn(2, 4, 7, 5))
    assert y.shape == (2, 6, 7, 5)
    layer.set_p(1.5)
    assert "p=1.5" in repr(layer) and layer.state_dict()["p"].item() == 1.5


def test_counts_half_the_direct_adder_additions_on_resnet20():
    model = lv.create_model("resnet20_cifar", num_classes=10)
    wino = count_ops(winograd_adderize(model)[0], (3, 32, 32))
    direct = count_ops(adderize(model)[0], (3, 32, 32))
    adder_ops = ("adder2d", "winograd_adder_core", "winograd_input_transform",
                 "winograd_output_transform")  # fmt: skip
    w_adds = sum(wino.by_op.get(k, 0) for k in adder_ops)
    d_adds = direct.by_op["adder2d"]
    # the note's formula: 80.7 M -> 41.0 M (-49 %) with stride-2 and 1×1 layers left direct
    assert round(d_adds / 1e6, 1) == 80.7 and round(w_adds / 1e6, 1) == 41.0
    layer = WinogradAdderConv2d(16, 32)
    counts = count_ops(layer, (16, 9, 8), batch=2)
    tiles = 2 * 5 * 4
    assert counts.by_op == {
        "winograd_adder_core": 32 * tiles * 16 * 32,
        "winograd_input_transform": 32 * tiles * 16,
        "winograd_output_transform": 24 * tiles * 32,
    }
    assert counts.muls == 0 and counts.adds == sum(counts.by_op.values())


def test_p_schedules_and_hook():
    assert p_at(0.0) == 2.0 and p_at(0.3) == pytest.approx(1.5) and p_at(0.6) == 1.0
    assert p_at(0.9) == 1.0 and p_at(0.5, "none") == 1.0
    assert p_at(0.3, "step") == 2.0 and p_at(0.6, "step") == 1.0
    assert p_at(0.3, "cosine") == pytest.approx(1.5) and p_at(0.0, "cosine") == 2.0
    with pytest.raises(ConfigError):
        p_at(0.1, "exp")
    net = nn.Sequential(WinogradAdderConv2d(3, 4), WinogradAdderConv2d(4, 4))
    hook = PScheduleHook(net, "linear", reach=0.5)
    trainer = SimpleNamespace(
        config=SimpleNamespace(epochs=2, max_steps=None), steps_per_epoch=10, global_step=5
    )
    hook.before_forward(trainer, None)
    assert [float(m.p) for m in net] == [1.5, 1.5]
    trainer.config.max_steps = 8  # the cap shortens the run: progress 5/8
    hook.before_forward(trainer, None)
    assert float(net[0].p) == 1.0
    hook.on_train_end(trainer)
    assert float(net[1].p) == 1.0


def test_compress_trains_saves_and_loads(mnist_small, tmp_path):
    torch.manual_seed(0)
    model = lv.create_model("resnet8_cifar", num_classes=10, in_chans=1)
    with pytest.raises(ConfigError, match="transform"):
        lv.compress(model, "winograd_adder", data=None, transform="optimal")
    small = lv.compress(
        model, "winograd_adder", data=mnist_small, transform="balanced_b", finetune_epochs=1,
        max_steps=3, progress=False, log=False,
    )  # fmt: skip
    winos = [m for m in small.modules() if isinstance(m, WinogradAdderConv2d)]
    assert winos and all(m.transform == "balanced_b" and float(m.p) == 1.0 for m in winos)
    assert any(type(m) is AdderConv2d for m in small.modules())  # stride-2 / 1×1 stay direct
    x = torch.randn(2, 1, 28, 28)
    out = small(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    lv.save(small, tmp_path / "w.pt")
    back = lv.load(tmp_path / "w.pt").eval()
    assert [m.transform for m in back.modules() if isinstance(m, WinogradAdderConv2d)] == [
        "balanced_b"
    ] * len(winos)
    torch.testing.assert_close(back(x), small(x))


# ----------------------------------------------------------------------- native kernel

KERNEL_SHAPES = [  # n, c, o, h, w, padding
    (2, 5, 20, 7, 9, 1),
    (1, 16, 16, 8, 8, 1),
    (2, 24, 48, 7, 13, 0),
    (1, 3, 17, 1, 1, 1),
    (1, 17, 33, 6, 11, 2),
    (2, 32, 64, 10, 10, 1),
]
needs_avx512 = pytest.mark.skipif(
    kernels.capability() != "AVX512", reason="the adder kernels are AVX-512 only"
)


@needs_avx512
@pytest.mark.parametrize("shape", KERNEL_SHAPES)
def test_kernel_matches_the_pytorch_path(shape):
    n, c, o, h, w, pad = shape
    torch.manual_seed(5)
    x, wt = torch.randn(n, c, h, w), torch.randn(o, c, 3, 3)
    for t in wa.TRANSFORMS:
        with torch.no_grad():
            y = winograd_adder2d(x, wt, t, padding=pad)  # the kernel
        ref = winograd_adder2d(x.double().requires_grad_(), wt.double(), t, padding=pad)
        assert y.shape == ref.shape and y.is_contiguous(memory_format=torch.channels_last)
        assert (y.double() - ref).abs().max() <= 2e-6 * ref.abs().max()


@needs_avx512
def test_kernel_runs_at_inference_only_and_threads_agree():
    layer = WinogradAdderConv2d(16, 32)
    x = torch.randn(3, 16, 12, 10)
    with kernels.recording_fallbacks() as fell:
        y_train = layer(x)  # weights want a gradient: the PyTorch path
    assert fell == {"WinogradAdderConv2d": ["autograd"]}
    old = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.no_grad(), kernels.recording_fallbacks() as fell:
                outs.append(layer(x))
            assert fell == {}
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    torch.testing.assert_close(outs[0], y_train.detach(), rtol=1e-5, atol=1e-3)


@needs_avx512
def test_kernel_checks_its_arguments():
    op = torch.ops.leanvision.winograd_adder_forward
    x = torch.randn(1, 8, 6, 6)
    u, us, at = torch.randn(16 * 8, 16), torch.randn(16, 16), torch.randn(2, 4)
    assert op(x, u, us, at, 10, 1).shape == (1, 10, 6, 6)
    with pytest.raises(RuntimeError, match="packed U"):
        op(torch.randn(1, 7, 6, 6), u, us, at, 10, 1)  # 7 channels against a 16*8 packing
    with pytest.raises(RuntimeError, match="packed U"):
        op(x, u, us, at, 20, 1)  # 20 outputs need 32 packed columns
    with pytest.raises(RuntimeError, match="u_sum"):
        op(x, u, us[:8], at, 10, 1)
    with pytest.raises(RuntimeError, match="a_t"):
        op(x, u, us, at[:1], 10, 1)
    with pytest.raises(RuntimeError, match="smaller than"):
        op(torch.randn(1, 8, 1, 1), u, us, at, 10, 0)
    with pytest.raises(RuntimeError, match="float32"):
        op(x.double(), u, us, at, 10, 1)


@needs_avx512
@pytest.mark.parametrize("p", [1.0, 1.3, 1.7, 2.0])
def test_training_core_kernels_match_float64(p):
    """The native core and its backward (fp32) against the PyTorch path in float64: values and
    both gradients, odd sizes (L, C and O not multiples of 16)."""
    for lc, c, o in [(7, 5, 3), (97, 33, 20), (130, 64, 64)]:
        torch.manual_seed(6)
        v, u, gm = torch.randn(16, lc, c), torch.randn(16, o, c), torch.randn(16, lc, o)
        v1, u1 = v.clone().requires_grad_(), u.clone().requires_grad_()
        m = wa._Core.apply(v1, u1, p)
        m.backward(gm)
        v2, u2 = v.double().requires_grad_(), u.double().requires_grad_()
        m2 = wa._Core.apply(v2, u2, p)
        m2.backward(gm.double())
        for a, b in ((m, m2), (v1.grad, v2.grad), (u1.grad, u2.grad)):
            assert (a.double() - b).abs().max() <= 2e-6 * b.abs().max()


@needs_avx512
def test_training_core_kernels_check_their_arguments():
    core = torch.ops.leanvision.winograd_adder_core
    back = torch.ops.leanvision.winograd_adder_core_backward
    v, u, us = torch.randn(16, 9, 8), torch.randn(16 * 8, 16), torch.randn(16, 16)
    assert core(v, u, us, 10, 1.5).shape == (16, 9, 10)
    with pytest.raises(RuntimeError, match="p must be in"):
        core(v, u, us, 10, 2.5)
    with pytest.raises(RuntimeError, match="packed U"):
        core(torch.randn(16, 9, 7), u, us, 10, 1.0)
    with pytest.raises(RuntimeError, match=r"\(16, L, C\)"):
        core(torch.randn(4, 9, 8), u, us, 10, 1.0)
    gm, ut = torch.randn(16, 9, 10), torch.randn(16, 10, 8)
    gv, gu = back(gm, v, ut, 1.5)
    assert gv.shape == v.shape and gu.shape == ut.shape
    assert back(gm, v, ut, 1.0)[1].numel() == 0  # p = 1: the caller's matrix product
    with pytest.raises(RuntimeError, match="disagree"):
        back(gm, v, torch.randn(16, 11, 8), 1.5)


@pytest.mark.parametrize("p", [1.0, 1.5])
def test_pairwise_grads_match_the_chunked_backward(p):
    """The broadcast form of the core's backward (compiled on CUDA; eager here, float64) gives
    the chunked backward's gradients: the input's at p = 1 (the weight's there are the matrix
    products of AdderNet's rule), both above."""
    torch.manual_seed(7)
    v, u, gm = (torch.randn(16, 37, 5), torch.randn(16, 6, 5), torch.randn(16, 37, 6))
    v, u, gm = v.double(), u.double(), gm.double()
    v1, u1 = v.clone().requires_grad_(), u.clone().requires_grad_()
    wa._Core.apply(v1, u1, p).backward(gm)
    gv, gu = wa.pairwise_grads(gm, v, u, torch.tensor(p, dtype=torch.float64), p == 1.0)
    assert torch.allclose(gv, v1.grad)
    if p != 1.0:
        assert torch.allclose(gu, u1.grad)
    gv_only, none = wa.pairwise_grads(gm, v, u, torch.tensor(p), p == 1.0, need_u=False)
    assert none is None and torch.allclose(gv_only, gv)


def test_fused_backward_failing_falls_back_and_says_so(monkeypatch):
    """A compiled backward that fails on its device is switched off; the caller runs the
    chunked path and the run record names it."""

    def broken(*args):
        raise RuntimeError("no triton")

    monkeypatch.setattr(wa, "_FUSED", {"fn": broken, "backend": "torch.compile(inductor)"})
    v, u, gm = torch.randn(16, 4, 3), torch.randn(16, 2, 3), torch.randn(16, 4, 2)
    assert wa._run_fused(gm, v, u, 1.5, True, True) is None
    assert wa.cuda_backward_backend() == "chunked eager (RuntimeError)"
    assert wa._run_fused(gm, v, u, 1.5, True, True) is None  # stays off


@needs_avx512
def test_native_input_transform_matches_the_pytorch_path():
    """winograd_input_transform and its backward against the strided PyTorch path and an
    unfold-and-einsum reference (float64 autograd for the gradient): odd sizes, a map larger
    than its tiles need, the transforms' Bᵀ and a random one."""
    kernels.load("adder", required=True)
    fwd = torch.ops.leanvision.winograd_input_transform
    back = torch.ops.leanvision.winograd_input_transform_backward
    torch.manual_seed(7)
    for n, hp, wp, c, th, tw in [(1, 4, 4, 1, 1, 1), (2, 11, 9, 5, 4, 3), (3, 18, 18, 33, 8, 8)]:
        x = torch.randn(n, hp, wp, c)
        for bt, tol in ((wa.transform_matrices("balanced_b")[0], 0.0), (torch.randn(4, 4), 1e-5)):
            v = fwd(x, bt, th, tw)
            ref = wa._bt_rows_cols(x, bt.tolist(), th, tw)
            assert v.shape == (16, n, th, tw, c)
            # ±1 entries: the same two-term sums, equal in fp32; others: FMA rounding
            torch.testing.assert_close(v, ref, rtol=tol, atol=tol)
            gv = torch.randn_like(v)
            x64 = x.double().requires_grad_()
            tiles = x64.unfold(1, 4, 2).unfold(2, 4, 2)[:, :th, :tw]  # (N, th, tw, C, 4, 4)
            b64 = bt.double()
            ref64 = torch.einsum("iu,ntwcuv,jv->ijntwc", b64, tiles, b64).reshape(v.shape)
            torch.testing.assert_close(v.double(), ref64, rtol=1e-5, atol=1e-5)
            ref64.backward(gv.double())
            gx = back(gv, bt, hp, wp)
            assert gx.shape == x.shape
            torch.testing.assert_close(gx.double(), x64.grad, rtol=1e-5, atol=1e-5)
    # a channels-first view is read as the same map
    x = torch.randn(2, 5, 10, 10).permute(0, 2, 3, 1)
    bt = wa.transform_matrices("standard")[0]
    torch.testing.assert_close(fwd(x, bt, 4, 4), wa._bt_rows_cols(x, bt.tolist(), 4, 4))


@needs_avx512
def test_native_input_transform_checks_its_arguments():
    kernels.load("adder", required=True)
    fwd = torch.ops.leanvision.winograd_input_transform
    back = torch.ops.leanvision.winograd_input_transform_backward
    bt = wa.transform_matrices("standard")[0]
    x = torch.randn(1, 10, 10, 3)
    with pytest.raises(RuntimeError, match="too small"):
        fwd(x, bt, 5, 4)  # 5 tiles down need 12 rows
    with pytest.raises(RuntimeError, match=r"\(N, Hp, Wp, C\)"):
        fwd(torch.randn(10, 10, 3), bt, 4, 4)
    with pytest.raises(RuntimeError, match="float32"):
        fwd(x.double(), bt, 4, 4)
    with pytest.raises(RuntimeError, match=r"\(4, 4\)"):
        fwd(x, torch.randn(3, 4), 4, 4)
    with pytest.raises(RuntimeError, match=r"\(16, N, th, tw, C\)"):
        back(torch.randn(8, 1, 4, 4, 3), bt, 10, 10)
    with pytest.raises(RuntimeError, match="too small"):
        back(torch.randn(16, 1, 4, 4, 3), bt, 9, 10)


@needs_avx512
def test_layer_trains_alike_on_the_native_and_pytorch_input_transforms(monkeypatch):
    """One layer's output and gradients with the native kernels (the input transform's among
    them) and with the PyTorch path, at p = 1 and p = 1.5."""
    torch.manual_seed(8)
    layer = WinogradAdderConv2d(6, 7, transform="balanced_a")
    x = torch.randn(2, 6, 9, 11)
    real = kernels.why_not

    def no_adder_kernel(name, *args, **kw):
        return "not-built" if name == "adder" else real(name, *args, **kw)

    grads = []
    for native in (True, False):
        if not native:
            monkeypatch.setattr(wa.kernels, "why_not", no_adder_kernel)
        for p in (1.0, 1.5):
            layer.set_p(p)
            layer.zero_grad()
            xg = x.clone().requires_grad_()
            y = layer(xg)
            y.square().sum().backward()
            grads.append((y.detach(), xg.grad, layer.weight.grad.clone()))
    for a, b in zip(grads[:2], grads[2:], strict=True):  # the cores' sums in another order
        for t, r in zip(a, b, strict=True):
            assert (t - r).abs().max() <= 1e-5 * r.abs().max()
