"""``manidp``: manifold-regularised dynamic (per-sample) channel pruning.

Manifold Regularized Dynamic Network Pruning, Tang et al., CVPR 2021 (arXiv 2103.05861). Every
residual block gets two SE-like gates (``MaskBlock`` in the official code): from the block's
input, a gate predicts one saliency per output channel of the first conv; from the gated first
output, another for the second conv. Channels whose saliency is below a layer-wise threshold
are switched off *for that sample*; kept channels are scaled by their saliency. Thresholds are
re-estimated after every epoch so that, on the dataset mean, a ``remain_rate`` share of each
layer's channels stays; the rate anneals by cosine from 1 to ``target_remain_rate``.

Losses (official code): ``CE + λ_lasso · Σ_gates mean_i(w_i · mean_c s_ic)`` with the
complexity weight ``w_i = 1[ℓ_i < θ·ℓ̄] · ((θ·ℓ̄ − ℓ_i)/(θ·ℓ̄))^γ`` (easy samples, whose loss is
below θ = 0.5 of the last epoch's mean, are pushed to sparser sub-networks), plus
``λ_graph · Σ_gates ‖G(S) − G(F)‖² / B²``, G(Z) = Z Zᵀ of row-normalised saliencies S and
pooled features F (samples alike in features get alike sub-networks).

Inference really skips channels: at batch 1 each gated conv runs with only the kept filters
(and the kept input channels of the second conv), with batch norm folded in; larger batches
run the masked dense network, which computes the same outputs (the gated block is a layer,
:class:`leanvision.layers.GatedBasicBlock`). Works on residual networks of basic blocks: our
``resnet*_cifar`` and timm's ``resnet18/34``-style models.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leanvision.engine import Hook, StepContext
from leanvision.errors import ConfigError, UnsupportedModelError
from leanvision.layers.gated import GatedBasicBlock, GatedStage, gated_blocks
from leanvision.methods.common import FinetuneConfig, cap_batches, finetune
from leanvision.methods.config import check_int, check_real
from leanvision.methods.registry import record_transform, register_method
from leanvision.utils import replace_modules

__all__ = [
    "calibrate_thresholds",
    "ManiDPConfig",
    "ManiDPHook",
    "complexity_weights",
    "gate_model",
    "remain_rate",
    "sample_macs",
    "set_thresholds",
    "similarity_loss",
]


def _is_basic_block(m: nn.Module) -> bool:
    return all(hasattr(m, a) for a in ("conv1", "bn1", "conv2", "bn2")) and not hasattr(m, "conv3")


def gate_model(model: nn.Module, squeeze: int = 2, clamp_max: float = 1000.0) -> nn.Module:
    """Wrap every basic residual block of ``model`` (in place) in a :class:`GatedBasicBlock`;
    a stage (``nn.Sequential``) of gated blocks becomes a :class:`GatedStage`."""

    def is_plain_block(m: nn.Module, name: str) -> bool:  # not a gated block's inner .block
        return (
            _is_basic_block(m)
            and not isinstance(m, GatedBasicBlock)
            and not name.endswith(".block")
        )

    def is_gated_stage(m: nn.Module, name: str) -> bool:
        return (
            type(m) is nn.Sequential
            and len(m) > 0
            and all(isinstance(b, GatedBasicBlock) for b in m)
        )

    if not replace_modules(model, lambda m, name: GatedBasicBlock(m, squeeze, clamp_max),
                           is_plain_block):  # fmt: skip
        raise UnsupportedModelError(
            f"manidp: {type(model).__name__} has no basic residual blocks (conv1/bn1/conv2/bn2); "
            "supported: resnet*_cifar and timm's resnet18/34-style models"
        )
    # stages of gated blocks run their blocks in one op
    replace_modules(
        model,
        lambda seq, name: GatedStage(OrderedDict(seq.named_children())).train(seq.training),
        is_gated_stage,
    )
    return model


def remain_rate(epoch: int, epochs: int, target: float) -> float:
    """Cosine annealing of the kept share from 1 to ``target`` (epoch counted from 1)."""
    return (1.0 - target) / 2.0 * math.cos(math.pi * epoch / epochs) + (1.0 + target) / 2.0


def complexity_weights(
    losses: torch.Tensor, mean_loss: float, thre_cls: float = 0.5, gamma: float = 1.0
) -> torch.Tensor:
    """``1[ℓ_i < θ·ℓ̄] · ((θ·ℓ̄ − ℓ_i)/(θ·ℓ̄))^γ``: easy samples get pushed to sparser nets."""
    bar = thre_cls * mean_loss
    if bar <= 0:
        return torch.zeros_like(losses)
    return (losses < bar).float() * ((bar - losses) / bar).clamp(min=1e-10).pow(gamma)


def similarity_loss(s: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """‖G(F) − G(S)‖² / B², G(Z) = Z Zᵀ over row-normalised samples (the manifold loss)."""
    b = s.shape[0]
    s, f = F.normalize(s.reshape(b, -1), dim=1), F.normalize(f.reshape(b, -1), dim=1)
    return (f @ f.T - s @ s.T).pow(2).sum() / (b * b)


class ManiDPHook(Hook):
    """ManiDP's losses, per-epoch thresholds and remain-rate schedule (see module docstring)."""

    name = "manidp"

    def __init__(
        self,
        target_remain_rate: float = 0.6,
        lambda_lasso: float = 5e-3,
        lambda_graph: float = 1.0,
        thre_cls: float = 0.5,
        gamma: float = 1.0,
        init_batches: int = 50,
    ) -> None:
        if not 0.0 < target_remain_rate <= 1.0:
            raise ConfigError(f"target_remain_rate must be in (0, 1], got {target_remain_rate}")
        self.target, self.lambda_lasso, self.lambda_graph = (
            target_remain_rate,
            lambda_lasso,
            lambda_graph,
        )
        self.thre_cls, self.gamma, self.init_batches = thre_cls, gamma, init_batches
        self.mean_loss: float | None = None
        self._epoch_losses: list[torch.Tensor] = []

    @torch.no_grad()
    def on_train_start(self, trainer: Any) -> None:
        self.blocks = gated_blocks(trainer.model)
        if not self.blocks:
            raise ConfigError("manidp: the model has no gated blocks (use gate_model first)")
        if self.mean_loss is None:  # the initial ℓ̄: the per-sample loss on training batches
            model, total, n = trainer.model, 0.0, 0
            was = model.training
            model.eval()
            batches = cap_batches(self.init_batches, trainer.config.max_steps)  # smoke runs
            for x, y in itertools.islice(trainer.train_loader, batches):
                out = model(x.to(trainer.device))
                logits = out if isinstance(out, torch.Tensor) else out[0]
                total += F.cross_entropy(logits, y.to(trainer.device), reduction="sum").item()
                n += y.shape[0]
            model.train(was)
            self.mean_loss = total / max(1, n)

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        self._epoch_losses = []
        for blk in self.blocks:
            for g in (blk.gate1, blk.gate2):
                g.saliency_sum.zero_()
                g.seen.zero_()

    def on_loss(self, trainer: Any, ctx: StepContext) -> None:
        ce = F.cross_entropy(ctx.logits.float(), ctx.targets, reduction="none")
        self._epoch_losses.append(ce.detach().cpu())
        w = complexity_weights(ce.detach(), float(self.mean_loss), self.thre_cls, self.gamma)
        lasso, graph = 0.0, 0.0
        for blk in self.blocks:
            for s, f in blk.records:
                lasso = lasso + (s.mean(dim=1) * w).mean()
                graph = graph + similarity_loss(s, f)
        ctx.losses["sparsity"] = self.lambda_lasso * lasso
        ctx.losses["manifold"] = self.lambda_graph * graph

    @torch.no_grad()
    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        if self._epoch_losses:
            self.mean_loss = float(torch.cat(self._epoch_losses).mean())
        epochs = trainer.config.epochs
        if epoch >= epochs > 1:  # keep the thresholds the last epoch trained with
            return
        set_thresholds(self.blocks, self.next_rate(epoch, epochs))
        metrics["remain_rate"] = self.next_rate(epoch, epochs)

    def next_rate(self, epoch: int, epochs: int) -> float:
        """The remain rate the thresholds set after ``epoch`` give the next epoch.

        The cosine anneal ends one epoch early, so the last epoch trains with the final
        thresholds, which are then kept as they are. The official code anneals over all
        epochs, first sets thresholds after epoch 2 and re-estimates them after the last one:
        over 400 epochs that is the same; in a 3-epoch fine-tuning the network had never run
        with its final thresholds (measured: 57 % on test against 68 % on validation with the
        thresholds it trained with).
        """
        if epochs <= 1:
            return self.target
        return remain_rate(min(epoch, epochs - 1), epochs - 1, self.target)

    def state_dict(self) -> dict[str, Any]:
        return {"mean_loss": self.mean_loss}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean_loss = state.get("mean_loss")


