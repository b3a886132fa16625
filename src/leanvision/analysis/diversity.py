"""Feature diversity of transformer blocks: how far the tokens are from all being alike.

Augmented Shortcuts for Vision Transformers, Tang et al., NeurIPS 2021 (arXiv 2106.15941), §3.1,
after Dong et al., "Attention is not all you need" (arXiv 2103.03404): the diversity of a
token matrix ``Z`` (N tokens × C channels) is its distance to the nearest rank-one matrix with
identical rows,

    r(Z) = ‖Z − 1 zᵀ‖,   z = argmin_z ‖Z − 1 zᵀ‖,

which vanishes exactly when all tokens are equal ("feature collapse"). We report it relative to
‖Z‖ so that layers of different scale compare (r is then invariant to scaling Z), per image,
averaged over the batch.

Norms: the theory of both papers bounds r with the composite norm ``‖R‖₁,∞ = √(‖R‖₁‖R‖∞)``
(max column / max row absolute sums). The default here is the Frobenius norm, for which the
minimiser ``z`` is exactly the column mean (the mean token), so r is the exact distance.
``norm="l1_linf"`` evaluates the composite norm at the same mean-token centring, which is an
upper bound of its minimum (that minimiser has no closed form); it is the choice for comparing
with the bounds' norm.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from leanvision.errors import ConfigError, UnknownNameError

__all__ = ["FeatureDiversity", "feature_diversity", "token_diversity"]

_NORMS = ("fro", "l1_linf")


@dataclass
class FeatureDiversity:
    """Per-layer feature diversity of one batch.

    Attributes:
        names: Module names of the measured blocks, in the order given (forward order by default).
        values: Relative diversity r(Z)/‖Z‖ of each block's output, averaged over the batch.
        norm: The matrix norm used ("fro" or "l1_linf").
    """

    names: list[str]
    values: list[float]
    norm: str = "fro"

    def __len__(self) -> int:
        return len(self.values)

    def as_dict(self) -> dict[str, float]:
        """``{module name: value}``."""
        return dict(zip(self.names, self.values, strict=True))


def _matrix_norm(m: torch.Tensor, norm: str) -> torch.Tensor:
    """Norm of each (N, C) matrix in (..., N, C) → (...)."""
    if norm == "fro":
        return torch.linalg.matrix_norm(m, ord="fro")
    a = m.abs()
    return torch.sqrt(a.sum(dim=-2).amax(dim=-1) * a.sum(dim=-1).amax(dim=-1))


def token_diversity(z: torch.Tensor, norm: str = "fro") -> torch.Tensor:
    """Relative distance of token matrices to rank one: ‖Z − 1 z̄ᵀ‖ / ‖Z‖ per matrix.

    Args:
        z: (..., N, C) token matrices (tokens along N).
        norm: "fro" (exact, z̄ = column mean is the minimiser) or "l1_linf" (composite norm
            of Dong et al., at the same centring).

    Returns:
        (...) values in [0, 1] for "fro"; 0 exactly when all N tokens are identical (and for an
        all-zero matrix).
    """
    if norm not in _NORMS:
        raise ConfigError(f"norm must be one of {_NORMS}, got {norm!r}")
    if z.dim() < 2:
        raise ConfigError(f"token_diversity needs (..., N, C) token matrices, got {tuple(z.shape)}")
    z = z.detach().double()
    # Centre on the first token before taking the mean: the same residual, but identical tokens
    # give exactly zero (a plain mean of N equal floats can be off by one ulp).
    shifted = z - z[..., :1, :]
    residual = shifted - shifted.mean(dim=-2, keepdim=True)
    num, den = _matrix_norm(residual, norm), _matrix_norm(z, norm)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), 0.0)


def _as_tokens(name: str, out: object) -> torch.Tensor:
    """A block's output as (B, N, C) tokens: the first tensor of a tuple; NCHW maps flattened."""
    if isinstance(out, (tuple, list)):
        out = next((o for o in out if isinstance(o, torch.Tensor)), None)
    if not isinstance(out, torch.Tensor) or out.dim() not in (3, 4):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(
            f"feature_diversity: block {name!r} returned {shape}; expected (B, N, C) tokens "
            f"or a (B, C, H, W) feature map"
        )
    return out.flatten(2).transpose(1, 2) if out.dim() == 4 else out


def _default_blocks(model: nn.Module) -> list[str]:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.Module) or len(list(blocks.children())) == 0:
        raise ConfigError(
            f"feature_diversity: {type(model).__name__} has no `blocks` container of "
            f"transformer blocks; pass blocks=[module names] (see model.named_modules())"
        )
    return [f"blocks.{n}" for n, _ in blocks.named_children()]


def feature_diversity(
    model: nn.Module,
    x: torch.Tensor,
    *,
    blocks: Sequence[str] | None = None,
    norm: str = "fro",
    exclude_prefix_tokens: bool = False,
) -> FeatureDiversity:
    """Feature diversity r(Z)/‖Z‖ of each transformer block's output (feature collapse).

    Runs one forward in eval mode under ``torch.no_grad`` with forward hooks on the blocks;
    the hooks are removed and every module's training flag restored afterwards, even on error.

    Args:
        model: A ViT-like model: timm's ``deit_*`` / ``vit_*``, leanvision's ``augvit_*``, or any
            module whose blocks output (B, N, C) tokens or (B, C, H, W) maps.
        x: Input batch, e.g. (B, 3, H, W).
        blocks: Module names to measure (as in ``model.named_modules()``); default: every child
            of ``model.blocks``.
        norm: "fro" (default, exact) or "l1_linf" (see the module docstring).
        exclude_prefix_tokens: Drop the first ``model.num_prefix_tokens`` tokens (class /
            distillation / register tokens) and measure the patch tokens only.

    Returns:
        FeatureDiversity with one value per block, averaged over the batch.

    Raises:
        ConfigError: No ``model.blocks`` and no ``blocks`` given, a bad ``norm``, a block that
            did not run or returned something other than tokens / feature maps.
        UnknownNameError: A name in ``blocks`` is not a submodule of ``model``.
    """
    if norm not in _NORMS:
        raise ConfigError(f"norm must be one of {_NORMS}, got {norm!r}")
    names = list(blocks) if blocks is not None else _default_blocks(model)
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            raise UnknownNameError("module", name, [n for n in modules if n])
    skip = int(getattr(model, "num_prefix_tokens", 0)) if exclude_prefix_tokens else 0

    values: dict[str, float] = {}

    def make_hook(name: str) -> Callable[[nn.Module, object, object], None]:
        def hook(module: nn.Module, inputs: object, out: object) -> None:
            tokens = _as_tokens(name, out)[:, skip:]
            values[name] = float(token_diversity(tokens, norm).mean())  # last call wins

        return hook

    flags = {m: m.training for m in model.modules()}
    handles = []
    try:
        for name in names:
            handles.append(modules[name].register_forward_hook(make_hook(name)))
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags.items():
            m.training = flag
    missing = [n for n in names if n not in values]
    if missing:
        raise ConfigError(f"feature_diversity: blocks {missing} did not run in the forward pass")
    return FeatureDiversity(names, [values[n] for n in names], norm)
