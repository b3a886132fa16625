"""The trainer's extension points.

Every method plugs into the one training loop through a :class:`Hook`: extra loss terms,
gradient or optimizer rules, per-epoch callbacks, extra trainable parameters. The loop itself
knows no method by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from .trainer import Trainer


@dataclass
class StepContext:
    """What one training step has computed so far; hooks read it and add loss terms.

    Attributes:
        inputs: the batch, (B, C, H, W).
        targets: class indices, (B,).
        outputs: the model's raw output (a tensor, or a tuple whose first item is the logits).
        losses: named loss terms; the trainer back-propagates their sum. ``"task"`` holds the
            task loss (cross-entropy for classification); a hook may rescale or replace it.
        extras: scratch space shared by hooks within one step (e.g. teacher outputs).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    outputs: Any = None
    losses: dict[str, torch.Tensor] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def logits(self) -> torch.Tensor:
        """The classification logits, (B, num_classes)."""
        out = self.outputs
        return out if isinstance(out, torch.Tensor) else out[0]


class Hook:
    """Base class: override what you need. Calls happen on every process under DDP."""

    name: str = "hook"
    #: weight decay of this hook's :meth:`parameters` in the model's optimizer (0 by default:
    #: gates and factors; a co-trained network sets its own)
    weight_decay: float = 0.0

    def on_train_start(self, trainer: Trainer) -> None:
        """Before the first epoch (after a resume has restored state)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """At the start of each epoch."""

    def before_forward(self, trainer: Trainer, ctx: StepContext) -> None:
        """Before the model's forward (e.g. run a teacher, change inputs)."""

    def on_loss(self, trainer: Trainer, ctx: StepContext) -> None:
        """After the forward and the task loss: add or rescale terms in ``ctx.losses``."""

    def before_optimizer_step(self, trainer: Trainer) -> None:
        """After backward, before ``optimizer.step()``: gradient rules (scaling, clipping)."""

    def after_optimizer_step(self, trainer: Trainer) -> None:
        """After ``optimizer.step()`` (e.g. clamp parameters, update EMA)."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        """After each epoch's evaluation; ``metrics`` is the epoch's history row."""

    def on_train_end(self, trainer: Trainer) -> None:
        """After the last epoch."""

    def parameters(self) -> list[nn.Parameter]:
        """Extra trainable parameters (adapters, gates) the optimizer must update."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """State to store in the checkpoint so a resumed run continues identically."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
