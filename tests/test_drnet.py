"""DRNet: resolution-specific batch norms, a batch split by resolution equal to each image run
alone, the training output being the chosen resolution's with a gradient to the predictor, the
FLOPs penalty from the profiler's per-resolution MACs, MACs that follow the choice, errors at the
door, and the method through the public API with save and load."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import leanvision as lv
from leanvision.errors import ConfigError, UnsupportedModelError
from leanvision.layers import DynamicResolutionNet, ResolutionBatchNorm2d
from leanvision.methods.drnet import DRNetHook, drnet_convert, resolution_macs
from leanvision.profiling import count_ops


def _net() -> DynamicResolutionNet:
    torch.manual_seed(0)
    model = lv.create_model("resnet8_cifar", num_classes=10)
    net = drnet_convert(model, [32, 24, 16])
    for m in net.modules():  # distinct statistics per resolution
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def test_batch_norms_become_one_per_resolution():
    model = lv.create_model("resnet8_cifar", num_classes=10)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    net = drnet_convert(model, [32, 24, 16])
    rbn = [m for m in net.classifier.modules() if isinstance(m, ResolutionBatchNorm2d)]
    assert len(rbn) == n_bn and all(len(m.bns) == 3 for m in rbn)
    first = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert all(torch.equal(b.weight, first.weight) for b in rbn[0].bns)


def test_a_batch_is_classified_as_each_image_alone_at_its_resolution():
    net = _net()

    class ByPixel(nn.Module):  # a predictor whose choice the test sets: pixel (0, 0, 0)
        def forward(self, x):
            return nn.functional.one_hot(x[:, 0, 0, 0].long(), 3).float()

    net.predictor = ByPixel()
    x = torch.rand(12, 3, 32, 32)
    x[:, 0, 0, 0] = torch.tensor([0, 2, 1, 1, 0, 2, 2, 0, 1, 0, 0, 2]).float()
    with torch.no_grad():
        out = net(x)
        choice = net.last_resolutions.clone()
        alone = torch.cat([net(x[i : i + 1]) for i in range(len(x))])
        by_hand = torch.cat([net.classify(x[i : i + 1], int(choice[i])) for i in range(len(x))])
    assert len(choice.unique()) > 1  # the batch really was split
    assert torch.allclose(out, alone, atol=1e-5) and torch.allclose(out, by_hand, atol=1e-5)
    # the resolutions' BNs differ: the same image at another resolution gives other logits
    assert not torch.allclose(net.classify(x[:1], 0), net.classify(x[:1], 2), atol=1e-3)


def test_training_output_is_the_chosen_resolutions_and_the_predictor_learns():
    net = _net().train()
    x = torch.rand(6, 3, 32, 32)
    out = net(x)
    g = net.last_choice
    assert torch.equal(g.detach().sum(1), torch.ones(6))
    picks = g.argmax(1)
    for i in range(6):
        ref = net.classify(x, int(picks[i]))[i]  # same batch statistics as in the forward
        assert torch.allclose(out[i], ref, atol=1e-4)
    out.sum().backward()
    assert net.predictor.fc.weight.grad is not None
    assert net.predictor.fc.weight.grad.abs().sum() > 0


def test_flops_penalty_uses_the_profilers_macs():
    net = _net()
    macs = resolution_macs(net)
    assert macs[0] > macs[1] > macs[2]
    # convolutions scale with the positions; only the linear head does not
    assert macs[1] / macs[0] == pytest.approx((24 / 32) ** 2, rel=0.01)
    hook = DRNetHook(net, flops_target=0.5, eta=2.0)
    net.last_choice = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]])

    class Ctx:
        losses: dict = {}

    hook.on_loss(None, Ctx)
    expected = (1 + macs[2] / macs[0]) / 2
    assert Ctx.losses["flops"].item() == pytest.approx(2.0 * (expected - 0.5) ** 2, rel=1e-5)
    assert net.last_choice is None


def test_counted_macs_follow_the_choice():
    net = _net()
    pred = count_ops(net.predictor, (3, 32, 32)).macs
    macs = resolution_macs(net)
    for i in range(3):
        with torch.no_grad():
            net.predictor.fc.bias.zero_()
            net.predictor.fc.bias[i] = 1e6  # force resolution i
        assert count_ops(net, (3, 32, 32)).macs == pred + macs[i]


def test_errors_at_the_door():
    model = lv.create_model("resnet8_cifar", num_classes=10)
    with pytest.raises(ConfigError, match="largest first"):
        drnet_convert(model, [16, 32])
    with pytest.raises(ConfigError, match="resolutions"):
        lv.compress(model, "drnet", resolutions=[32])
    with pytest.raises(UnsupportedModelError, match="no BatchNorm2d"):
        drnet_convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), [32, 16])
    fixed = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.Linear(4 * 32 * 32, 10))  # fmt: skip
    with pytest.raises(UnsupportedModelError, match="fails at resolution 24x24"):
        drnet_convert(fixed, [32, 24])
    data = lv.load_data("mnist5k", batch_size=8, max_train=16, max_val=8, max_test=8)
    with pytest.raises(ConfigError, match="must be the data's image side"):
        lv.compress(lv.create_model("resnet8_cifar", num_classes=10, in_chans=1), "drnet",
                    data=data, resolutions=[32, 16], finetune_epochs=1)  # fmt: skip


def test_compress_trains_saves_and_loads(tmp_path):
    data = lv.load_data("mnist5k", batch_size=8, max_train=32, max_val=16, max_test=16)
    torch.manual_seed(0)
    model = lv.create_model("resnet8_cifar", num_classes=10, in_chans=1)
    net = lv.compress(model, "drnet", data=data, resolutions=[28, 20, 14], finetune_epochs=1,
                      max_steps=3, progress=False)  # fmt: skip
    assert isinstance(net, DynamicResolutionNet)
    scores = lv.evaluate(net, data.test)
    assert 0 <= scores["top1"] <= 100
    lv.save(net, tmp_path / "d.pt")
    back = lv.load(tmp_path / "d.pt").eval()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(back(x), net(x), atol=1e-5)