@torch.no_grad()
def set_thresholds(blocks: list[GatedBasicBlock], rate: float) -> None:
    """Each gate's threshold := the k-th largest dataset-mean saliency, k = ⌈rate · C⌉, so a
    ``rate`` share of its channels stays on average (the means the gates gathered in training
    mode, ``saliency_sum / seen``)."""
    for blk in blocks:
        for g in (blk.gate1, blk.gate2):
            mean = g.saliency_sum / g.seen.clamp_min(1)
            k = max(1, math.ceil(rate * mean.numel()))
            g.thre.fill_(torch.topk(mean, k).values[-1].item())


@torch.no_grad()
def calibrate_thresholds(
    model: nn.Module, images: torch.Tensor, remain_rate: float, rounds: int = 3
) -> nn.Module:
    """Re-set a gated model's thresholds on ``images`` for a new ``remain_rate`` (in place).

    Trades accuracy for speed after training without retraining the gates. Earlier thresholds
    change what later gates see, so the means are gathered again ``rounds`` times."""
    if not 0.0 < remain_rate <= 1.0:
        raise ConfigError(f"remain_rate must be in (0, 1], got {remain_rate}")
    blocks = gated_blocks(model)
    if not blocks:
        raise ConfigError("calibrate_thresholds: the model has no gated blocks")
    if images.shape[0] < 2:
        raise ConfigError("calibrate_thresholds needs a batch of at least 2 images")
    was = model.training
    model.eval()
    gates = [g for blk in blocks for g in (blk.gate1, blk.gate2)]
    for _ in range(rounds):
        for g in gates:
            g.saliency_sum.zero_()
            g.seen.zero_()
            g.train()  # gates gather means in training mode; the rest stays in eval
        model(images)
        for g in gates:
            g.eval()
        set_thresholds(blocks, remain_rate)
    model.train(was)
    return model


