"""``scop``: Scientific Control for reliable neural network Pruning.

Tang et al., SCOP, NeurIPS 2020 (arXiv 2010.10732). Each batch is paired with as many knockoff
images (label-free samples that follow the data's statistics, see :mod:`.knockoffs`). In every
scored layer, the real half of the conv output becomes ``β ⊙ X + (1 − β) ⊙ X̃`` (X̃ the same
layer's output on the knockoff half) before its batch norm; the per-channel control factors β
(init 0.5, clamped to [0, 1]) are trained with all weights frozen (Adam lr 0.004, betas
(0.5, 0.9)) to minimise the cross-entropy of the real half. A channel whose real feature beats
its knockoff keeps β near 1. Importance is ``|γ_BN| · (β − (1 − β))``; the lowest channels of
every layer are removed (through the dependency graph), batch norm is recalibrated and the
network is fine-tuned. The official code skips the stem convolution; so does this one.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leanvision.engine import Hook, StepContext, train
from leanvision.errors import ConfigError
from leanvision.methods.common import cap_steps
from leanvision.methods.config import check_choice, check_int, check_real
from leanvision.methods.registry import register_method

from .common import ChannelPruneConfig, finish_channel_pruning, rebuild_pruned
from .knockoffs import GaussianKnockoffs, ResampledKnockoffs, collect_images

__all__ = ["ControlFactorHook", "ScopConfig", "scop_scores"]

Sampler = Callable[[int], torch.Tensor]


@dataclass
class ScopConfig(ChannelPruneConfig):
    """SCOP hyper-parameters (paper/official defaults) and the shared pruning options.

    ``knockoff``: ``"resample"`` (random other training images: exact independent draws of
    the data, what the paper's generator approximates), ``"gaussian"`` (second-order
    knockoffs fitted on ``knockoff_images`` training images with ``knockoff_components``
    principal components) or a callable ``n -> (n, C, H, W)`` (e.g. a trained generator).
    ``control_epochs`` / ``control_lr`` / ``control_max_steps``: training of the factors β
    (``max_steps`` caps it too: its optimizer steps are at most the smaller of the two caps,
    and the Gaussian knockoffs are fitted on at most ``max_steps`` batches of images).
    ``layers``: BatchNorm layers to score (default: every BatchNorm2d but the first).
    ``bn_batch_stats``: normalise with the statistics of each [real; knockoff] batch, as the
    official code does (its knockoffs come from a GAN and match the data closely). Default
    False: the trained running statistics are used, so knockoffs that differ from the data
    (our Gaussian ones) cannot shift the normalisation of the real half.
    """

    knockoff: Any = "resample"
    knockoff_images: int = 5000
    knockoff_components: int = 256
    control_epochs: int = 20
    control_lr: float = 0.004
    control_max_steps: int | None = None
    layers: list[str] | None = None
    bn_batch_stats: bool = False

    def validate(self) -> None:
        """The pruning checks; knockoff 'resample', 'gaussian' or a callable; knockoff_images
        ≥ 2, knockoff_components ≥ 1; control_epochs ≥ 1, control_lr > 0, control_max_steps
        ≥ 1 or None; layers a non-empty list or None."""
        super().validate()
        if not callable(self.knockoff):
            check_choice("knockoff", self.knockoff, ("resample", "gaussian", "<a callable>"))
        check_int("knockoff_images", self.knockoff_images, 2)
        check_int("knockoff_components", self.knockoff_components, 1)
        check_int("control_epochs", self.control_epochs, 1)
        check_real("control_lr", self.control_lr, 0.0, lo_open=True)
        check_int("control_max_steps", self.control_max_steps, 1, none_ok=True)
        if self.layers is not None and not self.layers:
            raise ConfigError("layers=[] is not allowed; allowed: BatchNorm2d names, or None "
                              "(every BatchNorm2d but the first)")  # fmt: skip

    def check_inputs(self, data: Any) -> None:
        """SCOP trains its control factors on data: ``data`` is required."""
        super().check_inputs(data)
        if data is None:
            raise ConfigError(
                "scop trains its control factors on data: pass data=lv.load_data(...)"
            )


class ControlFactorHook(Hook):
    """Trains SCOP's control factors β on a frozen model (see the module docstring)."""

    name = "scop_control"

    def __init__(
        self, norms: dict[str, nn.BatchNorm2d], knockoffs: Sampler, batch_stats: bool = False
    ) -> None:
        if not norms:
            raise ConfigError("scop: no BatchNorm2d layer to score (SCOP needs conv + BN)")
        self.norms, self.knockoffs = norms, knockoffs
        self.beta = {n: nn.Parameter(torch.full((m.num_features,), 0.5)) for n, m in norms.items()}
        self._handles: list[Any] = []
        self._buffers: dict[str, dict[str, torch.Tensor]] = {}
        self._real = 0
        self.batch_stats = batch_stats

    def _mix(self, name: str) -> Callable[..., Any]:
        def pre_hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> Any:
            if not self._real:
                return None
            x = args[0]
            real, knock = x[: self._real], x[self._real :]
            b = self.beta[name].view(1, -1, *([1] * (x.dim() - 2))).to(x.dtype)
            return (torch.cat([b * real + (1 - b) * knock, knock]),)

        return pre_hook

    def on_train_start(self, trainer: Any) -> None:
        for name, bn in self.norms.items():
            self._buffers[name] = {k: v.clone() for k, v in bn.named_buffers()}
            self._handles.append(bn.register_forward_pre_hook(self._mix(name)))

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        if not self.batch_stats:  # normalise with the trained statistics, not the mixed batch's
            for m in trainer.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def before_forward(self, trainer: Any, ctx: StepContext) -> None:
        n = ctx.inputs.shape[0]
        knock = self.knockoffs(n).to(ctx.inputs.device, ctx.inputs.dtype)
        if knock.shape != ctx.inputs.shape:
            raise ConfigError(
                f"knockoffs have shape {tuple(knock.shape)}, the batch {tuple(ctx.inputs.shape)}"
            )
        if ctx.inputs.is_contiguous(memory_format=torch.channels_last):
            knock = knock.contiguous(memory_format=torch.channels_last)
        ctx.inputs = torch.cat([ctx.inputs, knock])
        ctx.targets = torch.cat([ctx.targets, ctx.targets])  # only the real half is scored
        self._real = n

    def on_loss(self, trainer: Any, ctx: StepContext) -> None:
        n, self._real = self._real, 0
        ctx.outputs = ctx.logits[:n]
        ctx.targets = ctx.targets[:n]
        ctx.losses["task"] = F.cross_entropy(ctx.outputs.float(), ctx.targets)

    def after_optimizer_step(self, trainer: Any) -> None:
        with torch.no_grad():
            for b in self.beta.values():
                b.clamp_(0.0, 1.0)

    def on_train_end(self, trainer: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        with torch.no_grad():  # β training must not move the model's BN statistics
            for name, bn in self.norms.items():
                for k, v in bn.named_buffers():
                    v.copy_(self._buffers[name][k])

    def parameters(self) -> list[nn.Parameter]:
        return list(self.beta.values())

    def state_dict(self) -> dict[str, Any]:
        return {"beta": {k: v.detach().clone() for k, v in self.beta.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for k, v in state.get("beta", {}).items():
                self.beta[k].copy_(v)

    def scores(self) -> dict[str, torch.Tensor]:
        """``|γ| · (β − (1 − β))`` per channel, by BN module name."""
        return {
            n: bn.weight.detach().abs().cpu() * (2 * self.beta[n].detach().cpu() - 1)
            for n, bn in self.norms.items()
        }


def _norm_layers(model: nn.Module, names: list[str] | None) -> dict[str, nn.BatchNorm2d]:
    bns = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    if names is None:
        return dict(list(bns.items())[1:])  # the stem is kept, as in the official code
    missing = [n for n in names if n not in bns]
    if missing:
        raise ConfigError(
            f"scop: {missing} are not BatchNorm2d layers; choose from {list(bns)[:20]}"
        )
    return {n: bns[n] for n in names}


def make_knockoffs(data: Any, cfg: ScopConfig) -> Sampler:
    """The configured knockoff sampler (fitted on training images when ``"gaussian"``)."""
    if callable(cfg.knockoff):
        return cfg.knockoff
    if cfg.knockoff == "resample":
        return ResampledKnockoffs(data.train_set, seed=cfg.seed + 1)
    if cfg.knockoff != "gaussian":
        raise ConfigError(
            f"scop knockoff must be 'resample', 'gaussian' or a callable, got {cfg.knockoff!r}"
        )
    n = cfg.knockoff_images
    if cfg.max_steps is not None:  # a smoke run: at most max_steps batches of images
        n = min(n, max(2, cfg.max_steps * (cfg.batch_size or data.batch_size)))
    images = collect_images(data.train_set, n, seed=cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    fitted = GaussianKnockoffs.fit(images, cfg.knockoff_components, seed=cfg.seed)
    return lambda n: fitted(n, generator=gen)


def scop_scores(
    model: nn.Module, data: Any, cfg: ScopConfig
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Train the control factors on a frozen copy of ``model``; returns (scores, β) by BN name."""
    if data is None:
        raise ConfigError("scop trains its control factors on data: pass data=lv.load_data(...)")
    work = copy.deepcopy(model)
    for p in work.parameters():
        p.requires_grad_(False)
    hook = ControlFactorHook(
        _norm_layers(work, cfg.layers), make_knockoffs(data, cfg), cfg.bn_batch_stats
    )
    train(
        work,
        data,
        hooks=[hook],
        epochs=cfg.control_epochs,
        opt="adam",
        lr=cfg.control_lr,
        opt_kwargs={"betas": (0.5, 0.9)},
        weight_decay=0.0,
        sched="none",
        max_steps=cap_steps(cfg.control_max_steps, cfg.max_steps),
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        eval_every=0,  # the model is frozen: its validation score says nothing about β
        progress=cfg.progress,
        log=cfg.log,
    )
    betas = {k: v.detach().clone() for k, v in hook.beta.items()}
    return hook.scores(), betas


@register_method(
    "scop",
    family="pruning",
    paper="Tang et al., NeurIPS 2020, arXiv 2010.10732",
    config=ScopConfig,
    rebuild=rebuild_pruned,
)
def apply_scop(model: nn.Module, data: Any, cfg: ScopConfig) -> nn.Module:
    """Score channels against knockoffs, remove the lowest per layer, then fine-tune."""
    scores, _ = scop_scores(model, data, cfg)
    return finish_channel_pruning(model, data, cfg, scores, "scop")
