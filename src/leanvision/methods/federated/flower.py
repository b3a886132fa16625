"""Federated training on Flower (``flwr``): our client trains with the one trainer, Flower's
FedAvg aggregates, and the federation runs in Flower's simulation engine (Ray) or as real
server and client processes over gRPC.

What is ours: the client (a Flower ``NumPyClient`` whose ``fit`` is a few local epochs of
:func:`leanvision.engine.train` on the client's data, with the method's hooks), the server's
evaluation of the global model on the validation split after every round, and a checkpoint of
the global model after every round (a resumed federation starts from the last one). What is
Flower's: the transport, the client sampling and the weighted averaging (``FedAvg``: McMahan et
al., AISTATS 2017), the simulation engine. The learning rate follows a cosine over the rounds
and is sent to the clients with each round's instructions.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from leanvision.checks import check_int, check_real
from leanvision.data.federated import PUClient, client_bundle, dataset_targets, pu_partition
from leanvision.engine import Hook, evaluate, load_checkpoint, save_checkpoint, train
from leanvision.errors import ConfigError, LeanVisionError
from leanvision.fileio import atomic_write_text
from leanvision.methods.config import MethodConfig

__all__ = [
    "ClientSetup",
    "FederatedConfig",
    "Federation",
    "LocalClient",
    "get_arrays",
    "join",
    "make_client",
    "partition",
    "run_simulated",
    "serve",
    "set_arrays",
    "simulate",
]

console = Console(stderr=True)


@dataclass
class FederatedConfig(MethodConfig):
    """A federation: ``num_clients`` clients, each labelling ``classes_per_client`` classes
    and a ``labelled_fraction`` of its images of them (:func:`pu_partition`); ``rounds`` of
    ``local_epochs`` local training on a ``fraction_fit`` of the clients, SGD (``lr`` cosine
    over the rounds, ``momentum``, ``weight_decay``), ``max_steps`` capping each client's
    steps per round (smoke runs). Simulation: ``workers`` clients train at once, each on
    ``num_threads`` threads. ``out_dir`` keeps the global model after every round; ``resume``
    continues from it."""

    num_clients: int = 10
    classes_per_client: int = 2
    labelled_fraction: float = 0.5
    rounds: int = 20
    local_epochs: int = 1
    fraction_fit: float = 1.0
    lr: float = 0.05
    min_lr: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int | None = None
    seed: int = 0
    max_steps: int | None = None
    workers: int = 2
    num_threads: int = 1
    out_dir: str | None = None
    resume: bool = False
    progress: bool = True
    log: bool = True

    def validate(self) -> None:
        """Types; counts ≥ 1; fractions in (0, 1]; rates ≥ 0."""
        super().validate()
        for name in ("num_clients", "classes_per_client", "rounds", "local_epochs", "workers",
                     "num_threads"):  # fmt: skip
            check_int(name, getattr(self, name), 1)
        check_real("labelled_fraction", self.labelled_fraction, 0.0, 1.0, lo_open=True)
        check_real("fraction_fit", self.fraction_fit, 0.0, 1.0, lo_open=True)
        check_real("lr", self.lr, 0.0, lo_open=True)
        check_real("min_lr", self.min_lr, 0.0, self.lr)
        check_real("weight_decay", self.weight_decay, 0.0)
        if self.max_steps is not None:
            check_int("max_steps", self.max_steps, 1)
        if self.batch_size is not None:
            check_int("batch_size", self.batch_size, 1)

    def check_inputs(self, data: Any) -> None:
        """Data is given and every client gets at least one labelled image."""
        partition(data, self)

    def round_lr(self, server_round: int) -> float:
        """The learning rate of round ``server_round`` (1-based): cosine from ``lr`` to
        ``min_lr`` over the rounds."""
        t = (server_round - 1) / max(1, self.rounds)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * t))


def get_arrays(model: nn.Module) -> list[np.ndarray]:
    """The model's state (parameters and buffers), in ``state_dict`` order, as numpy arrays."""
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def set_arrays(model: nn.Module, arrays: list[np.ndarray]) -> None:
    """Load arrays made by :func:`get_arrays` (of a model of the same architecture)."""
    state = model.state_dict()
    if len(arrays) != len(state):
        raise ConfigError(
            f"the federation sent {len(arrays)} arrays but this model's state has {len(state)}: "
            "the server and the clients must build the same architecture"
        )
    new = {}
    for (name, ref), arr in zip(state.items(), arrays, strict=True):
        if tuple(arr.shape) != tuple(ref.shape):
            raise ConfigError(
                f"{name}: the federation sent shape {tuple(arr.shape)}, this model has "
                f"{tuple(ref.shape)}: the server and the clients must build the same architecture"
            )
        new[name] = torch.as_tensor(np.asarray(arr)).to(ref.dtype)
    model.load_state_dict(new, strict=True)


