"""Run a finalized model on the CPU runtimes users deploy with, side by side.

:func:`deploy` turns a model into a :class:`DeployedModel`: an ``nn.Module`` that takes the
float32 ``(N, *input_size)`` batch the model takes and returns its output as a tensor, so
``lv.evaluate`` measures the deployed model's accuracy and ``lv.profiling.compare`` times it
beside any other. Backends (``BACKENDS``) and the precisions each runs:

- ``"torch"``: eager PyTorch, batch norms folded, channels-last: fp32 (the plain baseline).
- ``"leanvision"``: :func:`~leanvision.deploy.optimize_for_cpu` (the fused 3×3 kernel where it
  is measured faster than ATen), its kernel calls frozen (no Python per fused layer,
  :func:`~leanvision.deploy.cpu.freeze_kernel_calls`) and run by TorchScript where its trace
  gives the same outputs (:func:`~leanvision.deploy.cpu.script_frozen`): fp32; int8 where the
  CPU has AVX512-VNNI (:func:`~leanvision.deploy.cpu.quantize_for_cpu`: the fused layers that read
  ReLU outputs get int8 products, calibrated on ``calib``, and a map only such layers read
  stays uint8; the rest of the graph stays fp32).
- ``"inductor"``: TorchInductor, ahead of time (AOTInductor: one library for every batch size,
  no Python at call time; ``torch.compile`` where export fails), weights frozen, of the
  BN-folded model: fp32; int8 through torchao's PT2E x86 quantization
  (:mod:`leanvision.deploy.inductor`).
- ``"onnxruntime"``: the ONNX of :func:`~leanvision.deploy.export_onnx` on onnxruntime's CPU
  execution provider, all graph optimizations: fp32; int8.
- ``"openvino"``: the same ONNX on OpenVINO's CPU plugin (``openvino.Core().read_model``),
  compiled for a latency run with the given threads: fp32; bf16 where the CPU has it (the
  plugin's ``INFERENCE_PRECISION_HINT``, its default on such a CPU); int8.

int8 is static post-training quantization, per-channel int8 weights and uint8 activations
calibrated (min/max) on batches the caller passes (the validation split, never the test
split): for the ONNX runtimes onnxruntime's ``quantize_static``, a QDQ ONNX graph that
onnxruntime and OpenVINO both run with integer kernels; for leanvision's runtime
:func:`~leanvision.deploy.cpu.quantize_for_cpu`; for Inductor torchao's PT2E x86 path. A
model a method has already quantized (``ptq_vit``'s
calibrated fake-quant layers, :func:`~leanvision.layers.quant.quantization_state`) deploys its
own QDQ graph with the method's steps instead, and needs no ``calib``. The deployed accuracy
is measured on the deployed model.

``backend="auto"`` builds every backend that runs the precision, times them side by side on
the same input (``compare``), and returns the fastest; ``DeployedModel.candidates`` keeps
every median.

Threads: onnxruntime and OpenVINO own their thread pools, fixed when the session is built
(``threads``); torch's is set by the caller (``compare(threads=...)``). onnxruntime's workers
do not spin between calls (``session.intra_op.allow_spinning = 0``), so, timed interleaved,
they do not take CPU from the model that runs next.
"""

from __future__ import annotations

import copy
import itertools
import logging
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from leanvision import kernels
from leanvision.deploy.cpu import (
    freeze_kernel_calls,
    optimize_for_cpu,
    quantize_for_cpu,
    script_frozen,
)
from leanvision.deploy.fold import fold_batchnorm
from leanvision.deploy.inductor import InductorRun, has_torchao
from leanvision.deploy.onnx import export_onnx
from leanvision.errors import ConfigError, InputShapeError
from leanvision.fileio import atomic_write
from leanvision.layers.int8_conv3x3 import has_int8_kernel
from leanvision.layers.quant import quantization_state
from leanvision.opcounts import OpCounts, register_module_counter
from leanvision.profiling import compare, count_ops
from leanvision.shapes import check_batch, eval_mode, guarded_forward, resolve_input_size

__all__ = ["BACKENDS", "PRECISIONS", "DeployedModel", "deploy", "supported"]

