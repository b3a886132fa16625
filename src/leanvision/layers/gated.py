"""ManiDP's gated basic block: per-sample channel gates that really skip channels.

From Manifold Regularized Dynamic Network Pruning, Tang et al., CVPR 2021 (arXiv 2103.05861).
A :class:`GatedBasicBlock` wraps a residual block of two convolutions with two SE-like gates
(``MaskBlock`` in the official code): from the block's input, a gate predicts one saliency per
output channel of the first conv; from the gated first output, another for the second conv.
Channels whose saliency is below the gate's threshold are switched off *for that sample*; kept
channels are scaled by their saliency. The losses and thresholds that train the gates are the
method's (:mod:`leanvision.methods.pruning.manidp`).

Inference really skips channels: at batch 1 each gated conv runs with only the kept filters
(and the kept input channels of the second conv), with batch norm folded in, through the fused
native kernel (``kernels/csrc/gated_block.cpp``) where it applies and wins, else ATen ops;
larger batches run the masked dense network, which computes the same outputs. A
:class:`GatedStage` runs each run of identity-shortcut gated blocks in one fused op.
"""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from leanvision import kernels
from leanvision.derived import DerivedCache, structure_version, touch_structure
from leanvision.errors import UnsupportedModelError
from leanvision.opcounts import register_op_handler

__all__ = ["ChannelGate", "GatedBasicBlock", "GatedStage", "gated_blocks"]


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
            raise UnsupportedModelError(f"GatedBasicBlock: {type(block).__name__} has no {attr!r}")
    for attr in ("drop_block", "aa", "se", "drop_path"):
        m = getattr(block, attr, None)
        if m is not None and not isinstance(m, nn.Identity):
            raise UnsupportedModelError(f"GatedBasicBlock: blocks with {attr} are not supported")
    if block.conv1.groups != 1 or block.conv2.groups != 1:
        raise UnsupportedModelError(
            "GatedBasicBlock: grouped convolutions in basic blocks are not supported"
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


def gated_blocks(model: nn.Module) -> list[GatedBasicBlock]:
    """The gated blocks of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, GatedBasicBlock)]
