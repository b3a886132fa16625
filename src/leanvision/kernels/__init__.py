"""Native CPU kernels, compiled on first use with ``torch.utils.cpp_extension`` and cached.

Each kernel is an op in the ``torch.ops.leanvision`` namespace, built from ``csrc/<name>.cpp``
the first time it is asked for (about 20 s, once per machine; torch caches the build in
``$TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``). Code that uses a kernel
keeps a pure PyTorch path: when no compiler is available, or ``LEANVISION_NO_KERNELS=1`` is
set, :func:`load` says why once and returns ``False``.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import torch

__all__ = ["available", "capability", "load"]

_CSRC = Path(__file__).parent / "csrc"
_state: dict[str, bool] = {}
# compile for the vector units torch itself dispatches to on this machine; the flags are
# part of the build's name, so a cache shared between different CPUs cannot mix them up
_FLAGS = {
    "AVX512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl"],
    "AVX2": ["-mavx2", "-mfma"],
}
# kernels that split their work over torch's OpenMP threads (at::parallel_for runs serially
# in a translation unit built without OpenMP)
_OPENMP = {"adder", "adder_int8", "binary", "conv3x3"}


def _capability() -> str:
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - very old or exotic builds
        return "DEFAULT"
    return cap if cap in _FLAGS else "DEFAULT"


def load(name: str) -> bool:
    """Build (or find in the cache) and register the kernel ``csrc/<name>.cpp``.

    Returns whether its ops are now in ``torch.ops.leanvision``; never raises for a missing
    compiler (it warns once and the caller uses its PyTorch path)."""
    if name in _state:
        return _state[name]
    source = _CSRC / f"{name}.cpp"
    if not source.is_file():
        raise FileNotFoundError(f"no native kernel {name!r} in {_CSRC}")
    if os.environ.get("LEANVISION_NO_KERNELS") == "1":
        _state[name] = False
        return False
    # importing cpp_extension logs a warning about CUDA on CPU-only machines: irrelevant here
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        log.setLevel(level)

    cap = _capability()
    openmp = ["-fopenmp"] if name in _OPENMP else []
    print(f"leanvision: loading native kernel {name!r} (built once, ~20 s)", file=sys.stderr)
    try:
        cpp_extension.load(
            name=f"leanvision_{name}_{cap.lower()}",
            sources=[str(source)],
            extra_cflags=["-O3", *_FLAGS.get(cap, []), *openmp],
            extra_ldflags=openmp,
            is_python_module=False,
            verbose=False,
        )
        _state[name] = True
    except Exception as exc:  # no compiler, no ninja, build error: keep the PyTorch path
        warnings.warn(
            f"leanvision: native kernel {name!r} unavailable ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else exc}); using the PyTorch path",
            RuntimeWarning,
            stacklevel=2,
        )
        _state[name] = False
    return _state[name]


def capability() -> str:
    """The vector instruction set the kernels are built for here: "AVX512", "AVX2" or
    "DEFAULT" (torch's own dispatch level)."""
    return _capability()


def available(name: str) -> bool:
    """Whether kernel ``name`` has been loaded successfully (without trying to build it)."""
    return _state.get(name, False)
