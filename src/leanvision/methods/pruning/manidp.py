"""``manidp``: manifold-regularised dynamic (per-sample) channel pruning.

Manifold Regularized Dynamic Network Pruning, Tang et al., CVPR 2021 (arXiv 2103.05861). Every
residual block gets two SE-like gates (``MaskBlock`` in the official code): from the block's
input, a gate predicts one saliency per output channel of the first conv; from the gated first
output, another for the second conv. Channels whose saliency is below a layer-wise threshold
are switched off *for that sample*; kept channels are scaled by their saliency. Thresholds are
re-estimated after every epoch so that, on the dataset mean, a ``remain_rate`` share of each
layer's channels stays; the rate anneals by cosine from 1 to ``target_remain_rate``.

Losses (official code): ``CE + λ_lasso · Σ_gates mean_i(w_i · mean_c s_ic)`` with the
complexity weight ``w_i = 1[ℓ_i < θ·ℓ̄] · ((θ·ℓ̄ − ℓ_i)/(θ·ℓ̄))^γ`` (easy samples, whose loss is
below θ = 0.5 of the last epoch's mean, are pushed to sparser sub-networks), plus
``λ_graph · Σ_gates ‖G(S) − G(F)‖² / B²``, G(Z) = Z Zᵀ of row-normalised saliencies S and
pooled features F (samples alike in features get alike sub-networks).

Inference really skips channels: at batch 1 each gated conv runs with only the kept filters
(and the kept input channels of the second conv), with batch norm folded in; larger batches
run the masked dense network, which computes the same outputs. Works on residual networks of
basic blocks: our ``resnet*_cifar`` and timm's ``resnet18/34``-style models.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from leanvision import kernels
from leanvision.derived import DerivedCache, structure_version, touch_structure
from leanvision.engine import Hook, StepContext
from leanvision.errors import ConfigError, UnsupportedModelError
from leanvision.methods.common import FinetuneConfig, cap_batches, finetune
from leanvision.methods.config import check_int, check_real
from leanvision.methods.registry import record_transform, register_method
from leanvision.opcounts import register_op_handler
from leanvision.utils import replace_modules

__all__ = [
    "ChannelGate",
    "calibrate_thresholds",
    "GatedBasicBlock",
    "GatedStage",
    "ManiDPConfig",
    "ManiDPHook",
    "complexity_weights",
    "gate_model",
    "remain_rate",
    "sample_macs",
    "set_thresholds",
    "similarity_loss",
]


class ChannelGate(nn.Module):
    """Per-sample channel saliency: avg-pool → FC → ReLU → FC (bias 1) → ReLU, clamped.

    Buffers: ``thre`` (the layer's threshold), ``saliency_sum`` / ``seen`` (dataset mean).
    """

    def __init__(self, in_ch: int, out_ch: int, squeeze: int = 2, clamp_max: float = 1000.0):
        super().__init__()
        rate = max(1, squeeze // 2) if out_ch < 80 else squeeze
        hidden = max(1, out_ch // rate)
        self.fc1 = nn.Linear(in_ch, hidden, bias=False)
        self.fc2 = nn.Linear(hidden, out_ch, bias=True)
        nn.init.kaiming_normal_(self.fc1.weight)
        # The official code also draws fc2 from Kaiming; on a trained ResNet-56 that makes the
        # saliencies (which scale the channels) grow block after block until the logits are
        # NaN. Starting fc2 at zero makes every saliency exactly 1: the gated network starts
        # as the network it was given, and the gates learn from there.
        nn.init.zeros_(self.fc2.weight)
        nn.init.constant_(self.fc2.bias, 1.0)
        self.clamp_max = clamp_max
        self.register_buffer("thre", torch.tensor(-1e4))
        self.register_buffer("saliency_sum", torch.zeros(out_ch))
        self.register_buffer("seen", torch.zeros(()))

    def saliency(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, C_in) pooled input → (B, C_out) saliency."""
        y = self.fc2(F.relu(self.fc1(pooled)))
        return y.clamp(0.0, self.clamp_max)  # ReLU, then the cap, in one op

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.saliency(x.mean(dim=(2, 3)))
        if self.training:
            self.saliency_sum += s.detach().sum(0)
            self.seen += s.shape[0]
        return s * (s.detach() >= self.thre).to(s.dtype), s


def _check_block(block: nn.Module) -> None:
    for attr in ("conv1", "bn1", "act1", "conv2", "bn2", "act2"):
        if not hasattr(block, attr):
            raise UnsupportedModelError(f"manidp: {type(block).__name__} has no {attr!r}")
    for attr in ("drop_block", "aa", "se", "drop_path"):
        m = getattr(block, attr, None)
        if m is not None and not isinstance(m, nn.Identity):
            raise UnsupportedModelError(f"manidp: blocks with {attr} are not supported")
    if block.conv1.groups != 1 or block.conv2.groups != 1:
        raise UnsupportedModelError(
            "manidp: grouped convolutions in basic blocks are not supported"
        )


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """``conv`` then ``bn`` (eval) as one conv's weight and bias (torch's own fusion)."""
    w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var,
                                bn.eps, bn.weight, bn.bias)  # fmt: skip
    return w.detach(), b.detach()


