"""Post-training static int8 for any model leanvision can export to ONNX.

Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-
Only Inference", CVPR 2018 (arXiv 1712.05877): weights and activations as 8-bit integers with
an affine scale, integer multiply-accumulates. Here post-training and static: per-output-
channel int8 weights, per-tensor int8 activations whose ranges are measured (min/max) on
calibration images of the validation split (never the test split), written as a QDQ ONNX graph
by onnxruntime's quantization tools (run by onnxruntime or OpenVINO), quantized by torchao's
PT2E x86 quantizer and compiled by TorchInductor (``"inductor"``), or leanvision's own runtime
with int8 products in its fused 3×3 layers (``"leanvision"``, on AVX512-VNNI CPUs:
:func:`~leanvision.deploy.cpu.quantize_for_cpu`); the path that runs fastest is deployed, all
timed side by side (``backend="auto"``), or the one named.

The result is a :class:`~leanvision.deploy.DeployedModel`: called like the model, evaluated
and timed like any other (its accuracy is the deployed graph's), counted with the source's
MACs as int8; ``save_onnx(path)`` writes the graph it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from leanvision.deploy import DeployedModel, deploy
from leanvision.errors import ConfigError
from leanvision.methods.config import MethodConfig, check_int, field_error
from leanvision.methods.registry import register_method

__all__ = ["Int8Config", "apply_int8"]

_BACKENDS = ("auto", "leanvision", "inductor", "onnxruntime", "openvino")
_SPLITS = ("val", "train")


@dataclass
class Int8Config(MethodConfig):
    """``backend``: ``"auto"`` (the fastest of leanvision's runtime where the CPU has
    AVX512-VNNI, torchao + Inductor, onnxruntime and OpenVINO, timed at ``batch`` with
    ``threads``), ``"leanvision"``, ``"inductor"``, ``"onnxruntime"`` or ``"openvino"``;
    ``calib_split``: the split the
    activation ranges are measured on (``"val"`` or ``"train"``; never ``"test"``);
    ``calib_batches``: at most that many batches of it; ``input_size``: (C, H, W), default the
    data's.

    No training, so no ``max_steps``: ``calib_batches`` bounds the one pass over data."""

    backend: str = "auto"
    calib_split: str = "val"
    calib_batches: int = 16
    batch: int = 32
    threads: int | None = None
    input_size: list[int] | None = None

    def validate(self) -> None:
        """Types; backend and calib_split among theirs; calib_batches, batch, threads ≥ 1."""
        super().validate()
        if self.backend not in _BACKENDS:
            raise field_error("backend", self.backend, f"one of {', '.join(_BACKENDS)}")
        if self.calib_split not in _SPLITS:
            why = "'val' or 'train' (the test split never calibrates)"
            raise field_error("calib_split", self.calib_split, why)
        check_int("calib_batches", self.calib_batches, 1)
        check_int("batch", self.batch, 1)
        check_int("threads", self.threads, 1, none_ok=True)
        if self.input_size is not None and (
            len(self.input_size) < 1 or any(v < 1 for v in self.input_size)
        ):
            raise field_error("input_size", self.input_size, "one sample's shape, each >= 1")

    def check_inputs(self, data: Any) -> None:
        """Calibration reads images of ``calib_split``: ``data`` is required."""
        super().check_inputs(data)
        if data is None:
            raise ConfigError("int8 calibrates on validation images: pass data=")


@register_method(
    "int8",
    family="lowbit",
    paper="Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only "
    "Inference, arXiv 1712.05877",
    config=Int8Config,
)
def apply_int8(model: nn.Module, data: Any, cfg: Int8Config) -> DeployedModel:
    """Static post-training int8 (per-channel weights), deployed on the fastest int8 runtime
    (or the one named)."""
    if data is None:
        raise ConfigError("int8 calibrates on validation images: pass data=")
    if isinstance(model, DeployedModel):
        raise ConfigError(f"int8: the model is already deployed ({model.backend})")
    size = tuple(cfg.input_size) if cfg.input_size is not None else tuple(data.input_size)
    deployed = deploy(
        model,
        cfg.backend,
        "int8",
        size,
        batch=cfg.batch,
        threads=cfg.threads,
        calib=data.loader(cfg.calib_split),
        calib_batches=cfg.calib_batches,
    )
    deployed.lv_history = [*getattr(model, "lv_history", []), {"method": "int8", "arch": None}]
    return deployed