# ----------------------------------------------------------------------------------- client


class LocalClient:
    """One client: its data (as it sees the labels) and the method's hooks; ``fit`` trains
    the received global model for the configured local epochs with the one trainer.

    Call :meth:`to_flower` for the Flower client (a ``NumPyClient``)."""

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        cfg: FederatedConfig,
        hooks: Callable[[], list[Hook]],
        client_id: int,
    ) -> None:
        self.model, self.data, self.cfg, self.hooks = model, data, cfg, hooks
        self.client_id = client_id

    def fit(self, arrays: list[np.ndarray], config: dict[str, Any]) -> tuple:
        """Train from ``arrays`` (the global model) for the local epochs; returns the new
        arrays, the client's sample count and its mean training loss."""
        cfg = self.cfg
        torch.set_num_threads(cfg.num_threads)
        set_arrays(self.model, arrays)
        server_round = int(config.get("round", 1))
        res = train(
            self.model, self.data, hooks=self.hooks(), epochs=cfg.local_epochs,
            lr=float(config.get("lr", cfg.lr)), momentum=cfg.momentum,
            weight_decay=cfg.weight_decay, sched="none", batch_size=cfg.batch_size,
            seed=cfg.seed + 1000 * server_round + self.client_id, max_steps=cfg.max_steps,
            eval_every=0, progress=False, log=False, num_threads=cfg.num_threads,
        )  # fmt: skip
        loss = float(res.history[-1]["train_loss"]) if res.history else float("nan")
        n = len(self.data.train_set)
        return get_arrays(self.model), n, {"train_loss": loss, "client": self.client_id}

    def to_flower(self) -> Any:
        """This client as a Flower client (``flwr.client.NumPyClient(...).to_client()``)."""
        from flwr.client import NumPyClient

        outer = self

        class _Client(NumPyClient):
            def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
                return get_arrays(outer.model)

            def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple:
                return outer.fit(parameters, config)

            def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple:
                return 0.0, 0, {}  # the server evaluates the global model itself

        return _Client().to_client()


def partition(data: Any, cfg: FederatedConfig) -> list[PUClient]:
    """The clients' shares of ``data``'s training split (seeded by ``cfg.seed``)."""
    if data is None:
        raise ConfigError("federated training needs data=lv.load_data(...)")
    return pu_partition(dataset_targets(data.train_set), data.num_classes, cfg.num_clients,
                        cfg.classes_per_client, cfg.labelled_fraction, seed=cfg.seed)  # fmt: skip


@dataclass(frozen=True)
class ClientSetup:
    """What a federated method's clients train with.

    Attributes:
        name: The federation's name (kept in its checkpoint; a resume must match it).
        hooks: The hooks of one client's local training, given its share.
        supervised: Whether the clients see every true label (the supervised upper bound).
    """

    name: str
    hooks: Callable[[PUClient], list[Hook]]
    supervised: bool = False


def make_client(
    model: nn.Module, data: Any, cfg: FederatedConfig, client_id: int, setup: ClientSetup
) -> LocalClient:
    """Client ``client_id`` of the federation: its own copy of the model, its data."""
    clients = partition(data, cfg)
    if not 0 <= client_id < len(clients):
        raise ConfigError(f"client id must be in [0, {len(clients) - 1}], got {client_id}")
    share = clients[client_id]
    bundle = client_bundle(data, share, supervised=setup.supervised, seed=cfg.seed + client_id)
    return LocalClient(copy.deepcopy(model), bundle, cfg, lambda: setup.hooks(share), client_id)


# ----------------------------------------------------------------------------------- server


