"""``fedavg``: federated averaging (McMahan et al., "Communication-Efficient Learning of Deep
Networks from Decentralized Data", AISTATS 2017, arXiv 1602.05629) on Flower, in the same
federation as FedPU: the baselines FedPU is measured against.

``labels="positive"``: each client trains on its labelled positives only (the cross-entropy of
its labelled images; its unlabelled images add nothing), the naive use of PU data.
``labels="all"``: every client's images carry their true labels, the fully supervised upper
bound at the same rounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from leanvision.checks import check_choice
from leanvision.methods.registry import record_transform, register_method

from .flower import ClientSetup, FederatedConfig, run_simulated

__all__ = ["FedAvgConfig", "client_setup"]


@dataclass
class FedAvgConfig(FederatedConfig):
    """FedAvg: the federation's options and which ``labels`` the clients see
    (``"positive"``: their labelled positives; ``"all"``: every true label)."""

    labels: str = "positive"

    def validate(self) -> None:
        """The federation's checks; ``labels`` one of positive, all."""
        super().validate()
        check_choice("labels", self.labels, ("positive", "all"))


def client_setup(cfg: FedAvgConfig, data: Any) -> ClientSetup:
    """What FedAvg's clients train with: no hook; every label when ``labels="all"``."""
    return ClientSetup(f"fedavg_{cfg.labels}", lambda _client: [], cfg.labels == "all")


@register_method(
    "fedavg",
    family="federated",
    paper="McMahan et al., Communication-Efficient Learning of Deep Networks from "
    "Decentralized Data, AISTATS 2017 (arXiv 1602.05629)",
    config=FedAvgConfig,
)
def apply_fedavg(model: nn.Module, data: Any, cfg: FedAvgConfig) -> nn.Module:
    """Train ``model`` by FedAvg over ``cfg.num_clients`` simulated Flower clients."""
    out = run_simulated(model, data, cfg, client_setup(cfg, data))
    record_transform(out, model, "fedavg")
    return out
