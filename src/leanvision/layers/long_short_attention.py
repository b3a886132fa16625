"""Long-short attention for 2D token maps (the attention of Transformer-LS).

Long-Short Transformer: Efficient Transformers for Language and Vision, Zhu et al., NeurIPS 2021
(arXiv 2107.02192), official code ``NVIDIA/transformer-ls`` (``imagenet/models/layers/
transformer_ls.py``, ``AttentionLS``). Every image token attends, in one softmax, to

* a **short-term** window: the map is cut into ``w×w`` segments; all queries of a segment share
  the keys of the segment plus ``w/2`` rows and columns on each side, a ``(w + 2·w/2)²`` tile
  (keys outside the map are masked). An optional relative position bias is added here only;
* a **long-range dynamic projection** of rank ``r``: ``P = softmax(X W_P)`` over the tokens
  (one ``r × HW`` matrix per head), ``K̄ = P K`` and ``V̄ = P V``;
* the ``nglo`` **global tokens** (e.g. CLS).

**DualLN**: the full keys/values go through one LayerNorm (``dual_ln_full``), the projected
``K̄, V̄`` through another (``dual_ln_dp``), so that the two kinds of keys have matching norms.
Global tokens attend to their own keys and to the attended outputs of all image tokens (the
official "post-cls" variant, which keeps their cost linear too).

Cost: time and memory are linear in the number of tokens ``N``. No ``N × N`` tensor is built:
the largest intermediate is the score tensor of shape ``(B, heads, N', r + tile² + nglo)``
(``N'`` is ``N`` padded to a multiple of ``w`` per side), and the key/value tiles hold each key
about ``(tile / w)²`` times. The tiles are gathered with ``F.pad`` + ``Tensor.unfold``, so the
layer runs on any device and exports with ``torch.export``. Unlike the official code, map sides
need not be multiples of ``w`` (the map is padded and the padding masked).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_module
from torch import nn

__all__ = ["LongShortAttention"]


@register_notrace_module  # a leaf for timm's fx extraction: its tiling reads the map size
class LongShortAttention(nn.Module):
    """Long-short term attention over ``nglo`` global tokens followed by an ``H×W`` token map.

    Parameter names follow the official code, so its checkpoints map one to one.

    Args:
        dim: token width C.
        num_heads: attention heads (``dim`` must be divisible by it).
        window_size: segment size ``w`` of the short-term attention (>= 1).
        dp_rank: rank ``r`` of the dynamic projection (0 disables the long-range part).
        nglo: number of global tokens at the front of the sequence.
        qkv_bias: bias in the query/key/value projection.
        qk_scale: score scale; ``head_dim ** -0.5`` by default.
        attn_drop: dropout on the attention weights of the image tokens.
        proj_drop: dropout after the output projection.
        rpe: learnable relative position bias on the window scores (one table per head).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        window_size: int = 7,
        dp_rank: int = 8,
        nglo: int = 1,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        rpe: bool = False,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        if dp_rank < 0 or nglo < 0:
            raise ValueError(f"dp_rank and nglo must be >= 0, got {dp_rank}, {nglo}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = qk_scale or self.head_dim**-0.5
        self.window_size, self.dp_rank, self.nglo = window_size, dp_rank, nglo
        # Keys of a segment: the segment plus `side` rows/columns around it (side >= 1 even
        # for w = 1, as in the official code).
        self.side = max(window_size // 2, 1)
        self.tile = window_size + 2 * self.side

        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.to_dynamic_projection = nn.Linear(dim, dp_rank * num_heads) if dp_rank > 0 else None
        self.dual_ln_full = nn.LayerNorm(dim)
        self.dual_ln_dp = nn.LayerNorm(dim) if dp_rank > 0 else None
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

        self.rpe = rpe
        if rpe:
            w, s = window_size, self.side
            # Offsets query - key span [-(w+s-1), w+s-1] on each axis. The official table packs
            # (dy, dx) with a row stride of w+2s (narrower than the 2(w+s)-1 offsets per row),
            # so a few offset pairs share one entry; we keep its layout and size so official
            # weights load unchanged.
            rows = 2 * (w + s - 1) * (w + 2 * s + 1) + 1
            self.local_relative_position_bias_table = nn.Parameter(torch.zeros(rows, num_heads))
            nn.init.trunc_normal_(self.local_relative_position_bias_table, std=0.02)
            q_pos = torch.arange(w)
            k_pos = torch.arange(-s, w + s)
            dy = q_pos[:, None, None, None] - k_pos[None, None, :, None]
            dx = q_pos[None, :, None, None] - k_pos[None, None, None, :]
            index = (dy + w + s - 1) * (w + 2 * s) + (dx + w + s - 1)  # (w, w, tile, tile)
            self.register_buffer(
                "relative_position_index", index.reshape(w * w, self.tile**2), persistent=False
            )

    # ------------------------------------------------------------------ tiling helpers

    def _grid(self, hw: tuple[int, int]) -> tuple[int, int]:
        """Segments per column and per row: ceil(H / w), ceil(W / w)."""
        return math.ceil(hw[0] / self.window_size), math.ceil(hw[1] / self.window_size)

    def _query_tiles(self, t: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """(B, h, H·W, d) → (B, h, gy, gx, w², d): the queries of each segment."""
        b, nh, _, d = t.shape
        (H, W), w = hw, self.window_size
        gy, gx = self._grid(hw)
        t = F.pad(t.reshape(b, nh, H, W, d), (0, 0, 0, gx * w - W, 0, gy * w - H))
        t = t.reshape(b, nh, gy, w, gx, w, d).permute(0, 1, 2, 4, 3, 5, 6)
        return t.reshape(b, nh, gy, gx, w * w, d)

    def _untile(self, t: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """(B, h, gy, gx, w², d) → (B, h, H·W, d), dropping the padding."""
        b, nh, gy, gx, _, d = t.shape
        (H, W), w = hw, self.window_size
        t = t.reshape(b, nh, gy, gx, w, w, d).permute(0, 1, 2, 4, 3, 5, 6)
        t = t.reshape(b, nh, gy * w, gx * w, d)[:, :, :H, :W]
        return t.reshape(b, nh, H * W, d)

    def _key_tiles(self, t: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """(B, h, H·W, d) → (B, h, gy, gx, d, tile²): the overlapping key tile of each segment."""
        b, nh, _, d = t.shape
        (H, W), w, s, T = hw, self.window_size, self.side, self.tile
        gy, gx = self._grid(hw)
        t = t.reshape(b, nh, H, W, d)
        t = F.pad(t, (0, 0, s, s + gx * w - W, s, s + gy * w - H))
        t = t.unfold(2, T, w).unfold(3, T, w)  # (B, h, gy, gx, d, tile, tile)
        return t.reshape(b, nh, gy, gx, d, T * T)

    def _window_bias(self, hw: tuple[int, int], device: torch.device) -> torch.Tensor:
        """Additive score bias of the window keys, (h or 1, gy, gx, w², tile²).

        -inf where a key lies outside the map (zero padding), plus the relative position bias.
        """
        (H, W), w, s, T = hw, self.window_size, self.side, self.tile
        gy, gx = self._grid(hw)
        offset = torch.arange(T, device=device) - s
        rows = torch.arange(gy, device=device)[:, None] * w + offset  # (gy, tile)
        cols = torch.arange(gx, device=device)[:, None] * w + offset  # (gx, tile)
        valid = ((rows >= 0) & (rows < H))[:, None, :, None] & ((cols >= 0) & (cols < W))[
            None, :, None, :
        ]
        bias = torch.zeros(valid.shape, device=device).masked_fill(~valid, float("-inf"))
        bias = bias.reshape(1, gy, gx, 1, T * T)
        if self.rpe:
            rel = self.local_relative_position_bias_table[self.relative_position_index]
            bias = bias + rel.permute(2, 0, 1)[:, None, None]  # (h, 1, 1, w², tile²)
        return bias

    # ------------------------------------------------------------------ attention

    def _project(self, p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Dynamic projection + its LayerNorm: P (B, h, r, HW), t (B, h, HW, d) → (B, h, r, d).

        As in the official code the LayerNorm runs over all heads' channels (width C).
        """
        b, nh, r, _ = p.shape
        t = (p @ t).transpose(1, 2).reshape(b, r, nh * self.head_dim)
        return self.dual_ln_dp(t).reshape(b, r, nh, self.head_dim).transpose(1, 2)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        hw: tuple[int, int],
        k_proj: torch.Tensor | None = None,
        v_proj: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The attention itself on per-head tensors (scaled queries, normalised keys).

        Args:
            q, k, v: (B, h, nglo + H·W, d).
            hw: (H, W) of the token map.
            k_proj, v_proj: projected keys/values K̄, V̄, (B, h, r, d), or None.

        Returns:
            (B, h, nglo + H·W, d) attention outputs, global tokens first.
        """
        g = self.nglo
        q_glo, q_loc = q[:, :, :g], q[:, :, g:]
        k_glo, k_loc = k[:, :, :g], k[:, :, g:]
        v_glo, v_loc = v[:, :, :g], v[:, :, g:]

        q_t = self._query_tiles(q_loc, hw)  # (B, h, gy, gx, w², d)
        k_t = self._key_tiles(k_loc, hw)  # (B, h, gy, gx, d, tile²)
        v_t = self._key_tiles(v_loc, hw).transpose(-1, -2)  # (B, h, gy, gx, tile², d)
        # Scores of each query: [projected keys (r) | window (tile²) | global keys (nglo)].
        scores = [q_t @ k_t + self._window_bias(hw, q.device).to(q.dtype)]
        if k_proj is not None:
            scores.insert(0, q_t @ k_proj.transpose(-1, -2)[:, :, None, None])
        if g > 0:
            scores.append(q_t @ k_glo.transpose(-1, -2)[:, :, None, None])
        attn = torch.cat(scores, dim=-1).softmax(dim=-1, dtype=torch.float32).to(q.dtype)
        attn = self.attn_drop(attn)
        r, win = (k_proj.shape[2] if k_proj is not None else 0), self.tile * self.tile
        out = attn[..., r : r + win] @ v_t
        if v_proj is not None:
            out = out + attn[..., :r] @ v_proj[:, :, None, None]
        if g > 0:
            out = out + attn[..., r + win :] @ v_glo[:, :, None, None]
        out = self._untile(out, hw)  # (B, h, H·W, d)
        if g == 0:
            return out

        # Global tokens: one softmax over their own keys and the image tokens' outputs.
        cls = torch.cat([q_glo @ k_glo.transpose(-1, -2), q_glo @ out.transpose(-1, -2)], dim=-1)
        cls = cls.softmax(dim=-1, dtype=torch.float32).to(q.dtype)
        out_glo = cls[..., :g] @ v_glo + cls[..., g:] @ out
        return torch.cat([out_glo, out], dim=2)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """(B, nglo + H·W, C) → (B, nglo + H·W, C); ``hw`` = (H, W) of the token map."""
        b, n, c = x.shape
        H, W = hw
        if n != self.nglo + H * W:
            raise ValueError(f"expected {self.nglo} + {H}*{W} tokens, got {n}")
        nh, d = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        k, v = self.dual_ln_full(k), self.dual_ln_full(v)
        # (B, N, C) → (B, h, N, d); inline, not a nested function: TorchScript compiles this.
        q = (q * self.scale).reshape(b, n, nh, d).transpose(1, 2)
        k, v = k.reshape(b, n, nh, d).transpose(1, 2), v.reshape(b, n, nh, d).transpose(1, 2)
        k_proj = v_proj = None
        if self.to_dynamic_projection is not None:
            g, r = self.nglo, self.dp_rank
            # P: (B, h, r, H·W), a softmax over the image tokens for each of the r rows.
            p = self.to_dynamic_projection(x[:, g:]).transpose(1, 2).reshape(b, nh, r, H * W)
            p = p.softmax(dim=-1, dtype=torch.float32).to(x.dtype)
            k_proj, v_proj = self._project(p, k[:, :, g:]), self._project(p, v[:, :, g:])
        out = self.attend(q, k, v, hw, k_proj, v_proj)
        out = out.transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, window={self.window_size}, tile={self.tile}, "
            f"dp_rank={self.dp_rank}, nglo={self.nglo}, rpe={self.rpe}"
        )
