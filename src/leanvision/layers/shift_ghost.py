"""GhostSR's convolution: half the outputs from a real convolution, the rest shifted copies.

GhostSR: Learning Ghost Features for Efficient Image Super-Resolution, Nie et al., 2021
(arXiv 2101.08525). A k×k convolution with ``n`` outputs becomes a primary convolution with
``m = ceil(n·ratio)`` outputs (the intrinsic features) and ``n − m`` ghost features, each a copy
of an intrinsic feature shifted by one offset (dy, dx) ∈ {−1, 0, 1}² shared by the whole layer.
The offset is a learned one-hot 3×3 kernel: while training, the hard argmax of
``|logits + noise_scale · Gumbel|`` runs as a depthwise convolution, its gradient reaching the
logits straight through; at inference the ghost features are a pure shift (a zero-padded slice,
no multiply).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ShiftGhostConv2d", "shift2d"]


def shift2d(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out[..., y, x] = x[..., y + dy, x + dx]``, zero outside: the depthwise 3×3 convolution
    (padding 1) whose kernel is one-hot at ``(1 + dy, 1 + dx)``, with no multiply."""
    if not (-1 <= dy <= 1 and -1 <= dx <= 1):
        raise ValueError(f"a shift is at most one pixel a direction, got ({dy}, {dx})")
    if dy == 0 and dx == 0:
        return x
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1))
    return padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]


class ShiftGhostConv2d(nn.Module):
    """A stride-1 k×k convolution whose outputs are intrinsic features and shifted copies.

    Output channel ``j`` is ``cat([primary(x), shift(primary(x)[:, ghost_src])])[:, order[j]]``:
    ``ghost_src`` names the intrinsic feature each ghost copies and ``order`` places both
    kinds among the ``n`` outputs (by default intrinsic first, ghost ``i`` copying intrinsic
    ``i``, as the official code; a conversion from trained weights may place them where the
    filters they stand for were). Both are buffers, saved with the weights.

    Args:
        in_channels, out_channels, kernel_size, bias: as ``nn.Conv2d`` (stride 1, same padding).
        ratio: The share of intrinsic outputs, ``m = ceil(out_channels · ratio)`` (paper: ½).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        bias: bool = True,
        ratio: float = 0.5,
    ) -> None:
        super().__init__()
        if not 0.0 < ratio < 1.0:
            raise ValueError(f"ratio must be in (0, 1), got {ratio}")
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same padding), got {kernel_size}")
        m = math.ceil(out_channels * ratio)
        if not 1 <= m < out_channels:
            raise ValueError(
                f"{out_channels} outputs at ratio {ratio} leave no ghost feature (m = {m})"
            )
        self.in_channels, self.out_channels, self.ratio = in_channels, out_channels, ratio
        self.intrinsic, self.ghosts = m, out_channels - m
        self.primary = nn.Conv2d(in_channels, m, kernel_size, padding=kernel_size // 2, bias=bias)
        # the official initialisation of the 1×1×3×3 shift weight (kaiming uniform, a = √5)
        self.shift_logits = nn.Parameter(torch.empty(3, 3))
        nn.init.kaiming_uniform_(self.shift_logits.view(1, 1, 3, 3), a=math.sqrt(5))
        self.register_buffer("ghost_src", torch.arange(self.ghosts) % m)
        self.register_buffer("order", torch.arange(out_channels))
        self.noise_scale = 1.0  # set per epoch by GhostSR's noise hook: decay ** epoch
        self._plain: bool | None = None

    @classmethod
    def like(cls, conv: nn.Conv2d, ratio: float = 0.5) -> ShiftGhostConv2d:
        """An untrained layer with ``conv``'s channels, kernel and bias (weights not copied)."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size[0],
                  bias=conv.bias is not None, ratio=ratio)  # fmt: skip
        return new.to(device=conv.weight.device, dtype=conv.weight.dtype)

    def offset(self) -> tuple[int, int]:
        """The inference shift (dy, dx): the argmax of ``|shift_logits|``."""
        k = int(self.shift_logits.detach().abs().flatten().argmax())
        return k // 3 - 1, k % 3 - 1

    def _kernel(self) -> torch.Tensor:
        """The training kernel: one-hot at argmax |logits + noise|, straight-through to the
        logits (forward: the one-hot; backward: the identity onto ``shift_logits``)."""
        w = self.shift_logits
        noisy = w.detach()
        if self.noise_scale > 0:
            u = torch.rand_like(noisy)
            noisy = noisy - self.noise_scale * torch.log(-torch.log(u + 1e-20) + 1e-20)
        hard = torch.zeros_like(noisy).flatten()
        hard[noisy.abs().flatten().argmax()] = 1.0
        return (hard.view(3, 3) - w).detach() + w

    def set_layout(self, ghost_src: torch.Tensor, order: torch.Tensor) -> None:
        """Which intrinsic feature each ghost copies, and where both kinds go among the
        outputs (``order``: a permutation of ``range(out_channels)``)."""
        n = self.out_channels
        ghost_src, order = torch.as_tensor(ghost_src).long(), torch.as_tensor(order).long()
        if (
            ghost_src.shape != (self.ghosts,)
            or not ((ghost_src >= 0) & (ghost_src < self.intrinsic)).all()
        ):
            raise ValueError(f"ghost_src must be {self.ghosts} indices below {self.intrinsic}")
        if not torch.equal(order.sort().values, torch.arange(n)):
            raise ValueError(f"order must be a permutation of range({n})")
        self.ghost_src.copy_(ghost_src)
        self.order.copy_(order)
        self._plain = None

    def _is_plain(self) -> bool:
        """Intrinsic first and ghost i copying intrinsic i: no gather needed (cached)."""
        if getattr(self, "_plain", None) is None:
            dev = self.order.device
            self._plain = bool(
                torch.equal(self.order, torch.arange(self.out_channels, device=dev))
                and torch.equal(self.ghost_src, torch.arange(self.ghosts, device=dev))
            )
        return self._plain

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super()._load_from_state_dict(*args, **kwargs)
        self._plain = None  # the loaded layout may differ

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) → (B, out_channels, H, W)."""
        y = self.primary(x)
        plain = self._is_plain()
        src = y if plain else y.index_select(1, self.ghost_src)
        if self.ghosts < src.shape[1]:
            src = src[:, : self.ghosts]
        if self.training:
            k = self._kernel().to(src.dtype).expand(self.ghosts, 1, 3, 3)
            ghost = F.conv2d(src, k, padding=1, groups=self.ghosts)
        else:
            ghost = shift2d(src, *self.offset())
        out = torch.cat([y, ghost], dim=1)
        return out if plain else out.index_select(1, self.order)

    def extra_repr(self) -> str:
        dy, dx = self.offset()
        return (f"{self.in_channels}, {self.out_channels}, intrinsic={self.intrinsic}, "
                f"shift=({dy}, {dx})")  # fmt: skip