BACKENDS = ("torch", "leanvision", "inductor", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
_RUNS = {
    "torch": ("fp32",),
    "leanvision": ("fp32", "int8"),
    "inductor": ("fp32", "int8"),
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
}


def supported(precision: str = "fp32") -> list[str]:
    """The backends that run ``precision`` on this machine, in ``BACKENDS`` order (bf16 only
    where OpenVINO's CPU plugin reports the CPU runs it)."""
    _check_choice("precision", precision, PRECISIONS)
    out = [b for b in BACKENDS if precision in _RUNS[b]]
    if precision == "bf16" and not _openvino_has_bf16():
        out.remove("openvino")
    if precision == "int8" and not has_torchao():
        out.remove("inductor")
    if precision == "int8" and not has_int8_kernel():
        out.remove("leanvision")
    return out


class DeployedModel(nn.Module):
    """A model compiled for one CPU runtime, called like the model it came from.

    Attributes:
        backend: What runs, for reports: e.g. ``"onnxruntime-1.32.0-cpu-int8"``,
            ``"openvino-2026.4.0-cpu-bf16"`` (the precision the plugin says it compiled for),
            ``"leanvision-cpu-fp32"``.
        precision: ``"fp32"``, ``"bf16"`` or ``"int8"``.
        input_size: One sample's shape the model was deployed for (the batch may vary).
        threads: The runtime's threads (None: torch's current setting, for torch-based ones).
        in_torch: Whether it runs PyTorch modules (torch, leanvision), whose memory torch's
            allocator sees; onnxruntime and OpenVINO keep their own.
        candidates: For ``backend="auto"``: backend → median ms at the batch it was chosen at.
    """

    def __init__(
        self,
        run: Any,
        backend: str,
        precision: str,
        input_size: tuple[int, ...],
        threads: int | None,
        source: nn.Module | None = None,
        onnx: bytes | None = None,
    ) -> None:
        super().__init__()
        self._run = run
        self.backend, self.precision = backend, precision
        self.input_size, self.threads = tuple(input_size), threads
        self.candidates: dict[str, float] = {}
        # the float model it was deployed from: its parameters are the deployed model's (for
        # counting and reports); not what runs
        self.source = source
        self.in_torch = backend.startswith(("torch", "leanvision"))  # runs PyTorch modules
        self._onnx = onnx
        self._counts: OpCounts | None = None

    def __deepcopy__(self, memo: dict[int, Any]) -> DeployedModel:
        """A copy sharing the compiled runtime (it is read-only), with its own source."""
        new = DeployedModel(
            self._run, self.backend, self.precision, self.input_size, self.threads,
            copy.deepcopy(self.source, memo), self._onnx,
        )  # fmt: skip
        new.candidates = dict(self.candidates)
        new._counts = self._counts
        if hasattr(self, "lv_history"):
            new.lv_history = copy.deepcopy(self.lv_history, memo)
        new.train(self.training)
        return new

    def counts(self) -> OpCounts:
        """Operations of one sample, the source model's; in an int8 model the MACs of every
        convolution and matrix product are int8 (what the QDQ graph quantizes)."""
        if self._counts is None:
            if self.source is None:
                raise ConfigError(f"{self.backend}: deployed without its source model")
            c = count_ops(self.source, self.input_size)
            if self.precision == "int8":
                c = OpCounts(c.macs, c.adds, c.muls, c.bitops, dict(c.by_op), c.macs, c.int_adds)
            self._counts = c
        return self._counts

    @property
    def has_onnx(self) -> bool:
        """Whether it runs an ONNX graph (onnxruntime, OpenVINO) that :meth:`save_onnx` writes;
        torch-based runtimes (torch, leanvision, inductor) run PyTorch modules instead."""
        return self._onnx is not None

    def save_onnx(self, path: str | Path) -> Path:
        """Write the ONNX graph the runtime runs (the QDQ graph for int8)."""
        if self._onnx is None:
            raise ConfigError(f"{self.backend} runs no ONNX graph (it is a PyTorch module)")
        return atomic_write(path, lambda f: f.write(self._onnx))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, *input_size) float32 CPU tensor → the model's output (a CPU tensor)."""
        if (
            not isinstance(x, torch.Tensor)
            or tuple(x.shape[1:]) != self.input_size
            or x.dim() != len(self.input_size) + 1
        ):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputShapeError(
                f"{self.backend}: expected a (N, {', '.join(map(str, self.input_size))}) "
                f"batch, got {got}"
            )
        if x.dtype != torch.float32 or x.device.type != "cpu":
            raise InputShapeError(
                f"{self.backend}: expected float32 on the CPU, got {x.dtype} on {x.device}"
            )
        return self._run(x)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}, input_size={self.input_size}, threads={self.threads}"


