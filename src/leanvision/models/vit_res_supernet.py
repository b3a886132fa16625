"""The ViT-ResNAS weight-sharing supernet: every multi-stage ViT of a width/heads/MLP/depth space
in one network (Liao, Karaman and Sze, 2021, arXiv 2109.00642, Sec. 3.3).

The supernet holds the largest member (every stage at its widest, every block with the most
heads and the widest MLP); a member uses the leading slices of every weight: its stage width
the first channels of each embedding, its heads the first heads of each attention, its MLP
the first hidden units, its depth the first blocks of each stage. LayerNorm over the first
``d`` channels of a sliced embedding is the paper's masked LayerNorm. The member it computes is
exactly the :class:`~leanvision.models.vit_resnas.ViTResNAS` its architecture builds, with the
weights :meth:`ViTResSuperNet.member_state_dict` returns (tested).

Multi-architecture sampling (the paper's ``--example-per-arch``): with
:meth:`ViTResSuperNet.set_archs` a training batch is split into equal parts and each part runs
through its own member, so one step trains several members, and the mean loss over the batch
is the mean of their losses.

Departures from the official supernet: the head width is fixed (64, as the official space's
final choice for the attention width per head); the skipped blocks of a member are the last
blocks of its stage (depth sharing), so members that build the same network share the same
weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leanvision.errors import ConfigError
from leanvision.models.vit_resnas import (
    BlockSpec,
    StageSpec,
    ViTResArch,
    ViTResNAS,
    arch_from_network_def,
)

__all__ = ["ViTResSuperNet"]


class ViTResSuperNet(nn.Module):
    """A supernet over multi-stage ViTs with residual spatial reduction (conv patch embedding).

    Args:
        widths: per stage, the largest embedding width.
        heads: per stage, the most heads (of ``head_dim`` each) a block may have.
        depths: per stage, the most blocks.
        mlp_ratio: the largest MLP hidden width as a multiple of the stage's largest width.
        head_dim: every head's width.
        img_size, patch_size, in_chans, num_classes: as :class:`ViTResNAS`.
    """

    def __init__(
        self,
        widths: Sequence[int],
        heads: Sequence[int],
        depths: Sequence[int],
        mlp_ratio: int = 4,
        head_dim: int = 64,
        img_size: int = 32,
        patch_size: int | None = 4,
        in_chans: int = 3,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if not len(widths) == len(heads) == len(depths):
            raise ConfigError("ViTResSuperNet: widths, heads and depths need one entry per stage")
        stages = tuple(
            StageSpec(w, tuple(BlockSpec(h, head_dim, mlp_ratio * w) for _ in range(n)))
            for w, h, n in zip(widths, heads, depths, strict=True)
        )
        self.largest = ViTResArch(stages)
        self.build_kwargs = dict(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes
        )
        self.net = ViTResNAS(self.largest, **self.build_kwargs)
        self.archs: list[ViTResArch] = [self.largest]

    # ---------------------------------------------------------------- choosing the members

    def check_arch(self, arch: ViTResArch | Sequence[Sequence[Any]]) -> ViTResArch:
        """``arch`` (a :class:`ViTResArch` or an official ``network_def``) if it fits.

        Raises:
            ConfigError: another stem or stage count, or a width, head count, head width,
                depth or MLP width the supernet does not hold.
        """
        if not isinstance(arch, ViTResArch):
            try:
                arch = arch_from_network_def(arch)
            except (ValueError, TypeError, IndexError) as err:
                raise ConfigError(f"ViTResSuperNet: not a network_def: {err}") from err
        big = self.largest
        if arch.stem != big.stem or arch.stem_chs != big.stem_chs:
            raise ConfigError(f"ViTResSuperNet: stem {arch.stem}/{arch.stem_chs} does not fit")
        if len(arch.stages) != len(big.stages):
            raise ConfigError(
                f"ViTResSuperNet: {len(arch.stages)} stages do not fit the supernet's "
                f"{len(big.stages)}"
            )
        for s, (stage, top) in enumerate(zip(arch.stages, big.stages, strict=True)):
            top_block = top.blocks[0]
            if stage.dim > top.dim or len(stage.blocks) > len(top.blocks) or not stage.blocks:
                raise ConfigError(
                    f"ViTResSuperNet: stage {s} (width {stage.dim}, {len(stage.blocks)} blocks) "
                    f"does not fit (width <= {top.dim}, 1 to {len(top.blocks)} blocks)"
                )
            for b, block in enumerate(stage.blocks):
                if (
                    block.head_dim != top_block.head_dim
                    or block.num_heads > top_block.num_heads
                    or block.mlp_hidden > top_block.mlp_hidden
                ):
                    raise ConfigError(
                        f"ViTResSuperNet: stage {s} block {b} {block} does not fit (head_dim "
                        f"{top_block.head_dim}, <= {top_block.num_heads} heads, MLP <= "
                        f"{top_block.mlp_hidden})"
                    )
        return arch

    def set_arch(self, arch: ViTResArch | Sequence[Sequence[Any]]) -> None:
        """Make ``arch`` the member every forward computes."""
        self.archs = [self.check_arch(arch)]

    def set_archs(self, archs: Sequence[ViTResArch | Sequence[Sequence[Any]]]) -> None:
        """Several members: a batch is split into ``len(archs)`` parts, one per member."""
        if not archs:
            raise ConfigError("ViTResSuperNet.set_archs: give at least one architecture")
        self.archs = [self.check_arch(a) for a in archs]

    # -------------------------------------------------------------------------- computing

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> logits (B, num_classes); with several members, each computes its
        part of the batch (in order)."""
        if len(self.archs) == 1:
            return self._member_forward(x, self.archs[0])
        parts = [p for p in torch.tensor_split(x, len(self.archs)) if p.shape[0]]
        return torch.cat(
            [self._member_forward(p, a) for p, a in zip(parts, self.archs, strict=False)]
        )

    def _member_forward(self, x: torch.Tensor, arch: ViTResArch) -> torch.Tensor:
        net, d = self.net, arch.stages[0].dim
        pe = net.patch_embed
        x = pe.act(pe.bn1(pe.conv1(x)))
        shortcut = x
        x = pe.act(pe.bn3(pe.conv3(pe.act(pe.bn2(pe.conv2(x))))))
        x = F.conv2d(x + shortcut, pe.proj.weight[:d], pe.proj.bias[:d], pe.proj.stride)
        x = x.flatten(2).mT
        cls = net.cls_token[..., :d].expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + net.pos_embed[..., :d]
        for s, (stage, spec) in enumerate(zip(net.stages, arch.stages, strict=True)):
            if s > 0:
                x = _reduce(stage.downsample, x, d, spec.dim)
            d = spec.dim
            for block, block_spec in zip(stage.blocks, spec.blocks, strict=False):
                x = _block(block, x, d, block_spec)
        x = F.layer_norm(x, (d,), net.norm.weight[:d], net.norm.bias[:d], net.norm.eps)
        return F.linear(x[:, 0], net.head.weight[:, :d], net.head.bias)

    @torch.no_grad()
    def member_state_dict(self, arch: ViTResArch | None = None) -> dict[str, torch.Tensor]:
        """The weights of the active member (or ``arch``), keyed as its own
        :class:`ViTResNAS` (built with the same sizes) names them: copies of the slices."""
        arch = self.archs[0] if arch is None else self.check_arch(arch)
        shapes = ViTResNAS(arch, device="meta", **self.build_kwargs).state_dict()
        full = self.net.state_dict()
        out = {}
        for key, ref in shapes.items():
            tensor = full[key]
            if key.endswith(("attn.qkv.weight", "attn.qkv.bias")):
                inner = ref.shape[0] // 3  # (3 x heads x head_dim) rows, q then k then v
                tensor = tensor.view(3, -1, *tensor.shape[1:])[:, :inner]
                tensor = tensor.reshape(3 * inner, *tensor.shape[2:])
            out[key] = tensor[tuple(slice(0, n) for n in ref.shape)].clone()
        return out


