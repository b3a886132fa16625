"""Tests of leanvision.profiling: counts, energy, latency, memory, errors."""

from __future__ import annotations

import json
import re

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from leanvision.errors import ConfigError, InputShapeError
from leanvision.profiling import (
    ENERGY_PJ,
    LatencyStats,
    OpCounts,
    compare,
    count_ops,
    count_params,
    energy_uj,
    measure_latency,
    peak_memory_mb,
    profile,
    register_module_counter,
    register_op_handler,
)

# --------------------------------------------------------------------------- toy modules


class ConvLinear(nn.Module):
    """conv 3→4 (3×3, pad 1) on 8×8, then linear 256→10."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


class SelfAttention(nn.Module):
    """Parameter-free attention on x of shape (B, H, L, E); v keeps ``v_dim`` features."""

    def __init__(self, v_dim: int | None = None) -> None:
        super().__init__()
        self.v_dim = v_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x if self.v_dim is None else x[..., : self.v_dim].contiguous()
        return F.scaled_dot_product_attention(x, x, v)


class AdderLike(nn.Module):
    """Stands for an adder layer: computes with a matmul, but its counter reports adds only."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, cin)
        return x @ self.weight.t()


def _adder_like_counter(module: AdderLike, inputs: tuple, output: torch.Tensor) -> OpCounts:
    batch = inputs[0].shape[0]
    cout, cin = module.weight.shape
    # |x - w| then accumulate: two additions per term; the abs() below is deliberately a
    # tensor op, to check that a counter's own ops are not counted.
    _ = (inputs[0][:, None, :] - module.weight[None]).abs().sum()
    return OpCounts.from_adds(2 * batch * cin * cout, op="adder")


register_module_counter(AdderLike, _adder_like_counter)


def _heavy_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.Conv2d(64, 64, 3, padding=1),
        nn.Conv2d(64, 64, 3, padding=1),
    )


# --------------------------------------------------------------------------- counting


def test_resnet18_reference_macs_and_params():
    model = timm.create_model("resnet18", pretrained=False)
    counts = count_ops(model, (3, 224, 224))
    assert counts.macs == pytest.approx(1.82e9, rel=0.01)
    assert counts.muls == counts.adds == counts.macs
    assert counts.bitops == 0 and counts.int8_macs == 0
    assert sum(counts.by_op.values()) == counts.macs
    assert count_params(model) == 11_689_512


def test_deit_tiny_counts_attention():
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False).eval()
    counts = count_ops(model, (3, 224, 224))
    assert counts.macs == pytest.approx(1.26e9, rel=0.02)
    # 12 blocks × 3 heads × (197·197·64 for QKᵀ + the same for AV)
    assert counts.by_op["scaled_dot_product_attention"] == 12 * 3 * 197 * 197 * 64 * 2
    with torch.no_grad(), FlopCounterMode(display=False) as plain:
        model(torch.randn(1, 3, 224, 224))
    plain_macs = plain.get_total_flops() // 2
    assert plain_macs < 0.9 * counts.macs  # the stock counter misses CPU attention
    assert counts.macs - plain_macs == counts.by_op["scaled_dot_product_attention"]


def test_conv_linear_exact_macs():
    counts = count_ops(ConvLinear(), (3, 8, 8))
    conv = 4 * 8 * 8 * (3 * 3 * 3)  # outputs × (cin · k · k)
    fc = 4 * 8 * 8 * 10
    assert counts.by_op == {"convolution": conv, "addmm": fc}
    assert counts.macs == counts.muls == counts.adds == conv + fc == 9472
    # batch scales linearly; a ready input tensor is accepted too
    assert count_ops(ConvLinear(), (3, 8, 8), batch=3).macs == 3 * 9472
    assert count_ops(ConvLinear(), inputs=torch.randn(3, 3, 8, 8)).macs == 3 * 9472


