"""Wall-clock latency of inference, alone or side by side.

A model (``nn.Module``) runs in eval mode under ``torch.inference_mode`` on its own device,
with a fixed number of torch threads; each timed call is measured with ``time.perf_counter``
(CUDA is synchronised around it). Anything else callable is timed as is:

* a callable with no required positional parameter is called as ``fn()`` (e.g.
  ``lambda: session.run(None, feeds)`` for ONNX Runtime);
* otherwise it is called as ``fn(x)`` with a float32 CPU tensor ``(batch, *input_size)``.

``input_size`` is one sample's shape and ``batch`` the samples per call (the rule:
:mod:`leanvision.shapes`); a model given no ``input_size`` runs at its recorded one.

``threads`` fixes ``torch.set_num_threads`` only; a runtime with its own thread pool (ONNX
Runtime) must be configured when its session is built. A callable may name its back-end in a
``backend`` attribute (e.g. ``"onnxruntime-cpu"``); otherwise it is reported as
``"python-callable"``.

The backend string says what really ran. Before warm-up, one untimed probe call runs under a
``TorchDispatchMode`` that records every ``torch.ops.leanvision.*`` op (leanvision's native
kernels) and under :func:`leanvision.kernels.recording_fallbacks`, which records every layer
that could have run a native kernel and ran PyTorch instead. Both are appended to the base
name (the model's ``torch-eager-<device>``, the callable's ``backend`` attribute, or the
``backend`` argument, suffixes such as ``-channels_last`` kept)::

    <base>[+leanvision:<op>[<path>],...][+fallback:<Layer>[<reason>|...],...]

e.g. ``torch-eager-cpu+leanvision:binary_conv2d[avx512-vpopcntdq],binary_pack[scalar]`` or
``torch-eager-cpu+fallback:PackedBinaryConv2d[not-built]``: ops and layers sorted by name,
``<path>`` the kernel's run-time dispatch (:func:`leanvision.kernels.path`), ``<reason>`` the
layer's (``not-built``, ``no-avx512``, ``device``, ``dtype``, ``autograd``, ``disabled``,
``aten-faster``). A model with neither gets its base name alone.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from leanvision import kernels
from leanvision.errors import ConfigError
from leanvision.profiling._common import (
    check_batch,
    check_positive_int,
    check_threads,
    eval_mode,
    guarded_forward,
    make_input,
    model_device_dtype,
    num_threads,
    resolve_input_size,
)

__all__ = ["LatencyStats", "OnInputs", "compare", "measure_latency", "native_backend"]


class OnInputs:
    """A zero-argument callable that runs ``model`` on each of a fixed list of inputs: one
    timed call of :func:`compare` for a model whose work depends on the input (dynamic
    resolution, dynamic SR), timed on real images rather than a random tensor."""

    def __init__(self, model: Callable[..., Any], inputs: Sequence[Any]) -> None:
        self.model, self.inputs = model, list(inputs)
        self.backend = "torch-eager-cpu"  # what the callable runs, as compare reports it

    def __call__(self) -> None:
        for x in self.inputs:
            self.model(x)


@dataclass
class LatencyStats:
    """Latency of one inference call (the whole batch), in milliseconds.

    Attributes:
        median_ms: Median over the timed runs.
        p90_ms: 90th percentile (linear interpolation).
        mean_ms: Mean.
        batch: Samples per call (the ``batch`` argument); the latency is the whole batch's.
        threads: Torch threads used.
        backend: What ran, detected: e.g. ``"torch-eager-cpu"``, ``"onnxruntime-cpu"``,
            ``"torch-eager-cpu+leanvision:binary_conv2d[avx512-vpopcntdq],binary_pack[...]"``
            (format in the module docstring).
        repeats: Number of timed runs.
    """

    median_ms: float
    p90_ms: float
    mean_ms: float
    batch: int
    threads: int
    backend: str
    repeats: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict: median, p90, mean (ms), batch, threads, backend, repeats."""
        return {
            "median": self.median_ms,
            "p90": self.p90_ms,
            "mean": self.mean_ms,
            "batch": self.batch,
            "threads": self.threads,
            "backend": self.backend,
            "repeats": self.repeats,
        }

    def as_result(self) -> dict[str, Any]:
        """The ``latency_ms`` field of a results.json row (the schema calls repeats ``runs``)."""
        stats = self.as_dict()
        stats["runs"] = stats.pop("repeats")
        return stats


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _stats(times_s: Sequence[float], batch: int, threads: int, backend: str) -> LatencyStats:
    ms = sorted(t * 1e3 for t in times_s)
    return LatencyStats(
        median_ms=statistics.median(ms),
        p90_ms=_percentile(ms, 0.9),
        mean_ms=statistics.fmean(ms),
        batch=batch,
        threads=threads,
        backend=backend,
        repeats=len(ms),
    )


