"""Low-bit and multiplication-free networks: AdderNet (+ PKKD, integer), binary networks."""

from . import adder, adder_quant, binary, pkkd
from .adder import AdderConfig, AdderLRHook, adderize
from .adder_quant import AdderQuantConfig, calibrate_adder_inputs, quantize_adders
from .binary import (
    BinaryConfig,
    FDAConfig,
    FDAScheduleHook,
    LNSConfig,
    LNSHook,
    binarize_model,
    pack_binary,
)
from .pkkd import PKKDConfig, PKKDHook

__all__ = [
    "AdderConfig",
    "AdderLRHook",
    "AdderQuantConfig",
    "BinaryConfig",
    "FDAConfig",
    "FDAScheduleHook",
    "LNSConfig",
    "LNSHook",
    "PKKDConfig",
    "PKKDHook",
    "adder",
    "adder_quant",
    "adderize",
    "binarize_model",
    "binary",
    "calibrate_adder_inputs",
    "pack_binary",
    "pkkd",
    "quantize_adders",
]
