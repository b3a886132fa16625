"""CPU inference with leanvision's direct 3×3 convolution kernel (``csrc/conv3x3.cpp``).

oneDNN's convolution slows down per MAC on the narrow layers a pruned network is left with
(on one AVX-512 core: ~90 GMAC/s for 16 channels at 16×16, ~135 for 64 channels at 8×8), so
"pruned but not as much faster as the MACs say". The kernel runs those layers at about the
rate of the wide ones. :func:`optimize_for_cpu` folds batch norm, fuses each eligible
convolution with the ReLU and the residual add that follow it, times kernel and ATen on the
layer's real shape and keeps whichever is faster, so a dense and a pruned model get the same
treatment.

    fast, choices = lv.optimize_for_cpu(model, input_size=(32, 3, 32, 32))
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from leanvision import kernels
from leanvision.derived import DerivedCache
from leanvision.errors import ConfigError
from leanvision.opcounts import register_op_handler
from leanvision.shapes import check_conv_input

__all__ = ["ConvChoice", "FusedConv3x3", "eligible", "optimize_for_cpu"]

_RELU_FUNCS = {torch.relu, torch.relu_, F.relu}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}


def eligible(conv: nn.Module) -> bool:
    """Whether the kernel computes ``conv``: a plain float32 CPU 3×3 convolution with stride 1,
    padding 1, no dilation or groups, zero padding, and a multiple of 16 output channels."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding in ((1, 1), "same")
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and conv.out_channels % 16 == 0
        and conv.weight.dtype == torch.float32
        and conv.weight.device.type == "cpu"
    )


class FusedConv3x3(nn.Module):
    """``act(conv(x) + residual)`` for an :func:`eligible` convolution, inference only.

    Runs ``torch.ops.leanvision.conv3x3_nhwc`` when the kernel is built with its AVX-512 path
    and the call needs no gradient; otherwise (no AVX-512, no compiler, autograd, another
    device or dtype) the same result through ``F.conv2d``, and a recording profiler is told
    (``kernels.fell_back``). Keeps ``weight`` and ``bias`` in the conv's layout (state dicts
    stay readable); the packed copy the kernel reads is derived, not saved, and rebuilt
    whenever ``weight`` changes (a loaded state dict, an in-place edit, a move).

    Raises (forward):
        InputShapeError: ``x`` is not (N, C_in, H, W).
    """

    def __init__(self, conv: nn.Conv2d, relu: bool = False, residual: bool = False) -> None:
        super().__init__()
        if not eligible(conv):
            raise ConfigError(f"FusedConv3x3 cannot compute {conv} (see kernels.conv3x3.eligible)")
        self.relu, self.residual = relu, residual
        w = conv.weight.detach().clone()
        b = conv.bias.detach().clone() if conv.bias is not None else w.new_zeros(w.shape[0])
        self.register_buffer("weight", w)
        self.register_buffer("bias", b)
        self._packed: DerivedCache[torch.Tensor] = DerivedCache()

    @property
    def packed(self) -> torch.Tensor:
        """``weight`` as the kernel reads it: (9·C, O) as [ky][kx][ci][co]."""
        return self._packed.get((self.weight,), self._pack)

    def _pack(self) -> torch.Tensor:
        w = self.weight.detach()
        return w.permute(2, 3, 1, 0).reshape(-1, w.shape[0]).contiguous()

    def extra_repr(self) -> str:
        o, c = self.weight.shape[:2]
        return f"{c}, {o}, kernel_size=3, relu={self.relu}, residual={self.residual}"

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self.residual != (residual is not None):
            raise ConfigError(
                f"FusedConv3x3 built with residual={self.residual} was called "
                f"{'without' if residual is None else 'with'} a residual"
            )
        o, c = self.weight.shape[:2]
        check_conv_input(f"FusedConv3x3({c}, {o})", x, c)
        grad = torch.is_grad_enabled() and (
            x.requires_grad or (residual is not None and residual.requires_grad)
        )
        if not grad and x.device.type == "cpu" and x.dtype == torch.float32 and _kernel_ok():
            return torch.ops.leanvision.conv3x3_nhwc(x, self.packed, self.bias, residual, self.relu)
        kernels.fell_back(self, _why_not(x, grad))
        y = F.conv2d(x, self.weight, self.bias, padding=1)
        if residual is not None:
            y = y + residual
        return F.relu(y) if self.relu else y


