"""CPU inference with leanvision's direct 3×3 convolution (:class:`~leanvision.layers.
FusedConv3x3`, ``kernels/csrc/conv3x3.cpp``).

:func:`optimize_for_cpu` folds batch norm, fuses each eligible
convolution with the ReLU and the residual add that follow it, times kernel and ATen on the
layer's real shape and keeps whichever is faster, so a dense and a pruned model get the same
treatment.

    fast, choices = lv.optimize_for_cpu(model, input_size=(3, 32, 32), batch=32)
"""

from __future__ import annotations

import copy
import operator
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from leanvision.deploy.fold import fold_batchnorm
from leanvision.errors import ConfigError
from leanvision.layers.conv3x3 import FusedConv3x3, eligible, kernel_runs
from leanvision.layers.ghost import FusedGhost3x3, ghost_eligible
from leanvision.layers.int8_conv3x3 import Int8Conv3x3, Int8Ghost3x3, has_int8_kernel
from leanvision.profiling import compare
from leanvision.shapes import check_batch, eval_mode, guarded_forward, resolve_input_size

__all__ = [
    "ConvChoice",
    "freeze_kernel_calls",
    "optimize_for_cpu",
    "quantize_for_cpu",
    "script_frozen",
]

_RELU_FUNCS = {torch.relu, torch.relu_, F.relu}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}


@dataclass
class ConvChoice:
    """What :func:`optimize_for_cpu` did with one convolution."""

    layer: str
    shape: tuple[int, ...]  # input (N, C, H, W)
    out_channels: int
    fused: str  # "", "relu", "add", "add+relu"; a Ghost module: "ghost+bn[+add][+relu]"
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


class _AtenGhost(nn.Module):
    """The unfused Ghost module, BN and epilogue as ATen runs them (with the concatenation)."""

    def __init__(self, primary: nn.Conv2d, cheap: nn.Conv2d, norm: nn.Module, relu: bool):
        super().__init__()
        self.primary, self.cheap, self.norm, self.relu = primary, cheap, norm, relu

    def forward(self, x: torch.Tensor, r: torch.Tensor | None = None) -> torch.Tensor:
        p = self.primary(x)
        y = self.norm(torch.cat([p, self.cheap(p)], dim=1))
        y = y + r if r is not None else y
        return F.relu(y) if self.relu else y


def _ghost_pattern(
    node: fx.Node, modules: dict[str, nn.Module]
) -> tuple[list[fx.Node], None, str] | None:
    """``norm(cat([p, cheap(p)], 1))`` with ``p = primary(x)``, as a Ghost module (s = 2) and
    the host's BN trace: the four nodes, when :func:`ghost_eligible` holds for their modules."""
    if node.op != "call_function" or node.target is not torch.cat or not node.args:
        return None
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    parts = node.args[0]
    if dim != 1 or not isinstance(parts, (list, tuple)) or len(parts) != 2:
        return None
    p, c = parts
    if not all(isinstance(n, fx.Node) and n.op == "call_module" for n in (p, c)):
        return None
    if c.args != (p,) or set(p.users) != {c, node} or set(c.users) != {node}:
        return None
    users = list(node.users)
    if len(users) != 1 or users[0].op != "call_module" or users[0].args != (node,):
        return None
    norm = users[0]
    if not ghost_eligible(modules[p.target], modules[c.target], modules[norm.target]):
        return None
    return [p, c, node, norm], None, "ghost+bn"


def _candidates(
    gm: fx.GraphModule, modules: dict[str, nn.Module]
) -> Iterator[tuple[list[fx.Node], nn.Conv2d | None, str]]:
    """Ghost modules first, then the eligible 3×3 convolutions left in the graph once they
    are handled (a Ghost module's primary convolution is one when ATen ran the module
    faster)."""
    yield from [g for node in list(gm.graph.nodes) if (g := _ghost_pattern(node, modules))]
    convs = [n for n in gm.graph.nodes if n.op == "call_module" and eligible(modules.get(n.target))]
    for node in convs:
        yield [node], modules[node.target], ""


