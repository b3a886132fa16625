"""GhostSR: replace the body convolutions of an SR network with shift-based Ghost layers.

GhostSR: Learning Ghost Features for Efficient Image Super-Resolution, Nie et al., 2021
(arXiv 2101.08525). Each body convolution keeps half its outputs as a real convolution (the
intrinsic features) and makes the other half as copies of them shifted by one learned offset
(:class:`~leanvision.layers.ShiftGhostConv2d`): a one-hot 3×3 kernel chosen by the hard
argmax of its logits plus Gumbel noise whose scale decays as ``0.97 ** epoch``, learned straight
through; at inference a pure shift. The MACs and parameters of the replaced convolutions
halve. The network is then trained (L1, the SR task's loss) for ``finetune_epochs``.

Where ours departs from the paper and its official (MindSpore, EDSR) code:

* which convolutions: every k×k stride-1 convolution that keeps the width (C → C), so the head,
  the upsampler and the tail (they change it) stay; in leanvision's SR networks the convolution
  that closes the body stays too, as in the official EDSR conversion. ``exclude`` keeps more;
* the intrinsic filters: with ``intrinsic="cluster"`` (default) the trained layer's filters are
  clustered (scikit-learn k-means, ``m`` clusters), the filter nearest each centre becomes an
  intrinsic filter, and every other filter's output place gets a ghost of its cluster's
  intrinsic feature: our reading of the paper's clustering of pre-trained filters, whose exact
  rule we could not read. ``intrinsic="first"`` is the official code's layout (the first ``m``
  filters, ghost ``i`` copying intrinsic ``i``), for a network that is not trained yet;
* the shift is one pixel (the official code's; the paper also studies larger steps).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from leanvision.checks import check_choice, check_real
from leanvision.engine.hooks import Hook
from leanvision.errors import UnsupportedModelError
from leanvision.layers.shift_ghost import ShiftGhostConv2d
from leanvision.methods.common import FinetuneConfig, finetune
from leanvision.methods.registry import record_transform, register_method
from leanvision.utils import replace_modules

__all__ = ["INTRINSIC", "GhostNoiseHook", "GhostSRConfig", "ghostsr_convert", "ghostsr_layers"]

INTRINSIC = ("cluster", "first", "none")


@dataclass
class GhostSRConfig(FinetuneConfig):
    """GhostSR's settings: half the outputs intrinsic, noise decaying 0.97 a epoch; EDSR's
    training (Adam, lr 1e-4, no weight decay)."""

    ratio: float = 0.5
    intrinsic: str = "cluster"
    noise_decay: float = 0.97
    exclude: list[str] = field(default_factory=list)
    opt: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0

    def validate(self) -> None:
        """The fine-tuning checks; 0 < ratio < 1; a known intrinsic rule; 0 ≤ decay ≤ 1."""
        super().validate()
        check_real("ratio", self.ratio, 0.0, 1.0, lo_open=True, hi_open=True)
        check_choice("intrinsic", self.intrinsic, INTRINSIC[:2])
        check_real("noise_decay", self.noise_decay, 0.0, 1.0)


class GhostNoiseHook(Hook):
    """Sets every GhostSR layer's Gumbel noise scale to ``decay ** epoch`` at each epoch's
    start (the official ``0.97 ** (epoch − 1)`` with epochs counted from 1)."""

    name = "ghost_noise"

    def __init__(self, model: nn.Module, decay: float = 0.97) -> None:
        check_real("noise_decay", decay, 0.0, 1.0)
        self.decay = float(decay)
        self.layers = [m for m in model.modules() if isinstance(m, ShiftGhostConv2d)]

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        for m in self.layers:
            m.noise_scale = self.decay**epoch


def _closing_conv(model: nn.Module) -> str | None:
    """The convolution that closes a leanvision SR network's body (kept, as officially)."""
    from leanvision.models.edsr import SRNet

    if isinstance(model, SRNet) and isinstance(model.body[-1], nn.Conv2d):
        return f"body.{len(model.body) - 1}"
    return None


