"""ManiDP (CVPR 2021): gates, the batch-1 path that skips channels, losses, thresholds."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import leanvision as lv
from leanvision.errors import UnknownNameError, UnsupportedModelError
from leanvision.layers import GatedBasicBlock, GatedStage
from leanvision.methods.pruning.manidp import (
    complexity_weights,
    gate_model,
    remain_rate,
    sample_macs,
    similarity_loss,
)


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    torch.set_num_threads(1)


def _gated(name: str = "resnet20_cifar", thre: float = 0.9, **kw) -> nn.Module:
    torch.manual_seed(0)
    model = gate_model(lv.create_model(name, num_classes=10, **kw))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.3, 0.3)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    for blk in model.modules():
        if isinstance(blk, GatedBasicBlock):  # "trained" gates: saliencies around 1
            for g in (blk.gate1, blk.gate2):
                g.fc2.weight.data.normal_(0.0, 0.05)
                g.thre.fill_(thre)
    return model.eval()


def _blocks(model: nn.Module) -> list[GatedBasicBlock]:
    return [b for b in model.modules() if isinstance(b, GatedBasicBlock)]


def _use_native(model: nn.Module, native: bool) -> nn.Module:
    for b in _blocks(model):
        b.use_native = native
    return model


@pytest.mark.parametrize("native", [True, False], ids=["kernel", "aten"])
@pytest.mark.parametrize(
    "name,size,kw",
    [
        ("resnet20_cifar", 32, {}),
        ("resnet18", 64, {"in_chans": 3}),  # 1x1-conv downsample, stride-2 3x3 convs
        ("resnet18", 64, {"act_layer": "silu"}),  # saliency not folded; no kernel (not ReLU)
    ],
)
def test_batch1_path_skips_channels_and_equals_the_masked_network(name, size, kw, native):
    """Per sample, running only the kept filters gives the masked dense network's output,
    through the fused native kernel and through the ATen ops."""
    model = _use_native(_gated(name, **kw), native)
    x = torch.randn(4, 3, size, size)
    inputs = {}
    hooks = [b.register_forward_pre_hook(lambda m, a: inputs.update({m: a[0]})) for b in
             _blocks(model)]  # fmt: skip
    with torch.no_grad():
        dense = model(x)  # batch > 1: masked dense path
        for h in hooks:
            h.remove()
        for b, xb in inputs.items():  # each block alone: only summation order differs
            for i in range(4):
                ref = b(xb)[i : i + 1]
                atol = 1e-5 * ref.abs().max().item()
                torch.testing.assert_close(b(xb[i : i + 1]), ref, atol=atol, rtol=1e-5)
        for i in range(4):  # whole network: activations reach 1e10 here and logits cancel
            scale = dense[i].abs().max().item()
            torch.testing.assert_close(
                model(x[i : i + 1]), dense[i : i + 1], atol=1e-4 * scale, rtol=1e-4
            )
    blocks = _blocks(model)
    relu = "act_layer" not in kw
    assert all((b._native is not None) == (native and relu) for b in blocks)
    pruned = sum(b.last_macs for b in blocks)
    for b in blocks:  # the same image with every gate open
        b.gate1.thre.fill_(-1.0)
        b.gate2.thre.fill_(-1.0)
    with torch.no_grad():
        model(x[3:4])
    full = sum(b.last_macs for b in blocks)
    assert 0 < pruned < 0.9 * full


def test_sample_macs_vary_per_image_and_fall_below_dense():
    from leanvision.profiling import count_ops

    model = _gated(thre=1.0)
    images = torch.randn(6, 3, 32, 32)
    macs = sample_macs(model, images)
    assert len(macs) == 6 and len(set(macs)) > 1
    dense = gate_model(lv.create_model("resnet20_cifar", num_classes=10)).eval()
    for blk in dense.modules():
        if isinstance(blk, GatedBasicBlock):
            blk.gate1.thre.fill_(-1.0)
            blk.gate2.thre.fill_(-1.0)
    full = count_ops(dense, (3, 32, 32), batch=2).macs / 2  # batch 2: the dense path
    assert max(macs) < full


def test_complexity_weights_and_similarity_loss():
    w = complexity_weights(torch.tensor([0.0, 0.25, 0.5, 2.0]), mean_loss=1.0, thre_cls=0.5)
    torch.testing.assert_close(w, torch.tensor([1.0, 0.5, 0.0, 0.0]))
    w2 = complexity_weights(torch.tensor([0.25]), mean_loss=1.0, gamma=2.0)
    torch.testing.assert_close(w2, torch.tensor([0.25]))
    torch.manual_seed(0)
    f = torch.randn(5, 8)
    assert similarity_loss(f * 3.0, f).item() == pytest.approx(0.0, abs=1e-6)
    assert similarity_loss(torch.randn(5, 4), f).item() > 1e-3


def test_remain_rate_anneals_from_one_to_target():
    assert remain_rate(0, 10, 0.6) == pytest.approx(1.0)
    assert remain_rate(10, 10, 0.6) == pytest.approx(0.6)
    rates = [remain_rate(e, 10, 0.6) for e in range(11)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))


def test_last_epoch_trains_with_the_final_thresholds():
    from leanvision.methods.pruning.manidp import ManiDPHook

    hook = ManiDPHook(target_remain_rate=0.6)
    rates = [hook.next_rate(e, 3) for e in (1, 2, 3)]
    assert rates[0] == pytest.approx(0.8) and rates[1:] == pytest.approx([0.6, 0.6])
    assert hook.next_rate(1, 1) == pytest.approx(0.6)
    assert [hook.next_rate(e, 5) for e in range(1, 5)] == sorted(
        [hook.next_rate(e, 5) for e in range(1, 5)], reverse=True
    )


def test_thresholds_after_the_last_epoch_are_the_ones_it_trained_with():
    from types import SimpleNamespace

    from leanvision.layers import gated_blocks
    from leanvision.methods.pruning.manidp import ManiDPHook

    model = _gated(thre=0.9)
    hook = ManiDPHook(target_remain_rate=0.6)
    hook.blocks = gated_blocks(model)
    for blk in hook.blocks:
        for g in (blk.gate1, blk.gate2):
            g.saliency_sum.uniform_(0.0, 2.0)
            g.seen.fill_(1.0)
    trainer = SimpleNamespace(config=SimpleNamespace(epochs=3))
    hook.on_epoch_end(trainer, 3, {})
    assert all(float(b.gate1.thre) == pytest.approx(0.9) for b in hook.blocks)
    hook.on_epoch_end(trainer, 2, {})  # between epochs: re-estimated
    assert any(float(b.gate1.thre) != pytest.approx(0.9) for b in hook.blocks)


def test_compress_manidp_trains_sets_thresholds_and_round_trips(mnist_small, tmp_path):
    model = lv.create_model("resnet20_cifar", in_chans=1, width=0.5)
    from leanvision.engine import Hook

    seen: list[set[str]] = []

    at_epoch2: list[tuple[float, float]] = []  # (threshold, the value the rule gives)

    class Rec(Hook):
        def on_loss(self, trainer, ctx):
            seen.append(set(ctx.losses))

        def on_epoch_end(self, trainer, epoch, metrics):
            if epoch != 2:
                return
            for blk in [b for b in trainer.model.modules() if isinstance(b, GatedBasicBlock)]:
                for g in (blk.gate1, blk.gate2):
                    mean = g.saliency_sum / g.seen
                    k = math.ceil(0.5 * mean.numel())  # the anneal reaches the target here
                    at_epoch2.append((g.thre.item(), torch.topk(mean, k).values[-1].item()))

    from leanvision.methods.pruning.manidp import ManiDPHook

    gated = gate_model(lv.create_model("resnet20_cifar", in_chans=1, width=0.5))
    lv.train(
        gated,
        mnist_small,
        hooks=[ManiDPHook(target_remain_rate=0.5), Rec()],
        epochs=3,
        lr=0.05,
        progress=False,
        log=False,
    )
    assert seen[0] == {"task", "sparsity", "manifold"}
    final = [
        g.thre.item()
        for blk in gated.modules()
        if isinstance(blk, GatedBasicBlock)
        for g in (blk.gate1, blk.gate2)
    ]
    assert at_epoch2 and [t for t, _ in at_epoch2] == pytest.approx([r for _, r in at_epoch2])
    assert final == pytest.approx([t for t, _ in at_epoch2])  # epoch 3 trained with these
    out = lv.compress(
        model, "manidp", mnist_small, finetune_epochs=1, max_steps=2, progress=False, log=False
    )
    back = lv.load(lv.save(out, tmp_path / "manidp.pt"))
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(back(x), out(x))
        torch.testing.assert_close(back(x[:1]), out(x[:1]), atol=1e-5, rtol=1e-4)
    with pytest.raises(UnsupportedModelError):
        lv.compress(nn.Sequential(nn.Conv2d(1, 2, 3)), "manidp", mnist_small)


def test_calibrate_thresholds_sets_the_remain_rate_and_trades_macs():
    """After calibration a gate keeps about remain_rate of its channels on the mean; a lower
    rate gives every image fewer MACs on the batch-1 path."""
    from leanvision.methods.pruning.manidp import calibrate_thresholds

    model = _gated(thre=-1.0)
    images = torch.randn(16, 3, 32, 32)
    calibrate_thresholds(model, images, remain_rate=0.75)
    gate = [b for b in model.modules() if isinstance(b, GatedBasicBlock)][0].gate1
    seen = []
    handle = gate.register_forward_hook(lambda m, i, out: seen.append(out[0]))
    with torch.no_grad():
        model(images)  # batch > 1: the masked path runs the gates
    handle.remove()
    kept = (seen[0] > 0).float().mean().item()
    assert 0.5 < kept < 0.95
    high = sample_macs(model, images[:4])
    calibrate_thresholds(model, images, remain_rate=0.4)
    low = sample_macs(model, images[:4])
    assert all(lo < hi for lo, hi in zip(low, high))
    assert not model.training
    with pytest.raises(Exception, match="at least 2"):
        calibrate_thresholds(model, images[:1], remain_rate=0.5)


def test_native_kernel_builds_here():
    """CI has a compiler: the kernel must build, or the fast path silently never runs."""
    from leanvision import kernels

    assert kernels.load("gated_block")
    assert kernels.available("gated_block")


@pytest.mark.parametrize("native", [True, False], ids=["kernel", "aten"])
@pytest.mark.parametrize("closed", ["gate1", "gate2"])
def test_batch1_path_with_every_channel_gated_off(closed, native):
    """No kept channel in a gate: the same output as the masked network (with gate 1 off,
    gate 2 sees zeros and the second conv adds its folded BN bias alone)."""
    model = _use_native(_gated(), native)
    for b in _blocks(model):
        getattr(b, closed).thre.fill_(1e6)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        dense = model(x)
        torch.testing.assert_close(model(x[:1]), dense[:1], atol=1e-5, rtol=1e-4)
    assert all((b._native is not None) == native for b in _blocks(model))
    if not native:
        return
    macs = [b.last_macs for b in _blocks(model)]
    if closed == "gate1":  # only gate 1's MLP ran
        gates = [(b.gate1.fc1, b.gate1.fc2, b.gate2.fc2) for b in _blocks(model)]
        assert macs == [sum(fc.weight.numel() for fc in g) for g in gates]
    else:
        assert all(m > 0 for m in macs)


def test_kernel_and_aten_paths_count_the_same_macs():
    """The profiler counts the fused op from the channels it really kept."""
    from leanvision.profiling import count_ops

    x = torch.randn(1, 3, 32, 32)
    counts = {}
    for native in (True, False):
        model = _use_native(_gated(), native)
        counts[native] = (count_ops(model, inputs=x).macs,
                          sample_macs(model, x)[0])  # fmt: skip
    assert counts[True] == counts[False]
    dense = count_ops(lv.create_model("resnet20_cifar", num_classes=10), (3, 32, 32)).macs
    assert counts[True][0] < 0.9 * dense


def test_kernels_can_be_switched_off(monkeypatch):
    """LEANVISION_NO_KERNELS=1: no build, and the gated model runs its ATen path."""
    from leanvision import kernels

    monkeypatch.setattr(kernels, "_state", {})
    monkeypatch.setenv("LEANVISION_NO_KERNELS", "1")
    assert not kernels.load("gated_block")
    model = _use_native(_gated(), True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x[:1]), model(x)[:1], atol=1e-5, rtol=1e-4)
    assert all(b._native is None for b in _blocks(model))
    with pytest.raises(UnknownNameError):
        kernels.load("no_such_kernel")


def test_fresh_process_counts_the_kernel_from_the_first_forward():
    """eval() sets the kernel up, so a profiler built before the first forward counts it
    (it once counted nothing: the op's handler was registered during that forward)."""
    import subprocess
    import sys

    from leanvision.profiling import count_ops

    code = (
        "import torch, leanvision as lv\n"
        "from leanvision.methods.pruning.manidp import gate_model, sample_macs\n"
        "torch.manual_seed(0)\n"
        "m = gate_model(lv.create_model('resnet20_cifar', num_classes=10))\n"
        "for g in [g for b in m.modules() for g in (getattr(b, 'gate1', None),) if g]:\n"
        "    g.thre.fill_(0.5)\n"
        "print(min(sample_macs(m, torch.randn(3, 3, 32, 32))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    dense = count_ops(lv.create_model("resnet20_cifar", num_classes=10), (3, 32, 32)).macs
    assert 0.9 * dense < int(out.stdout.split()[-1]) < 1.1 * dense  # all kept, plus the gates


def _op_calls(fn) -> dict[str, int]:
    """How often each leanvision op ran inside ``fn()``."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key: e.count for e in prof.key_averages() if e.key.startswith("leanvision::")}


def test_identity_blocks_of_a_stage_run_as_one_chain_op():
    """A stage's identity-shortcut blocks run in one ``gated_block_chain`` call, with the
    outputs, kept counts and MACs of one ``gated_basic_block`` call per block."""
    model = _gated()
    stages = [m for m in model.modules() if isinstance(m, GatedStage)]
    assert [type(m).__name__ for m in (model.layer1, model.layer2, model.layer3)] == [
        "GatedStage"
    ] * 3
    assert "layer1.0.gate1.fc1.weight" in model.state_dict()  # keys as without stages
    x = torch.randn(1, 3, 32, 32)
    inputs = {}
    hooks = [s.register_forward_pre_hook(lambda m, a: inputs.update({m: a[0]})) for s in stages]
    with torch.no_grad():
        calls = _op_calls(lambda: model(x))
        for h in hooks:
            h.remove()
        # resnet20: stage 1 = one chain of 3; stages 2, 3 = a downsample block + a chain of 2
        assert calls == {"leanvision::gated_block_chain": 3, "leanvision::gated_basic_block": 2}
        chained = [b.last_macs for b in _blocks(model)]
        for stage in stages:  # block by block, one op each
            ref = nn.Sequential.forward(stage, inputs[stage])
            torch.testing.assert_close(stage(inputs[stage]), ref, atol=0, rtol=0)
        single = _op_calls(lambda: [nn.Sequential.forward(s, inputs[s]) for s in stages])
        assert single == {"leanvision::gated_basic_block": 9}
    assert [b.last_macs for b in _blocks(model)] == chained
    assert len(set(chained)) > 1


def test_chain_op_rejects_blocks_that_change_the_shape():
    model = _gated()
    block = model.layer2[0]  # stride 2, 16 -> 32 channels
    x = torch.randn(1, 16, 32, 32)
    native = block._native
    params, meta, eps = native.params, native.meta, native.eps
    with pytest.raises(RuntimeError, match="changes the shape"):
        torch.ops.leanvision.gated_block_chain(x, params, meta, eps, 1000.0)
    with pytest.raises(RuntimeError, match="20 tensors, 4 ints and 2 eps"):
        torch.ops.leanvision.gated_block_chain(x, params[:5], meta, eps, 1000.0)


def test_blocks_with_different_gate_clamps_are_not_chained_together():
    """The chain op takes one clamp for all its blocks: a block with another clamp starts a
    new run, and the outputs still equal the masked network."""
    model = _gated()
    model.layer1[1].gate1.clamp_max = model.layer1[1].gate2.clamp_max = 500.0
    model.eval()  # prepare again with the new clamp
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        dense = model(x)
        torch.testing.assert_close(model(x[:1]), dense[:1], atol=1e-4 * dense.abs().max().item(),
                                   rtol=1e-4)  # fmt: skip
    plan = model.layer1._plan
    assert [type(s).__name__ for s in plan] == ["GatedBasicBlock"] * 3


def test_profiler_names_the_kernel_or_the_fallback():
    """The latency backend says which path ManiDP's batch-1 inference really took."""
    from leanvision import kernels
    from leanvision.profiling import measure_latency

    model = _gated()
    path = kernels.path("gated_block")
    stats = measure_latency(model, (3, 32, 32), warmup=0, repeats=1)
    assert stats.backend == (
        f"torch-eager-cpu+leanvision:gated_basic_block[{path}],gated_block_chain[{path}]"
    )
    _use_native(model, False)
    stats = measure_latency(model, (3, 32, 32), warmup=0, repeats=1)
    assert stats.backend == "torch-eager-cpu+fallback:GatedBasicBlock[disabled]"
    assert measure_latency(model, (3, 32, 32), batch=2, repeats=1).backend == "torch-eager-cpu"


def test_gates_with_different_clamps_run_the_aten_path():
    """The fused op takes one clamp for both gates: a block whose gates differ runs ATen."""
    model = _gated()
    block = model.layer1[0]
    block.gate2.clamp_max = 0.5  # saliencies around 1: the second gate's clamp bites
    assert block._native is None
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        dense = model(x)
        torch.testing.assert_close(model(x[:1]), dense[:1], atol=1e-4 * dense.abs().max().item(),
                                   rtol=1e-4)  # fmt: skip