def deploy(
    model: nn.Module,
    backend: str = "auto",
    precision: str = "fp32",
    input_size: Sequence[int] | None = None,
    *,
    batch: int = 1,
    threads: int | None = None,
    calib: Iterable[Any] | None = None,
    calib_batches: int = 16,
    repeats: int = 15,
) -> DeployedModel:
    """Compile ``model`` for a CPU runtime.

    Args:
        model: A finalized model (pruned, Ghost, ...); left as it is (the runtimes get copies).
        backend: One of ``BACKENDS``, or ``"auto"``: the fastest of :func:`supported`
            (``precision``), timed side by side at ``batch`` and ``threads``.
        precision: ``"fp32"``, ``"bf16"`` or ``"int8"`` (see the module docstring).
        input_size: One sample's shape, e.g. (3, 32, 32); None: the model's recorded one (the
            rule: :mod:`leanvision.shapes`).
        batch: The batch the runtime is tuned and (for ``"auto"``) timed at; any batch runs.
        threads: The runtime's threads; None: torch's current setting.
        calib: For int8: batches of calibration images (``(x, y)`` pairs or tensors), e.g.
            ``data.val``; never the test split. Not needed (and not read) for a model its method
            has quantized already (``ptq_vit``): its own steps are deployed.
        calib_batches: At most this many batches of ``calib`` are read.
        repeats: For ``"auto"``: timed runs per backend.

    Returns:
        The deployed model.

    Raises:
        ConfigError: an unknown backend or precision, a backend that does not run the
            precision on this machine, int8 without ``calib``, bad ``batch`` or ``threads``;
            a model its method quantized, at another precision than int8, or uncalibrated.
        InputShapeError: the model cannot run on a ``(batch, *input_size)`` input.
    """
    _check_choice("backend", backend, ("auto", *BACKENDS))
    _check_choice("precision", precision, PRECISIONS)
    n = check_batch(batch)
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be an int >= 1 or None, got {threads!r}")
    own = quantization_state(model)  # a model quantized by its method (ptq_vit) keeps it
    if own == "uncalibrated":
        raise ConfigError(
            "the model has fake-quantized layers without steps: calibrate it first "
            "(e.g. lv.compress(model, 'ptq_vit', data=...))"
        )
    if own == "calibrated" and precision != "int8":
        raise ConfigError(
            f"the model is already quantized by its method (its own QDQ int8 graph): deploy it "
            f"with precision='int8', not {precision!r}"
        )
    runs = supported(precision)
    if own == "calibrated":  # its QDQ graph is what runs: the ONNX runtimes run it in int8
        runs = [b for b in runs if b in _ONNX_BACKENDS]
    if backend != "auto" and backend not in runs:
        why = "this CPU has no bf16 (OpenVINO's CPU plugin)" if precision == "bf16" else ""
        if backend == "leanvision" and precision == "int8":
            why = "its int8 layers need the AVX-512 kernel build and an AVX512-VNNI CPU"
        if own == "calibrated":
            why = "a model its method quantized deploys its QDQ graph, which the ONNX runtimes run"
        raise ConfigError(
            f"backend {backend!r} does not run {precision}{': ' + why if why else ''}; "
            f"backends that do here: {', '.join(runs) or 'none'}"
        )
    if precision == "int8" and own == "none":
        if calib is None:
            raise ConfigError("precision='int8' needs calib= (validation batches, e.g. data.val)")
        if not isinstance(calib_batches, int) or calib_batches < 1:
            raise ConfigError(f"calib_batches must be an int >= 1, got {calib_batches!r}")
    size = resolve_input_size(model, input_size)
    batches: list[torch.Tensor] = []
    if precision == "int8" and own == "none":
        batches = _calibration_batches(calib, calib_batches, size)
    model = copy.deepcopy(model).to("cpu").eval()
    with eval_mode(model), torch.no_grad():
        guarded_forward(model, torch.randn(n, *size), size, batch=n)

    names = runs if backend == "auto" else [backend]
    built: dict[str, DeployedModel] = {}
    with tempfile.TemporaryDirectory(prefix="leanvision-deploy-") as tmp:
        onnx_path = None
        if any(b in _ONNX_BACKENDS for b in names):
            onnx_path = export_onnx(model, Path(tmp) / "model.onnx", size, batch=n)
            if precision == "int8" and own == "none":
                onnx_path = _quantize_int8(onnx_path, batches)
        for name in names:
            built[name] = _build(name, model, precision, size, n, threads, onnx_path, batches)
            built[name].source = model
            if name in _ONNX_BACKENDS:
                assert onnx_path is not None
                built[name]._onnx = onnx_path.read_bytes()
    if len(built) == 1:
        return next(iter(built.values()))
    with torch.inference_mode():
        stats = compare(built, size, batch=n, threads=threads, repeats=repeats)
    best = min(stats, key=lambda k: stats[k].median_ms)
    chosen = built[best]
    chosen.candidates = {stats[k].backend: round(stats[k].median_ms, 4) for k in stats}
    return chosen