@pytest.mark.parametrize("v_dim", [None, 6])  # None: CPU flash kernel; 6: math fallback
def test_attention_exact_macs(v_dim):
    b, h, seq, e = 2, 3, 5, 8
    ev = e if v_dim is None else v_dim
    counts = count_ops(SelfAttention(v_dim), (h, seq, e), batch=b)
    assert counts.macs == b * h * seq * seq * e + b * h * seq * seq * ev
    assert counts.by_op == {
        ("scaled_dot_product_attention" if v_dim is None else "bmm"): counts.macs
    }
    if v_dim is None:  # the CPU flash kernel: the stock flop counter sees nothing
        with torch.no_grad(), FlopCounterMode(display=False) as plain:
            SelfAttention()(torch.randn(b, h, seq, e))
        assert plain.get_total_flops() == 0


def test_module_counter_replaces_inner_ops():
    counts = count_ops(AdderLike(16, 4), (16,), batch=2)
    assert counts.macs == 0 and counts.muls == 0
    assert counts.adds == 2 * 2 * 16 * 4
    assert counts.by_op == {"adder": 2 * 2 * 16 * 4}

    model = nn.Sequential(nn.Linear(8, 16), AdderLike(16, 4))
    counts = count_ops(model, (8,), batch=2)
    linear = 2 * 8 * 16
    assert counts.macs == counts.muls == linear
    assert counts.adds == linear + 2 * 2 * 16 * 4
    assert counts.by_op == {"addmm": linear, "adder": 2 * 2 * 16 * 4}
    # the counting hooks are gone afterwards
    assert not model[1]._forward_hooks and not model[1]._forward_pre_hooks


def test_nested_registered_modules_count_outermost_only():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = AdderLike(4, 4)
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.inner(x))

    register_module_counter(Block, lambda m, i, o: OpCounts.from_adds(7, op="block"))
    model = nn.Sequential(Block(), nn.Linear(4, 2))
    counts = count_ops(model, (4,))
    assert (counts.macs, counts.adds) == (8, 8 + 7)
    assert counts.by_op == {"block": 7, "addmm": 8}


def test_module_counter_must_return_opcounts():
    class Bad(nn.Linear):
        pass

    register_module_counter(Bad, lambda m, i, o: 5)
    with pytest.raises(ConfigError, match="OpCounts"):
        count_ops(Bad(4, 4), (4,))
    with pytest.raises(ConfigError):
        register_module_counter(int, lambda m, i, o: OpCounts())


@torch.library.custom_op("lvtest::opaque_mm", mutates_args=())
def _opaque_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b