def _takes_no_args(fn: Callable[..., Any]) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return not any(
        p.kind in kinds and p.default is inspect.Parameter.empty for p in sig.parameters.values()
    )


def _backend_name(obj: Any, device: torch.device | None) -> str:
    named = getattr(obj, "backend", None)
    if isinstance(named, str):  # a callable or a deployed model naming its runtime
        return named
    if isinstance(obj, torch.jit.ScriptModule):
        return f"torchscript-{device.type if device else 'cpu'}"
    if isinstance(obj, nn.Module):
        return f"torch-eager-{device.type if device else 'cpu'}"
    return "python-callable"


class _NativeOps(TorchDispatchMode):
    """Records the ``torch.ops.leanvision`` ops (native kernels) that run while it is on."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: dict[str, None] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if getattr(func, "namespace", "") == "leanvision":
            name = func._schema.name.split("::", 1)[-1]
            if not name.endswith("_isa"):
                self.ops[name] = None
        return func(*args, **(kwargs or {}))


def native_backend(call: Callable[[], Any]) -> tuple[Any, str]:
    """Run ``call()`` once and say which native kernels ran in it and which layers fell back.

    Returns:
        ``call()``'s result and the suffix to append to a backend name:
        ``"+leanvision:<op>[<path>],..."`` for the ``torch.ops.leanvision`` ops that ran, then
        ``"+fallback:<Layer>[<reason>|...],..."`` for layers that could have run a kernel and
        did not (see the module docstring); ``""`` when neither happened.
    """
    log = _NativeOps()
    with kernels.recording_fallbacks() as fallbacks, log:
        out = call()
    suffix = ""
    if log.ops:
        paths = {op: kernels.path(kernels.kernel_of(op) or "") or "?" for op in log.ops}
        suffix += "+leanvision:" + ",".join(f"{op}[{paths[op]}]" for op in sorted(log.ops))
    if fallbacks:
        parts = [f"{name}[{'|'.join(why)}]" for name, why in sorted(fallbacks.items())]
        suffix += "+fallback:" + ",".join(parts)
    return out, suffix


class _Runner:
    """One thing to time: a zero-argument call plus its synchronisation."""

    def __init__(
        self, obj: nn.Module | Callable[..., Any], input_size: Sequence[int] | None, batch: int
    ) -> None:
        self.obj = obj
        self.device: torch.device | None = None
        if isinstance(obj, nn.Module):
            size = resolve_input_size(obj, input_size)
            self.device, dtype = model_device_dtype(obj)
            x = make_input((batch, *size), self.device, dtype)
            self.call: Callable[[], Any] = lambda: guarded_forward(obj, x, size, batch=batch)
        elif callable(obj):
            if _takes_no_args(obj):
                self.call = obj
            else:
                x = make_input((batch, *resolve_input_size(obj, input_size)))
                self.call = lambda: obj(x)
        else:
            raise ConfigError(
                f"expected an nn.Module or a callable to time, got {type(obj).__name__}"
            )
        self.backend = _backend_name(obj, self.device)
        self.times: list[float] = []

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def probe(self) -> None:
        """One untimed call that detects the native kernels and fallbacks behind it."""
        self._sync()
        _, suffix = native_backend(self.call)
        self._sync()
        self.backend += suffix

    def run(self, timed: bool) -> None:
        self._sync()
        start = time.perf_counter()
        self.call()
        self._sync()
        if timed:
            self.times.append(time.perf_counter() - start)

    @contextlib.contextmanager
    def prepared(self) -> Iterator[None]:
        if isinstance(self.obj, nn.Module):
            with eval_mode(self.obj):
                yield
        else:
            yield


def measure_latency(
    model_or_callable: nn.Module | Callable[..., Any],
    input_size: Sequence[int] | None = None,
    *,
    batch: int = 1,
    threads: int | None = None,
    warmup: int = 5,
    repeats: int = 30,
    min_time_s: float = 0.0,
    backend: str | None = None,
) -> LatencyStats:
    """Time one model (or callable) on a batch of ``batch`` samples of ``input_size``.

    Args:
        model_or_callable: An ``nn.Module``, or a callable (see the module docstring for how
            it is called).
        input_size: One sample's shape without the batch, e.g. (3, 224, 224); None: the
            model's ``pretrained_cfg["input_size"]`` (the rule: :mod:`leanvision.shapes`). A
            callable that takes no argument needs none.
        batch: Samples per call: the input is ``(batch, *input_size)``.
        threads: Torch threads for the measurement (restored afterwards); default: the
            current ``torch.get_num_threads()``.
        warmup: Untimed runs first.
        repeats: Timed runs (at least this many).
        min_time_s: Keep timing past ``repeats`` until the timed runs add up to this long.
        backend: Base name to report for the back-end; default: inferred. The native kernels
            and fallbacks detected in one untimed probe call are appended to it either way.

    Returns:
        LatencyStats in milliseconds per call (the whole batch).

    Raises:
        ConfigError: Bad ``input_size``, ``batch``, ``threads``, ``warmup``, ``repeats`` or
            ``min_time_s``, or no ``input_size`` where the model records none.
        InputShapeError: A model's forward failed because of the input's shape.
    """
    n = check_batch(batch)
    if input_size is not None:
        resolve_input_size(None, input_size)  # checked first, even for a no-argument callable
    n_threads = check_threads(threads)
    check_positive_int("warmup", warmup, allow_zero=True)
    check_positive_int("repeats", repeats)
    if not isinstance(min_time_s, (int, float)) or min_time_s < 0:
        raise ConfigError(f"min_time_s must be a non-negative number, got {min_time_s!r}")
    runner = _Runner(model_or_callable, input_size, n)
    if backend is not None:
        runner.backend = backend
    with num_threads(n_threads), runner.prepared(), torch.inference_mode():
        runner.probe()
        for _ in range(warmup):
            runner.run(timed=False)
        while len(runner.times) < repeats or sum(runner.times) < min_time_s:
            runner.run(timed=True)
    return _stats(runner.times, n, n_threads, runner.backend)


def compare(
    models: Mapping[str, nn.Module | Callable[..., Any]],
    input_size: Sequence[int] | None = None,
    *,
    batch: int = 1,
    threads: int | None = None,
    warmup: int = 5,
    repeats: int = 30,
    rounds: int | None = None,
) -> dict[str, LatencyStats]:
    """Time several models side by side in this process, interleaved.

    The ``repeats`` timed runs of each model are spread over ``rounds`` round-robin rounds;
    each round runs every model in turn (``ceil(repeats / rounds)`` calls each), starting
    from a different model every round, so machine noise falls on all of them alike. Warm-up
    is interleaved the same way, after one untimed probe call per model that detects its
    backend (see the module docstring).

    Args:
        models: Name → ``nn.Module`` or callable (called as in :func:`measure_latency`).
        input_size: One sample's shape without the batch, the same for every model; None:
            each model's own ``pretrained_cfg["input_size"]`` (the rule:
            :mod:`leanvision.shapes`).
        batch: Samples per call: the input is ``(batch, *input_size)``.
        threads: Torch threads for the whole comparison (restored afterwards).
        warmup: Untimed runs per model.
        repeats: Timed runs per model.
        rounds: Number of rounds; default ``repeats`` (one call per model per round).

    Returns:
        Name → LatencyStats (ms per call, the whole batch), in the order of ``models``.

    Raises:
        ConfigError: No models, or bad ``input_size``, ``batch``, ``threads``, ``warmup``,
            ``repeats`` or ``rounds``, or no ``input_size`` where a model records none.
        InputShapeError: A model's forward failed because of the input's shape.
    """
    n = check_batch(batch)
    if input_size is not None:
        resolve_input_size(None, input_size)  # checked first, even for no-argument callables
    n_threads = check_threads(threads)
    check_positive_int("warmup", warmup, allow_zero=True)
    check_positive_int("repeats", repeats)
    n_rounds = repeats if rounds is None else check_positive_int("rounds", rounds)
    if not models:
        raise ConfigError("compare() needs at least one model")
    names = list(models)
    runners = {name: _Runner(models[name], input_size, n) for name in names}
    per_round = math.ceil(repeats / n_rounds)

    def rotated(r: int) -> list[str]:
        k = r % len(names)
        return names[k:] + names[:k]

    with contextlib.ExitStack() as stack:
        stack.enter_context(num_threads(n_threads))
        for runner in runners.values():
            stack.enter_context(runner.prepared())
        stack.enter_context(torch.inference_mode())
        for runner in runners.values():
            runner.probe()
        for r in range(warmup):
            for name in rotated(r):
                runners[name].run(timed=False)
        r = 0
        while any(len(run.times) < repeats for run in runners.values()):
            for name in rotated(r):
                runner = runners[name]
                for _ in range(min(per_round, repeats - len(runner.times))):
                    runner.run(timed=True)
            r += 1
    return {name: _stats(run.times, n, n_threads, run.backend) for name, run in runners.items()}
