"""``patch_slimming``: static, top-down patch pruning of vision transformers.

Patch Slimming for Efficient Vision Transformers, Tang et al., CVPR 2022 (arXiv 2106.02852).
Patches are pruned layer by layer from the top: at the last block only the class token
matters; going down, a patch is kept at block l when the tokens kept at block l + 1 depend on
it, and the kept sets are nested (kept at l ⊇ kept at l + 1), so deeper blocks run on fewer
tokens. The masks are shared by all images (found on a calibration set), the pruned model
gathers the kept tokens before each block, and it is fine-tuned with KD from the dense model.

Impact estimate (our approximation of the paper's, which combines attention and gradients;
no official code exists): with Ā_l the calibration-mean attention of block l averaged over
heads, plus the residual identity, the impact of the tokens at block l's input is propagated
top-down from the class token, ``w_l = w_{l+1} · (½·Ā_l + ½·I)`` restricted to the kept
queries. At each block the fewest tokens whose impact covers ``1 − ε_l`` of the total are kept
(with everything kept above). ``tolerance`` ε sets the trade-off; ``target_macs_ratio``
searches the ε that meets a MACs budget. The pruned model is a layer,
:class:`leanvision.layers.SlimmedViT`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from leanvision.errors import ConfigError
from leanvision.layers.token_pruning import SlimmedViT, require_token_vit
from leanvision.methods.common import FinetuneConfig, finetune
from leanvision.methods.config import check_int, check_real
from leanvision.methods.distillation.kd import KDHook
from leanvision.methods.registry import record_transform, register_method
from leanvision.profiling import count_ops

__all__ = ["PatchSlimConfig", "attention_maps", "slim_keep_sets"]


def _check_vit(vit: nn.Module) -> None:
    require_token_vit(vit, "patch_slimming")


@torch.no_grad()
def attention_maps(
    vit: nn.Module, images: torch.Tensor, batch_size: int = 64
) -> list[torch.Tensor]:
    """Per block, the attention probabilities averaged over images and heads, (N, N)."""
    _check_vit(vit)
    vit = vit.eval()
    sums: list[torch.Tensor | None] = [None] * len(vit.blocks)
    captured: dict[int, torch.Tensor] = {}

    def make(i: int, attn: nn.Module):
        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0]
            b, n, _ = x.shape
            qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
            q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
            a = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)
            captured[i] = a.mean(1).sum(0)

        return hook

    handles = [b.attn.register_forward_pre_hook(make(i, b.attn)) for i, b in enumerate(vit.blocks)]
    try:
        count = 0
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size]
            vit(batch)
            count += batch.shape[0]
            for i in range(len(sums)):
                sums[i] = captured[i] if sums[i] is None else sums[i] + captured[i]
    finally:
        for h in handles:
            h.remove()
    return [s / count for s in sums]


def slim_keep_sets(
    attn: list[torch.Tensor], num_prefix: int, tolerance: float | list[float]
) -> list[list[int]]:
    """Top-down nested keep sets from calibration attention maps (see the module docstring).

    Args:
        attn: per block, (N, N) mean attention (rows: queries).
        num_prefix: leading class/register tokens, always kept.
        tolerance: ε per block (or one for all): the share of impact that may be dropped.
    """
    depth, n = len(attn), attn[0].shape[0]
    eps = [float(tolerance)] * depth if isinstance(tolerance, (int, float)) else list(tolerance)
    if len(eps) != depth or not all(0.0 <= e < 1.0 for e in eps):
        raise ConfigError(
            f"tolerance must be in [0, 1) per block ({depth} values), got {tolerance}"
        )
    keep_above = list(range(num_prefix))  # the output of the last block: the class token
    weight = torch.zeros(n)
    weight[:num_prefix] = 1.0
    sets: list[list[int]] = [[] for _ in range(depth)]
    for layer in reversed(range(depth)):
        mix = 0.5 * attn[layer].float() + 0.5 * torch.eye(n)
        impact = weight @ mix  # impact of every token at this block's input
        order = torch.argsort(impact, descending=True).tolist()
        total = float(impact.sum())
        kept, covered = set(keep_above), sum(float(impact[i]) for i in keep_above)
        for tok in order:
            if covered >= (1.0 - eps[layer]) * total:
                break
            if tok not in kept:
                kept.add(tok)
                covered += float(impact[tok])
        mask = torch.zeros(n)
        mask[sorted(kept)] = 1.0
        weight = impact * mask
        weight = weight / weight.sum()
        sets[layer] = sorted(kept)
        keep_above = sets[layer]
    return sets  # nested by construction: each set starts from the one above it


@dataclass
class PatchSlimConfig(FinetuneConfig):
    """Patch slimming: ``tolerance`` ε (one or per block) or ``target_macs_ratio`` (kept share
    of MACs, found by bisection on ε); ``calib_images`` from the training split (never test;
    at most ``max_steps`` batches of images when ``max_steps`` is set); fine-tuning with KD
    from the dense model (``kd_T``, ``kd_alpha``)."""

    tolerance: Any = None
    target_macs_ratio: float | None = None
    calib_images: int = 1024
    kd_T: float = 1.0
    kd_alpha: float = 0.5
    lr: float = 5e-4
    opt: str = "adamw"
    weight_decay: float = 0.05

    def validate(self) -> None:
        """The fine-tuning checks; tolerance ε in [0, 1) (one, or one per block);
        target_macs_ratio in (0, 1]; calib_images ≥ 1; kd_T > 0, kd_alpha in [0, 1]."""
        super().validate()
        eps = self.tolerance
        if isinstance(eps, list | tuple):
            if not eps:
                raise ConfigError("tolerance=[] is not allowed; allowed: a number in [0, 1), "
                                  "one per block, or None")  # fmt: skip
            for i, e in enumerate(eps):
                check_real(f"tolerance[{i}]", e, 0.0, 1.0, hi_open=True)
        elif eps is not None:
            check_real("tolerance", eps, 0.0, 1.0, hi_open=True)
        check_real("target_macs_ratio", self.target_macs_ratio, 0.0, 1.0, lo_open=True,
                   none_ok=True)  # fmt: skip
        check_int("calib_images", self.calib_images, 1)
        check_real("kd_T", self.kd_T, 0.0, lo_open=True)
        check_real("kd_alpha", self.kd_alpha, 0.0, 1.0)

    def check_inputs(self, data: Any) -> None:
        """Exactly one of tolerance, target_macs_ratio; ``data`` (calibration) is required."""
        super().check_inputs(data)
        if (self.tolerance is None) == (self.target_macs_ratio is None):
            raise ConfigError(
                "give exactly one of tolerance, target_macs_ratio; got "
                f"tolerance={self.tolerance!r}, target_macs_ratio={self.target_macs_ratio!r}"
            )
        if data is None:
            raise ConfigError("patch_slimming calibrates on data: pass data=lv.load_data(...)")


def _macs(model: nn.Module, input_size: tuple[int, ...]) -> int:
    return int(count_ops(model, input_size).macs)


def _rebuild(model: nn.Module, arch: dict[str, Any]) -> nn.Module:
    return SlimmedViT(model, arch["keep"])


@register_method(
    "patch_slimming",
    family="pruning",
    paper="Tang et al., CVPR 2022, arXiv 2106.02852",
    config=PatchSlimConfig,
    rebuild=_rebuild,
)
def apply_patch_slimming(model: nn.Module, data: Any, cfg: PatchSlimConfig) -> nn.Module:
    """Find nested static keep sets on calibration images, gather tokens, fine-tune with KD."""
    _check_vit(model)
    if data is None:
        raise ConfigError("patch_slimming calibrates on data: pass data=lv.load_data(...)")
    if (cfg.tolerance is None) == (cfg.target_macs_ratio is None):
        raise ConfigError("patch_slimming: give exactly one of tolerance, target_macs_ratio")
    n = cfg.calib_images
    if cfg.max_steps is not None:  # a smoke run: at most max_steps batches of images
        n = min(n, cfg.max_steps * (cfg.batch_size or data.batch_size))
    g = torch.Generator().manual_seed(cfg.seed)
    idx = torch.randperm(len(data.train_set), generator=g)[:n]
    images = torch.stack([data.train_set[int(i)][0] for i in idx])
    device = next(model.parameters()).device
    attn = attention_maps(copy.deepcopy(model), images.to(device))
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    input_size = tuple(data.input_size)
    if cfg.tolerance is not None:
        keep = slim_keep_sets(attn, prefix, cfg.tolerance)
    else:
        keep = _search_tolerance(model, attn, prefix, cfg.target_macs_ratio, input_size)
    slim = SlimmedViT(copy.deepcopy(model), keep)
    record_transform(slim, model, "patch_slimming", {"keep": keep})
    hooks = [KDHook(copy.deepcopy(model), cfg.kd_T, cfg.kd_alpha)] if cfg.kd_alpha > 0 else []
    finetune(slim, data, cfg, hooks, method="patch_slimming")
    return slim.eval()


def _search_tolerance(
    model: nn.Module,
    attn: list[torch.Tensor],
    prefix: int,
    target: float,
    input_size: tuple[int, ...],
) -> list[list[int]]:
    if not 0.0 < target <= 1.0:
        raise ConfigError(f"target_macs_ratio must be in (0, 1], got {target}")
    dense = _macs(model, input_size)
    lo, hi, best = 0.0, 0.999, None
    for _ in range(14):
        mid = (lo + hi) / 2
        keep = slim_keep_sets(attn, prefix, mid)
        kept = _macs(SlimmedViT(model, keep), input_size) / dense
        if best is None or abs(kept - target) < best[0]:
            best = (abs(kept - target), keep)
        if kept > target:
            lo = mid
        else:
            hi = mid
    return best[1]
