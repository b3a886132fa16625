"""measure_models: the rows every benchmark writes, and timing with batch norms folded."""

from __future__ import annotations

import torch
from torch import nn

import leanvision as lv
from leanvision.deploy import fold_batchnorm
from leanvision.pipeline import measure_models


class _Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.conv(x))
        if h.mean() > 0:
            h = h.relu()
        return self.head(h.mean(dim=(2, 3)))


def _randomise_bn(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def test_fold_batchnorm_is_exact_and_removes_the_norms():
    torch.manual_seed(0)
    model = _randomise_bn(lv.create_model("resnet20_cifar", num_classes=10, in_chans=1))
    folded, ok = fold_batchnorm(model)
    assert ok and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # input untouched
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    same, ok = fold_batchnorm(_Branchy())
    assert not ok and isinstance(same, _Branchy)


def test_measure_models_rows_with_folded_batch_norms(mnist_small):
    torch.manual_seed(0)
    models = {
        "a": _randomise_bn(lv.create_model("resnet20_cifar", num_classes=10, in_chans=1)),
        "b": _Branchy().eval(),
    }
    rows = measure_models(
        models, mnist_small, baseline="a", batch=2, threads=1, repeats=2, fold_bn=True
    )
    assert [r["name"] for r in rows] == ["a", "b"]
    assert rows[0]["latency_ms"]["backend"].endswith("-bn-folded")
    assert rows[1]["latency_ms"]["backend"].endswith("-bn-not-folded")
    assert rows[0]["macs"] > rows[1]["macs"] > 0 and rows[0]["latency_ms"]["batch"] == 2
    assert 0.0 <= rows[1]["top1"] <= 100.0


def test_measure_models_leaves_the_callers_models_as_they_were(mnist_small):
    """Timing in channels-last (without folding) and evaluating used to convert the caller's
    models in place and put them in eval mode."""
    torch.manual_seed(0)
    model = lv.create_model("resnet8_cifar", num_classes=10, in_chans=1).train()
    conv = (
        model.conv1
        if hasattr(model, "conv1")
        else next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    )
    stride = conv.weight.stride()
    measure_models({"a": model}, mnist_small, baseline="a", batch=2, threads=1, repeats=1)
    assert model.training and all(m.training for m in model.modules())
    assert conv.weight.stride() == stride  # not converted to channels-last in place
