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
    ``model`` (in eval mode: the noise module is a training-only term). Modules with a
    ``fold_for_inference()`` method then fold what follows their packed layers into them
    (BiMLP's FCs: the BN and a shift)."""

    def make(m: nn.Module, name: str) -> nn.Module | None:
        if isinstance(m, BinaryLinear):
            return PackedBinaryLinear(m)
        try:
            return PackedBinaryConv2d(m)
        except ConfigError:  # dilated convs stay in the float form
            return None

    replace_modules(model, make, lambda m, name: isinstance(m, BinaryConv2d | BinaryLinear))
    model.eval()
    for m in list(model.modules()):  # e.g. BiMLP's FCs fold their BN into the packed conv
        fold = getattr(m, "fold_for_inference", None)
        if callable(fold):
            fold()
    return model