@torch.no_grad()
def sample_macs(model: nn.Module, images: torch.Tensor) -> list[int]:
    """MACs each image really costs on the batch-1 path (gated convs as run, the rest dense)."""
    from leanvision.profiling import count_ops

    model = model.eval()
    blocks = gated_blocks(model)
    total = int(count_ops(model, inputs=images[:1]).macs)
    # count_ops runs a batch-1 forward: its gated convs are the sparse ones of images[0]
    static = total - sum(b.last_macs for b in blocks)
    out = []
    for x in images:
        model(x.unsqueeze(0))
        out.append(static + sum(b.last_macs for b in blocks))
    return out


@dataclass
class ManiDPConfig(FinetuneConfig):
    """ManiDP with the README's CIFAR example (dyresnet56): target remain rate 0.6,
    λ_lasso 5e-3, λ_graph 1.0, θ 0.5, γ 1, squeeze 2; SGD lr 0.05 cosine, wd 5e-4.
    ``max_steps`` caps the training and the initial loss pass (ℓ̄, 50 batches) before it."""

    target_remain_rate: float = 0.6
    lambda_lasso: float = 5e-3
    lambda_graph: float = 1.0
    thre_cls: float = 0.5
    gamma: float = 1.0
    squeeze: int = 2
    clamp_max: float = 1000.0
    finetune_epochs: int = 30

    def validate(self) -> None:
        """The fine-tuning checks; target_remain_rate in (0, 1]; λ_lasso, λ_graph, γ ≥ 0;
        θ > 0; squeeze ≥ 1; clamp_max > 0."""
        super().validate()
        check_real("target_remain_rate", self.target_remain_rate, 0.0, 1.0, lo_open=True)
        check_real("lambda_lasso", self.lambda_lasso, 0.0)
        check_real("lambda_graph", self.lambda_graph, 0.0)
        check_real("thre_cls", self.thre_cls, 0.0, lo_open=True)
        check_real("gamma", self.gamma, 0.0)
        check_int("squeeze", self.squeeze, 1)
        check_real("clamp_max", self.clamp_max, 0.0, lo_open=True)


def _rebuild(model: nn.Module, arch: dict[str, Any]) -> nn.Module:
    return gate_model(model, arch["squeeze"], arch["clamp_max"])


@register_method(
    "manidp",
    family="pruning",
    paper="Tang et al., CVPR 2021, arXiv 2103.05861",
    config=ManiDPConfig,
    rebuild=_rebuild,
)
def apply_manidp(model: nn.Module, data: Any, cfg: ManiDPConfig) -> nn.Module:
    """Add gates to every basic block and train them with the network (dynamic pruning)."""
    gated = gate_model(copy.deepcopy(model), cfg.squeeze, cfg.clamp_max)
    record_transform(gated, model, "manidp", {"squeeze": cfg.squeeze, "clamp_max": cfg.clamp_max})
    hook = ManiDPHook(
        cfg.target_remain_rate, cfg.lambda_lasso, cfg.lambda_graph, cfg.thre_cls, cfg.gamma
    )
    finetune(gated, data, cfg, [hook], method="manidp")
    return gated.eval()
