"""Federated learning on Flower: FedPU (positive and unlabelled clients) and FedAvg."""

from .fedavg import FedAvgConfig
from .fedpu import FedPUConfig, FedPUHook, fedpu_risk
from .flower import (
    ClientSetup,
    FederatedConfig,
    Federation,
    LocalClient,
    get_arrays,
    join,
    make_client,
    partition,
    run_simulated,
    serve,
    set_arrays,
    simulate,
)

__all__ = [
    "ClientSetup",
    "FedAvgConfig",
    "FedPUConfig",
    "FedPUHook",
    "FederatedConfig",
    "Federation",
    "LocalClient",
    "fedpu_risk",
    "get_arrays",
    "join",
    "make_client",
    "partition",
    "run_simulated",
    "serve",
    "set_arrays",
    "simulate",
]
