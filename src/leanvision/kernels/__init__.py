"""Native CPU kernels, compiled on first use with ``torch.utils.cpp_extension`` and cached.

Each kernel is a set of ops in the ``torch.ops.leanvision`` namespace, built from
``csrc/<name>.cpp`` the first time it is asked for (about 15 s, once per machine; torch caches
the build in ``$TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``). Code that
uses a kernel keeps a pure PyTorch path and says when it took it (:func:`fell_back`, which the
profiler reads).

Environment:

* ``LEANVISION_NO_KERNELS=1``: build nothing; every layer runs its PyTorch path.
* ``LEANVISION_REQUIRE_KERNELS=1``: a kernel that is asked for and cannot be built (or is
  built without any path) raises :class:`~leanvision.errors.KernelError` instead of warning
  (as ``load(name, required=True)``). Layers do not ask for the AVX-512-only kernels
  (``adder``, ``conv3x3``) on other CPUs; the profiler's backend string names those fallbacks.
* ``LEANVISION_KERNEL_ISA=AVX2|DEFAULT``: build for a lower instruction set than this CPU's
  (only lowering is allowed). The level is part of the build's name, so caches never mix, and
  is passed to the compiler as ``LEANVISION_ISA_<LEVEL>``, so the run-time dispatch takes the
  portable path too (how to test the scalar code on an AVX-512 machine).

:func:`status` tells, per kernel, whether it is built, for which instruction set, which path its
run-time dispatch takes (each kernel's ``torch.ops.leanvision.<name>_isa()``) and why a build
failed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from leanvision.errors import ConfigError, KernelError, UnknownNameError
from leanvision.kernels import fake

__all__ = [
    "KernelStatus",
    "OPS",
    "available",
    "capability",
    "fell_back",
    "kernel_of",
    "load",
    "path",
    "recording_fallbacks",
    "status",
    "vector_width",
]

_CSRC = Path(__file__).parent / "csrc"
_state: dict[str, bool] = {}  # name -> loaded (absent: never tried)
_errors: dict[str, str] = {}  # name -> why it is not loaded
_paths: dict[str, str] = {}  # name -> its run-time dispatch, once asked
# instruction-set levels, lowest first; the flags compile for the vector units torch itself
# dispatches to on this machine
_LEVELS = ("DEFAULT", "AVX2", "AVX512")
_FLAGS = {
    "AVX512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl"],
    "AVX2": ["-mavx2", "-mfma"],
    "DEFAULT": [],
}
# kernels that split their work over torch's OpenMP threads (at::parallel_for runs serially
# in a translation unit built without OpenMP)
_OPENMP = {"adder", "adder_int8", "binary", "conv3x3"}
# the ops each kernel registers (its `<name>_isa` op aside)
OPS: dict[str, tuple[str, ...]] = {
    "adder": (
        "adder_forward",
        "adder_backward_input",
        "winograd_adder_forward",
        "winograd_adder_core",
        "winograd_adder_core_backward",
        "winograd_input_transform",
        "winograd_input_transform_backward",
    ),
    "adder_int8": ("adder_int8_forward", "adder_int16_forward"),
    "binary": ("binary_pack", "binary_conv2d", "binary_gconv2d", "binary_linear"),
    "conv3x3": ("conv3x3_nhwc", "ghost3x3_nhwc", "conv3x3_u8s8_nhwc", "ghost3x3_u8s8_nhwc"),
    "gated_block": ("gated_basic_block", "gated_block_chain"),
}
_KERNEL_OF = {op: name for name, ops in OPS.items() for op in ops}
_isa_level: str | None = None


def _machine_level() -> str:
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - very old or exotic builds
        return "DEFAULT"
    return cap if cap in _FLAGS else "DEFAULT"


_FP32_LANES = {"AVX512": 16, "AVX2": 8}


def vector_width() -> int:
    """float32 lanes of this CPU's vector registers at torch's dispatch level (AVX-512: 16,
    AVX2: 8, otherwise 4, e.g. NEON): the channel multiple that fills them, the default
    rounding of pruned widths."""
    return _FP32_LANES.get(_machine_level(), 4)


_VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def has_vnni(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this x86 CPU has a u8×s8 dot-product instruction (AVX512-VNNI, AVX-VNNI or
    AMX-INT8), read from /proc/cpuinfo; False where that cannot be read. Without one,
    onnxruntime's u8×s8 kernels use VPMADDUBSW, whose 16-bit pair sums can saturate, and its
    quantizer's ``reduce_range`` (7-bit weights) avoids that."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    first = re.search(r"^flags\s*:(.*)$", text, re.M)
    return first is not None and bool(set(first.group(1).split()) & _VNNI_FLAGS)


def capability() -> str:
    """The instruction set the kernels are built for in this process: "AVX512", "AVX2" or
    "DEFAULT" (no ISA flags): torch's own dispatch level on this CPU, lowered by
    ``LEANVISION_KERNEL_ISA`` (read once per process).

    Raises:
        ConfigError: ``LEANVISION_KERNEL_ISA`` names an unknown level or one above this CPU's.
    """
    global _isa_level
    if _isa_level is None:
        machine = _machine_level()
        asked = os.environ.get("LEANVISION_KERNEL_ISA", "").strip().upper()
        if asked and asked not in _LEVELS:
            raise ConfigError(
                f"LEANVISION_KERNEL_ISA={asked!r} is not a level; use one of "
                f"{', '.join(_LEVELS)} (or unset it for this CPU's: {machine})"
            )
        if asked and _LEVELS.index(asked) > _LEVELS.index(machine):
            raise ConfigError(
                f"LEANVISION_KERNEL_ISA={asked} is above this CPU's level {machine}; it can "
                "only lower the instruction set the kernels are built for"
            )
        _isa_level = asked or machine
    return _isa_level


def _names() -> list[str]:
    return sorted(p.stem for p in _CSRC.glob("*.cpp"))


def _required(required: bool | None) -> bool:
    if required is not None:
        return required
    return os.environ.get("LEANVISION_REQUIRE_KERNELS") == "1"


def load(name: str, required: bool | None = None) -> bool:
    """Build (or find in the cache) and register the kernel ``csrc/<name>.cpp``.

    Args:
        name: The kernel's file name without ``.cpp`` (see :data:`OPS`).
        required: Raise instead of warning when it cannot be built; default: whether
            ``LEANVISION_REQUIRE_KERNELS=1`` is set. For benchmarks that must not time a
            fallback without knowing it.

    Returns:
        Whether its ops are now in ``torch.ops.leanvision``. Without ``required`` a missing
        compiler or a failed build warns once and returns False (the caller runs its PyTorch
        path).

    Raises:
        UnknownNameError: No such kernel.
        KernelError: ``required`` and the kernel is not available, or its build has no path
            at all (``path(name) == "none"``); the message says why.
    """
    if name not in _state:
        _state[name] = _build(name, warn=not _required(required))
    if not _required(required):
        return _state[name]
    if not _state[name]:
        raise KernelError(
            f"native kernel {name!r} is required but unavailable: "
            f"{_errors.get(name, 'not built')}. Install a C++ compiler (g++ or clang) and "
            "ninja, unset LEANVISION_NO_KERNELS, or drop LEANVISION_REQUIRE_KERNELS / "
            "required=True to accept the PyTorch path"
        )
    if path(name) == "none":
        raise KernelError(
            f"native kernel {name!r} is required but its {capability()} build has no path "
            "(its ops need AVX-512); run on an AVX-512 CPU without LEANVISION_KERNEL_ISA, or "
            "drop LEANVISION_REQUIRE_KERNELS / required=True to accept the PyTorch path"
        )
    return True


def _build(name: str, warn: bool) -> bool:
    source = _CSRC / f"{name}.cpp"
    if not source.is_file():
        raise UnknownNameError("native kernel", name, _names(), f"Kernels live in {_CSRC}.")
    if os.environ.get("LEANVISION_NO_KERNELS") == "1":
        _errors[name] = "disabled by LEANVISION_NO_KERNELS=1"
        return False
    # importing cpp_extension logs a warning about CUDA on CPU-only machines: irrelevant here
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        log.setLevel(level)

    isa = capability()
    openmp = ["-fopenmp"] if name in _OPENMP else []
    print(f"leanvision: loading native kernel {name!r} (built once, ~15 s)", file=sys.stderr)
    try:
        cpp_extension.load(
            name=f"leanvision_{name}_{isa.lower()}",
            sources=[str(source)],
            extra_cflags=["-O3", *_FLAGS[isa], f"-DLEANVISION_ISA_{isa}", *openmp],
            extra_ldflags=openmp,
            is_python_module=False,
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja, build error: keep the PyTorch path
        _errors[name] = _summary(exc)
        if warn:
            warnings.warn(
                f"leanvision: native kernel {name!r} unavailable ({_errors[name]}); "
                "using the PyTorch path",
                RuntimeWarning,
                stacklevel=3,
            )
        return False
    _errors.pop(name, None)
    fake.register(name)  # its ops' shapes, so torch.compile traces models that call them
    return True


def _summary(exc: Exception) -> str:
    """The exception's first line and the compiler's first error line, if it has one."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    error = next((line for line in lines[1:] if "error" in line.lower()), "")
    return f"{type(exc).__name__}: {lines[0]}" + (f" ({error[:300]})" if error else "")


