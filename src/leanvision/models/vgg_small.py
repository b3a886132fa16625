"""VGG-Small, the CIFAR-10 baseline of the binary/low-bit papers.

Introduced as the CIFAR-10 VGG of LQ-Nets (Zhang et al., ECCV 2018, arXiv 1807.10029) and used by
the binarization papers: six 3×3 conv-BN-ReLU layers (128, 128, 256, 256, 512, 512, ×``width``)
with 2×2 max-pooling after every second conv, then a linear classifier on the 4×4×512 map.
"""

# No `from __future__ import annotations`: torch.fx copies forward's annotations into the code
# it generates, where TorchScript cannot resolve them as strings.
import torch
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, register_model
from torch import nn

from ._device import DeviceLike, build_on, device_dtype

__all__ = ["VGGSmall"]


class VGGSmall(nn.Module):
    """VGG-Small with timm's model interface.

    The classifier reads the whole flattened final map (``global_pool="flatten"``, 512·16
    features at 32×32), so ``num_features`` (channels of ``forward_features``) is 512·width and
    ``head_hidden_size`` (the pre-logits width) is ``num_features · (img_size / 8)²``.

    Args:
        num_classes: classifier outputs (0 for none).
        in_chans: input channels.
        width: channel multiplier.
        img_size: input side, to size the classifier (32 for CIFAR).
        drop_rate: dropout before the classifier.
        global_pool: ``"flatten"`` (the paper's head), a timm pool type (``"avg"``, ``"max"``,
            ...), or ``""`` for none (with ``num_classes=0`` the model returns the feature map).
        device, dtype: where and in what floating dtype the parameters are created.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        width: float = 1.0,
        img_size: int = 32,
        drop_rate: float = 0.0,
        global_pool: str = "flatten",
        device: DeviceLike = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        chs = [max(1, round(c * width)) for c in (128, 128, 256, 256, 512, 512)]
        layers: list[nn.Module] = []
        prev = in_chans
        self.feature_info = []
        with build_on(device, dtype):
            for i, c in enumerate(chs):
                layers += [
                    nn.Conv2d(prev, c, 3, 1, 1, bias=False),
                    nn.BatchNorm2d(c),
                    nn.ReLU(True),
                ]
                if i % 2 == 1:
                    layers.append(nn.MaxPool2d(2))
                    module = f"features.{len(layers) - 1}"
                    self.feature_info.append(
                        dict(num_chs=c, reduction=2 ** (i // 2 + 1), module=module)
                    )
                prev = c
            self.features = nn.Sequential(*layers)
            self.in_chans, self.drop_rate = in_chans, drop_rate
            self.num_features, self.map_size = prev, img_size // 8
            self.head_drop = nn.Dropout(drop_rate)
            self._make_head(num_classes, global_pool)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_head(self, num_classes: int, global_pool: str) -> None:
        if global_pool == "flatten":
            self.global_pool: nn.Module = nn.Flatten(1)
            self.head_hidden_size = self.num_features * self.map_size**2
        else:
            self.global_pool = SelectAdaptivePool2d(
                pool_type=global_pool, flatten=bool(global_pool)
            )
            self.head_hidden_size = self.num_features * self.global_pool.feat_mult()
        self.pool_type = global_pool
        self.num_classes = num_classes
        self.fc = (
            nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()
        )

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier (and pooling, if given) on the model's device, dtype and mode."""
        with build_on(**device_dtype(self)):
            self._make_head(num_classes, self.pool_type if global_pool is None else global_pool)
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, 32, 32) → (B, 512·width, 4, 4)."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


default_cfgs = {
    "vgg_small": {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (4, 4),
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
        VGGSmall,
        "vgg_small",
        pretrained,
        # three pooled stages: strides 2, 4, 8
        feature_cfg=dict(flatten_sequential=True, out_indices=(0, 1, 2)),
        **kwargs,
    )
