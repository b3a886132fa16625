"""VGG-Small, the CIFAR-10 baseline of the binary/low-bit papers.

Introduced as the CIFAR-10 VGG of LQ-Nets (Zhang et al., ECCV 2018, arXiv 1807.10029) and used by
the binarization papers: six 3×3 conv-BN-ReLU layers (128, 128, 256, 256, 512, 512, ×``width``)
with 2×2 max-pooling after every second conv, then a linear classifier on the 4×4×512 map.
"""

from __future__ import annotations

import torch
from timm.models import build_model_with_cfg, register_model
from torch import nn

__all__ = ["VGGSmall"]


class VGGSmall(nn.Module):
    """VGG-Small with timm's model interface.

    Args:
        num_classes: classifier outputs (0 for none).
        in_chans: input channels.
        width: channel multiplier.
        img_size: input side, to size the classifier (32 for CIFAR).
        drop_rate: dropout before the classifier.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        width: float = 1.0,
        img_size: int = 32,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        chs = [max(1, round(c * width)) for c in (128, 128, 256, 256, 512, 512)]
        layers: list[nn.Module] = []
        prev = in_chans
        self.feature_info = []
        for i, c in enumerate(chs):
            layers += [nn.Conv2d(prev, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(True)]
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
                self.feature_info.append(
                    dict(
                        num_chs=c, reduction=2 ** (i // 2 + 1), module=f"features.{len(layers) - 1}"
                    )
                )
            prev = c
        self.features = nn.Sequential(*layers)
        self.num_classes, self.drop_rate, self.in_chans = num_classes, drop_rate, in_chans
        self.num_features = self.head_hidden_size = prev * (img_size // 8) ** 2
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, 32, 32) → (B, 512·width, 4, 4)."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x.flatten(1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


default_cfgs = {
    "vgg_small": {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2470, 0.2435, 0.2616),
        "first_conv": "features.0",
        "classifier": "fc",
    }
}


@register_model
def vgg_small(pretrained: bool = False, **kwargs: object) -> VGGSmall:
    """VGG-Small (4.66 M params, 0.61 GMACs at 32×32)."""
    kwargs.setdefault("num_classes", 10)
    return build_model_with_cfg(
        VGGSmall, "vgg_small", pretrained, feature_cfg=dict(flatten_sequential=True), **kwargs
    )
