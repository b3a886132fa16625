"""The PyTorch-native deploy backend: TorchInductor, and torchao's PT2E x86 int8 before it.

fp32: ``torch.compile`` (Inductor, weights frozen into the graph) of the BN-folded model.
int8: torchao's PT2E static quantization for x86 (``X86InductorQuantizer``: per-channel int8
weights, uint8 activations with min/max observers, calibrated on the caller's batches), the
converted graph compiled by Inductor, which lowers quantize → conv/linear → dequantize into
oneDNN int8 kernels. This is the path torchao documents for CPU int8 inference; leanvision
runs it beside onnxruntime and OpenVINO so that the fastest one is the one deployed.

Inductor compiles on the first call at a batch size (seconds to a minute; a C++ compiler is
needed, the one the native kernels use) and again for a new batch size; the generated
kernels use torch's thread count at compile time, so each call runs with ``threads``.
"""

from __future__ import annotations

import contextlib
import copy
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


def _versions(precision: str) -> str:
    if precision == "int8":
        import torchao

        return f"torchao-{torchao.__version__}-pt2e-x86-inductor-cpu-int8"
    return f"torch-{torch.__version__.split('+')[0]}-inductor-cpu-{precision}"


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


class InductorRun:
    """A model compiled by Inductor (int8: after torchao's PT2E x86 quantization), callable on
    a float batch; ``threads`` fixes torch's thread count while it compiles and runs."""

    def __init__(
        self,
        model: nn.Module,
        precision: str,
        size: tuple[int, ...],
        threads: int | None,
        calib: Sequence[torch.Tensor] = (),
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
        self.label = _versions(precision)
        # static shapes: one graph per batch size (a dynamic-batch recompile of the int8 graph
        # failed an output-stride check of its quantized conv lowering, torch 2.14)
        self.compiled = torch.compile(self.model, dynamic=False)

    def _threads(self) -> Any:
        return num_threads(self.threads) if self.threads else contextlib.nullcontext()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        with self._threads(), inductor_config.patch(freezing=True), torch.no_grad():
            return self.compiled(x)
