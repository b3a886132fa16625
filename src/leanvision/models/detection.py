"""Detectors from torchvision's detection heads on any timm backbone (``features_only``) + FPN.

``create_detector("fcos", backbone="resnet18", num_classes=10, image_size=64)`` builds
torchvision's FCOS (or ``"retinanet"``) on the timm backbone's feature maps at the strides
``out_indices`` picks, joined by torchvision's feature pyramid network; random initialisation
(nothing is downloaded). Images are taken at ``image_size`` as given (the detector's own
resizing is set to that size, its normalisation to the identity: the data bundle normalises).
Labels are 0 .. num_classes - 1, as the :class:`~leanvision.tasks.Detection` task's.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import timm
import torch
from timm.models import register_model
from torch import nn

from leanvision.errors import ConfigError

__all__ = ["DETECTORS", "TimmFPN", "create_detector"]

DETECTORS = ("fcos", "retinanet")


class TimmFPN(nn.Module):
    """A timm backbone's feature maps through a feature pyramid network; ``out_channels`` (what
    torchvision's heads read) is ``fpn_channels``.

    The backbone is a timm name (built ``features_only``), a ``features_only`` model, or a timm
    classifier with ``forward_intermediates`` (e.g. one pruned by a leanvision method), whose
    stages ``out_indices`` timm's ``FeatureGetterNet`` returns (its classifier is dropped). The
    levels' widths and strides are read from one forward of a ``PROBE``-pixel image, so a
    pruned backbone's narrower stages are what the pyramid is built for.
    """

    PROBE = 64

    def __init__(self, backbone: nn.Module | str, out_indices: tuple[int, ...] = (2, 3, 4),
                 fpn_channels: int = 64, **timm_kwargs: Any) -> None:  # fmt: skip
        from timm.models._features import FeatureGetterNet
        from torchvision.ops import FeaturePyramidNetwork

        super().__init__()
        if isinstance(backbone, str):
            backbone = timm.create_model(backbone, features_only=True, out_indices=out_indices,
                                         pretrained=False, **timm_kwargs)  # fmt: skip
        elif hasattr(backbone, "get_classifier") and hasattr(backbone, "forward_intermediates"):
            backbone = FeatureGetterNet(backbone, out_indices=tuple(out_indices))
        elif not hasattr(backbone, "feature_info"):
            raise ConfigError(
                f"the backbone ({type(backbone).__name__}) must be a timm features_only model or "
                "a timm classifier with forward_intermediates"
            )
        self.body = backbone
        channels, self.strides = self._probe(backbone)
        self.fpn = FeaturePyramidNetwork(channels, fpn_channels)
        self.out_channels = fpn_channels

    def _probe(self, backbone: nn.Module) -> tuple[list[int], list[int]]:
        was = backbone.training
        first = next(backbone.parameters(), None)
        chans = 3 if first is None or first.dim() != 4 else first.shape[1]
        with torch.no_grad():
            feats = backbone.eval()(torch.zeros(1, chans, self.PROBE, self.PROBE))
        backbone.train(was)
        return [f.shape[1] for f in feats], [self.PROBE // f.shape[-1] for f in feats]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


def _build(
    kind: str,
    backbone: nn.Module | str,
    num_classes: int,
    image_size: int,
    out_indices: tuple[int, ...],
    fpn_channels: int,
    in_chans: int = 3,
    anchor_scale: float = 4.0,
    **kwargs: Any,
) -> nn.Module:
    """A torchvision detector (``kind``: ``"fcos"`` or ``"retinanet"``) on a timm backbone.

    Args:
        kind: The detection head.
        backbone: A timm model name, or a timm ``features_only`` model (e.g. a pruned one).
        num_classes: Object classes (no background class).
        image_size: The images' side; the detector does not resize them.
        out_indices: The backbone stages feeding the FPN.
        fpn_channels: The FPN's width (a multiple of 32 for FCOS, whose head uses GroupNorm(32)).
        in_chans: The images' channels (a backbone given by name is built for them).
        anchor_scale: RetinaNet's anchor side on each level in strides: three scales per octave
            (``anchor_scale * stride * 2**(k/3)``, k = 0, 1, 2) at aspect ratios 0.5, 1, 2, as
            in the paper (whose 4 suits 800-pixel images; small objects on small images want
            less, e.g. 2 on digits_det). FCOS has no anchors (one point per location).
        kwargs: More options of the torchvision detector (e.g. ``score_thresh``).
    """
    from torchvision.models.detection import FCOS, RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    if kind not in DETECTORS:
        raise ConfigError(f"kind={kind!r} is not allowed; allowed: {list(DETECTORS)}")
    if kind == "fcos" and fpn_channels % 32:
        raise ConfigError(f"fpn_channels={fpn_channels}: FCOS's head normalises in 32 groups, so "
                          "it must be a multiple of 32")  # fmt: skip
    body = TimmFPN(backbone, out_indices, fpn_channels,
                   **({"in_chans": in_chans} if isinstance(backbone, str) else {}))  # fmt: skip
    if isinstance(anchor_scale, bool) or not isinstance(anchor_scale, (int, float)) \
            or not anchor_scale > 0:  # fmt: skip
        raise ConfigError(f"anchor_scale={anchor_scale!r} is not allowed; allowed: a number > 0")
    octave = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    sizes = tuple((s,) if kind == "fcos" else tuple(anchor_scale * s * o for o in octave)
                  for s in body.strides)  # fmt: skip
    anchors = AnchorGenerator(sizes, ((1.0,) if kind == "fcos" else (0.5, 1.0, 2.0),) * len(sizes))
    common = dict(min_size=image_size, max_size=image_size, image_mean=[0.0] * in_chans,
                  image_std=[1.0] * in_chans, anchor_generator=anchors)  # fmt: skip
    cls = FCOS if kind == "fcos" else RetinaNet
    model = cls(body, num_classes, **{**common, **kwargs})
    model.num_classes = num_classes
    return model


_TIMM_ARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def _registered(kind: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    if pretrained:
        raise ConfigError("leanvision's detectors have no pretrained weights (pretrained=False)")
    for key in _TIMM_ARGS:  # timm's factory passes these; a detector has no pretrained config
        kwargs.pop(key, None)
    opts = {"backbone": "resnet18", "num_classes": 80, "image_size": 640,
            "out_indices": (2, 3, 4), "fpn_channels": 64, **kwargs}  # fmt: skip
    opts["out_indices"] = tuple(opts["out_indices"])
    return _build(kind, **opts)


@register_model
def fcos_detector(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """torchvision's FCOS on a timm backbone + FPN (see :func:`create_detector`)."""
    return _registered("fcos", pretrained, kwargs)


