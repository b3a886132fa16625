"""DRNet: each image classified at the input resolution a small predictor picks for it.

Dynamic Resolution Network, Zhu et al., NeurIPS 2021 (arXiv 2106.02898). The classifier's
batch norms become one per resolution, a resolution predictor is put in front
(:class:`~leanvision.layers.DynamicResolutionNet`), and the two train together on the task's
cross-entropy plus ``eta`` times the FLOPs penalty: the squared gap between the batch's
expected MACs (each image's chosen resolution's, over the MACs at the largest resolution) and
``flops_target``. At inference each image runs at its argmax resolution alone.

Where ours departs from the paper (whose official code is MindSpore and evaluation only):

* the predictor is CPU-sized: two strided 3×3 conv-BN-ReLU layers on the image at
  ``predictor_size`` (default: the smallest resolution), global pooling, one linear layer;
* the FLOPs penalty's form (squared gap to the target, MACs counted per resolution by the
  profiler at the door) is ours; the paper states a penalty on the expected FLOPs against a
  target without, in what we could read, its exact form;
* during training the classifier runs at every resolution for every image (the chosen logits
  kept, straight through), so a step costs the sum of the resolutions' MACs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from leanvision.checks import check_real, field_error
from leanvision.engine.hooks import Hook, StepContext
from leanvision.errors import ConfigError, UnsupportedModelError
from leanvision.layers.dynamic_resolution import (
    DynamicResolutionNet,
    ResolutionBatchNorm2d,
    ResolutionPredictor,
)
from leanvision.methods.common import FinetuneConfig, finetune
from leanvision.methods.registry import record_transform, register_method
from leanvision.utils import first_conv_name, replace_modules

__all__ = ["DRNetConfig", "DRNetHook", "drnet_convert", "resolution_macs"]


def _check_resolutions(resolutions: Any) -> list[int]:
    ok = (
        isinstance(resolutions, (list, tuple))
        and len(resolutions) >= 2
        and all(isinstance(r, int) and not isinstance(r, bool) and r >= 4 for r in resolutions)
        and list(resolutions) == sorted(set(resolutions), reverse=True)
    )
    if not ok:
        raise field_error(
            "resolutions", resolutions, "at least 2 distinct input sides >= 4, largest first, "
            "e.g. [32, 24, 16]"
        )  # fmt: skip
    return list(resolutions)


@dataclass
class DRNetConfig(FinetuneConfig):
    """DRNet's settings: three resolutions (CIFAR's 32/24/16, the paper's 224/168/112 scaled),
    the predictor's input size, the FLOPs target and penalty weight, the Gumbel temperature."""

    resolutions: list[int] = field(default_factory=lambda: [32, 24, 16])
    predictor_size: int | None = None
    flops_target: float = 0.6
    eta: float = 1.0
    tau: float = 1.0

    def validate(self) -> None:
        """The fine-tuning checks; resolutions; 0 < flops_target ≤ 1; eta ≥ 0; tau > 0."""
        super().validate()
        _check_resolutions(self.resolutions)
        if self.predictor_size is not None and (
            isinstance(self.predictor_size, bool)
            or not isinstance(self.predictor_size, int)
            or self.predictor_size < 4
        ):
            raise field_error("predictor_size", self.predictor_size, "an int >= 4 or None")
        check_real("flops_target", self.flops_target, 0.0, 1.0, lo_open=True)
        check_real("eta", self.eta, 0.0)
        check_real("tau", self.tau, 0.0, lo_open=True)


@torch.no_grad()
def resolution_macs(net: DynamicResolutionNet) -> list[int]:
    """The classifier's MACs for one image at each resolution (counted by the profiler)."""
    from leanvision.profiling import count_ops

    chans = _in_chans(net.classifier)
    macs = []
    for i, r in enumerate(net.resolutions):
        net._set_bn(i)
        macs.append(int(count_ops(net.classifier, (chans, r, r)).macs))
    return macs


