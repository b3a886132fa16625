"""PKKD: kernel-based progressive knowledge distillation for adder networks (Xu et al.,
"Kernel Based Progressive Distillation for Adder Neural Networks", NeurIPS 2020,
arXiv 2009.13044).

A CNN of the same architecture trains *at the same time* as the adder network (progressive:
the student learns from a teacher at its own stage of training, not from a converged one).
The two nets' intermediate outputs have different distributions (an adder layer's −‖x − f‖₁
is Laplacian-like, a conv's x·f Gaussian-like), so they are compared after kernel maps:

* adder layer: the Laplacian kernel of its ℓ1 distances, ``exp(−d₁ / σ₁)``, d₁ = −Y;
* conv layer: the Gaussian kernel of its ℓ2 distances, ``exp(−d₂² / σ₂²)`` with
  ``d₂² = ‖x_patch‖² + ‖f‖² − 2·x·f`` (from the conv's input and output), then a learnable 1×1
  convolution that aligns the CNN's kernel features with the adder net's.

Loss of the adder net: cross-entropy + ``kd_weight``·T²·KL (logits, temperature T) +
``feature_weight``·Σ MSE(kernel features); the CNN trains on its own cross-entropy. The
bandwidths σ are per-batch means of the distances (the median heuristic's cheaper cousin;
the paper's exact choice is not in the notes we have) and are not back-propagated.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leanvision.engine.hooks import Hook, StepContext
from leanvision.errors import ConfigError
from leanvision.layers.adder import AdderConv2d
from leanvision.methods.common import finetune
from leanvision.methods.config import check_real
from leanvision.methods.distillation.kd import kd_loss
from leanvision.methods.lowbit.adder import AdderConfig, AdderLRHook, adderize
from leanvision.methods.registry import record_transform, register_method

__all__ = ["PKKDConfig", "PKKDHook", "default_pkkd_layers", "laplace_kernel", "gauss_kernel"]


@dataclass
class PKKDConfig(AdderConfig):
    """PKKD hyper-parameters on top of AdderNet's (``eta``, ``lr``, ...). ``layers``: adder
    layer names to distill (default: the last 3×3 adder layer of each resolution)."""

    T: float = 4.0
    kd_weight: float = 1.0
    feature_weight: float = 1.0
    layers: list[str] = field(default_factory=list)

    def validate(self) -> None:
        """AdderNet's checks; T > 0; kd_weight, feature_weight ≥ 0."""
        super().validate()
        check_real("T", self.T, 0.0, lo_open=True)
        check_real("kd_weight", self.kd_weight, 0.0)
        check_real("feature_weight", self.feature_weight, 0.0)


def laplace_kernel(y_adder: torch.Tensor) -> torch.Tensor:
    """``exp(−d₁/σ₁)`` of an adder layer's output ``y = −d₁`` (σ₁ = mean d₁, detached)."""
    d = (-y_adder).clamp_min(0)
    return torch.exp(-d / d.mean().detach().clamp_min(1e-6))