_serials = itertools.count()
# buffers nothing at inference reads (they change in training)
_NOT_SOURCES = frozenset({"num_batches_tracked", "saliency_sum", "seen"})
_Slots = list[tuple[dict[str, Any], str]]


class _Native(NamedTuple):
    """The fused kernel's arguments after ``x`` (and the shortcut): the block's own tensors
    (see ``kernels/csrc/gated_block.cpp``), read by the kernel as they are at each call."""

    params: list[torch.Tensor]  # 20: conv, bias, BN x 4 for both convs, then both gates
    meta: list[int]  # stride1, pad1, stride2, pad2
    eps: list[float]  # the two batch norms' eps
    cap: float  # the gates' clamp


class _Args(NamedTuple):
    """A block's kernel set-up: its arguments, or None with (where the kernel would apply)
    why not, and a number that changes whenever it is made again (stages key their plan on
    it)."""

    native: _Native | None
    why_not: str | None  # "disabled" (use_native off), "not-built"; None: does not apply
    serial: int


class GatedBasicBlock(nn.Module):
    """A basic residual block with ManiDP gates on both convolutions (see module docstring).

    Batch-1 inference never serves stale weights: the fused kernel reads the block's own
    tensors at every call (it folds batch norm itself), so ``load_state_dict``, in-place edits
    and ``param.data = ...`` count at once; its argument list is made again when a tensor or
    submodule is replaced (``module.weight = nn.Parameter(...)``, ``.to()``, assigning loads),
    ``use_native`` or a gate's clamp changes. The ATen path's BN-folded copies are rebuilt
    whenever a tensor they come from changes (a version check per call).

    Attributes:
        records: in training, ``[(saliency, pooled feature)]`` of both gates (for the losses).
        last_macs: at batch-1 inference, the MACs the two convolutions really ran.
        use_native: run the fused kernel where it applies (False: always the ATen batch-1
            path, for comparisons).
    """

    def __init__(self, block: nn.Module, squeeze: int = 2, clamp_max: float = 1000.0) -> None:
        super().__init__()
        _check_block(block)
        self.block = block
        self.gate1 = ChannelGate(
            block.conv1.in_channels, block.conv1.out_channels, squeeze, clamp_max
        )
        self.gate2 = ChannelGate(
            block.conv1.out_channels, block.conv2.out_channels, squeeze, clamp_max
        )
        self.records: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._last_macs = 0
        self._last_native: tuple[Any, ...] | None = None
        self._args_cache: DerivedCache[_Args] = DerivedCache()
        self._copied: DerivedCache[None] = DerivedCache()  # weights the kernel gets as copies
        self._folded_cache: DerivedCache[tuple[torch.Tensor, ...]] = DerivedCache()
        self._shortcut_cache: DerivedCache[tuple[Any, ...] | None] = DerivedCache()
        self._slots: tuple[int, _Slots, _Slots] = (-1, [], [])
        self.use_native = True

    def train(self, mode: bool = True) -> GatedBasicBlock:
        super().train(mode)
        if not mode:  # ready before any forward (a profiler must know the kernel's op first)
            self._args()
        return self

    def _apply(self, fn: Any, recurse: bool = True) -> GatedBasicBlock:
        # .to() / .float() / .cuda() replace buffers without any hook: the kernel's argument
        # list (and every other block's, cheaply) is made again at the next call
        touch_structure()
        return super()._apply(fn, recurse)

    # ------------------------------------------------------------ derived state, kept fresh

    def _sources(self, which: int) -> list[torch.Tensor]:
        """The tensors a folded copy derives from: 0, the convs' and BNs'; 1, the shortcut's.
        Looked up through the modules' dicts; where they live is found again when a module,
        parameter or buffer was set anywhere (:func:`structure_version`)."""
        slots = self._slots
        if slots[0] != structure_version():
            b, ds = self.block, self.block.downsample
            slots = self._slots = (
                structure_version(),
                _slots_of([b.conv1, b.bn1, b.conv2, b.bn2]),
                _slots_of(list(ds.modules())) if ds is not None else [],
            )
        return _lookup(slots[1 + which])

    def _args(self) -> _Args:
        """The fused kernel's set-up, made again when a tensor or module was replaced."""
        gates = self._modules  # not nn.Module.__getattr__: this runs every batch-1 forward
        key = (
            structure_version(), self.use_native, gates["gate1"].clamp_max,
            gates["gate2"].clamp_max,
        )  # fmt: skip
        args = self._args_cache.get((), self._make_args, key)
        if self._copied.stale():  # a copied (channels-last) weight changed: copy it again
            self._args_cache.clear()
            args = self._args_cache.get((), self._make_args, key)
        return args

    def _folded_weights(self) -> tuple[torch.Tensor, ...]:
        """(w1, b1, w2, b2) with BN folded in, for the ATen path."""
        b = self.block
        return self._folded_cache.get(
            self._sources(0), lambda: (*_fold(b.conv1, b.bn1), *_fold(b.conv2, b.bn2))
        )

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """The block's shortcut at batch-1 inference (a conv + BN projection folded)."""
        downsample = self.block.downsample
        if downsample is None:
            return x
        folded = self._shortcut_cache.get(self._sources(1), self._fold_shortcut)
        return downsample(x) if folded is None else F.conv2d(x, *folded)

    @torch.no_grad()
    def _fold_shortcut(self) -> tuple[Any, ...] | None:
        ds = self.block.downsample
        if (
            isinstance(ds, nn.Sequential)
            and len(ds) == 2
            and type(ds[0]) is nn.Conv2d
            and type(ds[1]) is nn.BatchNorm2d
        ):
            conv = ds[0]
            return (*_fold(conv, ds[1]), conv.stride, conv.padding, conv.dilation, conv.groups)
        return None

    @property
    def _native(self) -> _Native | None:
        """The fused kernel's arguments (None: the ATen path runs)."""
        return self._args().native

    def _make_args(self) -> _Args:
        """The kernel's arguments where it applies: plain square convs with batch norm after
        them, ReLU, one clamp for both gates, float32 on CPU, the kernel built (else None and
        why)."""
        self._copied.clear()
        b = self.block
        c1, c2 = b.conv1, b.conv2
        plain = all(
            isinstance(c, nn.Conv2d)
            and c.dilation == (1, 1)
            and c.groups == 1
            and c.stride[0] == c.stride[1]
            and isinstance(c.padding, tuple)
            and c.padding[0] == c.padding[1]
            and c.padding_mode == "zeros"
            and c.kernel_size[0] == c.kernel_size[1] <= 8
            and c.weight.dtype == torch.float32
            and c.weight.device.type == "cpu"
            for c in (c1, c2)
        ) and all(
            type(bn) is nn.BatchNorm2d and bn.affine and bn.running_mean is not None
            for bn in (b.bn1, b.bn2)
        )
        same_cap = self.gate1.clamp_max == self.gate2.clamp_max  # the op takes one clamp
        if not (plain and same_cap and type(b.act1) is nn.ReLU and type(b.act2) is nn.ReLU):
            return _Args(None, None, next(_serials))
        if not self.use_native:
            return _Args(None, "disabled", next(_serials))
        reason = kernels.why_not("gated_block")
        if reason is not None:
            return _Args(None, reason, next(_serials))
        none = torch.empty(0)

        def conv_bn(c: nn.Conv2d, bn: nn.BatchNorm2d) -> list[torch.Tensor]:
            bias = none if c.bias is None else c.bias
            return [c.weight, bias, bn.weight, bn.bias, bn.running_mean, bn.running_var]

        def gate(g: ChannelGate) -> list[torch.Tensor]:
            return [g.fc1.weight, g.fc2.weight, g.fc2.bias, g.thre]

        params = [*conv_bn(c1, b.bn1), *conv_bn(c2, b.bn2), *gate(self.gate1), *gate(self.gate2)]
        # the kernel reads the tensors themselves, so in-place changes count at the next call;
        # one in another layout (channels-last weights) is copied once here and copied again
        # when it changes (_args checks the few copied ones), not at every call
        copied = [t for t in params if not t.is_contiguous()]
        params = [t if t.is_contiguous() else t.detach().contiguous() for t in params]
        self._copied.store(copied, None)
        native = _Native(
            params,
            [c1.stride[0], c1.padding[0], c2.stride[0], c2.padding[0]],
            [float(b.bn1.eps), float(b.bn2.eps)],
            float(self.gate1.clamp_max),
        )
        return _Args(native, None, next(_serials))

    # ------------------------------------------------------------------------- forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and x.shape[0] == 1:
            args = self._args()
            if args.native is not None and _native_wins(x):
                return self._forward_native(x, args.native)
            if args.native is not None or args.why_not is not None:
                kernels.fell_back(self, _why_aten(args, x))
            return self._forward_sparse(x)
        b = self.block
        shortcut = x if b.downsample is None else b.downsample(x)
        m1, s1 = self.gate1(x)
        h = b.act1(b.bn1(b.conv1(x)))
        f1 = h.mean(dim=(2, 3))
        h = h * m1[:, :, None, None]
        m2, s2 = self.gate2(h)
        h = b.bn2(b.conv2(h))
        f2 = h.mean(dim=(2, 3))
        h = h * m2[:, :, None, None]
        if self.training:
            self.records = [(s1, f1), (s2, f2)]
        return b.act2(h + shortcut)

    @property
    def last_macs(self) -> int:
        """MACs the gated convolutions (and gates) really ran in the last batch-1 forward."""
        if self._last_native is not None:  # computed when asked: it costs a sync per block
            self._last_macs = _native_macs(*self._last_native)
            self._last_native = None
        return self._last_macs

    @last_macs.setter
    def last_macs(self, value: int) -> None:
        self._last_macs, self._last_native = value, None

    def _forward_native(self, x: torch.Tensor, native: _Native) -> torch.Tensor:
        call = (x, self._shortcut(x), native.params, native.meta, native.eps, native.cap)
        with torch.no_grad():  # the kernel has no backward: it runs as inference
            out, counts = torch.ops.leanvision.gated_basic_block(*call)
        self._last_native = (call, out, counts)
        return out

    @torch.no_grad()
    def _forward_sparse(self, x: torch.Tensor) -> torch.Tensor:
        """Batch 1 with ATen ops: run only the kept channels' filters (BN folded in).

        The fused native kernel (``kernels/csrc/gated_block.cpp``) does this where it applies
        (plain convs, ReLU, float32 on CPU, a compiler available) and wins.

        Each kept channel's saliency scales either its filter or its output map, whichever
        has fewer values (filters early in a 224 net, maps late in it and in CIFAR nets)."""
        b, g1, g2 = self.block, self.gate1, self.gate2
        w1, b1, w2, b2 = self._folded_weights()
        c1, c2 = b.conv1, b.conv2
        shortcut = self._shortcut(x)
        s1 = g1.saliency(x.mean(dim=(2, 3)))[0]
        k1 = _kept(s1, g1.thre)
        n1 = k1.numel()
        self.last_macs = 0
        if n1 == 0:  # h is all zero: gate 2 sees zeros and conv 2 gives its bias alone
            hidden = torch.zeros(1, g2.fc2.in_features, dtype=x.dtype, device=x.device)
            s2 = g2.fc2(hidden).clamp_(0.0, g2.clamp_max)[0]
            k2 = _kept(s2, g2.thre)
            y = (b2.index_select(0, k2) * s2.index_select(0, k2)).view(1, -1, 1, 1)
            return b.act2(shortcut.index_add(1, k2, y.expand(1, -1, *shortcut.shape[2:])))
        sc1 = s1.index_select(0, k1)
        w, bias = w1.index_select(0, k1), b1.index_select(0, k1)
        out_hw = x.shape[2] * x.shape[3] // (c1.stride[0] * c1.stride[1])
        # ReLU(z)·s = ReLU(s·z) for s > 0, so with ReLU the saliency may scale the filter
        fold = isinstance(b.act1, nn.ReLU) and w[0].numel() < out_hw
        if fold:
            w, bias = w * sc1.view(-1, 1, 1, 1), bias * sc1
        h = b.act1(F.conv2d(x, w, bias, c1.stride, c1.padding, c1.dilation))
        if not fold:
            h = h * sc1.view(1, -1, 1, 1)
        self.last_macs = _conv_macs(c1, n1, c1.in_channels, h)
        # gate 2 sees the gated activation; its zeroed channels drop out of fc1
        pooled = F.linear(h.mean(dim=(2, 3)), g2.fc1.weight.index_select(1, k1))
        s2 = g2.fc2(pooled.relu_()).clamp_(0.0, g2.clamp_max)[0]
        k2 = _kept(s2, g2.thre)
        if k2.numel() == 0:
            return b.act2(shortcut.clone())
        sc2 = s2.index_select(0, k2)
        w = w2.index_select(0, k2).index_select(1, k1)
        fold = w[0].numel() < h.shape[2] * h.shape[3] // (c2.stride[0] * c2.stride[1])
        if fold:
            y = F.conv2d(
                h,
                w * sc2.view(-1, 1, 1, 1),
                b2.index_select(0, k2) * sc2,
                c2.stride,
                c2.padding,
                c2.dilation,
            )
        else:
            y = F.conv2d(h, w, b2.index_select(0, k2), c2.stride, c2.padding, c2.dilation)
            y = y * sc2.view(1, -1, 1, 1)
        self.last_macs += _conv_macs(c2, k2.numel(), n1, y)
        return b.act2(shortcut.index_add(1, k2, y))


