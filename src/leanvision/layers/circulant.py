"""Block-circulant linear map: a dense-looking projection with O(d) parameters.

Augmented Shortcuts for Vision Transformers, Tang et al., NeurIPS 2021 (arXiv 2106.15941), §3.3:
the weight of an augmented shortcut is a grid of ``b × b`` circulant blocks. Block ``(i, j)`` is
fully described by one vector ``w_ij`` of length ``b`` (its first column), so a ``d × d`` map
holds ``d²/b`` parameters instead of ``d²``, and its product with a vector is a sum of circular
convolutions, i.e. ``O(d log b)`` work with the FFT.

Official code: ``huawei-noah/Efficient-AI-Backbones``, ``augvit_pytorch/models/augvit.py``
(``Circulant_Linear``), which materialises the dense weight by gathering the parameter vector with
the index pattern of ``scipy.linalg.circulant``. We do the same without scipy: a small ``b × b``
index buffer ``(r - c) mod b`` expands every block at once, and the block grid is then laid out
by a reshape. :meth:`CirculantLinear.forward_fft` computes the same product in the Fourier
domain (``use_fft=True`` makes it the default forward).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CirculantLinear"]


class CirculantLinear(nn.Module):
    """Linear layer whose weight is a grid of circulant blocks (interface of ``nn.Linear``).

    The block size is ``b = min(in_features, out_features) // num_blocks``; the weight is an
    ``(out/b) × (in/b)`` grid of circulant ``b × b`` blocks, block ``(i, j)`` being
    ``C_ij[r, c] = w[i, j, (r - c) mod b]`` (``scipy.linalg.circulant(w[i, j])``).

    Args:
        in_features: Input width.
        out_features: Output width.
        num_blocks: Number of circulant blocks along the smaller dimension (the official
            ``num_cir``; 4 in Aug-ViT).
        bias: Add a learnable bias.
        use_fft: Compute ``forward`` with the FFT product instead of the dense weight (the
            default dense path is what ``torch.export``/ONNX export and MAC counting see).

    Shapes:
        input (..., in_features) → output (..., out_features).

    Attributes:
        weight: Parameter of shape (out_features // b, in_features // b, b): the first column
            of every circulant block.
        bias: Parameter of shape (out_features,) or None.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_blocks: int = 4,
        bias: bool = True,
        use_fft: bool = False,
    ) -> None:
        super().__init__()
        smaller = min(in_features, out_features)
        if num_blocks < 1 or smaller % num_blocks != 0:
            raise ValueError(
                f"num_blocks must be >= 1 and divide min(in_features, out_features)={smaller}, "
                f"got {num_blocks}"
            )
        b = smaller // num_blocks
        if in_features % b or out_features % b:
            raise ValueError(
                f"block size {b} (= min(in, out) / num_blocks) must divide both in_features="
                f"{in_features} and out_features={out_features}"
            )
        self.in_features, self.out_features = in_features, out_features
        self.num_blocks, self.block_size, self.use_fft = num_blocks, b, use_fft
        self.num_in_blocks, self.num_out_blocks = in_features // b, out_features // b
        self.weight = nn.Parameter(torch.empty(self.num_out_blocks, self.num_in_blocks, b))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        r = torch.arange(b)
        # (r - c) mod b: where each entry of a circulant block reads its block's vector.
        self.register_buffer("index", (r[:, None] - r[None, :]) % b, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: Kaiming-uniform (a=√5) with fan-in = in_features, bias U(±1/√in)."""
        # On the (out_blocks, in_blocks, b) tensor the fan-in is in_blocks * b = in_features,
        # so the bound is 1/√in like nn.Linear's.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def dense_weight(self) -> torch.Tensor:
        """The full (out_features, in_features) weight matrix."""
        blocks = self.weight[:, :, self.index]  # (out_blocks, in_blocks, b[r], b[c])
        return blocks.permute(0, 2, 1, 3).reshape(self.out_features, self.in_features)

    def forward_fft(self, x: torch.Tensor) -> torch.Tensor:
        """Product through the FFT: y_i = irfft(Σ_j rfft(w_ij) · rfft(x_j)) (+ bias).

        Args:
            x: (..., in_features).

        Returns:
            (..., out_features), equal to the dense product up to rounding.
        """
        b = self.block_size
        lead = list(x.shape[:-1])  # a list, not a starred Size: TorchScript compiles it
        xf = torch.fft.rfft(x.reshape(lead + [self.num_in_blocks, b]), dim=-1)
        wf = torch.fft.rfft(self.weight, dim=-1)  # (out_blocks, in_blocks, b // 2 + 1)
        yf = torch.einsum("...jf,ijf->...if", xf, wf)
        y = torch.fft.irfft(yf, n=b, dim=-1).reshape(lead + [self.out_features])
        return y if self.bias is None else y + self.bias

    def fft_macs(self) -> int:
        """Estimated real multiply-accumulates per input row of :meth:`forward_fft`.

        The frequency-domain products (``out_blocks·in_blocks·(b/2+1)`` complex MACs) plus
        ``(b/2)·log2 b`` complex butterflies per FFT of length ``b`` (one per input block, one
        inverse per output block), at 4 real MACs per complex one. The dense forward costs
        ``in_features·out_features``; this is the "O(d log b)" cost the paper counts.
        """
        b = self.block_size
        products = self.num_out_blocks * self.num_in_blocks * (b // 2 + 1)
        butterflies = (self.num_in_blocks + self.num_out_blocks) * (b / 2) * math.log2(max(b, 2))
        return int(4 * (products + butterflies))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_features) → (..., out_features)."""
        if self.use_fft:
            return self.forward_fft(x)
        return F.linear(x, self.dense_weight(), self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"block_size={self.block_size}, bias={self.bias is not None}, use_fft={self.use_fft}"
        )