def gauss_kernel(conv: nn.Conv2d, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``exp(−d₂²/σ₂²)`` of a conv layer: ``d₂² = ‖x_patch‖² + ‖f‖² − 2·x·f`` per output
    position and filter (σ₂² = mean d₂², detached)."""
    k, s, p = conv.kernel_size, conv.stride, conv.padding
    ones = x.new_ones(1, x.shape[1], *k)
    patch_sq = F.conv2d(x * x, ones, stride=s, padding=p)  # (N, 1, H', W')
    f_sq = conv.weight.pow(2).sum((1, 2, 3)).view(1, -1, 1, 1)
    xf = y if conv.bias is None else y - conv.bias.view(1, -1, 1, 1)
    d2 = (patch_sq + f_sq - 2 * xf).clamp_min(0)
    return torch.exp(-d2 / d2.mean().detach().clamp_min(1e-6))


@torch.no_grad()
def default_pkkd_layers(model: nn.Module, input_size: tuple[int, ...]) -> list[str]:
    """The last k×k (k > 1) adder layer at each output resolution, in forward order."""
    order: list[tuple[str, tuple[int, int]]] = []
    handles = [
        m.register_forward_hook(lambda _m, _i, out, n=n: order.append((n, tuple(out.shape[2:]))))
        for n, m in model.named_modules()
        if isinstance(m, AdderConv2d) and m.kernel_size > 1
    ]
    was = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_size))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    last: dict[tuple[int, int], str] = {}
    for name, hw in order:
        last[hw] = name
    return list(last.values())


class PKKDHook(Hook):
    """Trains ``teacher`` (a CNN) alongside the adder student and adds PKKD's losses.

    Args:
        teacher: the CNN, same architecture as the student before adderizing.
        pairs: (student adder layer, teacher conv layer) names whose outputs are compared.
        T, kd_weight, feature_weight: logit KD temperature and the loss weights.
        weight_decay: the teacher's weight decay (it is trained by the student's optimizer).
    """

    name = "pkkd"

    def __init__(
        self,
        teacher: nn.Module,
        pairs: list[tuple[str, str]],
        T: float = 4.0,
        kd_weight: float = 1.0,
        feature_weight: float = 1.0,
        weight_decay: float = 5e-4,
    ) -> None:
        self.teacher, self.pairs = teacher, list(pairs)
        self.T, self.kd_weight, self.feature_weight = T, kd_weight, feature_weight
        self.weight_decay = weight_decay
        convs = [teacher.get_submodule(t) for _, t in self.pairs]
        for (_, t), c in zip(self.pairs, convs, strict=True):
            if not isinstance(c, nn.Conv2d):
                raise ConfigError(f"pkkd: teacher layer {t!r} is {type(c).__name__}, not Conv2d")
        self.align = nn.ModuleList(nn.Conv2d(c.out_channels, c.out_channels, 1) for c in convs)
        for a in self.align:  # start as the identity map
            nn.init.eye_(a.weight.view(a.out_channels, a.in_channels))
            nn.init.zeros_(a.bias)
        self._handles: list[Any] = []
        self._student: dict[str, torch.Tensor] = {}
        self._teacher: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def parameters(self) -> list[nn.Parameter]:
        return [*self.teacher.parameters(), *self.align.parameters()]

    def on_train_start(self, trainer: Any) -> None:
        self.teacher.to(trainer.device)
        self.align.to(trainer.device)
        if trainer.channels_last:
            self.teacher.to(memory_format=torch.channels_last)
        for s_name, t_name in self.pairs:
            s_mod = trainer.model.get_submodule(s_name)
            t_mod = self.teacher.get_submodule(t_name)
            self._handles.append(
                s_mod.register_forward_hook(
                    lambda _m, _i, out, n=s_name: self._student.__setitem__(n, out)
                )
            )
            self._handles.append(
                t_mod.register_forward_hook(
                    lambda _m, inp, out, n=t_name: self._teacher.__setitem__(n, (inp[0], out))
                )
            )

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        self.teacher.train()
        self.align.train()

    def before_forward(self, trainer: Any, ctx: StepContext) -> None:
        self._student.clear()
        self._teacher.clear()
        out = self.teacher(ctx.inputs)
        ctx.extras["pkkd_teacher_logits"] = out if isinstance(out, torch.Tensor) else out[0]

    def on_loss(self, trainer: Any, ctx: StepContext) -> None:
        t_logits = ctx.extras["pkkd_teacher_logits"]
        ctx.losses["teacher_ce"] = F.cross_entropy(t_logits.float(), ctx.targets)
        if self.kd_weight:
            ctx.losses["kd"] = self.kd_weight * kd_loss(ctx.logits, t_logits.detach(), self.T)
        if self.feature_weight:
            feat = ctx.logits.new_zeros(())
            for (s_name, t_name), align in zip(self.pairs, self.align, strict=True):
                x, y = self._teacher[t_name]
                conv = self.teacher.get_submodule(t_name)
                with torch.no_grad():
                    kc = gauss_kernel(conv, x.detach(), y.detach())
                feat = feat + F.mse_loss(laplace_kernel(self._student[s_name]), align(kc))
            ctx.losses["pkkd_features"] = self.feature_weight * feat

    def on_train_end(self, trainer: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.teacher.eval()

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict(), "align": self.align.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.align.load_state_dict(state["align"])


def _rebuild(model: nn.Module, arch: dict[str, Any]) -> nn.Module:
    return adderize(model, **arch)[0]


@register_method(
    "pkkd",
    family="lowbit",
    paper="PKKD, NeurIPS 2020, arXiv 2009.13044",
    config=PKKDConfig,
    rebuild=_rebuild,
)
def apply_pkkd(model: nn.Module, data: Any, cfg: PKKDConfig) -> nn.Module:
    """AdderNet trained with a co-trained CNN of the same architecture (PKKD)."""
    teacher = copy.deepcopy(model)
    student, arch = adderize(model, keep_first=cfg.keep_first, exclude=list(cfg.exclude))
    record_transform(student, model, "pkkd", arch)
    if cfg.finetune_epochs > 0:
        if data is None:
            raise ConfigError("pkkd trains: pass data=lv.load_data(...)")
        layers = list(cfg.layers) or default_pkkd_layers(student, tuple(data.input_size))
        missing = [n for n in layers if not isinstance(dict(student.named_modules()).get(n),
                                                     AdderConv2d)]  # fmt: skip
        if missing:
            raise ConfigError(f"pkkd: {missing} are not adder layers of the student")
        hook = PKKDHook(teacher, [(n, n) for n in layers], cfg.T, cfg.kd_weight,
                        cfg.feature_weight, cfg.weight_decay)  # fmt: skip
        finetune(student, data, cfg, [AdderLRHook(student, cfg.eta), hook], method="pkkd")
        # the co-trained CNN, for evaluation; not a submodule (not saved, not profiled)
        object.__setattr__(student, "pkkd_teacher", hook.teacher)
    return student.eval()
