"""Model zoo: leanvision's own architectures, registered in timm's registry.

``create_model`` is a thin layer over ``timm.create_model``: every timm architecture is
available, and ours (the backbone zoo: CMT, PyramidTNT, Aug-ViT, ViT-ResNAS, ViL-LS,
Ghost-ResNet-50, TinyNet-custom, BiMLP; the CIFAR ResNets and VGG-Small) are registered with timm's
``register_model`` so ``timm.create_model`` finds them too. ``PAPER_NUMBERS`` holds the
published sizes the tests check. (TinyNet's scaling rule, which picks a ``tinynet_custom``'s
multipliers, is a procedure over the zoo: ``leanvision.analysis.tiny_formula``.)
"""

from __future__ import annotations

import difflib
from typing import Any

import timm
from torch import nn

from leanvision.errors import UnknownModelError

from . import (  # noqa: F401  (importing a family registers its models in timm)
    augvit,
    bimlp,
    cmt,
    detection,
    edsr,
    ghost_resnet,
    hitdet,
    ipt,
    mbnas,
    pyramid_tnt,
    resnet_cifar,
    tinynet,
    vgg_small,
    vil_ls,
    vit_resnas,
)
from .reference import PAPER_NUMBERS, TIMM_VERIFIED

__all__ = [
    "PAPER_NUMBERS",
    "TIMM_VERIFIED",
    "create_model",
    "leanvision_models",
    "list_models",
]

_OUR_MODULES = (
    "resnet_cifar",
    "vgg_small",
    "cmt",
    "pyramid_tnt",
    "augvit",
    "vit_resnas",
    "vil_ls",
    "ghost_resnet",
    "tinynet",
    "bimlp",
    "mbnas",
    "edsr",
    "ipt",
)


def leanvision_models() -> list[str]:
    """Names of the architectures leanvision itself defines."""
    names: list[str] = []
    for mod in _OUR_MODULES:
        names += timm.list_models(module=mod)
    return sorted(names)


def list_models(pattern: str = "", *, include_timm: bool = False) -> list[str]:
    """List model names.

    By default: leanvision's own architectures plus the timm architectures of the papers that
    leanvision verifies against their published sizes (GhostNet, TNT, TinyNet, DeiT;
    ``TIMM_VERIFIED``).

    Args:
        pattern: optional wildcard filter, e.g. ``"resnet*"``.
        include_timm: also list every other timm architecture (there are over a thousand).
    """
    names = set(leanvision_models()) | set(TIMM_VERIFIED)
    if include_timm:
        names |= set(timm.list_models())
    if pattern:
        import fnmatch

        names = {n for n in names if fnmatch.fnmatch(n, pattern)}
    return sorted(names)


def _record_input_size(model: nn.Module, kwargs: dict[str, Any]) -> None:
    """Make ``pretrained_cfg["input_size"]`` say what an ``img_size=`` build expects.

    timm keeps its registry's input size (e.g. 224 for ``deit_tiny_patch16_224`` built with
    ``img_size=32``); data pipelines and profilers read the size from there.
    """
    size = kwargs.get("img_size")
    cfg = getattr(model, "pretrained_cfg", None)
    if size is None or not isinstance(cfg, dict) or "input_size" not in cfg:
        return
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    chans = kwargs.get("in_chans", cfg["input_size"][0])
    if tuple(cfg["input_size"]) != (chans, h, w):
        cfg = {**cfg, "input_size": (chans, h, w)}
        model.pretrained_cfg = model.default_cfg = cfg


def create_model(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a model by name from leanvision's or timm's registry.

    Args:
        name: a registered architecture, e.g. ``"resnet20_cifar"`` or ``"deit_tiny_patch16_224"``.
        pretrained: load timm's pretrained weights (needs network access; leanvision's own
            models have none).
        **kwargs: passed to the architecture (``num_classes``, ``in_chans``, ``width``, ...).

    Raises:
        UnknownModelError: the name is not registered; the message lists close matches.
    """
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=8, cutoff=0.6)
        allowed = sorted(set(leanvision_models()) | set(close))
        raise UnknownModelError(name, allowed)
    model = timm.create_model(name, pretrained=pretrained, **kwargs)
    _record_input_size(model, kwargs)
    # How to build this architecture again (leanvision.save/load rebuild before loading weights).
    model.lv_spec = {"name": name, "kwargs": dict(kwargs)}
    return model