@register_model
def retinanet_detector(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """torchvision's RetinaNet on a timm backbone + FPN (see :func:`create_detector`)."""
    return _registered("retinanet", pretrained, kwargs)


def create_detector(
    kind: str = "fcos",
    backbone: nn.Module | str = "resnet18",
    num_classes: int = 80,
    image_size: int = 640,
    out_indices: tuple[int, ...] = (2, 3, 4),
    fpn_channels: int = 64,
    **kwargs: Any,
) -> nn.Module:
    """A torchvision detector (``kind``: ``"fcos"`` or ``"retinanet"``) on a timm backbone,
    built through :func:`leanvision.create_model` (``"<kind>_detector"``) so that
    :func:`leanvision.save` records how to rebuild it. A backbone module built by
    ``create_model`` (and maybe compressed since, e.g. pruned by ``l1_filter``) is recorded with
    its own architecture record, which :func:`leanvision.load` rebuilds first; any other module
    makes a detector without a record (save its ``state_dict``).

    Args: see :func:`_build`.
    """
    if kind not in DETECTORS:
        raise ConfigError(f"kind={kind!r} is not allowed; allowed: {list(DETECTORS)}")
    if not isinstance(backbone, str):  # a module (e.g. pruned) is built directly
        model = _build(kind, backbone, num_classes, image_size, tuple(out_indices), fpn_channels,
                       **kwargs)  # fmt: skip
        spec = getattr(backbone, "lv_spec", None)
        if spec is not None:  # built by create_model (and maybe compressed): record both
            record = {"spec": spec, "history": list(getattr(backbone, "lv_history", []))}
            model.lv_spec = {
                "name": f"{kind}_detector",
                "kwargs": {
                    "backbone": record,
                    "num_classes": num_classes,
                    "image_size": image_size,
                    "out_indices": tuple(out_indices),
                    "fpn_channels": fpn_channels,
                    **kwargs,
                },
            }
        return model
    from leanvision.models import create_model

    return create_model(f"{kind}_detector", backbone=backbone, num_classes=num_classes,
                        image_size=image_size, out_indices=tuple(out_indices),
                        fpn_channels=fpn_channels, **kwargs)  # fmt: skip