@_opaque_mm.register_fake
def _(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.new_empty(a.shape[0], b.shape[1])


def test_register_op_handler_counts_custom_op():
    class Opaque(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(6, 5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.lvtest.opaque_mm(x, self.w)

    assert count_ops(Opaque(), (6,), batch=4).macs == 0  # unknown to the flop counter
    register_op_handler(
        torch.ops.lvtest.opaque_mm.default,
        lambda a, b, *, out_shape=None, **kw: 2 * a[0] * a[1] * b[1],
    )
    counts = count_ops(Opaque(), (6,), batch=4)
    assert counts.macs == 4 * 6 * 5
    assert counts.by_op == {"lvtest.opaque_mm": 120}
    with pytest.raises(ConfigError, match="namespace::name"):
        register_op_handler("mm", lambda *a, **k: 0)


def test_an_op_registered_by_name_counts_once_its_library_loads():
    """A native kernel registers its formula by name at import, before the op exists."""
    from leanvision import opcounts

    register_op_handler(
        "lvlate::late_mm", lambda a, b, *, out_shape=None, **kw: 2 * a[0] * a[1] * b[1]
    )
    assert not any(str(op) == "lvlate.late_mm" for op in opcounts.op_handlers())  # not loaded

    lib = torch.library.Library("lvlate", "DEF")  # the library loads later
    lib.define("late_mm(Tensor a, Tensor b) -> Tensor")
    lib.impl("late_mm", lambda a, b: a @ b, "CompositeExplicitAutograd")
    lib.impl("late_mm", lambda a, b: a.new_empty(a.shape[0], b.shape[1]), "Meta")

    class Late(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.ops.lvlate.late_mm(x, torch.ones(6, 5))

    assert count_ops(Late(), (6,), batch=4).by_op == {"lvlate.late_mm": 120}


def test_nothing_registers_while_a_model_runs_or_is_optimized():
    """Layers and kernels write to the op-count registry at import, never at eval time."""
    import leanvision as lv
    import leanvision.layers.gated  # noqa: F401  (the gated-block kernel's formulas)
    from leanvision import opcounts

    names = {"leanvision::conv3x3_nhwc", "leanvision::gated_basic_block",
             "leanvision::gated_block_chain"}  # fmt: skip
    assert names <= set(opcounts._OP_HANDLERS)
    before = (dict(opcounts._OP_HANDLERS), dict(opcounts._MODULE_COUNTERS))
    model = lv.create_model("resnet20_cifar", width=0.25).eval()
    lv.optimize_for_cpu(model, (3, 16, 16), autotune=False)
    count_ops(model, (3, 16, 16))
    assert (dict(opcounts._OP_HANDLERS), dict(opcounts._MODULE_COUNTERS)) == before


# --------------------------------------------------------------------------- energy


def test_energy_hand_computed():
    counts = OpCounts(macs=1000, adds=1500, muls=1000, bitops=6400, int8_macs=200)
    # fp32: 800 muls, 1300 adds; int8 MACs: 200 × (0.2 + 0.1); bit-ops: 6400 × 0.2/64
    expected_pj = 800 * 3.7 + 1300 * 0.9 + 200 * (0.2 + 0.1) + 6400 * (0.2 / 64)
    assert energy_uj(counts) == pytest.approx(expected_pj / 1e6, rel=1e-12)
    assert expected_pj == pytest.approx(4210.0)
    assert energy_uj(OpCounts.from_macs(10**6)) == pytest.approx(4.6)  # 3.7 + 0.9 pJ per MAC
    fp16 = energy_uj(OpCounts.from_macs(10**6), float_dtype="fp16")
    assert fp16 == pytest.approx(1.5)
    assert ENERGY_PJ["int8_add"] == 0.03 and ENERGY_PJ["int32_mul"] == 3.1
    with pytest.raises(ConfigError, match="int8_macs"):
        energy_uj(OpCounts(macs=10, int8_macs=10))  # int8 MACs not counted in muls/adds
    with pytest.raises(ConfigError):
        energy_uj(counts, float_dtype="bf16")


# --------------------------------------------------------------------------- latency


def test_latency_stats_sane_and_threads_restored():
    model = ConvLinear().train()
    before = torch.get_num_threads()
    stats = measure_latency(model, (3, 8, 8), batch=2, threads=1, warmup=1, repeats=7)
    assert isinstance(stats, LatencyStats)
    assert 0 < stats.median_ms <= stats.p90_ms
    assert stats.mean_ms > 0
    assert (stats.batch, stats.threads, stats.repeats) == (2, 1, 7)
    assert stats.backend == "torch-eager-cpu"
    assert torch.get_num_threads() == before
    assert model.training and model.bn.training


def test_latency_of_callables():
    calls: list[tuple] = []

    def zero_arg() -> None:
        calls.append(())

    def one_arg(x: torch.Tensor) -> None:
        calls.append(tuple(x.shape))

    zero_arg.backend = "onnxruntime-cpu"
    s = measure_latency(zero_arg, (3, 4, 4), warmup=2, repeats=3)
    # one untimed probe call (it detects the backend), the warm-up, the timed runs
    assert calls == [()] * 6 and s.backend == "onnxruntime-cpu" and s.repeats == 3
    calls.clear()
    s = measure_latency(one_arg, (3, 4, 4), batch=2, warmup=0, repeats=2)
    assert calls == [(2, 3, 4, 4)] * 3 and s.backend == "python-callable" and s.batch == 2
    with pytest.raises(ConfigError, match="records no input size"):
        measure_latency(one_arg, warmup=0, repeats=1)  # it takes an input: give its size
    assert measure_latency(zero_arg, warmup=0, repeats=1, batch=4).batch == 4  # needs none


def test_compare_heavier_model_is_slower():
    light = nn.Conv2d(3, 4, 1)
    res = compare(
        {"light": light, "heavy": _heavy_model()}, (3, 32, 32), threads=1, warmup=1, repeats=5
    )
    assert list(res) == ["light", "heavy"]
    assert res["heavy"].median_ms > 5 * res["light"].median_ms
    assert all(s.repeats == 5 and s.threads == 1 for s in res.values())


def test_compare_interleaves_in_rotating_order():
    order: list[str] = []

    def make(name: str):
        return lambda: order.append(name)

    compare({n: make(n) for n in "abc"}, (3,), warmup=0, repeats=3)
    assert order == list("abc" + "abcbcacab")  # the probe calls, then the rounds


# --------------------------------------------------------------------------- memory


def test_peak_memory_exact_for_elementwise_chain():
    nbytes = 1 * 3 * 16 * 16 * 4
    two_relus = nn.Sequential(nn.ReLU(), nn.ReLU())
    assert peak_memory_mb(two_relus, (3, 16, 16)) == pytest.approx(2 * nbytes / 2**20)
    assert peak_memory_mb(two_relus, (3, 16, 16), batch=3) == pytest.approx(6 * nbytes / 2**20)
    # in-place ops and views allocate nothing
    inplace = nn.Sequential(nn.ReLU(inplace=True), nn.Flatten())
    assert peak_memory_mb(inplace, (3, 16, 16)) == 0.0


def test_peak_memory_grows_with_input():
    model = _heavy_model()
    small = peak_memory_mb(model, (3, 16, 16))
    big = peak_memory_mb(model, (3, 32, 32))
    assert 0 < small < big
    assert peak_memory_mb(model, (3, 16, 16)) == small  # deterministic


# --------------------------------------------------------------------------- errors and modes


def test_wrong_channels_raise_input_shape_error():
    model = ConvLinear()
    model.pretrained_cfg = {"input_size": (3, 8, 8)}
    for fn in (
        lambda: count_ops(model, (1, 8, 8)),
        lambda: measure_latency(model, (1, 8, 8), warmup=0, repeats=1),
        lambda: peak_memory_mb(model, (1, 8, 8)),
    ):
        with pytest.raises(InputShapeError) as info:
            fn()
        msg = str(info.value)
        assert "input_size=(1, 8, 8) at batch=1" in msg and "in_channels=3" in msg
        assert "(3, 8, 8)" in msg
        assert "'conv'" in msg  # names the layer; caught before it ran, so nothing to chain


def test_timm_model_wrong_channels():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    with pytest.raises(InputShapeError, match=r"input_size is \(3, 224, 224\)"):
        count_ops(model, (4, 32, 32))


def test_any_forward_error_is_wrapped_with_the_original_chained():
    """No message matching: whatever the forward raises becomes an InputShapeError."""
    for error in (RuntimeError("boom"), ValueError("expected 4D input"), IndexError("idx")):

        class Broken(nn.Module):
            def forward(self, x: torch.Tensor, error: Exception = error) -> torch.Tensor:
                raise error

        with pytest.raises(InputShapeError, match=r"Broken failed on input_size=\(3,\) at batch=1"):
            count_ops(Broken(), (3,))
        with pytest.raises(InputShapeError) as info:
            measure_latency(Broken(), (3,), warmup=0, repeats=1)
        assert info.value.__cause__ is error


def test_leanvision_errors_pass_through_unchanged():
    class Strict(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ConfigError("strict says no")

    with pytest.raises(ConfigError, match="^strict says no$"):
        count_ops(Strict(), (3,))


class _BatchNormFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


@pytest.mark.parametrize(
    ("size", "words"),
    [
        ((8, 8), "needs a 4-D input"),  # a 3-D tensor: torch's BatchNorm raises ValueError
        ((4, 8, 8), "num_features=3 but got 4 channels"),  # torch raises RuntimeError
    ],
)
def test_batchnorm_first_model_raises_input_shape_error(size, words):
    model = _BatchNormFirst()
    for fn in (
        lambda: profile(model, size, latency=False, memory=False),
        lambda: count_ops(model, size),
        lambda: measure_latency(model, size, warmup=0, repeats=1),
        lambda: peak_memory_mb(model, size),
    ):
        with pytest.raises(InputShapeError) as info:
            fn()
        assert words in str(info.value) and "'norm'" in str(info.value)
        assert isinstance(info.value, ValueError)


def test_batch_first_input_size_is_refused_with_the_rule_before_any_layer_runs():
    """(1, 3, 32, 32), the old batch-first form, is one 4-D sample to the rule: resnet20's conv1
    cannot take the 5-D batch, and the error says what input_size means (no guessing)."""
    import leanvision as lv

    model = lv.create_model("resnet20_cifar")
    ran: list[str] = []
    model.conv1.register_forward_hook(lambda *_: ran.append("conv1"))
    rule = (
        "input_size is one sample's shape without the batch, e.g. (3, 32, 32); pass the batch "
        "as batch=N"
    )
    for fn, fix in (
        (lambda: lv.profile(model, (1, 3, 32, 32)), "input_size=(3, 32, 32), batch=1"),
        (lambda: count_ops(model, (1, 3, 32, 32)), "input_size=(3, 32, 32), batch=1"),
        (
            lambda: measure_latency(model, (4, 3, 32, 32), warmup=0, repeats=1),
            "input_size=(3, 32, 32), batch=4",
        ),
        (lambda: peak_memory_mb(model, (2, 3, 32, 32), batch=3), "input_size=(3, 32, 32)"),
    ):
        with pytest.raises(InputShapeError) as info:
            fn()
        msg = str(info.value)
        assert rule in msg and f"(here: {fix})" in msg
        assert "'conv1'" in msg and "4-D input (N, C, H, W)" in msg
    assert ran == []
    with pytest.raises(InputShapeError, match="in_channels=3 but got 1 channels"):
        lv.profile(model, (1, 32, 32), latency=False, memory=False)


def test_input_check_runs_once_per_shape_and_spares_lazy_layers(monkeypatch):
    import leanvision.shapes as shapes

    calls = []
    real = shapes.register_module_forward_pre_hook
    monkeypatch.setattr(
        shapes, "register_module_forward_pre_hook", lambda h: calls.append(1) or real(h)
    )
    model = ConvLinear()
    measure_latency(model, (3, 8, 8), warmup=2, repeats=5)
    assert len(calls) == 1  # the timed calls run the bare forward
    lazy = nn.Sequential(nn.LazyConv2d(4, 3), nn.Flatten(), nn.LazyLinear(2))
    assert count_ops(lazy, (5, 8, 8)).macs > 0  # in_channels is learnt, not a mismatch


@pytest.mark.parametrize(
    "call",
    [
        lambda m: count_ops(m, ()),
        lambda m: count_ops(m, (0, 8, 8)),
        lambda m: measure_latency(m, (3, 8, 8), repeats=0),
        lambda m: measure_latency(m, (3, 8, 8), warmup=-1),
        lambda m: measure_latency(m, (3, 8, 8), threads=0),
        lambda m: compare({"m": m}, (3, 8, 8), rounds=0),
        lambda m: compare({}, (3, 8, 8)),
        lambda m: profile(m, (3, 8, 8), repeats=-2),
        lambda m: count_ops(m, (3, 8, 8), batch=0),
        lambda m: count_ops(m, (3, 8, 8), batch=True),
        lambda m: count_ops(m, (3, 8, 8), inputs=torch.randn(1, 3, 8, 8)),
        lambda m: measure_latency(m, (3, 8, 8), batch=0),
        lambda m: compare({"m": m}, (3, 8, 8), batch=-1),
        lambda m: peak_memory_mb(m, (3, 8, 8), batch=0),
        lambda m: profile(m, (3, 8, 8), batch=2.0),
    ],
)
def test_bad_arguments_raise_config_error(call):
    with pytest.raises(ConfigError):
        call(ConvLinear())


def test_profile_restores_modes_and_is_json_ready():
    model = ConvLinear().train()
    model.bn.eval()  # mixed flags must come back as they were
    before = torch.get_num_threads()
    prof = profile(model, (3, 8, 8), threads=1, warmup=1, repeats=3)
    assert model.training and model.conv.training and not model.bn.training
    assert torch.get_num_threads() == before
    assert prof.macs == prof.muls == prof.adds == 9472
    assert prof.params == count_params(model) == 4 * 27 + 4 + 8 + 2560 + 10
    assert prof.energy_uj == pytest.approx(9472 * 4.6 / 1e6)
    assert prof.peak_mem_mb is not None and prof.peak_mem_mb > 0
    d = json.loads(json.dumps(prof.as_dict()))
    assert d["latency_ms"]["threads"] == 1 and d["latency_ms"]["batch"] == 1
    assert d["latency_ms"]["median"] <= d["latency_ms"]["p90"]
    assert d["input_size"] == [3, 8, 8] and d["batch"] == 1
    assert d["by_op"]["convolution"] == 4 * 64 * 27
    quick = profile(model, (3, 8, 8), latency=False, memory=False)
    assert quick.latency is None and quick.peak_mem_mb is None
    assert quick.as_dict()["latency_ms"] is None


# --------------------------------------------------------------------------- the input_size rule
# input_size is one sample's shape, the batch is batch=N, None is the model's recorded size
# (leanvision.shapes' module docstring).


class _Tokens(nn.Module):
    """Token-to-token scores of a (B, L, D) batch; ``bmm`` takes nothing but a 3-D batch."""

    pretrained_cfg = {"input_size": (4, 8)}  # (L, D), as timm-style models record it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bmm(x, x.transpose(1, 2))


def test_sample_size_and_batch_count_the_whole_batch():
    """(C, H, W) with batch=N counts what the batch-first (N, C, H, W) call counted: N times
    one image's MACs, by the convolution formula."""
    conv = nn.Conv2d(3, 4, 3, padding=1)
    one = 4 * 8 * 8 * (3 * 3 * 3)  # outputs × (cin · k · k)
    assert count_ops(conv, (3, 8, 8)).macs == one
    assert count_ops(conv, (3, 8, 8), batch=5).macs == 5 * one
    assert count_ops(conv, inputs=torch.randn(5, 3, 8, 8)).macs == 5 * one  # a ready batch
    prof = profile(conv, (3, 8, 8), batch=5, warmup=0, repeats=1)
    assert prof.macs == 5 * one and prof.energy_uj == pytest.approx(5 * one * 4.6 / 1e6)
    assert (prof.input_size, prof.batch, prof.latency.batch) == ((3, 8, 8), 5, 5)
    assert prof.as_dict()["batch"] == 5
    assert prof.peak_mem_mb == pytest.approx(5 * 4 * 8 * 8 * 4 / 2**20)  # the batch's output
    assert compare({"c": conv}, (3, 8, 8), batch=5, warmup=0, repeats=1)["c"].batch == 5


def test_input_size_none_is_the_models_recorded_size():
    import leanvision as lv

    model = ConvLinear()
    model.pretrained_cfg = {"input_size": (3, 8, 8)}
    assert count_ops(model).macs == 9472
    assert count_ops(model, batch=2).macs == 2 * 9472
    prof = profile(model, batch=2, warmup=0, repeats=1)
    assert prof.input_size == (3, 8, 8) and prof.macs == 2 * 9472 and prof.latency.batch == 2
    assert peak_memory_mb(model, batch=2) == peak_memory_mb(model, (3, 8, 8), batch=2) > 0
    assert measure_latency(model, warmup=0, repeats=1).batch == 1
    assert compare({"m": model}, warmup=0, repeats=1)["m"].batch == 1
    r8 = lv.create_model("resnet8_cifar")  # ours record the size they are built for
    assert r8.pretrained_cfg["input_size"] == (3, 32, 32)
    assert count_ops(r8).macs == count_ops(r8, (3, 32, 32)).macs


def test_a_model_that_records_no_size_needs_input_size():
    model = ConvLinear()  # no pretrained_cfg
    for fn in (
        count_ops,
        peak_memory_mb,
        lambda m: profile(m, latency=False),
        lambda m: measure_latency(m, repeats=1),
        lambda m: compare({"m": m}, repeats=1),
    ):
        with pytest.raises(ConfigError, match=r"ConvLinear records no input size.*pass input_size"):
            fn(model)


def test_non_image_sample_shapes():
    """Any sample shape works: (L, D) tokens through a Linear, the batch in front."""
    lin = nn.Linear(8, 5)
    assert count_ops(lin, (4, 8), batch=3).macs == 3 * 4 * 8 * 5
    prof = profile(lin, (4, 8), batch=3, warmup=0, repeats=1, memory=False)
    assert (prof.macs, prof.input_size, prof.latency.batch) == (3 * 4 * 8 * 5, (4, 8), 3)
    assert count_ops(lin, (8,), batch=3).macs == 3 * 8 * 5  # (D,) vectors
    tokens = _Tokens()  # records (L, D) = (4, 8)
    assert count_ops(tokens, batch=2).macs == 2 * 4 * 4 * 8
    with pytest.raises(InputShapeError) as info:  # the batch-first (1, L, D): a 4-D batch
        count_ops(tokens, (1, 4, 8))
    assert (
        "input_size is one sample's shape without the batch, e.g. (4, 8); pass the batch as "
        "batch=N (here: input_size=(4, 8), batch=1)"
    ) in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)  # bmm's own error, chained


def test_deploy_follows_the_input_size_rule(tmp_path):
    import onnx

    import leanvision as lv

    model = lv.create_model("resnet8_cifar").eval()
    path = lv.export_onnx(model, tmp_path / "m.onnx", dynamic_batch=False, batch=2)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 3, 32, 32]  # batch + the recorded (C, H, W)
    rule = "input_size is one sample's shape without the batch, e.g. (3, 32, 32)"
    with pytest.raises(InputShapeError, match=re.escape(rule)):
        lv.export_onnx(model, tmp_path / "old.onnx", input_size=(1, 3, 32, 32))
    assert not (tmp_path / "old.onnx").exists()
    with pytest.raises(InputShapeError, match=re.escape(rule)):
        lv.optimize_for_cpu(model, (1, 3, 32, 32), autotune=False)
    with pytest.raises(ConfigError, match="batch must be an int >= 1"):
        lv.export_onnx(model, tmp_path / "b.onnx", batch=0)
    with pytest.raises(ConfigError, match="batch must be an int >= 1"):
        lv.optimize_for_cpu(model, batch=0)


# --------------------------------------------------------------------------- detected backends


def _binary_net() -> nn.Module:
    from leanvision.layers.binary import (
        BinaryConv2d,
        BinaryLinear,
        PackedBinaryConv2d,
        PackedBinaryLinear,
    )

    torch.manual_seed(0)
    conv = PackedBinaryConv2d(BinaryConv2d(3, 8, 3, padding=1).eval())
    return nn.Sequential(conv, nn.Flatten(), PackedBinaryLinear(BinaryLinear(8 * 16, 10).eval()))


def test_backend_names_the_native_ops_that_ran():
    from leanvision import kernels

    assert kernels.load("binary")
    path = kernels.path("binary")
    assert path in ("avx512-vpopcntdq", "scalar") and path == torch.ops.leanvision.binary_isa()
    stats = measure_latency(_binary_net(), (3, 4, 4), warmup=0, repeats=2)
    assert stats.backend == (
        f"torch-eager-cpu+leanvision:binary_conv2d[{path}],binary_linear[{path}],"
        f"binary_pack[{path}]"
    )
    named = measure_latency(_binary_net(), (3, 4, 4), warmup=0, repeats=1, backend="mine")
    assert named.backend.startswith("mine+leanvision:binary_conv2d[")
    assert measure_latency(ConvLinear(), (3, 8, 8), repeats=1).backend == "torch-eager-cpu"


def test_backend_names_layers_that_fell_back(monkeypatch):
    from leanvision.layers import binary as lb

    real_load = lb.kernels.load
    monkeypatch.setattr(  # as if the binary kernel did not build here
        lb.kernels, "load", lambda name, required=None: name != "binary" and real_load(name)
    )
    stats = measure_latency(_binary_net(), (3, 4, 4), warmup=0, repeats=1)
    assert stats.backend == (
        "torch-eager-cpu+fallback:PackedBinaryConv2d[not-built],PackedBinaryLinear[not-built]"
    )
    monkeypatch.undo()
    prof = profile(_binary_net().double(), (3, 4, 4), warmup=0, repeats=1, memory=False)
    assert prof.latency.backend == (
        "torch-eager-cpu+fallback:PackedBinaryConv2d[dtype],PackedBinaryLinear[dtype]"
    )


def test_compare_keeps_caller_suffixes_and_appends_what_ran():
    net = _binary_net().eval()
    x = torch.randn(1, 3, 4, 4)

    class Runner:
        backend = "torch-eager-cpu-channels_last-bn-folded"

        def __call__(self) -> torch.Tensor:
            return net(x)

    res = compare({"runner": Runner(), "plain": nn.Conv2d(3, 4, 1)}, (3, 4, 4), repeats=2)
    assert res["runner"].backend.startswith(
        "torch-eager-cpu-channels_last-bn-folded+leanvision:binary_conv2d["
    )
    assert res["plain"].backend == "torch-eager-cpu"


def test_kernel_status_and_isa_setting(monkeypatch):
    from leanvision import kernels
    from leanvision.errors import UnknownNameError

    assert kernels.load("binary")
    st = kernels.status()
    assert set(st) == {"adder", "adder_int8", "binary", "conv3x3", "gated_block"}
    b = st["binary"]
    assert b.built and b.error is None and b.isa == kernels.capability()
    assert b.path == kernels.path("binary") and b.ops == kernels.OPS["binary"]
    assert json.loads(json.dumps(b.as_dict()))["ops"] == list(kernels.OPS["binary"])
    with pytest.raises(UnknownNameError, match="native kernel 'nope'.*binary"):
        kernels.load("nope")
    monkeypatch.setattr(kernels, "_isa_level", None)
    monkeypatch.setattr(kernels, "_machine_level", lambda: "AVX2")
    monkeypatch.setenv("LEANVISION_KERNEL_ISA", "AVX512")
    with pytest.raises(ConfigError, match="only lower"):
        kernels.capability()
    monkeypatch.setenv("LEANVISION_KERNEL_ISA", "sse9")
    with pytest.raises(ConfigError, match="not a level"):
        kernels.capability()
    monkeypatch.setenv("LEANVISION_KERNEL_ISA", "default")
    assert kernels.capability() == "DEFAULT"
