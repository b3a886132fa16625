"""BiMLP: compact binary architectures for vision MLPs.

BiMLP: Compact Binary Architectures for Vision Multi-Layer Perceptrons, Xu, Chen and Wang,
NeurIPS 2022 (OpenReview 2ge7_pORL_n); official code: MindSpore ModelZoo
``research/cv/BiMLP/src/bimlp.py`` (eval only, derived from Wave-MLP). A Wave-MLP whose every
fully-connected layer is binary (1-bit weights with a per-output-channel scale, 1-bit
activations; :class:`~leanvision.layers.BinaryConv2d`), made trainable by three changes:

* **Binary FC with uni-shortcut** (:class:`BinaryFC`): ``RPReLU(BN(conv₁ᵦ(x + b)) + S(x + b))``
  with a learnable per-channel shift ``b`` before the sign and RPReLU (shift → PReLU → shift,
  ReActNet) after the sum. ``S`` (:class:`UniShortcut`) gives every binary layer a same-shape
  full-precision shortcut: identity, the input tiled ``k`` times when the layer expands
  channels ×k, or the mean of each group of ``k`` consecutive channels when it reduces ÷k. The
  expanding FC of an MLP also passes its shortcut through BN + RPReLU, as the official code.
* **Binary PATM** (Wave-MLP's phase-aware token mixing): amplitudes ``fc_h``/``fc_w`` and phases
  ``θ_h``/``θ_w`` are binary FCs; the waves ``[x·cos θ, x·sin θ]`` go through grouped binary
  1×7 / 7×1 token FCs (pairs of channels → one, shortcut = the pair's mean), a binary channel FC
  ``fc_c`` runs beside them, and a binary MLP + softmax reweights the three branches; then a
  binary projection. Unlike Wave-MLP the input is added to the pooled descriptor and to the
  mixture (``h·a₀ + w·a₁ + c·a₂ + x``).
* **Multi-branch block (MBB)**: besides the channel MLP ``a``, two binary depthwise 1×7 / 7×1
  branches ``b``, ``c`` read the same normalised input, mixed with two learnable scalars that
  start at zero: ``x += w₀·b + w₁·c + (1 − w₀ − w₁)·a`` (so the block starts as Wave-MLP's).
* **Cheap down-sampling**: a full-precision 1×1 conv + norm + RPReLU at the old resolution, then
  the mean of four stride-2 max-pools (kernels 2, 3, 5, 7, "same" padding), instead of
  Wave-MLP's full-precision 3×3 stride-2 conv.

The stem (7×7 stride-4 conv + norm + RPReLU), the down-sampling 1×1 convs and the classifier
stay full precision, as in the paper. Variants of the official code: ``bimlp_s`` (layers
2-2-4-2, BatchNorm) and ``bimlp_m`` (2-3-10-3, GroupNorm(1) as block/stem/down-sampling norm),
both with widths 64-128-320-512 and MLP ratio 4.

``plain=True`` builds the baseline of the benchmark, "the same macro-architecture binarized
naively" (XNOR-Net style): Wave-MLP with every FC binary, no learnable shifts, no RPReLU (BN →
Hardtanh), no uni-shortcuts, no MBB, Wave-MLP's full-precision 3×3 stride-2 down-sampling conv +
norm, and Wave-MLP's PATM mixture (no input added). ``bimlp_plain_s`` / ``bimlp_plain_m`` are
plain nets whose widths are chosen so that their OPs match ``bimlp_s`` / ``bimlp_m`` at 32×32
within 10 % (OPs = BOPs/64 + FLOPs, the convention of binary-network papers, where FLOPs are the
full-precision multiply-accumulates of our profiler).

Small inputs (CIFAR, 32×32): unless ``stem_stride`` is given, inputs whose shorter side is
below 64 px get a 3×3 stride-2 stem (total reduction 16: 16², 8², 4², 2² maps) instead of the
7×7 stride-4 one (total reduction 32, 56², 28², 14², 7² at 224).

Deployment (``methods.lowbit.pack_binary``): the 1×1 binary FCs pack to 1-bit
XNOR-popcount layers, and the grouped / depthwise 1×7 and 7×1 binary token FCs to 1-bit
grouped layers (:class:`~leanvision.layers.PackedBinaryConv2d`'s ``binary_gconv2d`` kernel).
Training: the reweighting MLP runs BatchNorm on pooled 1×1 maps, so training
needs a batch of at least 2 (as the official code).

``torch.export`` works (static shapes; the "same" padding of the pools is computed at trace time).
torch.fx traces it with the binary layers as leaves (timm's fx feature extraction). TorchScript
cannot compile it: the binary sign is an ``autograd.Function`` (its straight-through or FDA
gradient), which TorchScript cannot script.
"""