def _check_choice(what: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")


def _build(
    name: str,
    model: nn.Module,
    precision: str,
    size: tuple[int, ...],
    batch: int,
    threads: int | None,
    onnx_path: Path | None,
    calib: list[torch.Tensor],
) -> DeployedModel:
    if name == "torch":
        folded = fold_batchnorm(model)[0]
        layout = torch.channels_last if len(size) == 3 else torch.contiguous_format
        folded = folded.to(memory_format=layout)
        run = _TorchRun(folded, layout)
        return DeployedModel(run, "torch-eager-cpu-bn-folded-fp32", precision, size, threads)
    if name == "leanvision":
        if len(size) != 3:
            raise ConfigError(f"backend 'leanvision' runs image models (C, H, W), got {size}")
        # int8: every eligible layer fused (no fp32 timing against ATen): the int8 kernel runs
        # ~3x the fp32 kernel, which ATen beats by less than that where it does at all (a
        # stage of 64 channels at 8x8, batch 32: ATen fp32 ~0.65 ms, int8 kernel ~0.21 ms)
        fast, choices = optimize_for_cpu(model, size, batch=batch, autotune=precision != "int8")
        kernel = sum(c.used == "kernel" for c in choices)
        label = f"leanvision-cpu-{precision}[{kernel}/{len(choices)} layers on the kernels"
        if precision == "int8":
            fast, quantized = quantize_for_cpu(fast, calib)
            u8 = sum(getattr(m, "out_scale", None) is not None for m in fast.modules())
            label += f", {len(quantized)} in int8, {u8} u8 maps"
        example = torch.randn(batch, *size).contiguous(memory_format=torch.channels_last)
        graph, scripted = script_frozen(freeze_kernel_calls(fast), example)
        run = _TorchRun(graph, torch.channels_last)
        label += ", torchscript" if scripted else ""
        return DeployedModel(run, label + "]", precision, size, threads)
    if name == "inductor":
        run = InductorRun(model, precision, size, threads, calib)
        return DeployedModel(run, run.label, precision, size, threads)
    assert onnx_path is not None
    if name == "onnxruntime":
        run = _OrtRun(onnx_path, threads)
        return DeployedModel(run, run.label(precision), precision, size, threads)
    run = _OpenVinoRun(onnx_path, precision, size, threads)
    return DeployedModel(run, run.label, precision, size, threads)


class _TorchRun:
    def __init__(self, model: nn.Module, layout: torch.memory_format) -> None:
        self.model, self.layout = model, layout

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(x.contiguous(memory_format=self.layout))


def _numpy(x: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(x.detach().numpy())


class _OrtRun:
    def __init__(self, path: Path, threads: int | None) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or torch.get_num_threads()
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.version = ort.__version__
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def label(self, precision: str) -> str:
        return f"onnxruntime-{self.version}-cpu-{precision}"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.input: _numpy(x)})[0])


def _openvino_has_bf16() -> bool:
    try:
        import openvino as ov
    except ImportError:
        return False
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "BF16" in caps


