"""``fedpu``: federated learning from positive and unlabelled data (FedPU).

Lin, Chen, Xu, Xu, Gui, Deng, Wang, "Federated Learning with Positive and Unlabeled Data",
ICML 2022 (arXiv 2106.10904). Client k labels only the classes ``P_k``; every class it does
not label hides among its unlabelled images, possibly several of them, so the one-negative-
class PU risk does not apply. FedPU splits the multi-class risk across the clients: client k
estimates the risk of its positives (cross-entropy on its labelled images) and, on its
unlabelled images, the risk that they are *not* of each class i of P_k, corrected for the
class-i images the unlabelled set still holds (prior π_i); the classes P_k leaves out are
learnt from the clients that label them, through FedAvg.

Client k's loss on a batch (ours, from the paper's description and the official code, read):

    CE(labelled) + w / |P_k| · Σ_{i ∈ P_k} max(0, E_U[ℓ̄_i] − π_i · E_{P_i}[ℓ̄_i]),
    ℓ̄_i(x) = −log(1 − softmax_i(x)),

the max(0, ·) being the non-negative correction of nnPU (Kiryo et al., NeurIPS 2017): the
bracket estimates (1 − π_i) times the risk of calling a non-i image i, which is never negative.
A batch without class-i positives leaves the correction out (it uses only E_U). π_i comes
from the population's class priors (``class_priors``, uniform by default) and what the client
knows of its own labelling (:func:`leanvision.data.federated.unlabelled_priors`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from leanvision.checks import check_real
from leanvision.data.federated import PUClient, unlabelled_priors
from leanvision.engine import Hook, StepContext
from leanvision.errors import ConfigError
from leanvision.methods.registry import record_transform, register_method
from leanvision.tasks import UNLABELLED

from .flower import ClientSetup, FederatedConfig, run_simulated

__all__ = ["FedPUConfig", "FedPUHook", "client_setup", "fedpu_risk"]


def fedpu_risk(
    logits: torch.Tensor, labels: torch.Tensor, priors: dict[int, float]
) -> torch.Tensor:
    """The mean over the labelled classes i (``priors``' keys) of
    max(0, E_U[−log(1 − p_i)] − π_i · E_{P_i}[−log(1 − p_i)]) on one batch; unlabelled
    samples carry :data:`UNLABELLED`."""
    p = F.softmax(logits.float(), dim=1)
    not_i = -torch.log1p(-p.clamp(max=1.0 - 1e-6))  # ℓ̄_i for every sample and class
    unl = labels == UNLABELLED
    terms = []
    for i, prior in priors.items():
        if not bool(unl.any()):
            break
        risk = not_i[unl, i].mean()
        pos = labels == i
        if bool(pos.any()):
            risk = risk - prior * not_i[pos, i].mean()
        terms.append(risk.clamp(min=0.0))
    return torch.stack(terms).mean() if terms else logits.sum() * 0.0


class FedPUHook(Hook):
    """Adds ``ctx.losses["pu"]``: ``weight`` × :func:`fedpu_risk` with the client's priors
    (the task loss is the cross-entropy of the labelled images)."""

    name = "fedpu"

    def __init__(self, priors: dict[int, float], weight: float) -> None:
        self.priors, self.weight = priors, weight

    def on_loss(self, trainer: Any, ctx: StepContext) -> None:
        ctx.losses["pu"] = self.weight * fedpu_risk(ctx.logits, ctx.targets, self.priors)


@dataclass
class FedPUConfig(FederatedConfig):
    """FedPU: the federation's options, the risk's weight ``pu_weight`` and the population's
    ``class_priors`` (one per class, summing to at most one; None: uniform)."""

    pu_weight: float = 1.0
    class_priors: list[float] | None = None

    def validate(self) -> None:
        """The federation's checks; ``pu_weight`` ≥ 0; priors in [0, 1] summing to ≤ 1."""
        super().validate()
        check_real("pu_weight", self.pu_weight, 0.0)
        if self.class_priors is not None:
            bad = [p for p in self.class_priors if not 0.0 <= p <= 1.0]
            total = sum(self.class_priors)
            if bad or total > 1.0 + 1e-6:
                raise ConfigError(
                    f"class_priors must lie in [0, 1] and sum to at most 1; got "
                    f"{list(self.class_priors)} (sum {total:.4g})"
                )

    def check_inputs(self, data: Any) -> None:
        """The federation's (data, a positive on every client); one prior per class."""
        super().check_inputs(data)
        if self.class_priors is not None and len(self.class_priors) != data.num_classes:
            raise ConfigError(
                f"class_priors has {len(self.class_priors)} values but the data has "
                f"{data.num_classes} classes"
            )

    def priors_for(self, client: PUClient, num_classes: int) -> dict[int, float]:
        """The unlabelled-set priors π_i of ``client``'s labelled classes."""
        rho: Sequence[float] = self.class_priors or [1.0 / num_classes] * num_classes
        return unlabelled_priors(client, rho)


def client_setup(cfg: FedPUConfig, data: Any) -> ClientSetup:
    """What FedPU's clients train with: the FedPU risk hook, with each client's priors."""
    c = data.num_classes
    return ClientSetup("fedpu", lambda client: [FedPUHook(cfg.priors_for(client, c),
                                                          cfg.pu_weight)])  # fmt: skip


@register_method(
    "fedpu",
    family="federated",
    paper="Lin et al., Federated Learning with Positive and Unlabeled Data, ICML 2022 "
    "(arXiv 2106.10904)",
    config=FedPUConfig,
)
def apply_fedpu(model: nn.Module, data: Any, cfg: FedPUConfig) -> nn.Module:
    """Train ``model`` by FedPU over ``cfg.num_clients`` simulated Flower clients."""
    out = run_simulated(model, data, cfg, client_setup(cfg, data))
    record_transform(out, model, "fedpu")
    return out
