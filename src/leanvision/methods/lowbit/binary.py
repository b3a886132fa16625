"""Binary networks (1-bit weights and activations): the STE baseline and FDA.

``lv.compress(model, "fda")`` (Xu et al., "Learning Frequency Domain Approximation for Binary
Neural Networks", NeurIPS 2021, arXiv 2103.00841) replaces every inner convolution and linear
layer (not the stem, not the classifier) by a binary one, trains it with the Fourier-series
gradient of sign (ω = 0.1, series index n = 9 → 18 over training, n + 1 terms) and the noise
adaptation module (α cosine-annealed 0.1 → 0), then packs the weights to 1 bit: the returned
model runs XNOR-popcount kernels. ``"bnn_ste"`` is the same with the straight-through estimator
and no noise module, the usual baseline. ``"lns"`` learns each layer's binary weights with a mapping
from whole filters, supervised by sign(w) as noisy labels (:class:`LNSHook`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leanvision.deploy.packing import pack_binary
from leanvision.engine.hooks import Hook
from leanvision.errors import UnsupportedModelError
from leanvision.layers.binary import (
    BinaryConv2d,
    BinaryLinear,
    LNSBinaryConv2d,
    LNSBinaryLinear,
)
from leanvision.methods.common import FinetuneConfig, finetune
from leanvision.methods.config import check_int, check_real
from leanvision.methods.registry import record_transform, register_method
from leanvision.utils import first_conv_name, replace_modules

__all__ = [
    "BinaryConfig",
    "FDAConfig",
    "FDAScheduleHook",
    "LNSConfig",
    "LNSHook",
    "binarize_model",
    "noisy_label_loss",
    "pack_binary",
]


def _classifier_name(model: nn.Module) -> str | None:
    """The final classifier's module name (timm's ``default_cfg['classifier']``, else the
    last Linear)."""
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    names = dict(model.named_modules())
    head = cfg.get("classifier") if isinstance(cfg, dict) else None
    if isinstance(head, str) and isinstance(names.get(head), nn.Linear | nn.Conv2d):
        return head
    linears = [n for n, m in names.items() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def binarize_model(
    model: nn.Module,
    mode: str = "ste",
    noise: bool = False,
    keep_first: bool = True,
    keep_last: bool = True,
    exclude: list[str] | None = None,
    lns: bool = False,
    hardtanh: bool = True,
) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` whose convolutions and linear layers become binary ones (weights
    copied), except the stem (``keep_first``), the classifier (``keep_last``) and ``exclude``;
    ``lns=True`` makes them LNS layers (binary weights from a learned filter mapping).
    ``hardtanh=True`` also turns every ``nn.ReLU`` module into ``nn.Hardtanh``: sign() of a
    ReLU output is +1 everywhere, so binary activations need signed inputs (IR-Net / FDA's
    ResNet-20 use Hardtanh after the residual add); functional ReLUs are not seen.

    Raises:
        UnsupportedModelError: nothing to binarize.
    """
    skip = set(exclude or [])
    if keep_first:
        skip.add(first_conv_name(model))
    if keep_last:
        skip.add(_classifier_name(model))
    conv_cls, lin_cls = (LNSBinaryConv2d, LNSBinaryLinear) if lns else (BinaryConv2d, BinaryLinear)

    def where(m: nn.Module, name: str) -> bool:
        kinds = (nn.Conv2d, nn.Linear, nn.ReLU) if hardtanh else (nn.Conv2d, nn.Linear)
        return name not in skip and type(m) in kinds

    def make(m: nn.Module, name: str) -> nn.Module:
        if type(m) is nn.Conv2d:
            return conv_cls.from_conv(m, mode=mode, noise=noise)
        if type(m) is nn.Linear:
            return lin_cls.from_linear(m, mode=mode, noise=noise)
        return nn.Hardtanh()

    new = copy.deepcopy(model)
    done = [
        n for n in replace_modules(new, make, where) if type(model.get_submodule(n)) is not nn.ReLU
    ]
    if not done:
        raise UnsupportedModelError(
            f"binary: {type(model).__name__} has no convolution or linear layer to binarize "
            "(the stem and the classifier stay real)"
        )
    return new, done