# kernels whose only native path is AVX-512: other builds compile, with no path to run
_AVX512_ONLY = frozenset({"adder", "conv3x3"})


def why_not(
    name: str,
    x: torch.Tensor | None = None,
    *,
    dtype: torch.dtype | None = torch.float32,
    grad: bool = False,
) -> str | None:
    """The one check of whether kernel ``name`` runs its native path here (on ``x``).

    Every layer with a native kernel asks this, so the CPU, build and input checks live once.

    Args:
        name: The kernel (a key of :data:`OPS`).
        x: The input the layer is called with (None: only the machine and the build).
        dtype: The dtype the kernel takes ``x`` in (None: any; the layer converts it).
        grad: The call needs a gradient (the kernels are inference-only where they say so).

    Returns:
        None when it runs; else the reason token :func:`fell_back` records: ``"autograd"``,
        ``"device"``, ``"dtype"``, ``"no-avx512"`` (the kernel's only path is AVX-512 and the
        CPU or ``LEANVISION_KERNEL_ISA`` is below it, or the build has no path) or
        ``"not-built"``. Builds the kernel on first use (cached).
    """
    if grad:
        return "autograd"
    if x is not None:
        if x.device.type != "cpu":
            return "device"
        if dtype is not None and x.dtype != dtype:
            return "dtype"
    if name in _AVX512_ONLY and capability() != "AVX512":
        return "no-avx512"
    if not load(name):
        return "not-built"
    return "no-avx512" if path(name) == "none" else None


