"""Structured channel removal shared by every channel-pruning method.

Our methods compute per-channel importance (ℓ1 of filters, SCOP's |γ|·(2β−1), ...); removal
goes through torch-pruning's ``DependencyGraph`` (Fang et al., DepGraph, CVPR 2023), which
finds the channels coupled by residual additions, concatenations and normalisation layers and
cuts them everywhere at once. The result is a plain, smaller ``nn.Module``.

A pruned architecture is recorded as torch-pruning's *pruning history* (module name, output or
input side, removed indices) plus the input size, so :func:`replay` rebuilds it on a freshly
built model, and ``leanvision.load`` loads the weights with ``weights_only=True`` without
unpickling a module.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.pruner import function as tpf

from leanvision.errors import ConfigError
from leanvision.profiling import count_ops

__all__ = [
    "TargetUnreachableError",
    "ScoreImportance",
    "mask_channels",
    "prune_channels",
    "replay",
]

_OUT_FNS = (
    tpf.prune_conv_out_channels,
    tpf.prune_linear_out_channels,
    tpf.prune_batchnorm_out_channels,
)


class ScoreImportance(tp.importance.Importance):
    """Group importance from per-channel scores a method computed for some modules.

    ``scores`` maps a module (a conv, linear or norm layer) to one score per output channel.
    A group's importance is the mean of the scores of its members that have them (channels
    tied by a residual addition get the mean of the layers that write them); groups with no
    scored member are not pruned.
    """

    def __init__(self, scores: Mapping[nn.Module, torch.Tensor]) -> None:
        self.scores = dict(scores)

    @torch.no_grad()
    def __call__(self, group: Any) -> torch.Tensor | None:
        total: torch.Tensor | None = None
        count = 0
        for i, (dep, idxs) in enumerate(group):
            layer, fn = dep.layer, dep.pruning_fn
            if layer not in self.scores or fn not in _OUT_FNS:
                continue
            s = self.scores[layer].detach().float().cpu()[idxs]
            if total is None:
                total = torch.zeros(len(group[0].root_idxs))
            total.index_add_(0, torch.as_tensor(group[i].root_idxs), s)
            count += 1
        return None if total is None else total / count


def _classifier(model: nn.Module) -> list[nn.Module]:
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    if isinstance(head, nn.Module) and any(True for _ in head.parameters()):
        return [head]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1:]


def _example(model: nn.Module, input_size: tuple[int, ...]) -> torch.Tensor:
    p = next(model.parameters())
    return torch.zeros(1, *input_size, device=p.device, dtype=p.dtype)


def _graph(model: nn.Module, input_size: tuple[int, ...]) -> Any:
    """torch-pruning's dependency graph of ``model``; it traces with autograd, so grad is on
    even when the caller runs under ``torch.no_grad()`` / ``inference_mode``."""
    with torch.enable_grad(), torch.inference_mode(False):
        return tp.DependencyGraph().build_dependency(model, _example(model, input_size))


def _nearest_multiples(
    model: nn.Module,
    ratio: float,
    ratio_dict: Mapping[nn.Module, float] | None,
    round_to: int,
) -> dict[nn.Module, float]:
    """Per-layer ratios whose kept widths are the multiples of ``round_to`` NEAREST to what
    ``ratio`` (or the layer's own) keeps: torch-pruning rounds the kept width down, so a
    uniform ratio can only jump between coarse MACs levels (a 64-wide layer keeps 48 or 32).
    Each ratio leaves half a channel over the multiple, which torch-pruning's truncation and
    round-down then land exactly on; a layer narrower than ``round_to`` is kept whole."""
    out: dict[nn.Module, float] = {}
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            width = m.out_channels
        elif isinstance(m, nn.Linear):
            width = m.out_features
        else:
            continue
        r = ratio if ratio_dict is None else ratio_dict.get(m, 0.0)
        keep = round(width * (1.0 - r) / round_to) * round_to
        keep = min(width, max(round_to, keep))
        out[m] = 0.0 if keep >= width else 1.0 - (keep + 0.5) / width
    return out


def _prune_once(
    model: nn.Module,
    scores: Mapping[str, torch.Tensor],
    input_size: tuple[int, ...],
    ratio: float,
    layer_ratios: Mapping[str, float] | None,
    round_to: int | None,
) -> tuple[nn.Module, list[list[Any]]]:
    pruned = copy.deepcopy(model).eval()
    modules = dict(pruned.named_modules())
    unknown = sorted(set(scores) - set(modules))
    if unknown:
        raise ConfigError(f"scores name module(s) the model does not have: {unknown[:5]}")
    importance = ScoreImportance({modules[n]: s for n, s in scores.items()})
    ratio_dict = None
    if layer_ratios:
        bad = sorted(set(layer_ratios) - set(modules))
        if bad:
            raise ConfigError(f"layer_ratios name module(s) the model does not have: {bad[:5]}")
        ratio_dict = {modules[n]: float(r) for n, r in layer_ratios.items()}
    if round_to is not None and round_to > 1:
        ratio_dict = _nearest_multiples(pruned, ratio, ratio_dict, round_to)
    with torch.enable_grad(), torch.inference_mode(False):  # the graph is traced by autograd
        pruner = tp.pruner.MetaPruner(
            pruned,
            _example(pruned, input_size),
            importance=importance,
            pruning_ratio=ratio,
            pruning_ratio_dict=ratio_dict,
            ignored_layers=_classifier(pruned),
            round_to=round_to,
        )
        try:
            pruner.step()
        except (IndexError, RuntimeError) as e:  # a graph torch-pruning mis-traces
            raise ConfigError(
                f"torch-pruning cannot remove channels of {type(model).__name__} "
                f"({type(e).__name__}: {e}); prune it with layer_ratios= on layers outside "
                "the unsupported blocks, or use another model"
            ) from e
    history = [
        [name, bool(out), [int(i) for i in idxs]] for name, out, idxs in pruner.pruning_history()
    ]
    return pruned, history


def macs_of(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward at batch 1 (``input_size``: one sample's shape)."""
    return int(count_ops(model, input_size).macs)


def prune_channels(
    model: nn.Module,
    scores: Mapping[str, torch.Tensor],
    input_size: tuple[int, ...],
    *,
    pruning_ratio: float | None = None,
    target_macs_ratio: float | None = None,
    layer_ratios: Mapping[str, float] | None = None,
    round_to: int | None = None,
    tolerance: float = 0.01,
) -> tuple[nn.Module, dict[str, Any]]:
    """Remove the lowest-scored output channels; returns the smaller model and its record.

    Give one of:

    * ``pruning_ratio``: the fraction of channels removed from every scored layer;
    * ``target_macs_ratio``: the fraction of MACs to keep (e.g. 0.5); the per-layer ratio is
      found by bisection so the pruned model's measured MACs come within ``tolerance`` of it
      (or as close as the channel counts allow, at most 5 points off);
    * ``layer_ratios``: ``{module name: ratio}`` for the named layers (others not pruned).

    Args:
        model: the model (left unchanged; a pruned copy is returned).
        scores: ``{module name: (C_out,) scores}``, higher = keep; layers without scores and
            the classifier are never pruned.
        input_size: (C, H, W) of one input, for tracing the dependency graph and MACs.
        round_to: keep channel counts a multiple of this (e.g. 8 for SIMD-friendly widths).

    Returns:
        ``(pruned, arch)``; ``arch`` = ``{"input_size", "history", "macs_before",
        "macs_after"}`` — :func:`replay` rebuilds the architecture from it.

    Raises:
        ConfigError: not exactly one target, a ratio outside its range, unknown names.
    """
    given = [x is not None for x in (pruning_ratio, target_macs_ratio, layer_ratios)]
    if sum(given) != 1:
        raise ConfigError("give exactly one of pruning_ratio, target_macs_ratio, layer_ratios")
    if not scores:
        raise ConfigError("no layer has importance scores: nothing to prune")
    input_size = tuple(int(v) for v in input_size)
    before = macs_of(model, input_size)
    if pruning_ratio is not None:
        if not 0.0 <= pruning_ratio < 1.0:
            raise ConfigError(f"pruning_ratio must be in [0, 1), got {pruning_ratio}")
        pruned, history = _prune_once(model, scores, input_size, pruning_ratio, None, round_to)
    elif layer_ratios is not None:
        bad = {k: v for k, v in layer_ratios.items() if not 0.0 <= v < 1.0}
        if bad:
            raise ConfigError(f"layer ratios must be in [0, 1), got {bad}")
        pruned, history = _prune_once(model, scores, input_size, 0.0, layer_ratios, round_to)
    else:
        if not 0.0 < target_macs_ratio <= 1.0:
            raise ConfigError(f"target_macs_ratio must be in (0, 1], got {target_macs_ratio}")
        pruned, history = _search_ratio(
            model, scores, input_size, target_macs_ratio, round_to, before, tolerance
        )
    after = macs_of(pruned, input_size)
    arch = {
        "input_size": list(input_size),
        "history": history,
        "macs_before": before,
        "macs_after": after,
    }
    return pruned, arch


class TargetUnreachableError(ConfigError):
    """No uniform pruning ratio brings the MACs within reach of ``target_macs_ratio``."""


def _search_ratio(
    model: nn.Module,
    scores: Mapping[str, torch.Tensor],
    input_size: tuple[int, ...],
    target: float,
    round_to: int | None,
    before: int,
    tolerance: float,
) -> tuple[nn.Module, list[list[Any]]]:
    """Bisection on the uniform per-layer ratio until MACs_after / MACs_before ≈ target."""
    lo, hi = 0.0, 0.99
    best: tuple[float, nn.Module, list[list[Any]]] | None = None
    for _ in range(12):
        mid = (lo + hi) / 2
        pruned, history = _prune_once(model, scores, input_size, mid, None, round_to)
        kept = macs_of(pruned, input_size) / before
        if best is None or abs(kept - target) < best[0]:
            best = (abs(kept - target), pruned, history)
        if abs(kept - target) <= tolerance:
            break
        if kept > target:
            lo = mid
        else:
            hi = mid
    assert best is not None
    err, pruned, history = best
    if err > max(tolerance, 0.05):
        raise TargetUnreachableError(
            f"cannot reach target_macs_ratio={target}: the closest pruning keeps "
            f"{target + err:.3f} or {target - err:.3f} of the MACs (the prunable layers hold "
            "too few MACs, or round_to is too coarse)"
        )
    return pruned, history


def replay(model: nn.Module, arch: Mapping[str, Any]) -> nn.Module:
    """Redo a recorded pruning on a freshly built ``model`` (in place) and return it."""
    dg = _graph(model, tuple(arch["input_size"]))
    dg.load_pruning_history([[n, bool(o), list(i)] for n, o, i in arch["history"]])
    return model


def mask_channels(model: nn.Module, arch: Mapping[str, Any]) -> nn.Module:
    """A copy of ``model`` with the recorded channels zeroed instead of removed.

    Every layer that writes a removed channel (conv/linear rows, biases, norm scale and shift)
    is zeroed, so those channels carry exact zeros: the masked model computes what the pruned
    one computes. For tests and for methods that fine-tune with masks before removal.
    """
    masked = copy.deepcopy(model).eval()
    dg = _graph(masked, tuple(arch["input_size"]))
    modules = dict(masked.named_modules())
    for name, is_out, idxs in arch["history"]:
        module = modules[name]
        pruner = dg.get_pruner_of_module(module)
        fn = pruner.prune_out_channels if is_out else pruner.prune_in_channels
        for dep, dep_idxs in dg.get_pruning_group(module, fn, list(idxs)):
            if dep.pruning_fn not in _OUT_FNS:
                continue
            layer, rows = dep.layer, torch.as_tensor(dep_idxs, dtype=torch.long)
            weight = layer.weight
            if isinstance(layer, nn.modules.conv._ConvNd) and layer.transposed:
                weight.data[:, rows] = 0
            else:
                weight.data[rows] = 0
            if getattr(layer, "bias", None) is not None:
                layer.bias.data[rows] = 0
    return masked