class GatedStage(nn.Sequential):
    """An ``nn.Sequential`` of gated blocks (same children, same state-dict keys) whose
    batch-1 inference runs each run of identity-shortcut blocks in one fused op.

    ``gated_block_chain`` runs the blocks back to back in C++, so a run of 8 blocks costs
    one Python module call and one op dispatch instead of 8 of each (about 5 us a block).
    The plan (which blocks form a chain) is derived from the blocks' kernel set-ups and made
    again whenever one of them is. Everything else (training, batches, ATen paths) is
    ``nn.Sequential``'s forward."""

    def __init__(self, *blocks: nn.Module) -> None:
        super().__init__(*blocks)
        self._plans: DerivedCache[list[Any]] = DerivedCache()

    @property
    def _plan(self) -> list[Any]:
        """The current plan: blocks, other modules and :class:`_Chain` runs, in order."""
        key = tuple(m._args().serial if isinstance(m, GatedBasicBlock) else id(m) for m in self)
        return self._plans.get((), self._make_plan, key)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or x.shape[0] != 1:
            return super().forward(x)
        for step in self._plan:
            if isinstance(step, _Chain):
                if _native_wins(x):
                    x = step(x)
                    continue
                for block in step.blocks:
                    x = block(x)
            else:
                x = step(x)
        return x

    def _make_plan(self) -> list[Any]:
        """Runs of at least two consecutive chainable blocks (with one gate clamp, which the
        op takes once) become one :class:`_Chain`."""
        plan: list[Any] = []
        run: list[GatedBasicBlock] = []
        for m in [*self, None]:
            chainable = isinstance(m, GatedBasicBlock) and _chainable(m)
            if chainable and run and m._native.cap != run[0]._native.cap:
                plan.extend([_Chain(run)] if len(run) > 1 else run)
                run = []
            if chainable:
                run.append(m)
                continue
            plan.extend([_Chain(run)] if len(run) > 1 else run)
            run = []
            if m is not None:
                plan.append(m)
        return plan


