"""Reusable layers (no training or method code here)."""

from .adder import AdderConv2d, QuantAdderConv2d, adder2d
from .binary import (
    BinaryConv2d,
    BinaryLinear,
    PackedBinaryConv2d,
    PackedBinaryLinear,
)
from .circulant import CirculantLinear
from .conv3x3 import FusedConv3x3
from .dynamic_resolution import DynamicResolutionNet, ResolutionBatchNorm2d
from .fadn import FrequencyAwareBlock, hard_gumbel_sigmoid
from .gated import ChannelGate, GatedBasicBlock, GatedStage, gated_blocks
from .ghost import GhostConv2d
from .int8_conv3x3 import Int8Conv3x3, Int8Ghost3x3
from .issa import InterlacedSparseAttention, NonLocal2d
from .long_short_attention import LongShortAttention
from .quant import QuantAttention, QuantLinear, QuantMatMul, fake_quant, quantization_state
from .shift_ghost import ShiftGhostConv2d, shift2d
from .token_pruning import (
    DynamicViT,
    SlimmedViT,
    TokenPredictor,
    embed_tokens,
    require_token_vit,
    softmax_with_policy,
)
from .winograd_adder import WinogradAdderConv2d, winograd_adder2d

__all__ = [
    "AdderConv2d",
    "BinaryConv2d",
    "BinaryLinear",
    "PackedBinaryConv2d",
    "PackedBinaryLinear",
    "QuantAdderConv2d",
    "adder2d",
    "ChannelGate",
    "CirculantLinear",
    "DynamicResolutionNet",
    "DynamicViT",
    "FusedConv3x3",
    "FrequencyAwareBlock",
    "GatedBasicBlock",
    "GatedStage",
    "GhostConv2d",
    "Int8Conv3x3",
    "Int8Ghost3x3",
    "InterlacedSparseAttention",
    "LongShortAttention",
    "NonLocal2d",
    "QuantAttention",
    "QuantLinear",
    "QuantMatMul",
    "ResolutionBatchNorm2d",
    "ShiftGhostConv2d",
    "SlimmedViT",
    "TokenPredictor",
    "WinogradAdderConv2d",
    "embed_tokens",
    "fake_quant",
    "quantization_state",
    "gated_blocks",
    "hard_gumbel_sigmoid",
    "require_token_vit",
    "shift2d",
    "softmax_with_policy",
    "winograd_adder2d",
]
