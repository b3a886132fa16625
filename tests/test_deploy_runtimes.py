"""lv.deploy: each CPU runtime computes the model it was given, errors come at the door."""

from __future__ import annotations

import pytest
import torch

import leanvision as lv
from leanvision.deploy import BACKENDS, DeployedModel, supported
from leanvision.errors import ConfigError, InputShapeError
from leanvision.methods.ghost import ghostify
from leanvision.profiling import compare

SIZE = (3, 16, 16)


def _model(ghost: bool = False, arch: str = "resnet20_cifar") -> torch.nn.Module:
    torch.manual_seed(0)
    m = lv.create_model(arch, num_classes=10)
    if ghost:
        m = ghostify(m, ratio=2, dw_size=3)[0]
    for mod in m.modules():  # BN statistics away from identity, so folding is exercised
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _arch(backend: str) -> str:
    """Inductor compiles each graph (and again per batch size): ResNet-8 keeps that short."""
    return "resnet8_cifar" if backend == "inductor" else "resnet20_cifar"


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(3, *SIZE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("ghost", [False, True], ids=["resnet20", "ghost_resnet20"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_backends_compute_the_model(backend, ghost, x):
    model = _model(ghost, _arch(backend))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        ref = model(x)
    d = lv.deploy(model, backend, input_size=SIZE, batch=3, threads=1)
    assert isinstance(d, DeployedModel) and d.precision == "fp32"
    prefix = {"torch": "torch-eager"}.get(backend, backend)
    assert prefix in d.backend
    torch.testing.assert_close(d(x), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(d(x[:1]), ref[:1], rtol=1e-4, atol=1e-4)  # another batch runs
    # the caller's model is left as it was
    assert model.training is False
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.conv1.weight.is_contiguous()


@pytest.mark.parametrize("ghost", [False, True], ids=["resnet20", "ghost_resnet20"])
@pytest.mark.parametrize("backend", ["leanvision", "inductor", "onnxruntime", "openvino"])
def test_int8_is_quantized_and_close(backend, ghost, x):
    """Ghost's quantized Concat crashed OpenVINO's compiler (a segfault, not an error)."""
    model = _model(ghost, _arch(backend))
    calib = [(torch.randn(8, *SIZE), torch.zeros(8)) for _ in range(4)]
    with torch.no_grad():
        ref = model(x)
    if backend not in supported("int8"):  # leanvision's int8 needs AVX512-VNNI
        with pytest.raises(ConfigError, match="does not run int8: its int8 layers need"):
            lv.deploy(model, backend, "int8", SIZE, batch=3, threads=1, calib=calib)
        return
    d = lv.deploy(model, backend, "int8", SIZE, batch=3, threads=1, calib=calib)
    out = d(x)
    err = (out - ref).abs().max().item()
    scale = ref.abs().max().item()
    assert 0 < err < 0.1 * scale, (err, scale)  # rounded, not float, and not garbage
    assert "int8" in d.backend.split("[")[0]
    if not ghost:  # another batch runs (a recompile on inductor: once is enough)
        torch.testing.assert_close(d(x[:1]), out[:1], rtol=1e-3, atol=1e-3 * scale)


def test_int8_graph_is_u8_activations_s8_weights(tmp_path):
    """onnxruntime's fast x86 int8 path is u8 activations × s8 weights (s8 × s8 ran slower
    than fp32); 7-bit weights only where the CPU has no VNNI."""
    import onnx

    calib = [torch.randn(4, *SIZE) for _ in range(2)]
    d = lv.deploy(_model(), "onnxruntime", "int8", SIZE, batch=2, threads=1, calib=calib)
    graph = onnx.load(str(d.save_onnx(tmp_path / "q.onnx"))).graph
    zero = {i.name: i for i in graph.initializer}
    kinds: dict[str, set[int]] = {"act": set(), "const": set()}
    for n in graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2:
            kind = "const" if n.input[0] in zero else "act"
            kinds[kind].add(zero[n.input[2]].data_type)
    t = onnx.TensorProto
    assert kinds == {"act": {t.UINT8}, "const": {t.INT8, t.INT32}}  # int32: the biases


def test_vnni_is_read_from_the_cpu_flags(tmp_path):
    from leanvision import kernels

    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_vnni\n")
    assert kernels.has_vnni(info)
    info.write_text("processor : 0\nflags : fpu avx2 avx512f\n")
    assert not kernels.has_vnni(info)
    assert not kernels.has_vnni(tmp_path / "missing")


def test_bf16_on_openvino_or_a_clear_error(x):
    model = _model()
    if "openvino" not in supported("bf16"):
        with pytest.raises(ConfigError, match="bf16"):
            lv.deploy(model, "openvino", "bf16", SIZE)
        return
    with torch.no_grad():
        ref = model(x)
    d = lv.deploy(model, "openvino", "bf16", SIZE, batch=3, threads=1)
    err = (d(x) - ref).abs().max().item()
    assert 0 < err < 0.05 * ref.abs().max().item()
    assert "bf16" in d.backend and "compiled" not in d.backend


def test_auto_picks_the_fastest_of_all_timed():
    d = lv.deploy(_model(), "auto", input_size=SIZE, batch=2, threads=1, repeats=3)
    assert len(d.candidates) == len(supported("fp32"))
    chosen = [k for k in d.candidates if k.startswith(d.backend)]
    assert chosen and d.candidates[chosen[0]] == min(d.candidates.values())


def test_evaluate_and_compare_see_the_runtime(x):
    model = _model()
    d = lv.deploy(model, "onnxruntime", input_size=SIZE, threads=1)
    data = [(x, torch.tensor([0, 1, 2]))]
    assert lv.evaluate(d, data)["top1"] == pytest.approx(lv.evaluate(model, data)["top1"])
    stats = compare({"ort": d}, SIZE, batch=2, threads=1, repeats=2, warmup=1)
    assert stats["ort"].backend.startswith("onnxruntime-")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"backend": "tensorrt"}, "unknown backend"),
        ({"precision": "fp16"}, "unknown precision"),
        ({"backend": "torch", "precision": "int8"}, "does not run int8"),
        ({"backend": "leanvision", "precision": "bf16"}, "does not run bf16"),
        ({"backend": "onnxruntime", "precision": "int8"}, "needs calib"),
        ({"backend": "torch", "threads": 0}, "threads"),
        ({"backend": "torch", "batch": 0}, "batch"),
    ],
)
def test_bad_arguments_fail_at_the_door(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        lv.deploy(_model(), input_size=SIZE, **kwargs)


def test_wrong_inputs_are_named(x):
    d = lv.deploy(_model(), "onnxruntime", input_size=SIZE, threads=1)
    with pytest.raises(InputShapeError, match="expected a"):
        d(torch.randn(2, 3, 8, 8))
    with pytest.raises(InputShapeError, match="float32"):
        d(x.double())
    with pytest.raises(InputShapeError):
        lv.deploy(_model(), "torch", input_size=(1, 16, 16))


@pytest.mark.parametrize("ghost", [False, True], ids=["resnet20", "ghost_resnet20"])
def test_leanvision_runtime_calls_its_kernels_without_python_layers(ghost, x):
    """The leanvision runtime runs optimize_for_cpu's graph with every fused layer a direct
    op call on frozen weights: same output, no fused module left, the source model's later
    edits not followed (the runtime owns its copy)."""
    from leanvision.deploy.cpu import freeze_kernel_calls
    from leanvision.layers import FusedConv3x3
    from leanvision.layers.conv3x3 import kernel_runs
    from leanvision.layers.ghost import FusedGhost3x3

    model = _model(ghost)
    fast, choices = lv.optimize_for_cpu(model, SIZE, batch=3, autotune=False)
    frozen = freeze_kernel_calls(fast)
    fused = (FusedConv3x3, FusedGhost3x3)
    n_fused = sum(isinstance(m, fused) for m in fast.modules())
    assert n_fused == (len(choices) if kernel_runs() else 0)
    assert not any(isinstance(m, fused) for m in frozen.modules())
    calls = [n for n in frozen.graph.nodes if n.op == "call_function"
             and str(n.target).startswith("leanvision.")]  # fmt: skip
    assert len(calls) == n_fused
    with torch.inference_mode():
        xc = x.contiguous(memory_format=torch.channels_last)
        ref = fast(xc)
        torch.testing.assert_close(frozen(xc), ref, rtol=0, atol=0)
        if n_fused:  # the frozen copy keeps its weights when the module's change
            layer = next(m for m in fast.modules() if isinstance(m, fused))
            for b in layer.buffers():
                b.mul_(2.0)
            assert not torch.equal(fast(xc), ref)
            torch.testing.assert_close(frozen(xc), ref, rtol=0, atol=0)


@pytest.mark.parametrize("ghost", [False, True], ids=["resnet20", "ghost_resnet20"])
def test_leanvision_runtime_runs_the_frozen_graph_by_torchscript(ghost, x):
    """script_frozen: the trace gives the frozen graph's outputs exactly, at the traced batch
    and at others; a graph whose trace bakes in its batch size is run as it is."""
    from leanvision.deploy.cpu import freeze_kernel_calls, script_frozen

    fast, _ = lv.optimize_for_cpu(_model(ghost), SIZE, batch=2, autotune=False)
    frozen = freeze_kernel_calls(fast)
    example = torch.randn(2, *SIZE).contiguous(memory_format=torch.channels_last)
    run, scripted = script_frozen(frozen, example)
    assert scripted and isinstance(run, torch.jit.ScriptModule)
    with torch.inference_mode():
        for n in (1, 2, 5):
            xb = torch.randn(n, *SIZE).contiguous(memory_format=torch.channels_last)
            torch.testing.assert_close(run(xb), frozen(xb), rtol=0, atol=0)
    d = lv.deploy(_model(ghost), "leanvision", input_size=SIZE, batch=2)
    assert "torchscript" in d.backend

    class BatchBaked(torch.nn.Module):  # int() of a size: a constant in the trace
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return t * int(t.shape[0])

    baked = BatchBaked()
    same, scripted = script_frozen(baked, example)
    assert same is baked and not scripted


def test_inductor_fp32_is_ahead_of_time_and_falls_back_loudly(x, monkeypatch):
    """fp32 on inductor is one AOTInductor library for every batch size; a failed export or
    build, or a library whose output is not the model's, falls back to torch.compile with a
    warning, and the label says which ran."""
    from leanvision.deploy import inductor as ind

    model = _model(False, "resnet8_cifar")
    with torch.no_grad():
        ref = model(x)
    d = lv.deploy(model, "inductor", input_size=SIZE, batch=3, threads=1)
    assert "aotinductor" in d.backend
    torch.testing.assert_close(d(x), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(d(x[:2]), ref[:2], rtol=1e-4, atol=1e-4)

    def broken(*args):
        return lambda t: torch.zeros(t.shape[0], 10)  # a "compiled" model that is wrong

    monkeypatch.setattr(ind, "_aot_compile", broken)
    with pytest.warns(UserWarning, match="AOTInductor could not compile.*differs"):
        d = lv.deploy(model, "inductor", input_size=SIZE, batch=3, threads=1)
    assert "aotinductor" not in d.backend and "inductor" in d.backend
    torch.testing.assert_close(d(x), ref, rtol=1e-4, atol=1e-4)
