"""Low-bit and multiplication-free networks: AdderNet (more to come: binary, PTQ)."""

from . import adder, adder_quant, pkkd
from .adder import AdderConfig, AdderLRHook, adderize
from .adder_quant import AdderQuantConfig, calibrate_adder_inputs, quantize_adders
from .pkkd import PKKDConfig, PKKDHook

__all__ = [
    "AdderConfig",
    "AdderLRHook",
    "AdderQuantConfig",
    "PKKDConfig",
    "PKKDHook",
    "adder",
    "adder_quant",
    "adderize",
    "calibrate_adder_inputs",
    "pkkd",
    "quantize_adders",
]
