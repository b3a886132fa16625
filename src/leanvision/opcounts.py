"""The op-count registry: what one forward costs, and how a custom op or layer says so.

This is the ground floor (see ``DESIGN.md``): layers and kernels register their counters here
at the top of their own file, at import, and :func:`leanvision.profiling.count_ops` reads the
registry. Nothing registers at ``eval()`` or forward time.

* :class:`OpCounts`: the counts of one forward and their conventions.
* :func:`register_module_counter`: a layer type counted by its own function *instead of* the
  aten ops its forward runs (adder, binary, quantized layers).
* :func:`register_op_handler`: a FLOP formula for an operator the stock counter does not know
  (a native kernel). A custom op may be named ``"namespace::name"`` before its library is
  loaded: the name is resolved when counting, once the op exists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from leanvision.errors import ConfigError

__all__ = [
    "ModuleCounter",
    "OpCounts",
    "counter_for",
    "op_handlers",
    "register_module_counter",
    "register_op_handler",
]

ModuleCounter = Callable[[nn.Module, tuple[Any, ...], Any], "OpCounts"]


@dataclass
class OpCounts:
    """Operation counts of one forward pass at a given input size.

    Conventions (handlers of custom layers must follow them):

    * ``macs``: every multiply-accumulate, whatever its precision (fp32 and int8 alike).
    * ``muls`` / ``adds``: every multiplication / addition; a MAC is one of each, so a plain
      conv or linear layer has ``macs == muls == adds``. An adder layer reports only ``adds``.
    * ``int8_macs``: the part of ``macs`` (and so of ``muls`` and ``adds``) run by int8 kernels;
      the energy estimate prices those at int8 rates.
    * ``int_adds``: the part of ``adds`` run in integer arithmetic outside int8 MACs (the
      subtract-and-accumulate of an int8/int16 adder layer).
    * ``bitops``: binary operations (one XNOR + popcount contribution per bit).
    * ``by_op``: per op kind, in MACs (or the op's own unit: adds, bit-ops), for reports.

    Attributes:
        macs: Multiply-accumulates.
        adds: Additions.
        muls: Multiplications.
        bitops: Binary (XNOR/popcount) operations.
        by_op: Count per op kind.
        int8_macs: MACs done by int8 kernels (a subset of ``macs``).
        int_adds: Integer additions that are not part of int8 MACs (a subset of ``adds``).
    """

    macs: int = 0
    adds: int = 0
    muls: int = 0
    bitops: int = 0
    by_op: dict[str, int] = field(default_factory=dict)
    int8_macs: int = 0
    int_adds: int = 0

    @classmethod
    def from_macs(cls, n: int, op: str = "mac") -> OpCounts:
        """``n`` floating-point multiply-accumulates (one mul + one add each)."""
        return cls(macs=n, adds=n, muls=n, by_op={op: n})

    @classmethod
    def from_int8_macs(cls, n: int, op: str = "int8_mac") -> OpCounts:
        """``n`` multiply-accumulates run by an int8 kernel."""
        return cls(macs=n, adds=n, muls=n, int8_macs=n, by_op={op: n})

    @classmethod
    def from_adds(cls, n: int, op: str = "add") -> OpCounts:
        """``n`` additions and no multiplications (e.g. an adder layer)."""
        return cls(adds=n, by_op={op: n})

    @classmethod
    def from_int_adds(cls, n: int, op: str = "int_add") -> OpCounts:
        """``n`` integer additions and no multiplications (e.g. an int8 adder layer)."""
        return cls(adds=n, int_adds=n, by_op={op: n})

    @classmethod
    def from_bitops(cls, n: int, op: str = "bitop") -> OpCounts:
        """``n`` binary operations (XNOR + popcount per bit)."""
        return cls(bitops=n, by_op={op: n})

    def __add__(self, other: OpCounts) -> OpCounts:
        if not isinstance(other, OpCounts):
            return NotImplemented
        by_op = dict(self.by_op)
        for k, v in other.by_op.items():
            by_op[k] = by_op.get(k, 0) + v
        return OpCounts(
            macs=self.macs + other.macs,
            adds=self.adds + other.adds,
            muls=self.muls + other.muls,
            bitops=self.bitops + other.bitops,
            by_op=by_op,
            int8_macs=self.int8_macs + other.int8_macs,
            int_adds=self.int_adds + other.int_adds,
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the counts."""
        return asdict(self)


# --------------------------------------------------------------------------- registries

_OP_HANDLERS: dict[Any, Callable[..., int]] = {}  # operator packet or "ns::name" -> formula
_MODULE_COUNTERS: dict[type[nn.Module], ModuleCounter] = {}


def _resolve(name: str) -> Any:
    """The op packet named ``"ns::name"``, or None while its library is not loaded."""
    namespace, op = name.split("::", 1)
    try:
        return getattr(getattr(torch.ops, namespace), op)
    except (AttributeError, RuntimeError):
        return None


def register_op_handler(op: Any, handler: Callable[..., int]) -> None:
    """Count an extra operator with a FLOP formula (``torch.utils.flop_counter`` style).

    Args:
        op: The operator, e.g. ``torch.ops.mylib.myconv`` (an overload such as
            ``torch.ops.mylib.myconv.default`` is accepted too and stands for all overloads),
            or its qualified name ``"mylib::myconv"``, which may be registered before the
            library defining it is loaded (a native kernel registers so at import).
        handler: ``handler(*arg_shapes, out_shape=..., **kwargs) -> int`` returning **FLOPs**
            (2 × MACs), called with each tensor argument replaced by its shape, as PyTorch's
            own flop formulas are. A handler with ``handler._get_raw = True`` gets the raw
            arguments and ``out_val=`` instead.

    Raises:
        ConfigError: ``op`` is not a torch operator or a ``"namespace::name"`` string, or
            ``handler`` is not callable.
    """
    if isinstance(op, str):
        ns, sep, name = op.partition("::")
        if not (sep and ns.isidentifier() and name.isidentifier()):
            raise ConfigError(
                f"register_op_handler: an op name must read 'namespace::name', got {op!r}"
            )
    else:
        if isinstance(op, torch._ops.OpOverload):
            op = op.overloadpacket
        if not isinstance(op, (torch._ops.OpOverloadPacket, torch._ops.HigherOrderOperator)):
            raise ConfigError(
                f"register_op_handler: op must be a torch operator such as torch.ops.aten.mm "
                f"or a name 'namespace::name', got {op!r} of type {type(op).__name__}"
            )
    if not callable(handler):
        raise ConfigError(f"register_op_handler: handler for {op} must be callable")
    _OP_HANDLERS[op] = handler


def op_handlers() -> dict[Any, Callable[..., int]]:
    """The registered formulas by operator packet, names resolved (unloaded ones left out)."""
    out: dict[Any, Callable[..., int]] = {}
    for op, fn in _OP_HANDLERS.items():
        packet = _resolve(op) if isinstance(op, str) else op
        if packet is not None:
            out[packet] = fn
    return out


def register_module_counter(module_type: type[nn.Module], fn: ModuleCounter) -> None:
    """Count every module of ``module_type`` (and its subclasses) with ``fn``.

    ``fn(module, inputs, output) -> OpCounts`` is called after the module's forward
    (``inputs`` is the tuple of positional inputs). Its counts replace everything the flop
    counter saw inside that module. When such modules nest, only the outermost one is counted.
    A later registration for the same type replaces the earlier one.

    Raises:
        ConfigError: ``module_type`` is not an ``nn.Module`` subclass or ``fn`` not callable.
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise ConfigError(
            f"register_module_counter: module_type must be an nn.Module subclass, "
            f"got {module_type!r}"
        )
    if not callable(fn):
        raise ConfigError(
            f"register_module_counter: counter for {module_type.__name__} must be callable"
        )
    _MODULE_COUNTERS[module_type] = fn


def counter_for(module: nn.Module) -> ModuleCounter | None:
    """The registered counter of the module's most specific registered type."""
    for cls in type(module).__mro__:
        fn = _MODULE_COUNTERS.get(cls)
        if fn is not None:
            return fn
    return None
