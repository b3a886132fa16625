"""P2Net: dual part-aligned representations for person re-identification.

Guo, Yuan, Zhang, Yang, Tu, Xie, Wang, "Beyond Human Parts: Dual Part-Aligned Representations
for Person Re-Identification", ICCV 2019 (arXiv 1910.10111). A ResNet's feature map X gets two
part-aligned representations, added to it by a dual part-aligned block (DPB):

- human parts: with part masks M_k (a human parser's, or any given masks), each part's feature
  is the mask-weighted mean f_k = Σ_x M_k(x) X(x) / Σ_x M_k(x), and each pixel takes the
  features of the parts it belongs to, Z_h(x) = Σ_k M_k(x) f_k;
- latent parts: a self-attention over the pixels, Z_l(x) = Σ_y softmax_y(θ(x)·φ(y) / √d) g(y),
  so each pixel gathers the pixels most like it, whatever part they are (bags, umbrellas);

``X + BN(W_h Z_h) + BN(W_l Z_l)`` (1×1 convolutions W; the BNs start at zero, so the block starts
as the identity). After the backbone: global average pooling, a BN neck and the identity
classifier (softmax), the pooled feature feeding a triplet loss.

Built directly (``P2Net(num_classes, backbone="resnet50")``), not through timm's registry: its
forward takes the part masks and returns (logits, feature) in training, outside timm's model
contract.

Ours: the block sits after the backbone's third stage (``dpb_after``; the paper places it
after Res-2 in its ablation's best setting, we keep the map the masks resize to small); the
backbone is timm's ResNet (``resnet50`` for ``p2net_resnet50``); ``human=False`` and
``latent=False`` leave the same backbone's global feature, the baseline.
"""

from __future__ import annotations

import math
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DualPartAligned", "P2Net"]


class DualPartAligned(nn.Module):
    """The dual part-aligned block on a (B, C, H, W) map; ``masks`` (B, K, h, w) are resized
    to the map (area mean) and normalised to sum to at most one per pixel."""

    def __init__(self, channels: int, human: bool = True, latent: bool = True,
                 reduction: int = 2) -> None:  # fmt: skip
        super().__init__()
        self.human, self.latent = human, latent
        inner = max(1, channels // reduction)
        if human:
            self.human_proj = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False),
                                            nn.BatchNorm2d(channels))  # fmt: skip
            nn.init.zeros_(self.human_proj[1].weight)
        if latent:
            self.theta = nn.Conv2d(channels, inner, 1)
            self.phi = nn.Conv2d(channels, inner, 1)
            self.g = nn.Conv2d(channels, inner, 1)
            self.latent_proj = nn.Sequential(nn.Conv2d(inner, channels, 1, bias=False),
                                             nn.BatchNorm2d(channels))  # fmt: skip
            nn.init.zeros_(self.latent_proj[1].weight)

    @staticmethod
    def human_parts(x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Z_h: each pixel's mask-weighted sum of its parts' mean features."""
        m = F.adaptive_avg_pool2d(masks.float(), x.shape[-2:])
        m = m / m.sum(1, keepdim=True).clamp(min=1.0)  # at most one part-weight per pixel
        parts = torch.einsum("bkhw,bchw->bkc", m, x) / m.sum((2, 3))[..., None].clamp(min=1e-6)
        return torch.einsum("bkhw,bkc->bchw", m, parts)

    def latent_parts(self, x: torch.Tensor) -> torch.Tensor:
        """Z_l (before its projection): self-attention over the pixels."""
        q, k, v = (f(x).flatten(2) for f in (self.theta, self.phi, self.g))  # (B, d, HW)
        attn = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(q.shape[1]), dim=-1)
        return (v @ attn.transpose(1, 2)).view(x.shape[0], -1, *x.shape[-2:])

    def forward(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        out = x
        if self.human:
            if masks is None:
                raise ValueError("the human-part branch needs part masks (B, K, H, W)")
            out = out + self.human_proj(self.human_parts(x, masks))
        if self.latent:
            out = out + self.latent_proj(self.latent_parts(x))
        return out


class P2Net(nn.Module):
    """A timm ResNet with a dual part-aligned block after stage ``dpb_after``, global
    pooling, a BN neck and an identity classifier.

    ``forward(images, masks)``: in training (logits, pooled feature), the triplet loss taking
    the feature; in evaluation the BN-necked feature (B, num_features) used for retrieval.
    """

    def __init__(
        self,
        num_classes: int = 751,
        backbone: str = "resnet50",
        human: bool = True,
        latent: bool = True,
        dpb_after: int = 3,
        in_chans: int = 3,
        pretrained: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if dpb_after not in (1, 2, 3):
            raise ValueError(f"dpb_after must be 1, 2 or 3, got {dpb_after}")
        net = timm.create_model(backbone, pretrained=pretrained, num_classes=0,
                                in_chans=in_chans, **kwargs)  # fmt: skip
        self.stem = nn.Sequential(net.conv1, net.bn1, net.act1, net.maxpool)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        self.dpb_after = dpb_after
        width = net.feature_info[dpb_after]["num_chs"]
        self.dpb = DualPartAligned(width, human=human, latent=latent)
        self.num_features = net.num_features
        self.neck = nn.BatchNorm1d(self.num_features)
        self.neck.bias.requires_grad_(False)  # the BN neck (Luo et al., 2019)
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes, bias=False)

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward_features(self, x: torch.Tensor, masks: torch.Tensor | None = None
                         ) -> torch.Tensor:  # fmt: skip
        """The final (B, C, H, W) map."""
        x = self.stem(x)
        for i, stage in enumerate(self.stages, start=1):
            x = stage(x)
            if i == self.dpb_after:
                x = self.dpb(x, masks)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = x.mean((2, 3))
        return pooled if pre_logits else self.head(self.neck(pooled))

    def forward(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> Any:
        pooled = self.forward_features(x, masks).mean((2, 3))
        feat = self.neck(pooled)
        if self.training:
            return self.head(feat), pooled
        return feat
