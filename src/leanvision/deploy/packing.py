"""Binary packing: a trained binary network's inference form, weights stored at 1 bit."""

from __future__ import annotations

from torch import nn

from leanvision.errors import ConfigError
from leanvision.layers.binary import (
    BinaryConv2d,
    BinaryLinear,
    PackedBinaryConv2d,
    PackedBinaryLinear,
)
from leanvision.utils import replace_modules

__all__ = ["pack_binary"]


def pack_binary(model: nn.Module) -> nn.Module:
    """Replace every binary layer by its packed 1-bit inference form, in place; returns
    ``model`` (in eval mode: the noise module is a training-only term)."""

    def make(m: nn.Module, name: str) -> nn.Module | None:
        if isinstance(m, BinaryLinear):
            return PackedBinaryLinear(m)
        try:
            return PackedBinaryConv2d(m)
        except ConfigError:  # dilated convs stay in the float form
            return None

    replace_modules(model, make, lambda m, name: isinstance(m, BinaryConv2d | BinaryLinear))
    return model.eval()
