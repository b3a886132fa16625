"""FADN's residual block: a tile mask sends each image region to a cheap or an expensive path.

Learning Frequency-aware Dynamic Network for Efficient Super-Resolution, Xie et al., ICCV 2021
(arXiv 2103.08357). A mask predictor on the block's input marks the ``tile``×``tile`` regions
that need the expensive path (two 3×3 convolutions, EDSR's block body); the others take a cheap
1×1 convolution. While training both paths run densely and a hard Gumbel-sigmoid mask (straight
through) mixes them; at inference the expensive path runs only on the marked tiles: they are
gathered with a two-pixel halo and convolved as one batch, so the work falls with the share of
marked tiles.

The expensive path is ``conv2(relu(conv1(x)) · m)``: its hidden features are zero off the mask,
so at inference ``conv1`` is computed on each marked tile and its one-pixel ring (zeroed where
the ring lies on an unmarked tile or outside the image) and ``conv2`` on the tile; training and
inference compute one function (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FrequencyAwareBlock", "hard_gumbel_sigmoid", "tiles_to_pixels"]


def hard_gumbel_sigmoid(logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """A 0/1 sample of ``sigmoid(logits)`` (logistic noise), with the gradient of the relaxed
    ``sigmoid((logits + noise) / tau)`` straight through."""
    u = torch.rand_like(logits).clamp_(1e-6, 1 - 1e-6)
    soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / tau)
    return (soft > 0.5).to(soft.dtype) - soft.detach() + soft


def tiles_to_pixels(tiles: torch.Tensor, tile: int, size: tuple[int, int]) -> torch.Tensor:
    """(N, 1, ty, tx) per-tile values → (N, 1, H, W), each tile's value over its pixels."""
    full = tiles.repeat_interleave(tile, 2).repeat_interleave(tile, 3)
    return full[:, :, : size[0], : size[1]]


class FrequencyAwareBlock(nn.Module):
    """``x + res_scale · (m · conv2(relu(conv1(x)) · m) + (1 − m) · cheap(x))`` with ``m`` the
    mask of the tiles that take the expensive path.

    Args:
        width: Channels in and out.
        mid: Channels between the two expensive convolutions (default ``width``).
        res_scale: EDSR's residual scaling.
        tau: Temperature of the training mask's relaxation.
        tile: Side of the mask's tiles.
    """

    def __init__(
        self,
        width: int,
        mid: int | None = None,
        res_scale: float = 1.0,
        tau: float = 1.0,
        tile: int = 16,
    ) -> None:
        super().__init__()
        mid = mid or width
        self.width, self.mid, self.res_scale, self.tau, self.tile = width, mid, res_scale, tau, tile
        self.conv1 = nn.Conv2d(width, mid, 3, padding=1)
        self.conv2 = nn.Conv2d(mid, width, 3, padding=1)
        self.cheap = nn.Conv2d(width, width, 1)
        self.predictor = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1, groups=width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 1, 1),
        )
        self.last_logits: torch.Tensor | None = None  # training: per tile, read by the hook
        self.last_mask: torch.Tensor | None = None
        self.last_density: float | None = None  # inference: share of marked tiles

    def __getstate__(self) -> dict:
        # the last step's masks are graph tensors: a copy or a pickle of the block leaves them
        state = super().__getstate__()
        return {**state, "last_logits": None, "last_mask": None}

    def tile_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 1, ceil(H / tile), ceil(W / tile)): the predictor's logits averaged per tile."""
        return F.avg_pool2d(self.predictor(x), self.tile, ceil_mode=True)

    def dense(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """The block with the pixel mask ``m`` (N, 1, H, W), computed densely (training)."""
        h = F.relu(self.conv1(x)) * m
        res = m * self.conv2(h) + (1 - m) * self.cheap(x)
        return x + self.res_scale * res

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, width, H, W) → the same shape."""
        logits = self.tile_logits(x)
        if self.training:
            m = hard_gumbel_sigmoid(logits, self.tau)
            self.last_logits, self.last_mask = logits, m
            return self.dense(x, tiles_to_pixels(m, self.tile, x.shape[-2:]))
        mask = logits[:, 0] > 0
        self.last_density = float(mask.float().mean()) if mask.numel() else 0.0
        return self.sparse(x, mask)

    def sparse(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The block with the boolean tile mask (N, ty, tx): the expensive path convolves only
        the marked tiles (gathered with their halo, as one batch), the cheap one runs densely
        and the expensive results overwrite it on the marked tiles."""
        n, c, h, w = x.shape
        t = self.tile
        ty, tx = mask.shape[1:]
        res = self.cheap(x).contiguous()
        sel = mask.nonzero()  # (P, 3): image, tile row, tile column
        if len(sel):
            ph, pw = ty * t - h, tx * t - w
            # the input with a 2-pixel halo around every tile (zeros off the image)
            xp = F.pad(x, (2, 2 + pw, 2, 2 + ph))
            tiles = xp.unfold(2, t + 4, t).unfold(3, t + 4, t)  # (N, C, ty, tx, t+4, t+4)
            gathered = tiles[sel[:, 0], :, sel[:, 1], sel[:, 2]]  # (P, C, t+4, t+4)
            hid = F.relu(F.conv2d(gathered, self.conv1.weight, self.conv1.bias))
            # the hidden features are zero off the mask and off the image: the ring a tile
            # reads from its neighbours keeps only what their own mask keeps
            keep = tiles_to_pixels(mask[:, None].to(x.dtype), t, (h, w))
            keep = F.pad(keep, (1, 1 + pw, 1, 1 + ph))
            ring = keep.unfold(2, t + 2, t).unfold(3, t + 2, t)[sel[:, 0], :, sel[:, 1], sel[:, 2]]
            exp = F.conv2d(hid * ring, self.conv2.weight, self.conv2.bias)  # (P, C, t, t)
            padded = F.pad(res, (0, pw, 0, ph)) if ph or pw else res
            view = padded.view(n, c, ty, t, tx, t)
            view[sel[:, 0], :, sel[:, 1], :, sel[:, 2]] = exp  # (P, C, t, t) per tile
            res = padded[:, :, :h, :w] if ph or pw else padded
        return x + self.res_scale * res

    def extra_repr(self) -> str:
        return f"width={self.width}, mid={self.mid}, res_scale={self.res_scale}, tile={self.tile}"
