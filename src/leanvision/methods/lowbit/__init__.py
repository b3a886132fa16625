"""Low-bit and multiplication-free networks: AdderNet (+ PKKD, integer, Winograd), binary
networks, post-training quantization of ViTs."""

from . import adder, adder_quant, binary, int8, pkkd, ptq_vit, winograd_adder
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
from .int8 import Int8Config, apply_int8
from .pkkd import PKKDConfig, PKKDHook
from .ptq_vit import PTQViTConfig, calibrate, quantize_vit
from .winograd_adder import PScheduleHook, WinogradAdderConfig, winograd_adderize

__all__ = [
    "AdderConfig",
    "AdderLRHook",
    "AdderQuantConfig",
    "BinaryConfig",
    "FDAConfig",
    "FDAScheduleHook",
    "Int8Config",
    "LNSConfig",
    "LNSHook",
    "PKKDConfig",
    "PKKDHook",
    "PScheduleHook",
    "PTQViTConfig",
    "WinogradAdderConfig",
    "adder",
    "adder_quant",
    "adderize",
    "apply_int8",
    "binarize_model",
    "binary",
    "calibrate",
    "calibrate_adder_inputs",
    "int8",
    "pack_binary",
    "pkkd",
    "ptq_vit",
    "quantize_adders",
    "quantize_vit",
    "winograd_adder",
    "winograd_adderize",
]