class DRNetHook(Hook):
    """Adds ``eta · (mean_b Σ_r g_br MACs_r / MACs_0 − flops_target)²`` to each step, with
    ``g`` the step's straight-through one-hot choices."""

    name = "drnet_flops"

    def __init__(self, net: DynamicResolutionNet, flops_target: float, eta: float) -> None:
        macs = resolution_macs(net)
        self.net, self.target, self.eta = net, flops_target, eta
        self.ratios = torch.tensor([m / macs[0] for m in macs])

    def on_loss(self, trainer: Any, ctx: StepContext) -> None:
        g = self.net.last_choice
        if g is None:
            raise UnsupportedModelError("drnet: the step ran no resolution choice")
        expected = (g * self.ratios.to(g)).sum(1).mean()
        ctx.losses["flops"] = self.eta * (expected - self.target) ** 2
        self.net.last_choice = None


def _in_chans(model: nn.Module) -> int:
    name = first_conv_name(model)
    if name is None:
        raise UnsupportedModelError(f"drnet: {type(model).__name__} has no convolution")
    return model.get_submodule(name).in_channels


def drnet_convert(
    model: nn.Module,
    resolutions: list[int],
    predictor_size: int | None = None,
    tau: float = 1.0,
) -> DynamicResolutionNet:
    """A copy of ``model`` with one BatchNorm2d per resolution, behind a resolution predictor.

    Raises:
        ConfigError: bad ``resolutions``.
        UnsupportedModelError: the model has no BatchNorm2d, or fails at a resolution (it
            needs global pooling before its head), named.
    """
    resolutions = _check_resolutions(resolutions)
    new = copy.deepcopy(model)
    n = len(resolutions)
    replaced = replace_modules(
        new, lambda m, name: ResolutionBatchNorm2d(m, n),
        lambda m, name: type(m) is nn.BatchNorm2d,
    )  # fmt: skip
    if not replaced:
        raise UnsupportedModelError(
            f"drnet: {type(model).__name__} has no BatchNorm2d to make resolution-specific"
        )
    chans = _in_chans(new)
    predictor = ResolutionPredictor(n, predictor_size or resolutions[-1])
    if chans != 3:
        predictor.features[0] = nn.Conv2d(chans, 16, 3, 2, 1, bias=False)
    net = DynamicResolutionNet(new, resolutions, predictor, tau)
    was = new.training
    new.eval()
    with torch.no_grad():
        for i, r in enumerate(resolutions):
            try:
                net.classify(torch.zeros(1, chans, r, r), i)
            except RuntimeError as exc:
                raise UnsupportedModelError(
                    f"drnet: {type(model).__name__} fails at resolution {r}x{r} ({exc}); it "
                    "needs global pooling before its head"
                ) from exc
    new.train(was)
    return net


def _rebuild(model: nn.Module, arch: dict[str, Any]) -> nn.Module:
    return drnet_convert(model, **arch)


@register_method(
    "drnet",
    family="dynamic",
    paper="Dynamic Resolution Network, NeurIPS 2021, arXiv 2106.02898",
    config=DRNetConfig,
    rebuild=_rebuild,
)
def apply_drnet(model: nn.Module, data: Any, cfg: DRNetConfig) -> nn.Module:
    """Make the BNs resolution-specific, add the predictor, train with the FLOPs penalty."""
    if data is not None and tuple(data.input_size[1:]) != (cfg.resolutions[0],) * 2:
        raise ConfigError(
            f"drnet: resolutions[0]={cfg.resolutions[0]} must be the data's image side "
            f"{tuple(data.input_size[1:])} (the full resolution)"
        )
    arch = {"resolutions": list(cfg.resolutions), "predictor_size": cfg.predictor_size,
            "tau": cfg.tau}  # fmt: skip
    net = drnet_convert(model, **arch)
    record_transform(net, model, "drnet", arch)
    finetune(net, data, cfg, [DRNetHook(net, cfg.flops_target, cfg.eta)], method="drnet")
    return net.eval()