class Federation:
    """The server side: the global model, its evaluation on ``data.val`` after every round,
    the per-round checkpoint in ``out_dir`` (``global.pt``, ``history.json``) and Flower's
    FedAvg strategy (:meth:`strategy`)."""

    def __init__(self, model: nn.Module, data: Any, cfg: FederatedConfig, method: str) -> None:
        self.model, self.data, self.cfg, self.method = copy.deepcopy(model), data, cfg, method
        self._temporary = not cfg.out_dir  # no out_dir: a temporary one, removed at the end
        self.out_dir = Path(cfg.out_dir or tempfile.mkdtemp(prefix="lv_fed_"))
        self.history: list[dict[str, Any]] = []
        self.start_round = 0
        ckpt = self.out_dir / "global.pt"
        if ckpt.exists() and not cfg.resume:
            raise ConfigError(
                f"{ckpt} exists: pass resume=True to continue that federation, or another out_dir"
            )
        if ckpt.exists():
            state = load_checkpoint(ckpt)
            if state.get("method") != method or state.get("num_clients") != cfg.num_clients:
                raise ConfigError(
                    f"{ckpt} holds a {state.get('method')!r} federation of "
                    f"{state.get('num_clients')} clients, not {method!r} of {cfg.num_clients}"
                )
            self.model.load_state_dict(state["state_dict"])
            self.history, self.start_round = state["history"], int(state["round"])
        self._fit_metrics: dict[str, float] = {}

    @property
    def remaining(self) -> int:
        """Rounds still to run."""
        return max(0, self.cfg.rounds - self.start_round)

    def strategy(self) -> Any:
        """Flower's FedAvg on every (or ``fraction_fit`` of the) client(s), failing loudly
        when a client fails, evaluating and saving the global model after each round."""
        from flwr.common import ndarrays_to_parameters
        from flwr.server.strategy import FedAvg

        outer, cfg = self, self.cfg
        fit_clients = max(1, int(round(cfg.fraction_fit * cfg.num_clients)))

        class _FedAvg(FedAvg):
            def aggregate_fit(self, server_round, results, failures):  # type: ignore[override]
                if failures:
                    first = failures[0]
                    why = first if isinstance(first, BaseException) else first[1]
                    reason = " ".join(str(why).split())
                    reason = reason if len(reason) < 400 else "..." + reason[-400:]
                    r = outer.start_round + server_round
                    raise LeanVisionError(
                        f"round {r}: {len(failures)} client(s) failed; the first: "
                        f"{type(why).__name__}: {reason}. The global model of round {r - 1} "
                        f"is kept in {outer.out_dir / 'global.pt'}; resume=True continues"
                    )
                return super().aggregate_fit(server_round, results, failures)

        return _FedAvg(
            fraction_fit=cfg.fraction_fit, fraction_evaluate=0.0,
            min_fit_clients=fit_clients, min_evaluate_clients=0,
            min_available_clients=cfg.num_clients,
            initial_parameters=ndarrays_to_parameters(get_arrays(self.model)),
            evaluate_fn=self._evaluate, on_fit_config_fn=self._fit_config,
            fit_metrics_aggregation_fn=self._fit_metrics_mean, accept_failures=False,
        )  # fmt: skip

    def _fit_config(self, server_round: int) -> dict[str, Any]:
        r = self.start_round + server_round
        return {"round": r, "lr": self.cfg.round_lr(r)}

    def _fit_metrics_mean(self, results: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        n = sum(k for k, _ in results) or 1
        self._fit_metrics = {
            "train_loss": sum(k * float(m["train_loss"]) for k, m in results) / n,
            "clients": len(results),
        }
        return self._fit_metrics

    def _evaluate(self, server_round: int, arrays: list[np.ndarray], config: dict) -> Any:
        if server_round == 0:  # the initial model: nothing trained yet
            return None
        r = self.start_round + server_round
        set_arrays(self.model, arrays)
        metrics = evaluate(self.model, self.data.val)
        row = {"round": r, "lr": self.cfg.round_lr(r), **self._fit_metrics,
               **{f"val_{k}": float(v) for k, v in metrics.items()}}  # fmt: skip
        self.history.append(row)
        self._save(r)
        if self.cfg.log:
            console.log(
                f"round {r}/{self.cfg.rounds} "
                + " ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "round")
            )
        return float(metrics.get("loss", float("nan"))), {k: float(v) for k, v in metrics.items()}

    def _save(self, server_round: int) -> None:
        state = {
            "round": server_round, "method": self.method, "num_clients": self.cfg.num_clients,
            "state_dict": self.model.state_dict(), "history": self.history,
            "config": dataclasses.asdict(self.cfg),
        }  # fmt: skip
        save_checkpoint(state, self.out_dir / "global.pt")
        atomic_write_text(self.out_dir / "history.json", json.dumps(self.history, indent=1))

    def result(self) -> nn.Module:
        """The global model after the last saved round (a round that did not finish is an
        error naming where it stopped)."""
        ckpt = self.out_dir / "global.pt"
        state = load_checkpoint(ckpt) if ckpt.exists() else {}
        done = int(state.get("round", 0))
        if done < self.cfg.rounds:
            raise LeanVisionError(
                f"the federation stopped after round {done} of {self.cfg.rounds} (checkpoint "
                f"{ckpt}); see the log above, then resume=True to continue"
            )
        model = copy.deepcopy(self.model)
        model.load_state_dict(state["state_dict"])
        if self._temporary:
            shutil.rmtree(self.out_dir, ignore_errors=True)
        model.lv_federation = {"rounds": done, "history": state["history"]}
        return model.eval()


# -------------------------------------------------------------------------------- engines


def simulate(federation: Federation, client_fn: Callable[[int], LocalClient]) -> nn.Module:
    """Run the federation in Flower's simulation engine: ``num_clients`` virtual clients
    (``client_fn(client_id)``), ``workers`` of them training at once on one CPU each."""
    from flwr.client import ClientApp
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.simulation import run_simulation

    cfg = federation.cfg
    if federation.remaining:
        rounds = federation.remaining

        def server_fn(_context: Any) -> Any:
            return ServerAppComponents(strategy=federation.strategy(),
                                       config=ServerConfig(num_rounds=rounds))  # fmt: skip

        def flower_client(context: Any) -> Any:
            return client_fn(int(context.node_config["partition-id"])).to_flower()

        run_simulation(
            server_app=ServerApp(server_fn=server_fn),
            client_app=ClientApp(client_fn=flower_client),
            num_supernodes=cfg.num_clients,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {
                    "num_cpus": cfg.workers,
                    "include_dashboard": False,
                    "log_to_driver": True,
                },
            },  # fmt: skip
        )
    return federation.result()


