"""FADN: frequency-aware dynamic SR, each residual block spending its work where the image has
high frequencies.

Learning Frequency-aware Dynamic Network for Efficient Super-Resolution, Xie et al., ICCV 2021
(arXiv 2103.08357). Every residual block of an EDSR-style network becomes a
:class:`~leanvision.layers.FrequencyAwareBlock`: a mask predictor sends each position to the
block's expensive path (its two 3×3 convolutions, weights kept) or to a cheap 1×1 convolution,
one choice per ``tile``×``tile`` region (16×16). The masks are supervised by the DCT
high-frequency energy of the input (the ``density`` share of tile-sized DCT blocks with the
most high-frequency energy is the target), a budget loss holds the share of expensive tiles at
``density``, and the task's L1 trains the rest. At inference the expensive path runs only on
the marked tiles (gathered with their halo and convolved as one batch, not masked), so the MACs
and the latency fall together.

Where ours departs from the paper (no official code):

* two paths (cheap 1×1, expensive 3×3-3×3) where the paper divides features into several
  frequency components; the mask predictor (depthwise 3×3, ReLU, 1×1 to one logit, averaged
  over each tile), the hard Gumbel-sigmoid with a straight-through gradient, and the expensive
  path's hidden features being zero off the mask (so training and inference compute one
  function) are ours;
* one choice per 16×16 tile (the DCT block), not per pixel: a CPU convolves a batch of tiles
  at about the speed of a dense convolution, while gathering each pixel's 3×3 neighbourhood for
  a matrix product was no faster than the dense block even at 1/4 of the pixels (measured in a
  scratch check: 13.4 vs 14.1 ms, 64 channels, 96×96, one thread). 16 and not 8: a tile
  recomputes conv1 on its one-pixel ring, 1.13× the tile's work at 16, 1.28× at 8;
* the frequency target: tile-sized DCT blocks of the input's luma (BT.601 Y), high frequency
  being the coefficients with ``u + v ≥ tile / 2``, the top ``density`` share of blocks per
  image marked (the paper's blocks are JPEG's 8×8);
  a binary cross-entropy to it (weight ``freq_weight``) and ``(mean mask − density)²`` as the
  budget loss (weight ``budget_weight``): the paper's losses as we read them, weights ours;
* it converts leanvision's SR networks (``edsr_*``, ``srnet_custom`` with conv blocks); other
  networks' residual blocks are not recognised.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leanvision.checks import check_int, check_real
from leanvision.engine.hooks import Hook, StepContext
from leanvision.errors import UnsupportedModelError
from leanvision.layers.fadn import FrequencyAwareBlock
from leanvision.methods.common import FinetuneConfig, finetune
from leanvision.methods.registry import record_transform, register_method

__all__ = ["FADNConfig", "FADNHook", "dct_high_frequency_mask", "fadn_convert"]


@dataclass
class FADNConfig(FinetuneConfig):
    """FADN's settings (half the positions expensive, about the paper's ~50 % cut) and EDSR's
    training (Adam, lr 1e-4, no weight decay)."""

    density: float = 0.5
    freq_weight: float = 0.1
    budget_weight: float = 1.0
    tile: int = 16
    tau: float = 1.0
    opt: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0

    def validate(self) -> None:
        """The fine-tuning checks; 0 < density ≤ 1; weights ≥ 0; tile ≥ 2; tau > 0."""
        super().validate()
        check_real("density", self.density, 0.0, 1.0, lo_open=True)
        check_real("freq_weight", self.freq_weight, 0.0)
        check_real("budget_weight", self.budget_weight, 0.0)
        check_int("tile", self.tile, 2)
        check_real("tau", self.tau, 0.0, lo_open=True)


@functools.cache
def _dct_basis(p: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix of size p (scipy's), rows the frequencies."""
    import numpy as np
    from scipy.fft import dct

    return torch.from_numpy(dct(np.eye(p), norm="ortho", axis=0)).float()


def dct_high_frequency_mask(images: torch.Tensor, density: float, block: int = 8) -> torch.Tensor:
    """(N, 1, ceil(H / block), ceil(W / block)) 0/1 target: the ``density`` share of each
    image's ``block``×``block`` DCT blocks of the luma with the most high-frequency energy
    (coefficients with ``u + v ≥ block / 2``), at least one block an image.

    Args:
        images: RGB in [0, 1], (N, 3, H, W).
        density: Share of blocks marked.
        block: DCT block side; the image is padded (replicate) to a multiple of it.
    """
    n, _, h, w = images.shape
    luma = torch.tensor([0.299, 0.587, 0.114], device=images.device).view(1, 3, 1, 1)
    y = (images.float() * luma).sum(1, keepdim=True)  # BT.601 luma, (N, 1, H, W)
    ph, pw = -h % block, -w % block
    y = F.pad(y, (0, pw, 0, ph), mode="replicate") if ph or pw else y
    bh, bw = y.shape[2] // block, y.shape[3] // block
    tiles = y.reshape(n, bh, block, bw, block).permute(0, 1, 3, 2, 4)  # (N, bh, bw, p, p)
    d = _dct_basis(block).to(y.device)
    coeffs = d @ tiles @ d.t()
    u = torch.arange(block, device=y.device)
    high = (u[:, None] + u[None, :]) >= block / 2
    energy = (coeffs**2 * high).sum((-1, -2)).reshape(n, -1)  # (N, blocks)
    k = max(1, round(density * energy.shape[1]))
    top = energy.topk(k, dim=1).indices
    return torch.zeros_like(energy).scatter_(1, top, 1.0).reshape(n, 1, bh, bw)