class FDAScheduleHook(Hook):
    """Per epoch e of E: FDA's series index ``n = n0 + int((n1 − n0)·e/E)`` (the gradient sums
    n + 1 cosines, i = 0..n, or n with ``inclusive=False``: see ``fda_grad``) and the noise
    weight ``α = (α0/2)·(1 + cos(π·(e+1)/E))`` on every binary layer; α = 0 at the end."""

    name = "fda_schedule"

    def __init__(
        self,
        model: nn.Module,
        n0: int = 9,
        n1: int = 18,
        alpha0: float = 0.1,
        inclusive: bool = True,
    ) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, BinaryConv2d | BinaryLinear)]
        self.n0, self.n1, self.alpha0 = n0, n1, alpha0
        for m in self.layers:
            m.terms_inclusive = inclusive

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        total = max(1, trainer.config.epochs)
        terms = self.n0 + int((self.n1 - self.n0) * epoch / total)
        alpha = 0.5 * self.alpha0 * (1 + math.cos(math.pi * (epoch + 1) / total))
        for m in self.layers:
            m.terms, m.alpha = terms, alpha

    def on_train_end(self, trainer: Any) -> None:
        for m in self.layers:
            m.alpha = 0.0


@dataclass
class BinaryConfig(FinetuneConfig):
    """Binary training (STE). Paper-style recipes train binary nets with Adam."""

    keep_first: bool = True
    keep_last: bool = True
    exclude: list[str] = field(default_factory=list)
    pack: bool = True
    lr: float = 1e-3
    opt: str = "adam"
    weight_decay: float = 0.0


@dataclass
class FDAConfig(BinaryConfig):
    """FDA: ω, series index n from ``terms_start`` to ``terms_end``, and the noise adaptation
    module (α0 → 0).

    ``terms_inclusive`` (default True): the gradient sums the n + 1 cosines i = 0..n, as FDA's
    reference PyTorch code (``FDA_BinaryQuantize``: ``range(n + 1)``, n = 9 + int(9·e/E));
    False sums n (i < n), the behaviour of this toolkit before issue 17."""

    omega: float = 0.1
    terms_start: int = 9
    terms_end: int = 18
    noise: bool = True
    alpha0: float = 0.1
    terms_inclusive: bool = True

    def validate(self) -> None:
        """The binary checks; ω > 0; 1 ≤ terms_start ≤ terms_end; alpha0 ≥ 0."""
        super().validate()
        check_real("omega", self.omega, 0.0, lo_open=True)
        check_int("terms_start", self.terms_start, 1)
        check_int("terms_end", self.terms_end, self.terms_start)
        check_real("alpha0", self.alpha0, 0.0)


class LNSHook(Hook):
    """LNS's noisy supervision (Han et al., "Training Binary Neural Networks through Learning
    with Noisy Supervision", ICML 2020): sign(w) labels the mapping's logits z of every LNS
    layer, with the unbiased estimator for labels flipped at rate ρ (Natarajan et al., 2013):
    ``ℓ̃(z, ŷ) = ((1 − ρ)·ℓ(z, ŷ) − ρ·ℓ(z, −ŷ)) / (1 − 2ρ)``, ℓ the logistic loss."""

    name = "lns"

    def __init__(self, model: nn.Module, rho: float = 0.1, weight: float = 1.0) -> None:
        if not 0 <= rho < 0.5:
            from leanvision.errors import ConfigError

            raise ConfigError(f"lns: the noise rate rho must be in [0, 0.5), got {rho}")
        self.layers = [
            m for m in model.modules() if isinstance(m, LNSBinaryConv2d | LNSBinaryLinear)
        ]
        self.rho, self.weight = rho, weight

    def on_loss(self, trainer: Any, ctx: Any) -> None:
        terms = []
        for m in self.layers:
            z = m.last_logits
            if z is None:
                continue
            y = torch.where(m.weight.detach() >= 0, 1.0, -1.0).reshape_as(z)
            terms.append(noisy_label_loss(z, y, self.rho).mean())
        if terms:
            ctx.losses["lns"] = self.weight * torch.stack(terms).mean()