def available(name: str) -> bool:
    """Whether kernel ``name`` has been loaded successfully (without trying to build it)."""
    return _state.get(name, False)


def path(name: str) -> str | None:
    """The path kernel ``name``'s run-time dispatch takes on this machine (its
    ``torch.ops.leanvision.<name>_isa()``), e.g. ``"avx512-vpopcntdq"`` or ``"scalar"`` for
    ``binary``; ``"none"`` where the build has no path at all (the op refuses and callers use
    PyTorch); None when the kernel is not loaded."""
    if not available(name):
        return None
    if name not in _paths:
        _paths[name] = str(getattr(torch.ops.leanvision, f"{name}_isa")())
    return _paths[name]


def kernel_of(op: str) -> str | None:
    """The kernel that registers ``torch.ops.leanvision.<op>`` (None for an unknown op)."""
    return _KERNEL_OF.get(op)


@dataclass(frozen=True)
class KernelStatus:
    """Where one kernel stands in this process.

    Attributes:
        name: The kernel (``csrc/<name>.cpp``).
        built: Whether it is loaded and its ops registered.
        isa: The instruction-set level it is (or would be) built for: "AVX512", "AVX2",
            "DEFAULT".
        path: What its run-time dispatch takes here (see :func:`path`), None if not built.
        error: Why it is not built (build error, disabled), None if built or never tried.
        ops: The ops it registers in ``torch.ops.leanvision``.
    """

    name: str
    built: bool
    isa: str
    path: str | None
    error: str | None
    ops: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields."""
        d = asdict(self)
        d["ops"] = list(self.ops)
        return d


def status(build: bool = False) -> dict[str, KernelStatus]:
    """Per kernel (every ``csrc/*.cpp``): built or not, for which ISA, the path its dispatch
    takes, and the build error if any.

    Args:
        build: Try to build every kernel first (about 15 s each the first time); by default
            only what this process has already loaded is reported.
    """
    out = {}
    for name in _names():
        if build:
            load(name, required=False)
        out[name] = KernelStatus(
            name=name,
            built=available(name),
            isa=capability(),
            path=path(name),
            error=None if available(name) else _errors.get(name),
            ops=OPS.get(name, ()),
        )
    return out


# ------------------------------------------------------------------ fallbacks, for profilers

_recorders: list[dict[str, list[str]]] = []


def fell_back(layer: Any, reason: str) -> None:
    """Called by a layer that could have run a native kernel here and ran PyTorch instead
    (``reason``: a short token such as ``"not-built"``, ``"no-avx512"``, ``"device"``,
    ``"dtype"``, ``"autograd"``). Free unless a profiler is recording
    (:func:`recording_fallbacks`)."""
    if _recorders:
        name = layer if isinstance(layer, str) else type(layer).__name__
        for rec in _recorders:
            reasons = rec.setdefault(name, [])
            if reason not in reasons:
                reasons.append(reason)


@contextlib.contextmanager
def recording_fallbacks() -> Iterator[dict[str, list[str]]]:
    """Collect, while the block runs, layer type → the reasons of its :func:`fell_back`
    calls (in first-seen order)."""
    rec: dict[str, list[str]] = {}
    _recorders.append(rec)
    try:
        yield rec
    finally:
        _recorders.remove(rec)


def _reset_for_tests() -> None:
    """Forget what was loaded and the ISA level (tests that change the environment)."""
    global _isa_level
    _state.clear()
    _errors.clear()
    _paths.clear()
    _isa_level = None
