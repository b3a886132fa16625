"""Integer AdderNet: post-training quantization of adder layers with one scale per layer
shared by inputs and weights (Wang et al., "AdderNet and its Minimalist Hardware Design",
arXiv 2101.10015, 2021).

``|x − w| ≈ s·|round(x/s) − round(w/s)|`` only holds when x and w share the scale, so each
adder layer gets ``s = max(max|X|, max|W|) / (2^(bits−1) − 1)``, ``max|X|`` measured on
calibration images from the training split (optionally a percentile instead of the max, to
clip outliers). The layer then computes ``−s·Σ|xq − wq|`` in integers: the int8 kernel sums
absolute byte differences with VPSADBW. No retraining.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from leanvision.errors import ConfigError, UnsupportedModelError
from leanvision.layers.adder import AdderConv2d, QuantAdderConv2d
from leanvision.methods.config import MethodConfig, check_int, check_real
from leanvision.methods.registry import record_transform, register_method
from leanvision.utils import replace_modules

__all__ = ["AdderQuantConfig", "calibrate_adder_inputs", "quantize_adders"]


@dataclass
class AdderQuantConfig(MethodConfig):
    """``bits`` (8 or 16 in the paper), calibration batches from ``data.train``, and an
    optional percentile of |X| (e.g. 99.99) instead of its max.

    No training, so no ``max_steps``: ``calib_batches`` alone bounds the one pass over data
    (a smoke run lowers it)."""

    bits: int = 8
    calib_batches: int = 8
    percentile: float | None = None

    def validate(self) -> None:
        """Types; bits in 2..16; calib_batches ≥ 1; percentile in (0, 100] or None."""
        super().validate()
        check_int("bits", self.bits, 2, 16)
        check_int("calib_batches", self.calib_batches, 1)
        check_real("percentile", self.percentile, 0.0, 100.0, lo_open=True, none_ok=True)

    def check_inputs(self, data: Any) -> None:
        """Calibration reads training images: ``data`` is required."""
        super().check_inputs(data)
        if data is None:
            raise ConfigError("adder_quant calibrates on training images: pass data=")


@torch.no_grad()
def calibrate_adder_inputs(
    model: nn.Module, loader: Any, batches: int = 8, percentile: float | None = None
) -> dict[str, float]:
    """max |X| (or its ``percentile``) of each adder layer's input over ``batches`` batches."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, AdderConv2d)}
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in layers}

    def hook(name: str):
        def fn(_m: nn.Module, inputs: tuple) -> None:
            a = inputs[0].detach().abs()
            if percentile is None:
                seen[name].append(a.max().reshape(1))
            else:
                flat = a.flatten()
                if flat.numel() > 2**24:  # torch.quantile's limit: a random subset
                    flat = flat[torch.randint(flat.numel(), (2**24,))]
                seen[name].append(torch.quantile(flat, percentile / 100).reshape(1))

        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    was = model.training
    model.eval()
    try:
        for batch in itertools.islice(loader, batches):  # no batch read past the last used
            model(batch[0] if isinstance(batch, list | tuple) else batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    if any(not v for v in seen.values()):
        raise ConfigError("calibrate_adder_inputs: the loader gave no batch")
    return {n: float(torch.cat(v).max()) for n, v in seen.items()}


def quantize_adders(
    model: nn.Module, input_max: dict[str, float] | None, bits: int = 8
) -> nn.Module:
    """A copy of ``model`` with each AdderConv2d replaced by a :class:`QuantAdderConv2d` whose
    shared scale comes from ``input_max`` (None: scales are placeholders, to be loaded)."""
    names = set(_adder_names(model))
    qmax = 2 ** (bits - 1) - 1

    def make(layer: nn.Module, name: str) -> nn.Module:
        x_max = 1.0 if input_max is None else input_max[name]
        scale = max(x_max, float(layer.weight.detach().abs().max())) / qmax
        return QuantAdderConv2d(layer, max(scale, 1e-12), bits)

    new = copy.deepcopy(model)
    replace_modules(new, make, lambda m, name: name in names)
    return new


def _adder_names(model: nn.Module) -> list[str]:
    names = [n for n, m in model.named_modules() if isinstance(m, AdderConv2d)]
    if not names:
        raise UnsupportedModelError(
            f"adder_quant: {type(model).__name__} has no AdderConv2d (run the 'adder' method "
            "first, or build an adder model such as resnet20_adder)"
        )
    return names


def _rebuild(model: nn.Module, arch: dict[str, Any]) -> nn.Module:
    return quantize_adders(model, None, arch["bits"])


@register_method(
    "adder_quant",
    family="lowbit",
    paper="AdderNet and its Minimalist Hardware Design, arXiv 2101.10015",
    config=AdderQuantConfig,
    rebuild=_rebuild,
)
def apply_adder_quant(model: nn.Module, data: Any, cfg: AdderQuantConfig) -> nn.Module:
    """Quantize adder layers to integers with one shared scale per layer (no retraining)."""
    _adder_names(model)
    if data is None:
        raise ConfigError("adder_quant calibrates on training images: pass data=")
    input_max = calibrate_adder_inputs(model, data.train, cfg.calib_batches, cfg.percentile)
    new = quantize_adders(model, input_max, cfg.bits)
    record_transform(new, model, "adder_quant", {"bits": cfg.bits})
    return new.eval()