def _check_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"a Flower server address is HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def serve(federation: Federation, address: str) -> nn.Module:
    """Run the server in this process (Flower's gRPC server, ``flwr.server.start_server``)
    until every round is done; returns the global model."""
    import flwr

    _check_address(address)
    if federation.remaining:
        flwr.server.start_server(
            server_address=address, strategy=federation.strategy(),
            config=flwr.server.ServerConfig(num_rounds=federation.remaining),
        )  # fmt: skip
    return federation.result()


def join(client: LocalClient, address: str, timeout_s: float = 30.0) -> None:
    """Run ``client`` against the Flower server at ``address`` until the server ends the
    federation (``flwr.client.start_client``). A server that cannot be reached within
    ``timeout_s`` is an error naming the address."""
    import flwr

    host, port = _check_address(address)
    deadline = time.monotonic() + timeout_s
    while True:  # Flower would retry a wrong address without end: ask the socket first
        try:
            socket.create_connection((host, port), timeout=max(0.1, timeout_s)).close()
            break
        except OSError as err:
            if time.monotonic() >= deadline:
                raise LeanVisionError(
                    f"cannot reach the Flower server at {address!r} within {timeout_s:g} s "
                    f"({err.strerror or err}); start it first (`leanvision fed server`) or "
                    "check the address"
                ) from err
            time.sleep(0.5)
    flwr.client.start_client(server_address=address, client=client.to_flower(), insecure=True,
                             max_wait_time=timeout_s)  # fmt: skip


def run_simulated(model: nn.Module, data: Any, cfg: FederatedConfig, setup: ClientSetup
                  ) -> nn.Module:  # fmt: skip
    """A method's federation, checked at the door and run in Flower's simulation engine."""
    cfg.check_inputs(data)
    federation = Federation(model, data, cfg, setup.name)
    return simulate(federation, lambda k: make_client(model, data, cfg, k, setup))