def _reduce(m: nn.Module, x: torch.Tensor, d_in: int, d_out: int) -> torch.Tensor:
    """A sliced :class:`ResidualSpatialReduction` from ``d_in`` to ``d_out`` channels."""
    T, (H, W) = m.num_prefix_tokens, m.grid_size

    def to_map(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], H, W)

    shortcut = torch.cat([x[:, :T], m.pool(to_map(x[:, T:])).flatten(2).mT], dim=1)
    shortcut = F.pad(shortcut, (0, d_out - d_in))
    x = F.layer_norm(x, (d_in,), m.norm.weight[:d_in], m.norm.bias[:d_in], m.norm.eps)
    conv = m.conv
    patches = F.conv2d(to_map(x[:, T:]), conv.weight[:d_out, :d_in], conv.bias[:d_out],
                       conv.stride, conv.padding)  # fmt: skip
    patches = patches.flatten(2).mT + m.pos_embed[..., :d_out]
    tt = m.token_transform
    prefix = F.linear(x[:, :T], tt.weight[:d_out, :d_in], tt.bias[:d_out])
    return torch.cat([prefix, patches], dim=1) + shortcut


def _block(m: nn.Module, x: torch.Tensor, d: int, spec: BlockSpec) -> torch.Tensor:
    """A sliced transformer block of width ``d`` with ``spec``'s heads and MLP."""
    B, N, _ = x.shape
    attn, inner, hidden = m.attn, spec.num_heads * spec.head_dim, spec.mlp_hidden
    h = F.layer_norm(x, (d,), m.norm1.weight[:d], m.norm1.bias[:d], m.norm1.eps)
    w = attn.qkv.weight.view(3, -1, attn.qkv.weight.shape[1])[:, :inner, :d]
    b = attn.qkv.bias.view(3, -1)[:, :inner]
    qkv = F.linear(h, w.reshape(3 * inner, d), b.reshape(3 * inner))
    q, k, v = qkv.reshape(B, N, 3, spec.num_heads, spec.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    drop = attn.attn_drop if m.training else 0.0
    h = F.scaled_dot_product_attention(q, k, v, dropout_p=drop).transpose(1, 2).reshape(B, N, inner)
    x = x + F.linear(h, attn.proj.weight[:d, :inner], attn.proj.bias[:d])
    h = F.layer_norm(x, (d,), m.norm2.weight[:d], m.norm2.bias[:d], m.norm2.eps)
    mlp = m.mlp
    h = F.gelu(F.linear(h, mlp.fc1.weight[:hidden, :d], mlp.fc1.bias[:hidden]))
    return x + F.linear(h, mlp.fc2.weight[:d, :hidden], mlp.fc2.bias[:d])
