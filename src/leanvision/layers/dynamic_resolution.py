"""DRNet's dynamic resolution: a small predictor picks each image's input resolution.

Dynamic Resolution Network, Zhu et al., NeurIPS 2021 (arXiv 2106.02898). A resolution
predictor looks at a low-resolution copy of the image and chooses one of several input
resolutions; the classifier runs at that resolution with batch norms of its own per resolution.
Training: a hard Gumbel-softmax choice (straight through), the classifier run at every
resolution and the logits of the chosen one kept, so the predictor gets a gradient. Inference:
each image is resized to its argmax resolution and classified there (a batch is split by
resolution; at batch 1 the image runs alone at its own resolution).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DynamicResolutionNet", "ResolutionBatchNorm2d", "ResolutionPredictor", "resize"]


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` at ``size``×``size`` (bilinear, antialiased when shrinking); unchanged when it is
    that size already."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=size < x.shape[-1])  # fmt: skip


class ResolutionBatchNorm2d(nn.Module):
    """One BatchNorm2d per resolution; ``active`` (set by :class:`DynamicResolutionNet`)
    picks the one in use. Built from a trained BN, every copy starts from its statistics."""

    def __init__(self, bn: nn.BatchNorm2d, n: int) -> None:
        super().__init__()
        self.bns = nn.ModuleList()
        for _ in range(n):
            new = nn.BatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine,
                                 bn.track_running_stats)  # fmt: skip
            new.load_state_dict(bn.state_dict())
            self.bns.append(new.to(device=_device(bn)))
        self.active = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bns[self.active](x)


def _device(m: nn.Module) -> torch.device:
    t = next(iter(m.state_dict().values()), None)
    return t.device if t is not None else torch.device("cpu")


class ResolutionPredictor(nn.Module):
    """DRNet's predictor at CPU size: two strided 3×3 conv-BN-ReLU layers, global pooling and a
    linear layer to one logit per resolution, on the image resized to ``input_size``."""

    def __init__(self, n_choices: int, input_size: int = 16, width: int = 16) -> None:
        super().__init__()
        self.input_size = input_size
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.fc = nn.Linear(2 * width, n_choices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(resize(x, self.input_size)))


class DynamicResolutionNet(nn.Module):
    """A classifier with DRNet's resolution predictor in front.

    Args:
        classifier: Any classifier that accepts every resolution of ``resolutions`` (global
            pooling before its head); its BatchNorm2d layers must already be
            :class:`ResolutionBatchNorm2d` (the ``drnet`` method converts them).
        resolutions: Input sides to choose from, largest first (e.g. 32, 24, 16).
        predictor: The resolution predictor (default :class:`ResolutionPredictor`).
        tau: Gumbel-softmax temperature while training.
    """

    def __init__(
        self,
        classifier: nn.Module,
        resolutions: Sequence[int],
        predictor: nn.Module | None = None,
        tau: float = 1.0,
    ) -> None:
        super().__init__()
        self.classifier = classifier
        self.resolutions = [int(r) for r in resolutions]
        self.predictor = predictor or ResolutionPredictor(len(self.resolutions))
        self.tau = tau
        self.last_choice: torch.Tensor | None = None  # training: (B, R) one-hot, straight through
        self.last_resolutions: torch.Tensor | None = None  # inference: index per image
        self.num_classes = getattr(classifier, "num_classes", None)
        self.pretrained_cfg = getattr(classifier, "pretrained_cfg", {})

    def __getstate__(self) -> dict:
        # a graph tensor and a cache of submodules: neither is copied
        state = {**super().__getstate__(), "last_choice": None}
        state.pop("_bns", None)
        return state

    def _set_bn(self, i: int) -> None:
        bns = self.__dict__.get("_bns")  # found once: the structure is fixed after conversion
        if bns is None:
            bns = [m for m in self.classifier.modules() if isinstance(m, ResolutionBatchNorm2d)]
            self.__dict__["_bns"] = bns
        for m in bns:
            m.active = i

    def classify(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """The classifier's logits for ``x`` at resolution ``resolutions[i]`` with its BNs."""
        self._set_bn(i)
        out = self.classifier(resize(x, self.resolutions[i]))
        return out if isinstance(out, torch.Tensor) else out[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → logits (B, num_classes)."""
        logits = self.predictor(x)
        if self.training:
            g = F.gumbel_softmax(logits, tau=self.tau, hard=True)
            self.last_choice = g
            outs = torch.stack([self.classify(x, i) for i in range(len(self.resolutions))], 1)
            return (g.unsqueeze(-1) * outs).sum(1)
        choice = logits.argmax(1)
        self.last_resolutions = choice
        if len(x) == 1:
            return self.classify(x, int(choice))
        out = None
        for i in choice.unique().tolist():
            rows = (choice == i).nonzero().squeeze(1)
            part = self.classify(x.index_select(0, rows), i)
            if out is None:
                out = part.new_empty(len(x), part.shape[1])
            out.index_copy_(0, rows, part)
        return out

    def extra_repr(self) -> str:
        return f"resolutions={self.resolutions}, tau={self.tau}"