def _slots_of(modules: list[nn.Module]) -> _Slots:
    """Where the modules' own parameters and buffers live (dict, key), training counters aside."""
    return [
        (d, k)
        for m in modules
        for d in (m._parameters, m._buffers)
        for k in d
        if k not in _NOT_SOURCES
    ]


def _lookup(slots: _Slots) -> list[torch.Tensor]:
    return [t for t in (d[k] for d, k in slots) if t is not None]


def _chainable(block: GatedBasicBlock) -> bool:
    """Set up for the kernel, identity shortcut, shape-preserving convolutions."""
    native = block._native
    if native is None or block.block.downsample is not None:
        return False
    w1, w2 = native.params[0], native.params[6]
    stride1, pad1, stride2, pad2 = native.meta
    return (
        stride1 == stride2 == 1
        and 2 * pad1 == w1.shape[2] - 1
        and 2 * pad2 == w2.shape[2] - 1
        and w2.shape[0] == w1.shape[1]
    )


class _Chain:
    """Identity-shortcut blocks run by one ``gated_block_chain`` call (made from the blocks'
    kernel arguments; the stage makes a new one when a block makes new arguments)."""

    def __init__(self, blocks: list[GatedBasicBlock]) -> None:
        self.blocks = blocks
        self.natives = [b._native for b in blocks]
        self.params = [t for n in self.natives for t in n.params]
        self.meta = [v for n in self.natives for v in n.meta]
        self.eps = [v for n in self.natives for v in n.eps]
        self.cap = self.natives[0].cap

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the kernel has no backward: it runs as inference
            out, counts = torch.ops.leanvision.gated_block_chain(
                x, self.params, self.meta, self.eps, self.cap
            )
        for i, (b, n) in enumerate(zip(self.blocks, self.natives)):
            b._last_native = ((x, x, n.params, n.meta, n.eps, n.cap), out, counts[i])
        return out