def _kernel_ok() -> bool:
    """Whether the kernel runs here: built, with its AVX-512 path (other builds have none)."""
    return (
        kernels.capability() == "AVX512"
        and kernels.load("conv3x3")
        and kernels.path("conv3x3") != "none"
    )


def _why_not(x: torch.Tensor, grad: bool) -> str:
    if grad:
        return "autograd"
    if x.device.type != "cpu":
        return "device"
    if x.dtype != torch.float32:
        return "dtype"
    if kernels.capability() == "AVX512" and not kernels.available("conv3x3"):
        return "not-built"
    return "no-avx512"


def _conv3x3_flops(x: Any, w: Any, *rest: Any, out_shape: Any = None, **kw: Any) -> int:
    """The profiler's FLOP formula for ``conv3x3_nhwc``: 2 × output elements × 9·C_in."""
    return 2 * math.prod(out_shape) * w[0]


register_op_handler("leanvision::conv3x3_nhwc", _conv3x3_flops)


@dataclass
class ConvChoice:
    """What :func:`optimize_for_cpu` did with one convolution."""

    layer: str
    shape: tuple[int, ...]  # input (N, C, H, W)
    out_channels: int
    fused: str  # "", "relu", "add", "add+relu"
    aten_ms: float
    kernel_ms: float
    used: str  # "kernel" or "aten"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules[node.target]) is nn.ReLU
    if node.op == "call_function":
        return node.target in _RELU_FUNCS and len(node.args) == 1 and not node.kwargs
    return node.op == "call_method" and node.target in ("relu", "relu_") and len(node.args) == 1


def _residual_of(add: fx.Node, conv: fx.Node) -> fx.Node | None:
    """The other operand of ``add`` when it is ``conv + r`` (or ``r + conv``) of one shape."""
    is_add = (add.op == "call_function" and add.target in _ADD_FUNCS) or (
        add.op == "call_method" and add.target in ("add", "add_") and add.args[0] is conv
    )
    if not is_add or len(add.args) != 2 or add.kwargs:
        return None
    other = add.args[1] if add.args[0] is conv else add.args[0]
    if not isinstance(other, fx.Node) or other is conv:
        return None
    a, b = other.meta.get("tensor_meta"), conv.meta.get("tensor_meta")
    return other if a is not None and b is not None and a.shape == b.shape else None


class _AtenChain(nn.Module):
    """The unfused ``act(conv(x) + r)`` as ATen runs it: what the kernel is timed against."""

    def __init__(self, conv: nn.Conv2d, relu: bool) -> None:
        super().__init__()
        self.conv, self.relu = conv, relu

    def forward(self, x: torch.Tensor, r: torch.Tensor | None = None) -> torch.Tensor:
        y = self.conv(x)
        y = y + r if r is not None else y
        return F.relu(y) if self.relu else y


def _time_pair(aten: Any, fused: Any, args: tuple[torch.Tensor, ...], repeats: int) -> tuple:
    from leanvision.profiling import compare

    stats = compare(
        {"aten": lambda: aten(*args), "kernel": lambda: fused(*args)},
        tuple(args[0].shape),
        repeats=repeats,
        warmup=3,
    )
    return stats["aten"].median_ms, stats["kernel"].median_ms