def noisy_label_loss(z: torch.Tensor, y: torch.Tensor, rho: float) -> torch.Tensor:
    """The unbiased logistic loss of logits ``z`` for ±1 labels ``y`` flipped at rate ``rho``
    (elementwise)."""
    return ((1 - rho) * F.softplus(-y * z) - rho * F.softplus(y * z)) / (1 - 2 * rho)


@dataclass
class LNSConfig(BinaryConfig):
    """LNS: label noise rate ρ of sign(w) and the weight of the noisy-supervision loss."""

    rho: float = 0.1
    lns_weight: float = 1.0

    def validate(self) -> None:
        """The binary checks; ρ in [0, 0.5); lns_weight ≥ 0."""
        super().validate()
        check_real("rho", self.rho, 0.0, 0.5, hi_open=True)
        check_real("lns_weight", self.lns_weight, 0.0)


def _rebuild(model: nn.Module, arch: dict[str, Any]) -> nn.Module:
    new, _ = binarize_model(
        model, arch["mode"], arch["noise"], arch["keep_first"], arch["keep_last"],
        arch["exclude"], arch.get("lns", False),
    )  # fmt: skip
    return pack_binary(new) if arch["pack"] else new


def _apply(model: nn.Module, data: Any, cfg: BinaryConfig, mode: str, method: str) -> nn.Module:
    noise = bool(getattr(cfg, "noise", False))
    lns = isinstance(cfg, LNSConfig)
    arch = {
        "lns": lns,
        "mode": mode,
        "noise": noise,
        "keep_first": cfg.keep_first,
        "keep_last": cfg.keep_last,
        "exclude": list(cfg.exclude),
        "pack": cfg.pack,
    }
    new, _ = binarize_model(model, mode, noise, cfg.keep_first, cfg.keep_last, cfg.exclude, lns)
    hooks: list[Hook] = []
    if isinstance(cfg, LNSConfig):
        hooks.append(LNSHook(new, cfg.rho, cfg.lns_weight))
    if isinstance(cfg, FDAConfig):
        for m in new.modules():
            if isinstance(m, BinaryConv2d | BinaryLinear):
                m.omega, m.terms = cfg.omega, cfg.terms_start
        hooks.append(
            FDAScheduleHook(
                new, cfg.terms_start, cfg.terms_end, cfg.alpha0, inclusive=cfg.terms_inclusive
            )
        )
    finetune(new, data, cfg, hooks, method=method)
    if cfg.pack:
        new = pack_binary(new)
    record_transform(new, model, method, arch)
    return new.eval()


@register_method(
    "bnn_ste",
    family="lowbit",
    paper="BinaryConnect/XNOR-Net STE baseline (Rastegari et al., ECCV 2016)",
    config=BinaryConfig,
    rebuild=_rebuild,
)
def apply_bnn_ste(model: nn.Module, data: Any, cfg: BinaryConfig) -> nn.Module:
    """Binarize inner convs and linears, train with the straight-through estimator, pack."""
    return _apply(model, data, cfg, "ste", "bnn_ste")


@register_method(
    "fda",
    family="lowbit",
    paper="FDA, NeurIPS 2021, arXiv 2103.00841",
    config=FDAConfig,
    rebuild=_rebuild,
)
def apply_fda(model: nn.Module, data: Any, cfg: FDAConfig) -> nn.Module:
    """Binarize inner convs and linears, train with FDA's gradient and noise module, pack."""
    return _apply(model, data, cfg, "fda", "fda")


@register_method(
    "lns",
    family="lowbit",
    paper="LNS, Training BNNs through Learning with Noisy Supervision, ICML 2020",
    config=LNSConfig,
    rebuild=_rebuild,
)
def apply_lns(model: nn.Module, data: Any, cfg: LNSConfig) -> nn.Module:
    """Binary weights from a learned filter mapping supervised by sign(w) as noisy labels."""
    return _apply(model, data, cfg, "ste", "lns")
