"""A federation as real processes: one Flower server (``leanvision fed server``) and its
clients (``leanvision fed client``), each process building the same model, data and method
options; the partition is dealt from the shared seed, so client k finds its own share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from leanvision.errors import ConfigError
from leanvision.methods.registry import get_method

from . import fedavg, fedpu
from .flower import ClientSetup, FederatedConfig, Federation, join, make_client, serve

__all__ = ["federated_config", "run_client", "run_server"]

SETUPS: dict[str, Callable[[Any, Any], ClientSetup]] = {
    "fedpu": fedpu.client_setup,
    "fedavg": fedavg.client_setup,
}


def federated_config(method: str, **hparams: Any) -> FederatedConfig:
    """The checked config of a federated ``method`` (``fedpu``, ``fedavg``)."""
    if method not in SETUPS:
        raise ConfigError(f"{method!r} is not a federated method; choose one of {sorted(SETUPS)}")
    return get_method(method).make_config(**hparams)


def run_server(method: str, model: nn.Module, data: Any, address: str, **hparams: Any
               ) -> nn.Module:  # fmt: skip
    """Serve the federation at ``address`` (HOST:PORT) until its rounds are done; returns the
    global model."""
    cfg = federated_config(method, **hparams)
    get_method(method).check_inputs(cfg, data)
    setup = SETUPS[method](cfg, data)
    return serve(Federation(model, data, cfg, setup.name), address)


def run_client(method: str, model: nn.Module, data: Any, client_id: int, address: str,
               timeout_s: float = 30.0, **hparams: Any) -> None:  # fmt: skip
    """Be client ``client_id`` of the federation served at ``address``."""
    cfg = federated_config(method, **hparams)
    get_method(method).check_inputs(cfg, data)
    setup = SETUPS[method](cfg, data)
    join(make_client(model, data, cfg, client_id, setup), address, timeout_s)