# No `from __future__ import annotations`: torch.fx copies forward's annotations into the code
# it generates, where TorchScript cannot resolve them as strings.
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, register_notrace_function, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from torch import nn

from leanvision.errors import ConfigError
from leanvision.layers.binary import BinaryConv2d, PackedBinaryConv2d

from ._device import DeviceLike, build_on, device_dtype

__all__ = [
    "BiMLP",
    "BiMLPBlock",
    "BinaryFC",
    "BinaryMlp",
    "BinaryPATM",
    "CheapDownsample",
    "LearnableBias",
    "RPReLU",
    "UniShortcut",
    "channel_shortcut",
]

# Max-pool kernels averaged by the cheap down-sampling (official code).
POOL_KERNELS = (2, 3, 5, 7)


class LearnableBias(nn.Module):
    """A learnable per-channel shift of (B, C, H, W) maps, zero at init (ReActNet's RSign
    threshold when it precedes a sign)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class RPReLU(nn.Module):
    """ReActNet's RPReLU: shift → PReLU (slope 0.25 per channel) → shift."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.move1 = LearnableBias(channels)
        self.prelu = nn.PReLU(channels, init=0.25)
        self.move2 = LearnableBias(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.move2(self.prelu(self.move1(x)))


def channel_shortcut(
    x: torch.Tensor, out_channels: int, in_channels: int | None = None
) -> torch.Tensor:
    """BiMLP's channel-matching shortcut of (B, C, H, W) maps → (B, out_channels, H, W).

    Identity when the widths agree; ``out = k·C``: the input tiled k times (channel ``j`` is
    input channel ``j mod C``); ``C = k·out``: channel ``j`` is the mean of input channels
    ``k·j … k·j + k − 1``. ``in_channels``: C when the caller knows it (a layer built for it;
    torch.fx then traces the choice), else read from ``x``.

    Raises:
        ConfigError: neither width divides the other.
    """
    c = x.shape[1] if in_channels is None else in_channels
    if out_channels == c:
        return x
    if out_channels % c == 0:
        return x.repeat(1, out_channels // c, 1, 1)
    if c % out_channels == 0:
        return x.unflatten(1, (out_channels, c // out_channels)).mean(2)
    raise ConfigError(f"uni-shortcut: {c} → {out_channels} channels needs one to divide the other")


class UniShortcut(nn.Module):
    """The full-precision shortcut of one binary layer (:func:`channel_shortcut`), optionally
    followed by BN + RPReLU (the expanding FC of an MLP, as the official code)."""

    def __init__(self, in_channels: int, out_channels: int, norm: bool = False) -> None:
        super().__init__()
        if max(in_channels, out_channels) % min(in_channels, out_channels):
            raise ConfigError(
                f"uni-shortcut: {in_channels} → {out_channels} channels needs one to divide "
                "the other"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm = nn.BatchNorm2d(out_channels) if norm else nn.Identity()
        self.act = RPReLU(out_channels) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(channel_shortcut(x, self.out_channels, self.in_channels)))


class BinaryFC(nn.Module):
    """One binary FC (1×1) or token FC (1×k / k×1, grouped) of BiMLP.

    ``RPReLU(BN(conv₁ᵦ(x + b)) + S(x + b))``; with ``plain=True`` the naive XNOR layer
    ``Hardtanh(BN(conv₁ᵦ(x)))`` (no shift, no shortcut, no RPReLU).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: 1, or (1, k) / (k, 1) token FCs ("same" zero padding).
        groups: convolution groups (``in_channels`` for depthwise).
        plain: the naive baseline layer.
        shortcut_norm: BN + RPReLU on the shortcut (the expanding FC of an MLP).
        mode: backward of the sign, ``"ste"`` or ``"fda"`` (:class:`BinaryConv2d`).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 1,
        groups: int = 1,
        *,
        plain: bool = False,
        shortcut_norm: bool = False,
        mode: str = "ste",
    ) -> None:
        super().__init__()
        k = to_2tuple(kernel_size)
        self.move = nn.Identity() if plain else LearnableBias(in_channels)
        self.conv = BinaryConv2d(
            in_channels, out_channels, k, padding=(k[0] // 2, k[1] // 2), groups=groups,
            bias=False, mode=mode,
        )  # fmt: skip
        self.norm = nn.BatchNorm2d(out_channels)
        self.shortcut = (
            None if plain else UniShortcut(in_channels, out_channels, norm=shortcut_norm)
        )
        self.act = nn.Hardtanh() if plain else RPReLU(out_channels)

    def fold_for_inference(self) -> None:
        """Called by ``pack_binary`` once the conv is packed (eval mode): the BN after the conv
        and RPReLU's first shift (``(BN(conv) + S) + m₁ = (BN(conv) + m₁) + S``) fold into the
        packed conv's scale and bias, two element-wise passes fewer per FC."""
        conv, bn = self.conv, self.norm
        if not isinstance(conv, PackedBinaryConv2d) or not isinstance(bn, nn.BatchNorm2d):
            return
        if bn.running_var is None or bn.running_mean is None:
            return  # batch statistics at inference: nothing fixed to fold
        a = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            a = a * bn.weight
        c = -a * bn.running_mean + (bn.bias if bn.bias is not None else 0.0)
        if isinstance(self.act, RPReLU) and isinstance(self.act.move1, LearnableBias):
            c = c + self.act.move1.bias.reshape(-1)
            self.act.move1 = nn.Identity()
        conv.fold_output_affine(a, c)
        self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in, H, W) → (B, out, H, W)."""
        x = self.move(x)
        y = self.norm(self.conv(x))
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        return self.act(y)


class BinaryMlp(nn.Module):
    """Two binary FCs, ``in → hidden → out`` (the channel MLP, and PATM's reweighting MLP)."""

    def __init__(
        self, in_features: int, hidden_features: int, out_features: int, *, plain: bool = False,
        mode: str = "ste",
    ) -> None:  # fmt: skip
        super().__init__()
        self.fc1 = BinaryFC(
            in_features, hidden_features, plain=plain, shortcut_norm=True, mode=mode
        )
        self.fc2 = BinaryFC(hidden_features, out_features, plain=plain, mode=mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


class BinaryPATM(nn.Module):
    """Wave-MLP's phase-aware token mixing with binary FCs (see the module docstring)."""

    def __init__(self, dim: int, *, plain: bool = False, mode: str = "ste") -> None:
        super().__init__()
        if dim % 4:
            raise ConfigError(f"BiMLP widths must be multiples of 4, got {dim}")
        fc = partial(BinaryFC, plain=plain, mode=mode)
        self.plain = plain
        self.theta_h, self.theta_w = fc(dim, dim), fc(dim, dim)
        self.fc_h, self.fc_w, self.fc_c = fc(dim, dim), fc(dim, dim), fc(dim, dim)
        # [x·cos θ, x·sin θ] (2·dim channels) → dim: groups of 2 consecutive channels
        self.tfc_h = fc(2 * dim, dim, (1, 7), groups=dim)
        self.tfc_w = fc(2 * dim, dim, (7, 1), groups=dim)
        self.reweight = BinaryMlp(dim, dim // 4, dim * 3, plain=plain, mode=mode)
        self.proj = fc(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, C, H, W)."""
        b, c = x.shape[:2]
        theta_h, theta_w = self.theta_h(x), self.theta_w(x)
        x_h, x_w = self.fc_h(x), self.fc_w(x)
        x_h = torch.cat([x_h * torch.cos(theta_h), x_h * torch.sin(theta_h)], dim=1)
        x_w = torch.cat([x_w * torch.cos(theta_w), x_w * torch.sin(theta_w)], dim=1)
        h, w, ch = self.tfc_h(x_h), self.tfc_w(x_w), self.fc_c(x)
        mix = h + w + ch if self.plain else h + w + ch + x
        a = self.reweight(F.adaptive_avg_pool2d(mix, 1))  # (B, 3C, 1, 1)
        a = a.reshape(b, c, 3).permute(2, 0, 1).softmax(dim=0)[..., None, None]
        out = h * a[0] + w * a[1] + ch * a[2]
        return self.proj(out if self.plain else out + x)


class BiMLPBlock(nn.Module):
    """``x += PATM(N₁(x))``, then the multi-branch block ``x += w₀·b + w₁·c + (1−w₀−w₁)·a``
    on ``m = N₂(x)``: ``a = MLP(m)``, ``b``/``c`` binary depthwise 1×7 / 7×1 FCs of ``m``;
    ``w`` starts at zero. ``plain=True``: ``x += MLP(N₂(x))`` (no extra branches)."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: float = 4.0,
        norm_layer: type[nn.Module] | Any = nn.BatchNorm2d,
        drop_path: float = 0.0,
        *,
        plain: bool = False,
        mode: str = "ste",
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = BinaryPATM(dim, plain=plain, mode=mode)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = BinaryMlp(dim, int(dim * mlp_ratio), dim, plain=plain, mode=mode)
        self.branch_h: nn.Module | None = None
        self.branch_w: nn.Module | None = None
        self.branch_weight: nn.Parameter | None = None
        if not plain:
            self.branch_h = BinaryFC(dim, dim, (1, 7), groups=dim, mode=mode)
            self.branch_w = BinaryFC(dim, dim, (7, 1), groups=dim, mode=mode)
            self.branch_weight = nn.Parameter(torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, C, H, W)."""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        m = self.norm2(x)
        a = self.mlp(m)
        if self.branch_weight is not None:
            w0, w1 = self.branch_weight[0], self.branch_weight[1]
            a = w0 * self.branch_h(m) + w1 * self.branch_w(m) + (1 - w0 - w1) * a
        return x + self.drop_path(a)


def _same_pad(size: int, kernel: int, stride: int = 2) -> tuple[int, int]:
    """TensorFlow/MindSpore "same" padding (before, after) of one side for a pool."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


@register_notrace_function  # the "same" paddings read the map size: a leaf for torch.fx
def mean_of_same_max_pools(x: torch.Tensor, kernels: tuple[int, ...]) -> torch.Tensor:
    """The mean of stride-2 max-pools of (B, C, H, W) ``x`` with "same" padding, one per kernel.

    Each k × k pool runs as a k × 1 pool then a 1 × k pool (the max is separable: equal
    results), channels-last. Measured at batch 1 on the CIFAR BiMLP: ATen's max-pool over NCHW
    ran 4-7x slower than channels-last; Inductor's lowering of the square 7 × 7 pools took
    about 1.6 ms of a 3.5 ms forward, the separable form a tenth of that."""
    x = x.contiguous(memory_format=torch.channels_last)
    h, w = x.shape[-2:]
    total: torch.Tensor | None = None
    for k in kernels:
        (t, b), (left, r) = _same_pad(h, k), _same_pad(w, k)
        xp = F.pad(x, (left, r, t, b), value=float("-inf"))
        pooled = F.max_pool2d(F.max_pool2d(xp, (k, 1), (2, 1)), (1, k), (1, 2))
        total = pooled if total is None else total + pooled
    assert total is not None, "at least one pool kernel"
    return total / len(kernels)


class CheapDownsample(nn.Module):
    """BiMLP's down-sampling: full-precision 1×1 conv + norm + RPReLU, then the mean of four
    stride-2 max-pools with kernels 2, 3, 5, 7 and "same" padding (output ⌈H/2⌉ × ⌈W/2⌉)."""

    def __init__(
        self, in_channels: int, out_channels: int, norm_layer: type[nn.Module] | Any
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 1, bias=True)
        self.norm = norm_layer(out_channels)
        self.act = RPReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) → (B, C_out, ⌈H/2⌉, ⌈W/2⌉)."""
        x = self.act(self.norm(self.proj(x)))
        return mean_of_same_max_pools(x, POOL_KERNELS)


class PlainDownsample(nn.Module):
    """Wave-MLP's down-sampling (the plain baseline's): full-precision 3×3 stride-2 conv + norm."""

    def __init__(
        self, in_channels: int, out_channels: int, norm_layer: type[nn.Module] | Any
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=True)
        self.norm = norm_layer(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class Stem(nn.Module):
    """Full-precision patch embedding: conv (7×7 s4 p2, or 3×3 s2 p1 for small inputs) + norm +
    RPReLU (Hardtanh in the plain baseline)."""

    def __init__(
        self, in_chans: int, dim: int, stride: int, norm_layer: type[nn.Module] | Any,
        plain: bool,
    ) -> None:  # fmt: skip
        super().__init__()
        k, p = {4: (7, 2), 2: (3, 1), 1: (3, 1)}[stride]
        self.proj = nn.Conv2d(in_chans, dim, k, stride=stride, padding=p, bias=True)
        self.norm = norm_layer(dim)
        self.act = nn.Hardtanh() if plain else RPReLU(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.proj(x)))


class BiMLPStage(nn.Module):
    """Optional down-sampling, then the stage's blocks."""

    def __init__(self, downsample: nn.Module | None, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.downsample(x))


def _norm_layer(norm: str) -> Any:
    if norm in ("bn", "batchnorm"):
        return nn.BatchNorm2d
    if norm in ("gn", "groupnorm"):
        return partial(nn.GroupNorm, 1)  # the official BiMLP-M's MyNorm
    raise ConfigError(f"BiMLP norm must be 'bn' or 'gn', got {norm!r}")


def _check_pool(global_pool: str) -> None:
    if global_pool not in ("avg", ""):
        raise ConfigError(f"BiMLP global_pool must be 'avg' or '', got {global_pool!r}")


def auto_stem_stride(img_size: int | Sequence[int]) -> int:
    """The CIFAR rule: the official stride-4 stem from 64 px up, else a stride-2 stem."""
    return 4 if min(to_2tuple(img_size)) >= 64 else 2


class BiMLP(nn.Module):
    """BiMLP (or, with ``plain=True``, the naive binary Wave-MLP baseline).

    Args:
        layers: blocks per stage.
        embed_dims: width per stage (multiples of 4).
        mlp_ratios: hidden/width ratio of the channel MLPs, one value or one per stage.
        img_size: the input size the model is built for (chooses the stem; any size runs).
        in_chans: input channels.
        num_classes: classes (0: no classifier).
        norm: ``"bn"`` (BiMLP-S) or ``"gn"`` (GroupNorm(1), BiMLP-M) for the block, stem and
            down-sampling norms; the norms inside the binary layers are always BatchNorm.
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, linear over the blocks.
        stem_stride: 4 (7×7 stem), 2 or 1 (3×3 stem); None: :func:`auto_stem_stride`.
        plain: build the naive XNOR baseline instead (see the module docstring).
        mode: backward of the binary sign, ``"ste"`` or ``"fda"``.
        global_pool: ``"avg"``, or ``""`` for none (with ``num_classes=0`` the model returns
            the feature map).
        device, dtype: where and in what floating dtype the parameters are created.
    """

    def __init__(
        self,
        layers: Sequence[int] = (2, 2, 4, 2),
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        mlp_ratios: float | Sequence[float] = 4.0,
        img_size: int | Sequence[int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        norm: str = "bn",
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        stem_stride: int | None = None,
        plain: bool = False,
        mode: str = "ste",
        global_pool: str = "avg",
        device: DeviceLike = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if len(layers) != len(embed_dims):
            raise ConfigError(f"layers {layers} and embed_dims {embed_dims} differ in length")
        _check_pool(global_pool)
        ratios = (
            [float(mlp_ratios)] * len(layers)
            if isinstance(mlp_ratios, int | float)
            else [float(r) for r in mlp_ratios]
        )
        stem_stride = auto_stem_stride(img_size) if stem_stride is None else stem_stride
        if stem_stride not in (1, 2, 4):
            raise ConfigError(f"BiMLP stem_stride must be 1, 2 or 4, got {stem_stride}")
        norm_layer = _norm_layer(norm)
        self.num_classes, self.in_chans, self.plain = num_classes, in_chans, plain
        self.global_pool, self.drop_rate = global_pool, drop_rate
        self.img_size = tuple(to_2tuple(img_size))
        # On the CPU in float32 whatever the build device and dtype (the rates are Python floats).
        dpr = torch.linspace(0, drop_path_rate, sum(layers), device="cpu").tolist()
        with build_on(device, dtype):
            self.stem = Stem(in_chans, embed_dims[0], stem_stride, norm_layer, plain)
            down = PlainDownsample if plain else CheapDownsample
            stages, self.feature_info, reduction, j = [], [], stem_stride, 0
            for i, (n, dim) in enumerate(zip(layers, embed_dims)):
                ds = None if i == 0 else down(embed_dims[i - 1], dim, norm_layer)
                reduction *= 1 if i == 0 else 2
                blocks = [
                    BiMLPBlock(dim, ratios[i], norm_layer, dpr[j + b], plain=plain, mode=mode)
                    for b in range(n)
                ]
                j += n
                stages.append(BiMLPStage(ds, blocks))
                self.feature_info.append(
                    dict(num_chs=dim, reduction=reduction, module=f"stages.{i}")
                )
            self.stages = nn.Sequential(*stages)
            self.num_features = self.head_hidden_size = embed_dims[-1]
            self.norm = norm_layer(self.num_features)
            self.head_drop = nn.Dropout(drop_rate)
            self._make_head(num_classes)
            self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Linear layers truncated-normal(0.02) as Wave-MLP; convolutions keep PyTorch's init.
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Substrings of parameters usually trained without weight decay."""
        return {"branch_weight"}

    def get_classifier(self) -> nn.Module:
        return self.head

    def _make_head(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new classifier (and pooling, if given) on the model's device, dtype and mode."""
        if global_pool is not None:
            _check_pool(global_pool)
            self.global_pool = global_pool
        with build_on(**device_dtype(self)):
            self._make_head(num_classes)
        self.head.train(self.training)

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the stages and return the selected stages' (B, C, H, W) maps.

        Args:
            x: (B, C, H, W) images.
            indices: last n stages if int, all if None, else the stage indices to return.
            norm: apply the final norm to the last stage's map before returning it.
            stop_early: stop after the last requested stage.
            output_fmt: only ``"NCHW"``.
            intermediates_only: return only the list of maps.

        Returns:
            The maps, or (final map after the norm, maps).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take, max_index = feature_take_indices(len(self.stages), indices)
        stages = self.stages[: max_index + 1] if stop_early else self.stages
        last = len(self.stages) - 1
        x = self.stem(x)
        intermediates = []
        for i, stage in enumerate(stages):
            x = stage(x)
            if i in take:
                intermediates.append(self.norm(x) if norm and i == last else x)
        if intermediates_only:
            return intermediates
        return (self.norm(x) if len(stages) == len(self.stages) else x), intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last requested one (and the norm/head if asked)."""
        take, max_index = feature_take_indices(len(self.stages), indices)
        self.stages = self.stages[: max_index + 1]
        if max_index < len(self.feature_info) - 1 or prune_norm:
            self.norm = nn.Identity()
        if prune_head or max_index < len(self.feature_info) - 1:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            self.head = nn.Identity()
            self.num_classes = 0
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → last stage's map after the final norm, (B, num_features, h, w)."""
        return self.norm(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, h, w) → logits (B, num_classes), or pooled (B, C) if ``pre_logits``."""
        if self.global_pool == "avg":
            x = x.mean(dim=(2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_bimlp(variant: str, pretrained: bool = False, **kwargs: Any) -> BiMLP:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    img_size = kwargs.get("img_size", 224)
    in_chans = kwargs.get("in_chans", 3)
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    overlay.setdefault("input_size", (in_chans, *to_2tuple(img_size)))
    return build_model_with_cfg(
        BiMLP,
        variant,
        pretrained,
        pretrained_cfg_overlay=overlay,
        feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
        **kwargs,
    )


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.proj",
        "classifier": "head",
        "paper_ids": "NeurIPS 2022 (OpenReview 2ge7_pORL_n)",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {"bimlp_s": _cfg(), "bimlp_m": _cfg(), "bimlp_plain_s": _cfg(), "bimlp_plain_m": _cfg()}
)

_S = dict(layers=(2, 2, 4, 2), embed_dims=(64, 128, 320, 512), mlp_ratios=4.0, norm="bn")
_M = dict(layers=(2, 3, 10, 3), embed_dims=(64, 128, 320, 512), mlp_ratios=4.0, norm="gn")
# Plain baselines: the same depths, widths scaled so the OPs (BOPs/64 + FLOPs) at 32×32 match
# BiMLP-S / -M within 10 % (tests/test_bimlp.py checks it).
PLAIN_S = dict(_S, embed_dims=(48, 96, 240, 384), plain=True)
PLAIN_M = dict(_M, embed_dims=(48, 96, 240, 384), plain=True)


def _build(variant: str, base: dict[str, Any], pretrained: bool, kwargs: dict[str, Any]) -> BiMLP:
    return _create_bimlp(variant, pretrained, **dict(base, **kwargs))


@register_model
def bimlp_s(pretrained: bool = False, **kwargs: Any) -> BiMLP:
    """BiMLP-S (layers 2-2-4-2, widths 64-128-320-512, BatchNorm)."""
    return _build("bimlp_s", _S, pretrained, kwargs)


@register_model
def bimlp_m(pretrained: bool = False, **kwargs: Any) -> BiMLP:
    """BiMLP-M (layers 2-3-10-3, widths 64-128-320-512, GroupNorm(1); 71.56 % ImageNet top-1,
    official MindSpore checkpoint)."""
    return _build("bimlp_m", _M, pretrained, kwargs)


@register_model
def bimlp_plain_s(pretrained: bool = False, **kwargs: Any) -> BiMLP:
    """Naive binary Wave-MLP with BiMLP-S's depths, OPs matched to ``bimlp_s`` at 32×32."""
    return _build("bimlp_plain_s", PLAIN_S, pretrained, kwargs)


@register_model
def bimlp_plain_m(pretrained: bool = False, **kwargs: Any) -> BiMLP:
    """Naive binary Wave-MLP with BiMLP-M's depths, OPs matched to ``bimlp_m`` at 32×32."""
    return _build("bimlp_plain_m", PLAIN_M, pretrained, kwargs)
