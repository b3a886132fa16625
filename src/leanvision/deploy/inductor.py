"""The PyTorch-native deploy backend: TorchInductor, and torchao's PT2E x86 int8 before it.

fp32: the BN-folded model, weights frozen into the graph. int8: torchao's PT2E static
quantization for x86 (``X86InductorQuantizer``: per-channel int8 weights, uint8 activations
with min/max observers, calibrated on the caller's batches), the converted graph lowered by
Inductor, which turns quantize → conv/linear → dequantize into oneDNN int8 kernels. This is the
path torchao documents for CPU int8 inference; leanvision runs it beside onnxruntime and
OpenVINO so that the fastest one is the one deployed.

fp32 is compiled ahead of time (AOTInductor: ``torch.export`` with a dynamic batch, then
``torch._inductor.aoti_compile_and_package``) when deployed: one shared library serves every
batch size, and a call runs no Python graph code and no guards. Measured at batch 1 (1
thread): the CIFAR BiMLP 6.2 → 1.5 ms, the 32-px DeiT-Tiny 13.8 → 7.4 ms, against
``torch.compile`` of the same graph, whose Dynamo guards alone took about 1 ms per call on the
BiMLP. The library is checked against the eager graph at two batch sizes; where export, the
compile or that check fails, and for int8 (see :class:`InductorRun`), the model is compiled by
``torch.compile`` instead (once per batch size, on the first call), and the backend label says
which ran (``…-aotinductor-…`` or ``…-inductor-…``). A C++ compiler is needed (the one the
native kernels use); compiling takes seconds to a minute. The generated kernels use torch's
thread count at compile time, so compiling and each call run with ``threads``.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from leanvision.deploy.fold import fold_batchnorm
from leanvision.errors import ConfigError
from leanvision.profiling import num_threads

__all__ = ["InductorRun", "has_torchao"]


def has_torchao() -> bool:
    """Whether torchao's PT2E quantization imports here (the int8 half of the backend)."""
    try:
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e  # noqa: F401
    except ImportError:
        return False
    return True


def _versions(precision: str, aot: bool) -> str:
    compiler = "aotinductor" if aot else "inductor"
    if precision == "int8":
        import torchao

        return f"torchao-{torchao.__version__}-pt2e-x86-{compiler}-cpu-int8"
    return f"torch-{torch.__version__.split('+')[0]}-{compiler}-cpu-{precision}"


def _aot_compile(model: nn.Module, size: tuple[int, ...], folder: str) -> Any:
    """AOTInductor: export ``model`` with a dynamic batch, compile it to a package in
    ``folder`` and load it (weights frozen into the library)."""
    import torch._inductor.config as inductor_config

    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with torch.no_grad():
        program = torch.export.export(model, (torch.randn(2, *size),), dynamic_shapes=({0: batch},))
        with inductor_config.patch(freezing=True):
            path = torch._inductor.aoti_compile_and_package(
                program, package_path=f"{folder}/model.pt2"
            )
    return torch._inductor.aoti_load_package(path)


def _quantize_pt2e(model: nn.Module, size: tuple[int, ...], calib: Sequence[torch.Tensor]):
    """torchao PT2E x86 static int8 of ``model``: export (batch dynamic), observe ``calib``,
    convert to quantize/dequantize pairs around int8 weights."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    example = torch.randn(2, *size)
    graph = torch.export.export(model, (example,), dynamic_shapes=({0: batch},)).module()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for x in calib:
            prepared(x)
    return convert_pt2e(prepared)


def _check_compiled(compiled: Any, model: nn.Module, size: tuple[int, ...]) -> None:
    """Raise if the compiled model's output at batch 1 and 3 is not the eager model's (a
    miscompile guard, not a precision test: at most 5 % of the output's largest magnitude)."""
    with torch.no_grad():
        for batch in (1, 3):
            x = torch.randn(batch, *size)
            ref, out = model(x), compiled(x)
            err = (out - ref).abs().max().item()
            if not err <= 0.05 * ref.abs().max().item() + 1e-5:
                raise RuntimeError(
                    f"the compiled model differs from the eager one by {err:.3g} at batch {batch}"
                )


class InductorRun:
    """A model compiled by Inductor (int8: after torchao's PT2E x86 quantization), callable on
    a float batch; ``threads`` fixes torch's thread count while it compiles and runs.
    fp32 compiles ahead of time unless ``aot=False`` (then ``torch.compile`` on the first
    call at each batch size); int8 always takes ``torch.compile``: AOTInductor's dynamic-batch
    int8 library computed wrong outputs at batch sizes other than the export example's
    (torch 2.14, torchao 0.18: a ResNet-20's logits off by 24 of about 20)."""

    def __init__(
        self,
        model: nn.Module,
        precision: str,
        size: tuple[int, ...],
        threads: int | None,
        calib: Sequence[torch.Tensor] = (),
        *,
        aot: bool = True,
    ) -> None:
        if precision not in ("fp32", "int8"):
            raise ConfigError(f"backend 'inductor' runs fp32 and int8, not {precision!r}")
        self.threads = threads
        folded = fold_batchnorm(copy.deepcopy(model).eval())[0]
        if precision == "int8":
            if not calib:
                raise ConfigError("the inductor int8 path needs calibration batches")
            with self._threads():
                folded = _quantize_pt2e(folded, size, calib)
        self.model = folded
        self.compiled: Any = None
        self._folder: tempfile.TemporaryDirectory | None = None
        if aot and precision == "fp32":
            self._folder = tempfile.TemporaryDirectory(prefix="leanvision-aoti-")
            try:
                with self._threads():
                    self.compiled = _aot_compile(self.model, size, self._folder.name)
                    _check_compiled(self.compiled, self.model, size)
            except Exception as exc:  # export, the C++ build or the check: torch.compile
                warnings.warn(
                    f"AOTInductor could not compile the model ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); using "
                    "torch.compile",
                    stacklevel=3,
                )
                self.compiled = None
                self._folder.cleanup()
                self._folder = None
        self.aot = self.compiled is not None
        self.label = _versions(precision, self.aot)
        if not self.aot:
            # static shapes: one graph per batch size (a dynamic-batch recompile of the int8
            # graph failed an output-stride check of its quantized conv lowering, torch 2.14)
            self.compiled = torch.compile(self.model, dynamic=False)

    def _threads(self) -> Any:
        return num_threads(self.threads) if self.threads else contextlib.nullcontext()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.aot:
            with self._threads(), torch.no_grad():
                return self.compiled(x)
        import torch._inductor.config as inductor_config

        with self._threads(), inductor_config.patch(freezing=True), torch.no_grad():
            return self.compiled(x)
