"""Federated PU learning on Flower: the partition and what a client sees, the FedPU risk against
a hand computation, the door's checks, a client's local step, a federation in Flower's
simulation engine, and one server with two clients as real processes on localhost."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import leanvision as lv
from leanvision.data.federated import PULabels, client_bundle, pu_partition, unlabelled_priors
from leanvision.errors import CheckpointError, ConfigError, LeanVisionError
from leanvision.methods.federated import (
    Federation,
    FedPUConfig,
    FedPUHook,
    LocalClient,
    fedpu_risk,
    get_arrays,
    join,
    make_client,
    set_arrays,
)
from leanvision.methods.federated.fedavg import FedAvgConfig
from leanvision.methods.federated.fedavg import client_setup as fedavg_setup
from leanvision.methods.federated.fedpu import client_setup as fedpu_setup
from leanvision.tasks import UNLABELLED, PositiveUnlabelled

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    torch.set_num_threads(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def digits():
    return lv.load_data("mnist5k", batch_size=16, seed=0, max_train=200, max_val=32, max_test=32)


def _tiny(data):
    torch.manual_seed(0)
    return lv.create_model("resnet20_cifar", num_classes=10, in_chans=1)


def test_partition_deals_disjoint_iid_shares_and_labels_each_clients_classes():
    targets = np.repeat(np.arange(10), 40)
    clients = pu_partition(targets, 10, num_clients=10, classes_per_client=2,
                           labelled_fraction=0.5, seed=3)  # fmt: skip
    every = np.concatenate([np.concatenate([c.labelled, c.unlabelled]) for c in clients])
    assert sorted(every.tolist()) == list(range(400))  # disjoint, nothing dropped
    for k, c in enumerate(clients):
        assert c.labelled_classes == tuple(sorted({(2 * k) % 10, (2 * k + 1) % 10}))
        assert set(targets[c.labelled].tolist()) <= set(c.labelled_classes)
        share = np.concatenate([c.labelled, c.unlabelled])
        for cls, n in zip(c.labelled_classes, c.labelled_counts, strict=True):
            held = int((targets[share] == cls).sum())
            assert n == max(1, round(0.5 * held)) == int((targets[c.labelled] == cls).sum())


def test_a_client_without_positives_is_refused_naming_it():
    targets = np.array([0] * 50 + [1] * 50)  # client 1 of 2 labels class 2 and 3: none exist
    with pytest.raises(ConfigError, match=r"client 1 labels classes \[2, 3\]"):
        pu_partition(targets, 4, num_clients=2, classes_per_client=2, labelled_fraction=0.5)


def test_unlabelled_priors_use_what_the_client_knows():
    targets = np.repeat(np.arange(4), 25)
    (c,) = pu_partition(targets, 4, num_clients=1, classes_per_client=2,
                        labelled_fraction=0.4, seed=0)  # fmt: skip
    # 100 images, 10 of class 0 and 10 of class 1 labelled, 80 unlabelled; priors 1/4 each
    pri = unlabelled_priors(c, [0.25] * 4)
    assert pri == pytest.approx({0: (25 - 10) / 80, 1: (25 - 10) / 80})


def test_a_client_sees_only_its_labelled_labels(digits):
    (c,) = pu_partition(np.asarray(digits.train_set.targets), 10, num_clients=1,
                        classes_per_client=3, labelled_fraction=0.5)  # fmt: skip
    seen = PULabels(digits.train_set, c)
    truth = np.asarray(digits.train_set.targets)
    labels = [seen[i][1] for i in range(len(seen))]
    assert labels[: len(c.labelled)] == truth[c.labelled].tolist()
    assert set(labels[len(c.labelled) :]) == {UNLABELLED}
    full = PULabels(digits.train_set, c, supervised=True)
    assert [full[i][1] for i in range(len(full))] == truth[full.positions].tolist()
    bundle = client_bundle(digits, c)
    assert isinstance(bundle.task, PositiveUnlabelled) and len(bundle.train_set) == 200
    assert len(bundle.val_set) == len(digits.val_set)


def test_the_pu_task_loss_is_the_labelled_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(6, 4, requires_grad=True)
    y = torch.tensor([1, UNLABELLED, 3, UNLABELLED, UNLABELLED, 1])
    task = PositiveUnlabelled()
    want = F.cross_entropy(logits[[0, 2, 5]], torch.tensor([1, 3, 1]))
    assert torch.allclose(task.loss(logits, y), want)
    none = task.loss(logits, torch.full((6,), UNLABELLED))
    none.backward()
    assert none.item() == 0.0 and torch.all(logits.grad == 0)


def test_fedpu_risk_against_a_hand_computation():
    torch.manual_seed(1)
    logits = torch.randn(8, 5)
    y = torch.tensor([0, 2, UNLABELLED, UNLABELLED, 0, UNLABELLED, UNLABELLED, UNLABELLED])
    priors = {0: 0.3, 2: 0.05}
    p = F.softmax(logits, 1)
    terms = []
    for i, pi in priors.items():
        u = [-np.log(1 - p[n, i].item()) for n in range(8) if y[n] == UNLABELLED]
        pos = [-np.log(1 - p[n, i].item()) for n in range(8) if y[n] == i]
        terms.append(max(0.0, np.mean(u) - pi * np.mean(pos)))
    assert fedpu_risk(logits, y, priors).item() == pytest.approx(np.mean(terms), rel=1e-5)


def test_fedpu_risk_is_clamped_at_zero_and_skips_missing_positives():
    # the unlabelled images sit far from class 0, its positives on it: the bracket < 0
    logits = torch.tensor([[8.0, 0.0], [8.0, 0.0], [-8.0, 0.0], [-8.0, 0.0]])
    y = torch.tensor([0, 0, UNLABELLED, UNLABELLED])
    assert fedpu_risk(logits, y, {0: 0.9}).item() == 0.0
    y_no_pos = torch.tensor([1, 1, UNLABELLED, UNLABELLED])  # no class-0 positive: E_U alone
    p0 = F.softmax(logits[2:], 1)[:, 0]
    want = (-torch.log1p(-p0)).mean()
    assert torch.allclose(fedpu_risk(logits, y_no_pos, {0: 0.9}), want)
    assert fedpu_risk(logits, torch.tensor([0, 0, 1, 1]), {0: 0.5}).item() == 0.0  # no U


def test_class_priors_are_checked_at_the_door(digits):
    with pytest.raises(ConfigError, match=r"sum to at most 1.*0.6, 0.6"):
        FedPUConfig(class_priors=[0.6, 0.6])
    with pytest.raises(ConfigError, match="class_priors has 3 values but the data has 10"):
        lv.compress(_tiny(digits), "fedpu", data=digits, class_priors=[0.2, 0.2, 0.2])
    with pytest.raises(ConfigError, match="labelled_fraction"):
        FedPUConfig(labelled_fraction=0.0)
    with pytest.raises(ConfigError, match="data"):
        lv.compress(_tiny(digits), "fedavg")


def test_a_client_trains_the_global_model_and_fedpu_changes_its_update(digits):
    cfg = FedPUConfig(num_clients=2, classes_per_client=5, max_steps=2, seed=0)
    avg = FedAvgConfig(num_clients=2, classes_per_client=5, max_steps=2, seed=0)
    model = _tiny(digits)
    start = get_arrays(model)
    pu = make_client(model, digits, cfg, 1, fedpu_setup(cfg, digits))
    plain = make_client(model, digits, avg, 1, fedavg_setup(avg, digits))
    (hook,) = pu.hooks()
    assert isinstance(hook, FedPUHook) and set(hook.priors) == set(range(5, 10))
    a, n, metrics = pu.fit(start, {"round": 1, "lr": 0.05})
    b, _, _ = plain.fit(start, {"round": 1, "lr": 0.05})
    assert n == 100 and metrics["client"] == 1 and np.isfinite(metrics["train_loss"])
    moved = [not np.allclose(x, y) for x, y in zip(a, start, strict=True)]
    assert any(moved)
    assert any(not np.allclose(x, y) for x, y in zip(a, b, strict=True))
    assert all(np.array_equal(x, y) for x, y in zip(get_arrays(model), start, strict=True))


def test_arrays_of_another_architecture_are_refused(digits):
    model = _tiny(digits)
    arrays = get_arrays(model)
    with pytest.raises(ConfigError, match="same architecture"):
        set_arrays(model, arrays[:-1])
    arrays[0] = np.zeros((1, 1))
    with pytest.raises(ConfigError, match=r"shape \(1, 1\)"):
        set_arrays(model, arrays)


def test_an_unreachable_server_is_a_clear_error(digits):
    cfg = FedAvgConfig(num_clients=2, classes_per_client=5)
    client = make_client(_tiny(digits), digits, cfg, 0, fedavg_setup(cfg, digits))
    address = f"127.0.0.1:{_free_port()}"
    with pytest.raises(LeanVisionError, match=f"cannot reach the Flower server at '{address}'"):
        join(client, address, timeout_s=1.0)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        join(client, "nohost", timeout_s=1.0)


def test_a_federation_never_overwrites_nor_resumes_another(digits, tmp_path):
    cfg = FedAvgConfig(num_clients=2, classes_per_client=5, out_dir=str(tmp_path))
    fed = Federation(_tiny(digits), digits, cfg, "fedavg_positive")
    fed._save(1)
    with pytest.raises(ConfigError, match="resume=True"):
        Federation(_tiny(digits), digits, cfg, "fedavg_positive")
    other = FedAvgConfig(num_clients=2, classes_per_client=5, out_dir=str(tmp_path), resume=True)
    with pytest.raises(ConfigError, match="holds a 'fedavg_positive' federation"):
        Federation(_tiny(digits), digits, other, "fedpu")
    again = Federation(_tiny(digits), digits, other, "fedavg_positive")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "global.pt").write_bytes(b"not a checkpoint")
    broken = FedAvgConfig(num_clients=2, classes_per_client=5, resume=True,
                          out_dir=str(tmp_path / "broken"))  # fmt: skip
    with pytest.raises(CheckpointError, match="global.pt"):
        Federation(_tiny(digits), digits, broken, "fedavg_positive")
    assert again.start_round == 1 and again.remaining == cfg.rounds - 1
    with pytest.raises(LeanVisionError, match="stopped after round 1 of 20"):
        again.result()


def test_fedpu_in_flowers_simulation_engine(digits, tmp_path):
    model = _tiny(digits)
    out = lv.compress(model, "fedpu", data=digits, num_clients=2, classes_per_client=5,
                      rounds=1, max_steps=1, workers=2, out_dir=str(tmp_path),
                      progress=False)  # fmt: skip
    (row,) = out.lv_federation["history"]
    assert row["round"] == 1 and row["clients"] == 2 and "val_top1" in row
    assert (tmp_path / "global.pt").exists() and (tmp_path / "history.json").exists()
    assert any(
        not torch.equal(a, b)
        for a, b in zip(out.state_dict().values(), model.state_dict().values(), strict=True)
    )


def test_a_server_and_two_clients_on_localhost(tmp_path):
    address = f"127.0.0.1:{_free_port()}"
    common = [
        "--method", "fedpu", "--model", "resnet20_cifar", "--data", "mnist5k",
        "--max-train", "64", "--max-val", "32", "--address", address,
        "--set", "num_clients=2", "--set", "classes_per_client=5", "--set", "rounds=2",
        "--set", "max_steps=1", "--set", "num_threads=1",
    ]  # fmt: skip
    cli = [sys.executable, "-m", "leanvision.cli", "fed"]
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    server = subprocess.Popen([*cli, "server", *common, "--out", str(tmp_path / "fed")], **pipes)
    clients = [
        subprocess.Popen([*cli, "client", *common, "--client-id", str(k)], **pipes)
        for k in range(2)
    ]  # fmt: skip
    try:
        s_out, _ = server.communicate(timeout=240)
        c_out = [c.communicate(timeout=60)[0] for c in clients]
    finally:
        for p in (server, *clients):
            p.kill()
    assert server.returncode == 0, s_out[-2000:]
    assert all(c.returncode == 0 for c in clients), [o[-1000:] for o in c_out]
    assert "fedpu: 2 rounds" in s_out
    history = json.loads((tmp_path / "fed" / "history.json").read_text())
    assert [row["round"] for row in history] == [1, 2]
    assert lv.load(tmp_path / "fed" / "model.pt") is not None


class _FailsInRound2(LocalClient):
    def fit(self, arrays, config):
        if int(config["round"]) == 2:
            raise RuntimeError("client lost its data")
        return super().fit(arrays, config)


def test_a_failed_round_is_an_error_and_the_last_good_round_is_kept(digits, tmp_path):
    from leanvision.methods.federated import simulate

    cfg = FedAvgConfig(num_clients=2, classes_per_client=5, rounds=3, max_steps=1,
                       out_dir=str(tmp_path), log=False)  # fmt: skip
    model = _tiny(digits)
    fed = Federation(model, digits, cfg, "fedavg_positive")

    def client(k):
        c = make_client(model, digits, cfg, k, fedavg_setup(cfg, digits))
        return _FailsInRound2(c.model, c.data, c.cfg, c.hooks, k)

    with pytest.raises(LeanVisionError, match=r"round 2: 2 client\(s\) failed.*client lost its "
                       r"data.*round 1 is kept in .*resume=True"):  # fmt: skip
        simulate(fed, client)
    state = torch.load(tmp_path / "global.pt", weights_only=True)  # plain data and tensors
    assert state["round"] == 1 and len(state["history"]) == 1