class _OpenVinoRun:
    """One compiled model per batch size (static shapes: OpenVINO's fast path)."""

    def __init__(
        self, path: Path, precision: str, size: tuple[int, ...], threads: int | None
    ) -> None:
        import openvino as ov

        self.core = ov.Core()
        self.model = self.core.read_model(str(path))
        self.size, self.version = size, ov.__version__.split("-")[0]
        self.config = {
            "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            # int8: the layers left in float run fp32, as on onnxruntime
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        }
        self.requests: dict[int, Any] = {}
        hint = self._request(1)[1].get_property("INFERENCE_PRECISION_HINT")
        ran = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        self.label = f"openvino-{self.version}-cpu-{precision}"
        wanted = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}[precision]
        if ran != wanted:  # the plugin compiled another precision than asked: say so
            self.label += f"[compiled {ran}]"

    def _request(self, n: int) -> tuple[Any, Any]:
        if n not in self.requests:
            m = self.model.clone()
            m.reshape({m.inputs[0]: [n, *self.size]})
            compiled = self.core.compile_model(m, "CPU", self.config)
            self.requests[n] = (compiled.create_infer_request(), compiled)
        return self.requests[n]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        request = self._request(x.shape[0])[0]
        request.infer({0: _numpy(x)})
        return torch.from_numpy(np.array(request.get_output_tensor(0).data))


# Left in float by int8: a quantized Concat (Ghost's primary|cheap join) makes OpenVINO
# 2026.4's CPU plugin segfault while compiling, and a BatchNormalization that follows it
# would get a per-tensor int8 scale; both run fp32 between their int8 neighbours.
_KEEP_FLOAT_OPS = frozenset({"Concat", "BatchNormalization"})
_ONNX_BACKENDS = ("onnxruntime", "openvino")


def _calibration_batches(
    calib: Iterable[Any], max_batches: int, size: tuple[int, ...]
) -> list[torch.Tensor]:
    """At most ``max_batches`` float image batches of ``calib`` (``(x, y)`` pairs or tensors),
    each checked against ``size``; no batch is read past them."""
    batches = []
    for i, b in enumerate(itertools.islice(calib, max_batches)):
        x = b[0] if isinstance(b, (tuple, list)) else b
        if not isinstance(x, torch.Tensor) or tuple(x.shape[1:]) != tuple(size):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputShapeError(f"calibration batch {i}: expected (N, *{size}), got {got}")
        batches.append(x.detach().float().cpu())
    if not batches:
        raise ConfigError("calib gave no batches")
    return batches


def _quantize_int8(path: Path, calib: list[torch.Tensor]) -> Path:
    """Static int8 QDQ ONNX: per-channel weights, min/max-calibrated activations."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [_numpy(x) for x in calib]

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.it, None)
            return None if x is None else {"input": x}

    pre = path.with_name("model.pre.onnx")
    quant_pre_process(str(path), str(pre), skip_symbolic_shape=True)
    out = path.with_name("model.int8.onnx")
    root = logging.getLogger()
    level = root.level
    # the quantizer warns on the root logger for every 1-D weight it keeps per-tensor (a BN
    # after a concatenation): expected, and hundreds of lines
    root.setLevel(logging.ERROR)
    try:
        quantize_static(
            str(pre),
            str(out),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            # u8 activations × s8 weights: onnxruntime's fast x86 int8 path (s8×s8 ran
            # slower than fp32 on an AVX512-VNNI CPU); 7-bit weights where u8×s8 products
            # could saturate (no VNNI)
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            reduce_range=not kernels.has_vnni(),
            op_types_to_quantize=sorted(
                (set(QDQRegistry) | set(QLinearOpsRegistry)) - _KEEP_FLOAT_OPS
            ),
        )
    finally:
        root.setLevel(level)
    return out


def _count_deployed(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> OpCounts:
    """The profiler's count of a deployed model: its source's, times the batch."""
    assert isinstance(module, DeployedModel)
    one = module.counts()
    n = int(inputs[0].shape[0]) if inputs and isinstance(inputs[0], torch.Tensor) else 1
    return OpCounts(
        one.macs * n, one.adds * n, one.muls * n, one.bitops * n,
        {k: v * n for k, v in one.by_op.items()}, one.int8_macs * n, one.int_adds * n,
    )  # fmt: skip


register_module_counter(DeployedModel, _count_deployed)