def optimize_for_cpu(
    model: nn.Module,
    input_size: Sequence[int],
    *,
    autotune: bool = True,
    repeats: int = 15,
) -> tuple[nn.Module, list[ConvChoice]]:
    """A channels-last, BN-folded inference copy of ``model`` whose 3×3 convolutions run
    leanvision's kernel where it is faster than ATen's, with the ReLU / residual add after
    each fused in.

    Args:
        model: Any module torch.fx can trace (CIFAR ResNets, timm ResNets, ...).
        input_size: Input shape, batch first: the shapes the layers are timed at.
        autotune: Time kernel and ATen per layer (at the current thread count) and keep the
            faster; ``False`` uses the kernel for every eligible layer.
        repeats: Timed runs per layer and implementation.

    Returns:
        The optimized module (a ``torch.fx.GraphModule``) and one :class:`ConvChoice` per
        eligible convolution. Without the kernel (no AVX-512 build, as with
        ``LEANVISION_KERNEL_ISA=AVX2``, or no compiler) the model comes back BN-folded and
        channels-last with no choices.

    Raises:
        ConfigError: ``model`` cannot be traced by torch.fx, or ``input_size`` is not 4-D.
    """
    from torch.fx.experimental.optimization import fuse
    from torch.fx.passes.shape_prop import ShapeProp

    if len(input_size) != 4:
        raise ConfigError(f"optimize_for_cpu needs a 4-D input_size (N, C, H, W), got {input_size}")
    try:
        gm = fuse(model.eval())  # a deep copy with every conv → BN pair folded
    except Exception as exc:  # noqa: BLE001 - any tracing failure is the same user error
        raise ConfigError(
            f"optimize_for_cpu: torch.fx cannot trace {type(model).__name__} ({exc})"
        ) from exc
    gm = gm.to(memory_format=torch.channels_last)
    if not _kernel_ok():
        return gm, []
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):  # drop Identity modules so the patterns are adjacent
        if node.op == "call_module" and type(modules[node.target]) is nn.Identity:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.recompile()
    example = torch.randn(*input_size).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ShapeProp(gm).propagate(example)

    choices = []
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not eligible(modules[node.target]):
            continue
        conv = modules[node.target]
        chain, residual, relu = [node], None, False
        users = list(node.users)
        if len(users) == 1 and _is_relu(users[0], modules):
            chain.append(users[0])
            relu = True
        elif len(users) == 1 and (residual := _residual_of(users[0], node)) is not None:
            chain.append(users[0])
            after = list(users[0].users)
            if len(after) == 1 and _is_relu(after[0], modules):
                chain.append(after[0])
                relu = True
        fused = FusedConv3x3(conv, relu=relu, residual=residual is not None)
        shape = tuple(node.args[0].meta["tensor_meta"].shape)
        x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
        args: tuple[torch.Tensor, ...] = (x,)
        if residual is not None:
            r = torch.randn(*residual.meta["tensor_meta"].shape)
            args = (x, r.contiguous(memory_format=torch.channels_last))
        kind = ("add" if residual is not None else "") + ("+relu" if relu else "")
        aten = _AtenChain(conv, relu)
        with torch.inference_mode():
            a_ms, k_ms = _time_pair(aten, fused, args, repeats) if autotune else (0.0, 0.0)
        use = not autotune or k_ms < a_ms
        choices.append(
            ConvChoice(
                node.target,
                shape,
                conv.out_channels,
                kind.lstrip("+"),
                round(a_ms, 4),
                round(k_ms, 4),
                "kernel" if use else "aten",
            )
        )
        if not use:
            continue
        name = f"{node.target.replace('.', '_')}_fused"
        gm.add_module(name, fused)
        with gm.graph.inserting_after(chain[-1]):
            new = gm.graph.call_module(
                name, (node.args[0],) if residual is None else (node.args[0], residual)
            )
        new.meta = dict(chain[-1].meta)
        chain[-1].replace_all_uses_with(new)
        for old in reversed(chain):
            gm.graph.erase_node(old)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm, choices