def _eligible(m: nn.Module) -> bool:
    return (
        type(m) is nn.Conv2d
        and m.in_channels == m.out_channels
        and m.groups == 1
        and m.stride == (1, 1)
        and m.dilation == (1, 1)
        and m.kernel_size[0] == m.kernel_size[1] > 1
        and m.kernel_size[0] % 2 == 1
        and m.padding == (m.kernel_size[0] // 2,) * 2
        and m.padding_mode == "zeros"
    )


def ghostsr_layers(model: nn.Module, exclude: list[str] | None = None) -> list[str]:
    """The names of the convolutions GhostSR replaces in ``model`` (see the module docstring)."""
    skip = set(exclude or []) | {_closing_conv(model)}
    return [n for n, m in model.named_modules() if n not in skip and _eligible(m)]


def _cluster_layout(weight: torch.Tensor, m: int) -> tuple[list[int], list[int], list[int]]:
    """k-means of the ``n`` filters into ``m`` clusters: the intrinsic filters (nearest each
    centre), the ghost places and, for each ghost, the intrinsic index it copies."""
    from sklearn.cluster import KMeans

    flat = weight.detach().flatten(1).double().cpu().numpy()
    with warnings.catch_warnings():  # duplicate filters: fewer distinct points than clusters
        warnings.simplefilter("ignore")
        km = KMeans(n_clusters=m, n_init=4, random_state=0).fit(flat)
    dist = ((flat - km.cluster_centers_[km.labels_]) ** 2).sum(1)
    reps: dict[int, int] = {}
    for j in sorted(range(len(flat)), key=lambda j: dist[j]):
        reps.setdefault(int(km.labels_[j]), j)
    intrinsic = sorted(reps.values())
    # an empty cluster: the filters farthest from their centre become intrinsic themselves
    for j in sorted(range(len(flat)), key=lambda j: -dist[j]):
        if len(intrinsic) >= m:
            break
        if j not in intrinsic:
            intrinsic.append(j)
            reps[-1 - j] = j
    index = {j: i for i, j in enumerate(intrinsic)}
    label_rep = {lab: j for lab, j in reps.items() if lab >= 0}
    ghosts = [j for j in range(len(flat)) if j not in index]
    src = [index[label_rep[int(km.labels_[j])]] for j in ghosts]
    return intrinsic, ghosts, src


def _convert(conv: nn.Conv2d, ratio: float, intrinsic: str) -> ShiftGhostConv2d:
    new = ShiftGhostConv2d.like(conv, ratio)
    if intrinsic == "none":
        return new
    m = new.intrinsic
    if intrinsic == "first":
        keep, places, src = list(range(m)), list(range(m, conv.out_channels)), None
    else:
        keep, places, src = _cluster_layout(conv.weight, m)
    with torch.no_grad():
        new.primary.weight.copy_(conv.weight[keep])
        if conv.bias is not None:
            new.primary.bias.copy_(conv.bias[keep])
    if src is not None:
        order = torch.empty(conv.out_channels, dtype=torch.long)
        order[keep] = torch.arange(m)
        order[places] = torch.arange(m, conv.out_channels)
        new.set_layout(torch.tensor(src), order)
    return new


def ghostsr_convert(
    model: nn.Module,
    ratio: float = 0.5,
    intrinsic: str = "cluster",
    exclude: list[str] | None = None,
) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` whose body convolutions are :class:`ShiftGhostConv2d` layers.

    Args:
        model: An SR network (or any CNN) with plain convolutions.
        ratio: The share of intrinsic outputs (paper: ½).
        intrinsic: ``"cluster"``, ``"first"`` (see the module docstring) or ``"none"`` (fresh
            weights: the layers of a saved model, whose weights load next).
        exclude: Names of convolutions to keep.

    Returns:
        (new model, names of the replaced convolutions).

    Raises:
        UnsupportedModelError: no convolution to replace, or ``exclude`` names a module the
            model does not have.
    """
    check_choice("intrinsic", intrinsic, INTRINSIC)
    check_real("ratio", ratio, 0.0, 1.0, lo_open=True, hi_open=True)
    names = dict(model.named_modules())
    unknown = [n for n in exclude or [] if n not in names]
    if unknown:
        raise UnsupportedModelError(f"ghostsr: exclude names {unknown}, which "
                                    f"{type(model).__name__} does not have")  # fmt: skip
    chosen = set(ghostsr_layers(model, exclude))
    if not chosen:
        raise UnsupportedModelError(
            f"ghostsr: {type(model).__name__} has no k×k stride-1 convolution that keeps its "
            "width (C → C) outside exclude; GhostSR replaces an SR network's body convolutions"
        )
    new = copy.deepcopy(model)
    replaced = replace_modules(
        new, lambda m, name: _convert(m, ratio, intrinsic), lambda m, name: name in chosen
    )
    return new, replaced


def _rebuild(model: nn.Module, arch: dict[str, Any]) -> nn.Module:
    return ghostsr_convert(model, intrinsic="none", **arch)[0]


@register_method(
    "ghostsr",
    family="architecture",
    paper="GhostSR: Learning Ghost Features for Efficient Image Super-Resolution, arXiv 2101.08525",
    config=GhostSRConfig,
    rebuild=_rebuild,
)
def apply_ghostsr(model: nn.Module, data: Any, cfg: GhostSRConfig) -> nn.Module:
    """Replace the body convolutions with shift-based Ghost layers, then train them."""
    new, _ = ghostsr_convert(model, cfg.ratio, cfg.intrinsic, list(cfg.exclude))
    record_transform(new, model, "ghostsr", {"ratio": cfg.ratio, "exclude": list(cfg.exclude)})
    finetune(new, data, cfg, [GhostNoiseHook(new, cfg.noise_decay)], method="ghostsr")
    return new.eval()
