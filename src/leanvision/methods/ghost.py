"""Ghost: replace the k×k convolutions of any CNN with Ghost modules.

GhostNet: More Features from Cheap Operations, Han et al., CVPR 2020 (arXiv 1911.11907). Each
k×k convolution becomes a primary convolution with ``ceil(n/s)`` outputs plus a cheap ``d×d``
depthwise convolution that makes the rest (§3.1), cutting its MACs and parameters by about s.
The first convolution (the stem) is kept, as in the paper's Ghost-VGG/Ghost-ResNet; 1×1 and
depthwise convolutions are kept unless ``replace_pointwise=True``. The new model is retrained,
optionally with KD from the original (``distill=True``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from leanvision.errors import UnsupportedModelError
from leanvision.layers.ghost import GhostConv2d
from leanvision.methods.common import FinetuneConfig, finetune
from leanvision.methods.config import check_int, check_real, field_error
from leanvision.methods.distillation.kd import KDHook
from leanvision.methods.registry import record_transform, register_method
from leanvision.utils import first_conv_name, replace_modules

__all__ = ["GhostConfig", "ghostify"]


@dataclass
class GhostConfig(FinetuneConfig):
    """Ghost hyper-parameters (paper defaults s=2, d=3)."""

    ratio: int = 2
    dw_size: int = 3
    keep_first: bool = True
    replace_pointwise: bool = False
    inner_bn: bool = False
    exclude: list[str] = field(default_factory=list)
    distill: bool = False
    kd_T: float = 4.0
    kd_alpha: float = 0.9

    def validate(self) -> None:
        """The fine-tuning checks; ratio s ≥ 1; dw_size d odd ≥ 1; kd_T > 0, kd_alpha in
        [0, 1]."""
        super().validate()
        check_int("ratio", self.ratio, 1)
        check_int("dw_size", self.dw_size, 1)
        if self.dw_size % 2 == 0:
            raise field_error("dw_size", self.dw_size, "an odd integer >= 1 (same padding)")
        check_real("kd_T", self.kd_T, 0.0, lo_open=True)
        check_real("kd_alpha", self.kd_alpha, 0.0, 1.0)


def ghostify(
    model: nn.Module,
    ratio: int = 2,
    dw_size: int = 3,
    keep_first: bool = True,
    replace_pointwise: bool = False,
    inner_bn: bool = False,
    exclude: list[str] | None = None,
) -> tuple[nn.Module, list[str]]:
    """Return a copy of ``model`` with its convolutions replaced by :class:`GhostConv2d`.

    Args:
        model: any CNN.
        ratio, dw_size, inner_bn: Ghost module settings (s, d).
        keep_first: keep the stem convolution (the model's ``first_conv`` or its first Conv2d).
        replace_pointwise: also replace 1×1 convolutions.
        exclude: module names to leave as they are.

    Returns:
        (new model, names of the replaced convolutions).

    Raises:
        UnsupportedModelError: a convolution the Ghost module cannot stand in for (grouped but
            not depthwise, non-zero padding mode, a Conv2d subclass with its own forward, a
            transposed conv), naming the layer; or no convolution to replace at all.
    """
    skip = set(exclude or []) | ({first_conv_name(model)} if keep_first else set())

    def where(m: nn.Module, name: str) -> bool:
        if name in skip:
            return False
        if isinstance(m, nn.ConvTranspose2d | nn.Conv3d | nn.Conv1d):
            if max(m.kernel_size) > 1:
                raise UnsupportedModelError(
                    f"ghost: layer {name!r} is a {type(m).__name__}, which the Ghost module "
                    f"does not replace; pass exclude=[{name!r}] to keep it"
                )
            return False
        if not isinstance(m, nn.Conv2d):
            return False
        depthwise = m.groups > 1 and m.groups == m.in_channels
        return not (depthwise or (max(m.kernel_size) == 1 and not replace_pointwise))

    def make(m: nn.Module, name: str) -> nn.Module:
        problem = None
        if type(m) is not nn.Conv2d:
            problem = f"a {type(m).__name__} (a Conv2d subclass with its own forward)"
        elif m.groups > 1:
            problem = f"a grouped convolution (groups={m.groups}, not depthwise)"
        elif m.padding_mode != "zeros":
            problem = f"a convolution with padding_mode={m.padding_mode!r}"
        if problem:
            raise UnsupportedModelError(
                f"ghost: layer {name!r} is {problem}, which the Ghost module cannot stand in for; "
                f"pass exclude=[{name!r}] to keep it"
            )
        ghost = GhostConv2d.like(m, ratio=ratio, dw_size=dw_size, inner_bn=inner_bn)
        return ghost.to(device=m.weight.device, dtype=m.weight.dtype)

    new = copy.deepcopy(model)
    replaced = replace_modules(new, make, where)
    if not replaced:
        raise UnsupportedModelError(
            f"ghost: {type(model).__name__} has no k×k convolution to replace (the stem is kept; "
            "1×1 and depthwise convolutions are kept unless replace_pointwise=True)"
        )
    return new, replaced


def _rebuild(model: nn.Module, arch: dict[str, Any]) -> nn.Module:
    return ghostify(model, **arch)[0]


@register_method(
    "ghost",
    family="architecture",
    paper="GhostNet, CVPR 2020, arXiv 1911.11907",
    config=GhostConfig,
    rebuild=_rebuild,
)
def apply_ghost(model: nn.Module, data: Any, cfg: GhostConfig) -> nn.Module:
    """Replace k×k convolutions with Ghost modules, then retrain (optionally with KD)."""
    arch = dict(
        ratio=cfg.ratio,
        dw_size=cfg.dw_size,
        keep_first=cfg.keep_first,
        replace_pointwise=cfg.replace_pointwise,
        inner_bn=cfg.inner_bn,
        exclude=list(cfg.exclude),
    )
    new, _ = ghostify(model, **arch)
    record_transform(new, model, "ghost", arch)
    hooks = [KDHook(copy.deepcopy(model), cfg.kd_T, cfg.kd_alpha)] if cfg.distill else []
    finetune(new, data, cfg, hooks, method="ghost")
    return new.eval()
