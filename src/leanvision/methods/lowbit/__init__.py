"""Low-bit and multiplication-free networks: AdderNet (+ PKKD, integer), binary networks,
post-training quantization of ViTs."""

from . import adder, adder_quant, binary, pkkd, ptq_vit
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
from .ptq_vit import PTQViTConfig, calibrate, quantize_vit

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
    "PTQViTConfig",
    "adder",
    "adder_quant",
    "adderize",
    "binarize_model",
    "binary",
    "calibrate",
    "calibrate_adder_inputs",
    "pack_binary",
    "pkkd",
    "ptq_vit",
    "quantize_adders",
    "quantize_vit",
]
