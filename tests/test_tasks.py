"""The task seam: the trainer and lv.evaluate train and measure whatever a Task says."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset
from torchmetrics.image import PeakSignalNoiseRatio

import leanvision as lv
from leanvision.data.bundle import DataBundle
from leanvision.errors import ConfigError
from leanvision.tasks import Classification, Metrics, Task


def test_classification_metrics_count_what_a_hand_count_does(mnist_small):
    torch.manual_seed(0)
    model = lv.create_model("resnet20_cifar", in_chans=1, width=0.25).eval()
    got = lv.evaluate(model, mnist_small.test)
    hits1 = hits5 = n = 0
    loss = 0.0
    with torch.no_grad():
        for x, y in mnist_small.test:
            logits = model(x)
            hits1 += (logits.argmax(1) == y).sum().item()
            hits5 += logits.topk(5, 1).indices.eq(y[:, None]).any(1).sum().item()
            loss += F.cross_entropy(logits, y, reduction="sum").item()
            n += len(y)
    assert got["n"] == n == 64
    assert got["top1"] == pytest.approx(100.0 * hits1 / n, abs=1e-4)
    assert got["top5"] == pytest.approx(100.0 * hits5 / n, abs=1e-4)
    assert got["loss"] == pytest.approx(loss / n, rel=1e-6)
    assert lv.evaluate(model, mnist_small.test, task=Classification()) == got


class _PSNR(Metrics):
    def __init__(self) -> None:
        self.psnr = PeakSignalNoiseRatio(data_range=2.0)
        self.se, self.n = 0.0, 0

    def update(self, outputs: Any, targets: torch.Tensor) -> None:
        self.psnr.update(outputs, targets)
        self.se += F.mse_loss(outputs, targets, reduction="sum").item()
        self.n += targets.numel()

    def compute(self) -> dict[str, float]:
        return {"psnr": float(self.psnr.compute()), "mse": self.se / max(1, self.n)}


class Denoise(Task):
    """A task the trainer has never heard of: images in, clean images out (MSE), PSNR."""

    name, primary, higher_is_better, train_metric_name = "denoise", "psnr", True, "mse"

    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs, targets)

    def metrics(self) -> Metrics:
        return _PSNR()

    def train_metric(self, outputs: Any, targets: torch.Tensor, n: int) -> torch.Tensor:
        return F.mse_loss(outputs.detach(), targets).double() * n


def _denoise_data(task: Task | None = None) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(96, 1, 8, 8, generator=g) * 2 - 1
    noisy = clean + 0.3 * torch.randn(clean.shape, generator=g)
    sets = [TensorDataset(noisy[a:b], clean[a:b]) for a, b in ((0, 64), (64, 80), (80, 96))]
    return DataBundle("noise", *sets, num_classes=0, input_size=(1, 8, 8), mean=(0.0,),
                      std=(1.0,), class_names=[], batch_size=16, task=task)  # fmt: skip


def _denoiser() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))


def test_a_new_task_trains_and_is_measured_with_no_change_to_the_trainer(tmp_path):
    model = _denoiser()
    before = lv.evaluate(model, _denoise_data().val, task=Denoise())
    res = lv.train(model, _denoise_data(), task=Denoise(), epochs=4, lr=0.05, opt="adam",
                   weight_decay=0.0, out_dir=str(tmp_path), progress=False, log=False)  # fmt: skip
    rows = res.history
    assert {"train_mse", "val_psnr", "val_mse"} <= set(rows[-1]) and "val_top1" not in rows[-1]
    assert rows[-1]["val_psnr"] > before["psnr"] + 1.0  # it learned to denoise
    assert res.best["val_psnr"] == max(r["val_psnr"] for r in rows)  # the primary picks best
    assert res.final["psnr"] == rows[-1]["val_psnr"]
    after = lv.evaluate(res.model, _denoise_data().val, task=Denoise())
    assert after["psnr"] == pytest.approx(rows[-1]["val_psnr"], rel=1e-5) and after["n"] == 16
    # the data bundle's task is the default
    again = lv.train(_denoiser(), _denoise_data(Denoise()), epochs=1, lr=0.05, opt="adam",
                     weight_decay=0.0, progress=False, log=False)  # fmt: skip
    assert "val_psnr" in again.history[-1]


def test_a_lower_is_better_primary_keeps_the_lowest():
    class DenoiseByMSE(Denoise):
        primary, higher_is_better = "mse", False

    task = DenoiseByMSE()
    assert task.better(0.1, 0.2) and not task.better(0.3, 0.2) and task.better(5.0, None)
    res = lv.train(_denoiser(), _denoise_data(), task=task, epochs=3, lr=0.5, opt="sgd",
                   weight_decay=0.0, progress=False, log=False)  # fmt: skip
    assert res.best["val_mse"] == min(r["val_mse"] for r in res.history)


def test_task_errors_are_clear():
    with pytest.raises(ConfigError, match="must be a leanvision.tasks.Task"):
        lv.train(_denoiser(), _denoise_data(), task="denoise", epochs=1, progress=False)
    with pytest.raises(ConfigError, match="option of the classification task"):
        lv.train(_denoiser(), _denoise_data(), task=Denoise(), epochs=1, label_smoothing=0.1,
                 progress=False)  # fmt: skip
    with pytest.raises(ConfigError, match="label_smoothing"):
        Classification(label_smoothing=1.5)


def test_move_to_keeps_the_container_types():
    from collections import namedtuple

    from leanvision.tasks import move_to

    Pair = namedtuple("Pair", "a b")
    t = torch.zeros(1)
    out = move_to({"x": [t, (t, "s")], "p": Pair(t, 3)}, torch.device("cpu"))
    assert isinstance(out["x"], list) and isinstance(out["x"][1], tuple)
    assert out["x"][1][1] == "s" and isinstance(out["p"], Pair) and out["p"].b == 3