def _epilogue(
    head: list[fx.Node], modules: dict[str, nn.Module]
) -> tuple[list[fx.Node], fx.Node | None, bool]:
    """The nodes to replace (``head`` plus the ReLU, or the residual add and its ReLU, that
    follow its last node), the residual operand, and whether a ReLU is fused."""
    last, chain, residual, relu = head[-1], list(head), None, False
    users = list(last.users)
    if len(users) == 1 and _is_relu(users[0], modules):
        chain.append(users[0])
        relu = True
    elif len(users) == 1 and (residual := _residual_of(users[0], last)) is not None:
        chain.append(users[0])
        after = list(users[0].users)
        if len(after) == 1 and _is_relu(after[0], modules):
            chain.append(after[0])
            relu = True
    return chain, residual, relu


def _time_pair(aten: Any, fused: Any, args: tuple[torch.Tensor, ...], repeats: int) -> tuple:
    stats = compare(
        {"aten": lambda: aten(*args), "kernel": lambda: fused(*args)},
        tuple(args[0].shape[1:]),
        batch=args[0].shape[0],
        repeats=repeats,
        warmup=3,
    )
    return stats["aten"].median_ms, stats["kernel"].median_ms


def optimize_for_cpu(
    model: nn.Module,
    input_size: Sequence[int] | None = None,
    *,
    batch: int = 1,
    autotune: bool = True,
    repeats: int = 15,
) -> tuple[nn.Module, list[ConvChoice]]:
    """A channels-last, BN-folded inference copy of ``model`` whose 3×3 convolutions run
    leanvision's kernel where it is faster than ATen's, with the ReLU / residual add after
    each fused in.

    Args:
        model: Any module torch.fx can trace (CIFAR ResNets, timm ResNets, ...).
        input_size: One image's shape without the batch, (C, H, W); None: the model's
            ``pretrained_cfg["input_size"]`` (the rule: :mod:`leanvision.shapes`).
        batch: Images per call. The layers are timed at the shapes a
            ``(batch, *input_size)`` input gives them.
        autotune: Time kernel and ATen per layer (at the current thread count) and keep the
            faster; ``False`` uses the kernel for every eligible layer.
        repeats: Timed runs per layer and implementation.

    Returns:
        The optimized module (a ``torch.fx.GraphModule``) and one :class:`ConvChoice` per
        eligible convolution. Without the kernel (no AVX-512 build, as with
        ``LEANVISION_KERNEL_ISA=AVX2``, or no compiler) the model comes back BN-folded and
        channels-last with no choices.

    Raises:
        ConfigError: ``model`` cannot be traced by torch.fx, ``batch`` is not an int >= 1, or
            ``input_size`` (given or recorded) is not ``(C, H, W)``.
        InputShapeError: The model cannot run on a ``(batch, *input_size)`` input; an
            ``input_size`` that is evidently batch first says so.
    """
    from torch.fx.passes.shape_prop import ShapeProp

    size = resolve_input_size(model, input_size)
    n = check_batch(batch)
    example = torch.randn(n, *size)
    with eval_mode(model), torch.no_grad():
        guarded_forward(model, example, size, batch=n)
    if len(size) != 3:
        raise ConfigError(
            f"optimize_for_cpu runs 2-D image models: input_size must be one image's shape "
            f"(C, H, W), got {size}"
        )
    gm = fold_batchnorm(model, strict=True)[0]  # a deep copy with every conv → BN pair folded
    gm = gm.to(memory_format=torch.channels_last)
    if not kernel_runs():
        return gm, []
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):  # drop Identity modules so the patterns are adjacent
        if node.op == "call_module" and type(modules[node.target]) is nn.Identity:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.recompile()
    example = example.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ShapeProp(gm).propagate(example)

    choices = []
    for head, layer, kind in _candidates(gm, modules):
        chain, residual, relu = _epilogue(head, modules)
        first = head[0]
        if layer is None:  # a Ghost module: primary, cheap, cat, BN
            primary, cheap, norm = (modules[n.target] for n in (head[0], head[1], head[3]))
            fused: nn.Module = FusedGhost3x3(primary, cheap, norm, relu, residual is not None)
            aten: nn.Module = _AtenGhost(primary, cheap, norm, relu)
            name, out_channels = first.target.rsplit(".", 1)[0], norm.num_features
        else:
            fused = FusedConv3x3(layer, relu=relu, residual=residual is not None)
            aten, name, out_channels = _AtenChain(layer, relu), first.target, layer.out_channels
        shape = tuple(first.args[0].meta["tensor_meta"].shape)
        x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
        args: tuple[torch.Tensor, ...] = (x,)
        if residual is not None:
            r = torch.randn(*residual.meta["tensor_meta"].shape)
            args = (x, r.contiguous(memory_format=torch.channels_last))
        kind += ("+add" if residual is not None else "") + ("+relu" if relu else "")
        with torch.inference_mode():
            a_ms, k_ms = _time_pair(aten, fused, args, repeats) if autotune else (0.0, 0.0)
        use = not autotune or k_ms < a_ms
        choices.append(
            ConvChoice(
                name,
                shape,
                out_channels,
                kind.lstrip("+"),
                round(a_ms, 4),
                round(k_ms, 4),
                "kernel" if use else "aten",
            )
        )
        if not use:
            continue
        target = f"{name.replace('.', '_')}_fused"
        gm.add_module(target, fused)
        with gm.graph.inserting_after(chain[-1]):
            new = gm.graph.call_module(
                target, (first.args[0],) if residual is None else (first.args[0], residual)
            )
        new.meta = dict(chain[-1].meta)
        chain[-1].replace_all_uses_with(new)
        for old in reversed(chain):
            gm.graph.erase_node(old)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm, choices