class FADNHook(Hook):
    """Adds the frequency-mask loss (BCE of each block's mask logits to the DCT target of the
    input) and the budget loss ((mean mask − density)² a block) to each training step."""

    name = "fadn"

    def __init__(
        self,
        model: nn.Module,
        density: float = 0.5,
        freq_weight: float = 0.1,
        budget_weight: float = 1.0,
    ) -> None:
        self.blocks = [m for m in model.modules() if isinstance(m, FrequencyAwareBlock)]
        if not self.blocks:
            raise UnsupportedModelError("fadn: the model has no FrequencyAwareBlock to train")
        self.density = density
        self.freq_weight, self.budget_weight = freq_weight, budget_weight

    def on_loss(self, trainer: Any, ctx: StepContext) -> None:
        target = dct_high_frequency_mask(ctx.inputs, self.density, self.blocks[0].tile)
        freq = budget = ctx.inputs.new_zeros(())
        for b in self.blocks:
            if b.last_logits is None or b.last_logits.shape[-2:] != target.shape[-2:]:
                raise UnsupportedModelError(
                    "fadn: a block's tile mask does not match the input's DCT blocks (FADN's "
                    "blocks run before the upsampler, at the input's resolution)"
                )
            freq = freq + F.binary_cross_entropy_with_logits(b.last_logits, target)
            budget = budget + (b.last_mask.mean() - self.density) ** 2
            b.last_logits = b.last_mask = None  # read once; the graph goes with the step
        ctx.losses["freq_mask"] = self.freq_weight * freq / len(self.blocks)
        ctx.losses["budget"] = self.budget_weight * budget / len(self.blocks)


def fadn_convert(model: nn.Module, tau: float = 1.0, tile: int = 16) -> tuple[nn.Module, list[str]]:
    """A copy of a leanvision SR network whose conv residual blocks are FADN blocks (the
    expensive path keeps the block's weights; the cheap path and predictor are new).

    Raises:
        UnsupportedModelError: not a leanvision SR network, or no conv residual block.
    """
    from leanvision.models.edsr import ResBlock, SRNet

    if not isinstance(model, SRNet):
        raise UnsupportedModelError(
            f"fadn converts leanvision's SR networks (edsr_*, srnet_custom), not "
            f"{type(model).__name__}"
        )
    new = copy.deepcopy(model)
    replaced = []
    for i, block in enumerate(new.body):
        if not (isinstance(block, ResBlock) and block.op == "conv"):
            continue
        c1, c2 = block.body[0], block.body[2]
        fa = FrequencyAwareBlock(c1.in_channels, c1.out_channels, block.res_scale, tau, tile)
        with torch.no_grad():
            for dst, src in ((fa.conv1, c1), (fa.conv2, c2)):
                dst.weight.copy_(src.weight)
                dst.bias.copy_(src.bias)
        new.body[i] = fa.to(device=c1.weight.device, dtype=c1.weight.dtype)
        replaced.append(f"body.{i}")
    if not replaced:
        raise UnsupportedModelError("fadn: the network has no conv residual block to convert")
    return new, replaced


def _rebuild(model: nn.Module, arch: dict[str, Any]) -> nn.Module:
    return fadn_convert(model, **arch)[0]


@register_method(
    "fadn",
    family="architecture",
    paper="Learning Frequency-aware Dynamic Network for Efficient Super-Resolution, ICCV 2021, "
    "arXiv 2103.08357",
    config=FADNConfig,
    rebuild=_rebuild,
)
def apply_fadn(model: nn.Module, data: Any, cfg: FADNConfig) -> nn.Module:
    """Turn the residual blocks into frequency-aware blocks, then train with the mask losses."""
    new, _ = fadn_convert(model, cfg.tau, cfg.tile)
    record_transform(new, model, "fadn", {"tau": cfg.tau, "tile": cfg.tile})
    hook = FADNHook(new, cfg.density, cfg.freq_weight, cfg.budget_weight)
    finetune(new, data, cfg, [hook], method="fadn")
    return new.eval()