def _why_aten(args: _Args, x: torch.Tensor) -> str:
    """Why a block's batch-1 forward ran ATen ops where the fused kernel applies."""
    if args.why_not is not None:
        return args.why_not
    return (
        kernels.why_not("gated_block", x) or "aten-faster"
    )  # else _native_wins said no  # _native_wins: ATen measured faster at this input size


def _native_wins(x: torch.Tensor) -> bool:
    """Whether the fused kernel beats the ATen path for this block input (measured, 2 cores).

    It does where ATen's batch-1 convolution is im2col + GEMM (inputs of at most 20480
    values: every CIFAR block, 4-6x less time at the same kept channels) and on small maps
    (14x14, 7x7: 5-35 % less); on larger maps oneDNN's convolution is 10-25 % faster."""
    return (
        x.dtype == torch.float32
        and x.device.type == "cpu"
        and (x.numel() <= 20480 or x.shape[2] * x.shape[3] <= 256)
    )


def _native_macs(args: tuple[Any, ...], out: torch.Tensor, counts: torch.Tensor) -> int:
    """MACs ``gated_basic_block(*args)`` ran: gate 1 over all inputs, n1 kept filters over
    all inputs, gate 2 over the n1 kept channels, n2 kept filters over those n1."""
    x, _, params, meta = args[:4]
    w1, w2, g1a, g1b, g2a, g2b = (params[i] for i in (0, 6, 12, 13, 16, 17))
    stride1, pad1 = int(meta[0]), int(meta[1])

    n1, n2 = counts.tolist()
    k = w1.shape[2]
    h1, w1_ = ((d + 2 * pad1 - k) // stride1 + 1 for d in x.shape[2:])
    gates = g1a.numel() + g1b.numel() + g2a.shape[0] * n1 + g2b.numel()
    conv1 = n1 * x.shape[1] * k * k * h1 * w1_
    conv2 = n2 * n1 * w2.shape[2] ** 2 * out.shape[2] * out.shape[3]
    return gates + conv1 + conv2


def _native_flops(*args: Any, out_val: Any = None, **kw: Any) -> int:
    """The profiler's handler for ``torch.ops.leanvision.gated_basic_block`` (raw values)."""
    return 2 * _native_macs(args, *out_val)


_native_flops._get_raw = True  # type: ignore[attr-defined]


def _chain_flops(*args: Any, out_val: Any = None, **kw: Any) -> int:
    """The profiler's handler for ``torch.ops.leanvision.gated_block_chain`` (raw values)."""
    x, params, meta, eps, cap = args[:5]
    out, counts = out_val
    return sum(
        2
        * _native_macs(
            (x, x, params[20 * i : 20 * i + 20], meta[4 * i : 4 * i + 4], eps, cap),
            out,
            counts[i],
        )
        for i in range(len(params) // 20)
    )


register_op_handler("leanvision::gated_basic_block", _native_flops)
register_op_handler("leanvision::gated_block_chain", _chain_flops)


_chain_flops._get_raw = True  # type: ignore[attr-defined]


def _kept(saliency: torch.Tensor, thre: torch.Tensor) -> torch.Tensor:
    """Indices of the channels the hard mask keeps with a non-zero scale."""
    t = float(thre)
    return (saliency > 0 if t <= 0 else saliency >= t).nonzero().squeeze(1)


def _conv_macs(conv: nn.Conv2d, c_out: int, c_in: int, out: torch.Tensor) -> int:
    k = conv.kernel_size[0] * conv.kernel_size[1]
    return int(c_out * c_in * k * out.shape[2] * out.shape[3])


def _is_basic_block(m: nn.Module) -> bool:
    return all(hasattr(m, a) for a in ("conv1", "bn1", "conv2", "bn2")) and not hasattr(m, "conv3")


def gate_model(model: nn.Module, squeeze: int = 2, clamp_max: float = 1000.0) -> nn.Module:
    """Wrap every basic residual block of ``model`` (in place) in a :class:`GatedBasicBlock`;
    a stage (``nn.Sequential``) of gated blocks becomes a :class:`GatedStage`."""

    def is_plain_block(m: nn.Module, name: str) -> bool:  # not a gated block's inner .block
        return (
            _is_basic_block(m)
            and not isinstance(m, GatedBasicBlock)
            and not name.endswith(".block")
        )

    def is_gated_stage(m: nn.Module, name: str) -> bool:
        return (
            type(m) is nn.Sequential
            and len(m) > 0
            and all(isinstance(b, GatedBasicBlock) for b in m)
        )

    if not replace_modules(model, lambda m, name: GatedBasicBlock(m, squeeze, clamp_max),
                           is_plain_block):  # fmt: skip
        raise UnsupportedModelError(
            f"manidp: {type(model).__name__} has no basic residual blocks (conv1/bn1/conv2/bn2); "
            "supported: resnet*_cifar and timm's resnet18/34-style models"
        )
    # stages of gated blocks run their blocks in one op
    replace_modules(
        model,
        lambda seq, name: GatedStage(OrderedDict(seq.named_children())).train(seq.training),
        is_gated_stage,
    )
    return model


def gated_blocks(model: nn.Module) -> list[GatedBasicBlock]:
    return [m for m in model.modules() if isinstance(m, GatedBasicBlock)]


def remain_rate(epoch: int, epochs: int, target: float) -> float:
    """Cosine annealing of the kept share from 1 to ``target`` (epoch counted from 1)."""
    return (1.0 - target) / 2.0 * math.cos(math.pi * epoch / epochs) + (1.0 + target) / 2.0


def complexity_weights(
    losses: torch.Tensor, mean_loss: float, thre_cls: float = 0.5, gamma: float = 1.0
) -> torch.Tensor:
    """``1[ℓ_i < θ·ℓ̄] · ((θ·ℓ̄ − ℓ_i)/(θ·ℓ̄))^γ``: easy samples get pushed to sparser nets."""
    bar = thre_cls * mean_loss
    if bar <= 0:
        return torch.zeros_like(losses)
    return (losses < bar).float() * ((bar - losses) / bar).clamp(min=1e-10).pow(gamma)


def similarity_loss(s: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """‖G(F) − G(S)‖² / B², G(Z) = Z Zᵀ over row-normalised samples (the manifold loss)."""
    b = s.shape[0]
    s, f = F.normalize(s.reshape(b, -1), dim=1), F.normalize(f.reshape(b, -1), dim=1)
    return (f @ f.T - s @ s.T).pow(2).sum() / (b * b)


class ManiDPHook(Hook):
    """ManiDP's losses, per-epoch thresholds and remain-rate schedule (see module docstring)."""

    name = "manidp"

    def __init__(
        self,
        target_remain_rate: float = 0.6,
        lambda_lasso: float = 5e-3,
        lambda_graph: float = 1.0,
        thre_cls: float = 0.5,
        gamma: float = 1.0,
        init_batches: int = 50,
    ) -> None:
        if not 0.0 < target_remain_rate <= 1.0:
            raise ConfigError(f"target_remain_rate must be in (0, 1], got {target_remain_rate}")
        self.target, self.lambda_lasso, self.lambda_graph = (
            target_remain_rate,
            lambda_lasso,
            lambda_graph,
        )
        self.thre_cls, self.gamma, self.init_batches = thre_cls, gamma, init_batches
        self.mean_loss: float | None = None
        self._epoch_losses: list[torch.Tensor] = []

    @torch.no_grad()
    def on_train_start(self, trainer: Any) -> None:
        self.blocks = gated_blocks(trainer.model)
        if not self.blocks:
            raise ConfigError("manidp: the model has no gated blocks (use gate_model first)")
        if self.mean_loss is None:  # the initial ℓ̄: the per-sample loss on training batches
            model, total, n = trainer.model, 0.0, 0
            was = model.training
            model.eval()
            batches = cap_batches(self.init_batches, trainer.config.max_steps)  # smoke runs
            for x, y in itertools.islice(trainer.train_loader, batches):
                out = model(x.to(trainer.device))
                logits = out if isinstance(out, torch.Tensor) else out[0]
                total += F.cross_entropy(logits, y.to(trainer.device), reduction="sum").item()
                n += y.shape[0]
            model.train(was)
            self.mean_loss = total / max(1, n)

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        self._epoch_losses = []
        for blk in self.blocks:
            for g in (blk.gate1, blk.gate2):
                g.saliency_sum.zero_()
                g.seen.zero_()

    def on_loss(self, trainer: Any, ctx: StepContext) -> None:
        ce = F.cross_entropy(ctx.logits.float(), ctx.targets, reduction="none")
        self._epoch_losses.append(ce.detach().cpu())
        w = complexity_weights(ce.detach(), float(self.mean_loss), self.thre_cls, self.gamma)
        lasso, graph = 0.0, 0.0
        for blk in self.blocks:
            for s, f in blk.records:
                lasso = lasso + (s.mean(dim=1) * w).mean()
                graph = graph + similarity_loss(s, f)
        ctx.losses["sparsity"] = self.lambda_lasso * lasso
        ctx.losses["manifold"] = self.lambda_graph * graph

    @torch.no_grad()
    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        if self._epoch_losses:
            self.mean_loss = float(torch.cat(self._epoch_losses).mean())
        epochs = trainer.config.epochs
        if epoch >= epochs > 1:  # keep the thresholds the last epoch trained with
            return
        set_thresholds(self.blocks, self.next_rate(epoch, epochs))
        metrics["remain_rate"] = self.next_rate(epoch, epochs)

    def next_rate(self, epoch: int, epochs: int) -> float:
        """The remain rate the thresholds set after ``epoch`` give the next epoch.

        The cosine anneal ends one epoch early, so the last epoch trains with the final
        thresholds, which are then kept as they are. The official code anneals over all
        epochs, first sets thresholds after epoch 2 and re-estimates them after the last one:
        over 400 epochs that is the same; in a 3-epoch fine-tuning the network had never run
        with its final thresholds (measured: 57 % on test against 68 % on validation with the
        thresholds it trained with).
        """
        if epochs <= 1:
            return self.target
        return remain_rate(min(epoch, epochs - 1), epochs - 1, self.target)

    def state_dict(self) -> dict[str, Any]:
        return {"mean_loss": self.mean_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean_loss = state.get("mean_loss")


@torch.no_grad()
def set_thresholds(blocks: list[GatedBasicBlock], rate: float) -> None:
    """Each gate's threshold := the k-th largest dataset-mean saliency, k = ⌈rate · C⌉, so a
    ``rate`` share of its channels stays on average (the means the gates gathered in training
    mode, ``saliency_sum / seen``)."""
    for blk in blocks:
        for g in (blk.gate1, blk.gate2):
            mean = g.saliency_sum / g.seen.clamp_min(1)
            k = max(1, math.ceil(rate * mean.numel()))
            g.thre.fill_(torch.topk(mean, k).values[-1].item())


@torch.no_grad()
def calibrate_thresholds(
    model: nn.Module, images: torch.Tensor, remain_rate: float, rounds: int = 3
) -> nn.Module:
    """Re-set a gated model's thresholds on ``images`` for a new ``remain_rate`` (in place).

    Trades accuracy for speed after training without retraining the gates. Earlier thresholds
    change what later gates see, so the means are gathered again ``rounds`` times."""
    if not 0.0 < remain_rate <= 1.0:
        raise ConfigError(f"remain_rate must be in (0, 1], got {remain_rate}")
    blocks = gated_blocks(model)
    if not blocks:
        raise ConfigError("calibrate_thresholds: the model has no gated blocks")
    if images.shape[0] < 2:
        raise ConfigError("calibrate_thresholds needs a batch of at least 2 images")
    was = model.training
    model.eval()
    gates = [g for blk in blocks for g in (blk.gate1, blk.gate2)]
    for _ in range(rounds):
        for g in gates:
            g.saliency_sum.zero_()
            g.seen.zero_()
            g.train()  # gates gather means in training mode; the rest stays in eval
        model(images)
        for g in gates:
            g.eval()
        set_thresholds(blocks, remain_rate)
    model.train(was)
    return model


@torch.no_grad()
def sample_macs(model: nn.Module, images: torch.Tensor) -> list[int]:
    """MACs each image really costs on the batch-1 path (gated convs as run, the rest dense)."""
    from leanvision.profiling import count_ops

    model = model.eval()
    blocks = gated_blocks(model)
    total = int(count_ops(model, inputs=images[:1]).macs)
    # count_ops runs a batch-1 forward: its gated convs are the sparse ones of images[0]
    static = total - sum(b.last_macs for b in blocks)
    out = []
    for x in images:
        model(x.unsqueeze(0))
        out.append(static + sum(b.last_macs for b in blocks))
    return out


@dataclass
class ManiDPConfig(FinetuneConfig):
    """ManiDP with the README's CIFAR example (dyresnet56): target remain rate 0.6,
    λ_lasso 5e-3, λ_graph 1.0, θ 0.5, γ 1, squeeze 2; SGD lr 0.05 cosine, wd 5e-4.
    ``max_steps`` caps the training and the initial loss pass (ℓ̄, 50 batches) before it."""

    target_remain_rate: float = 0.6
    lambda_lasso: float = 5e-3
    lambda_graph: float = 1.0
    thre_cls: float = 0.5
    gamma: float = 1.0
    squeeze: int = 2
    clamp_max: float = 1000.0
    finetune_epochs: int = 30

    def validate(self) -> None:
        """The fine-tuning checks; target_remain_rate in (0, 1]; λ_lasso, λ_graph, γ ≥ 0;
        θ > 0; squeeze ≥ 1; clamp_max > 0."""
        super().validate()
        check_real("target_remain_rate", self.target_remain_rate, 0.0, 1.0, lo_open=True)
        check_real("lambda_lasso", self.lambda_lasso, 0.0)
        check_real("lambda_graph", self.lambda_graph, 0.0)
        check_real("thre_cls", self.thre_cls, 0.0, lo_open=True)
        check_real("gamma", self.gamma, 0.0)
        check_int("squeeze", self.squeeze, 1)
        check_real("clamp_max", self.clamp_max, 0.0, lo_open=True)


def _rebuild(model: nn.Module, arch: dict[str, Any]) -> nn.Module:
    return gate_model(model, arch["squeeze"], arch["clamp_max"])


@register_method(
    "manidp",
    family="pruning",
    paper="Tang et al., CVPR 2021, arXiv 2103.05861",
    config=ManiDPConfig,
    rebuild=_rebuild,
)
def apply_manidp(model: nn.Module, data: Any, cfg: ManiDPConfig) -> nn.Module:
    """Add gates to every basic block and train them with the network (dynamic pruning)."""
    gated = gate_model(copy.deepcopy(model), cfg.squeeze, cfg.clamp_max)
    record_transform(gated, model, "manidp", {"squeeze": cfg.squeeze, "clamp_max": cfg.clamp_max})
    hook = ManiDPHook(
        cfg.target_remain_rate, cfg.lambda_lasso, cfg.lambda_graph, cfg.thre_cls, cfg.gamma
    )
    finetune(gated, data, cfg, [hook], method="manidp")
    return gated.eval()