def freeze_kernel_calls(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of an :func:`optimize_for_cpu` module whose fused layers are direct calls of
    their native ops on frozen copies of the packed weights (``kernel_call``): no Python
    module, no per-call checks or cache lookups per layer (about 10 µs each, a third of a
    batch-1 ResNet-56's time on 2 threads).

    The copy runs only what the kernels take, which its caller guarantees: float32 CPU
    inputs of the shape it was optimized for, no autograd (``lv.deploy``'s runtime checks the
    input and runs under ``inference_mode``). Its constants do not follow later edits of
    ``gm``'s weights.
    """
    gm = copy.deepcopy(gm)
    modules = dict(gm.named_modules())
    graph = gm.graph
    count = 0
    for node in list(graph.nodes):
        layer = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(layer, (FusedConv3x3, FusedGhost3x3, Int8Conv3x3, Int8Ghost3x3)):
            continue
        op, weights, relu, *scalars = layer.kernel_call()
        residual = _residual_arg(node)
        with graph.inserting_before(node):
            consts = []
            for t in weights:
                name = f"_frozen{count}"
                count += 1
                gm.register_buffer(name, t)
                consts.append(graph.get_attr(name))
            args = (node.args[0], *consts, residual, relu, *(scalars[0] if scalars else ()))
            call = graph.call_function(op, args)
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        graph.erase_node(node)
    graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def _residual_arg(node: fx.Node) -> Any:
    """The residual a fused layer's call node passes (None when it has none)."""
    return node.args[1] if len(node.args) > 1 else node.kwargs.get("residual")


def _u8_maps(gm: fx.GraphModule) -> int:
    """Maps that only int8 layers read become u8: the int8 layer that writes one (after its
    ReLU) writes it on its readers' input grid (``out_scale``), the readers take it as their
    input (already quantized) or as a u8 residual (``residual_scale``). A map any other node
    reads (a shortcut left in ATen, the pooling, the output) stays fp32. Returns how many
    maps became u8."""
    modules = dict(gm.named_modules())

    def int8(n: fx.Node) -> Any:
        layer = modules.get(n.target) if n.op == "call_module" else None
        return layer if isinstance(layer, (Int8Conv3x3, Int8Ghost3x3)) else None

    count = 0
    for node in gm.graph.nodes:
        layer = int8(node)
        readers = list(node.users)
        if layer is None or not layer.relu or not readers or not all(map(int8, readers)):
            continue
        scales = {int8(u).input_scale for u in readers if u.args[0] is node}
        if len(scales) != 1 or any(
            u.args[0] is not node and _residual_arg(u) is not node for u in readers
        ):
            continue
        (scale,) = scales
        layer.set_u8_maps(scale, layer.residual_scale)
        for u in readers:
            if _residual_arg(u) is node:
                reader = int8(u)
                reader.set_u8_maps(reader.out_scale, scale)
        count += 1
    return count


def script_frozen(gm: nn.Module, example: torch.Tensor) -> tuple[nn.Module, bool]:
    """The TorchScript trace of a :func:`freeze_kernel_calls` module: the same op calls, run
    by TorchScript's interpreter instead of the graph's Python code (about 8 µs less per
    layer: a third of a batch-1 Ghost-ResNet-56 on 2 threads).

    ``torch.jit.trace`` is deprecated in favour of ``torch.compile`` / ``torch.export``, whose
    generated code still calls each custom op from Python (or needs a C++ build per model);
    the trace runs in the pinned PyTorch, and where it fails, or its output on a batch of
    another size than ``example``'s is not exactly ``gm``'s, ``gm`` is returned instead.

    Args:
        gm: The frozen module (inference only: inputs as its caller guarantees).
        example: An input it takes (its batch size is not baked in: checked).

    Returns:
        (the module to run, whether it is the trace).
    """
    other = torch.cat([example, example[:1]]).contiguous(memory_format=torch.channels_last)
    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # the deprecation and tracer warnings
            traced = torch.jit.trace(gm.eval(), example, check_trace=False)
            same = torch.equal(traced(other), gm(other)) and torch.equal(
                traced(example), gm(example)
            )
    except Exception:  # noqa: BLE001 (any tracing failure: run the graph as it is)
        return gm, False
    return (traced, True) if same else (gm, False)


def _nonnegative(node: Any, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node``'s output is ≥ 0 by construction: a ReLU, or a fused layer that ends in
    one."""
    if not isinstance(node, fx.Node):
        return False
    if _is_relu(node, modules):
        return True
    layer = modules.get(node.target) if node.op == "call_module" else None
    return isinstance(layer, (FusedConv3x3, FusedGhost3x3)) and layer.relu


@torch.no_grad()
def quantize_for_cpu(
    gm: fx.GraphModule, calib: Sequence[torch.Tensor], *, u8_maps: bool = True
) -> tuple[fx.GraphModule, list[str]]:
    """A copy of an :func:`optimize_for_cpu` module whose fused layers run int8 products
    (:class:`~leanvision.layers.Int8Conv3x3`, :class:`~leanvision.layers.Int8Ghost3x3`):
    static post-training quantization, weights per output channel, each layer's input per
    tensor on a u8 grid whose step is its largest value over the calibration batches / 255.

    Only layers whose input is a ReLU's output (by the graph) and never negative over the
    calibration are quantized (the u8 grid has no negative values); the rest, and every layer
    that is not fused, stay fp32. Needs the kernel with AVX512-VNNI (else nothing changes).
    With ``u8_maps``, a map read only by int8 layers is written and read as u8 (a quarter of
    the bytes, no quantizing copy; its residual use is rounded to the same grid).

    Args:
        gm: From :func:`optimize_for_cpu` (left unchanged).
        calib: Calibration batches, float (N, C, H, W) as the model takes them (validation
            images, never the test split).
        u8_maps: Keep the maps between int8 layers u8 (else every map is fp32).

    Returns:
        The copy and the names of the layers it quantized.

    Raises:
        ConfigError: no calibration batch.
    """
    if not calib:
        raise ConfigError("quantize_for_cpu needs at least one calibration batch")
    gm = copy.deepcopy(gm)
    if not has_int8_kernel():
        return gm, []
    modules = dict(gm.named_modules())
    fused = [
        n for n in gm.graph.nodes
        if n.op == "call_module" and isinstance(modules[n.target], (FusedConv3x3, FusedGhost3x3))
        and _nonnegative(n.args[0], modules)
    ]  # fmt: skip
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}

    def record(name: str) -> Any:
        def hook(_: nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0]
            lo[name] = min(lo.get(name, 0.0), float(x.min()))
            hi[name] = max(hi.get(name, 0.0), float(x.max()))

        return hook

    handles = [modules[n.target].register_forward_pre_hook(record(n.target)) for n in fused]
    try:
        with eval_mode(gm), torch.inference_mode():
            for x in calib:
                gm(x.contiguous(memory_format=torch.channels_last))
    finally:
        for h in handles:
            h.remove()
    done = []
    for node in fused:
        name = node.target
        if lo.get(name, -1.0) < 0.0 or hi.get(name, 0.0) <= 0.0:
            continue
        layer = modules[name]
        cls = Int8Ghost3x3 if isinstance(layer, FusedGhost3x3) else Int8Conv3x3
        parent, _, leaf = name.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, leaf, cls(layer, hi[name] / 255.0))
        done.append(name)
    if u8_maps:
        _u8_maps(gm)
    gm.recompile()
    return gm, done
