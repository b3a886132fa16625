"""SCOP (arXiv 2010.10732): knockoffs, control factors, scores, and compress("scop")."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import leanvision as lv
from leanvision.engine import StepContext
from leanvision.errors import ConfigError
from leanvision.methods.pruning.knockoffs import (
    GaussianKnockoffs,
    ResampledKnockoffs,
    feature_moment_gap,
)
from leanvision.methods.pruning.scop import ControlFactorHook


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    torch.set_num_threads(1)


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(-1, 1)
    return net


class _Trainer:
    def __init__(self, model: nn.Module) -> None:
        self.model = model


@pytest.mark.parametrize("beta", [0.0, 1.0, 0.3])
def test_control_factors_mix_real_and_knockoff_features(beta):
    """β = 1: the real half sees only real features; β = 0: only the knockoff's; else a blend."""
    net = _net()
    real, knock = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    hook = ControlFactorHook({"4": net[4]}, lambda n: knock[:n])
    with torch.no_grad():
        hook.beta["4"].fill_(beta)
    hook.on_train_start(_Trainer(net))
    net.train()
    hook.on_epoch_start(_Trainer(net), 0)  # BN uses its running statistics
    ctx = StepContext(inputs=real, targets=torch.tensor([0, 1]))
    hook.before_forward(None, ctx)
    assert ctx.inputs.shape[0] == 4
    ctx.outputs = net(ctx.inputs)
    hook.on_loss(None, ctx)
    assert ctx.outputs.shape == (2, 3) and ctx.targets.shape == (2,)
    hook.on_train_end(None)
    net.eval()
    with torch.no_grad():
        h_real, h_knock = net[:4](real), net[:4](knock)
        mixed = beta * h_real + (1 - beta) * h_knock
        expected = net[4:](mixed)
    torch.testing.assert_close(ctx.outputs.detach(), expected)


def test_control_factor_training_leaves_the_model_alone(mnist_small):
    """Only β trains (clamped to [0, 1]); weights and BN statistics are unchanged afterwards."""
    model = lv.create_model("resnet20_cifar", in_chans=1, width=0.25)
    for p in model.parameters():
        p.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    norms = {n: m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    hook = ControlFactorHook(norms, ResampledKnockoffs(mnist_small.train_set))
    lv.train(
        model,
        mnist_small,
        hooks=[hook],
        epochs=1,
        max_steps=4,
        opt="adam",
        lr=0.5,
        sched="none",
        progress=False,
        log=False,
    )
    betas = torch.cat([b.detach() for b in hook.beta.values()])
    assert betas.min() >= 0 and betas.max() <= 1 and not torch.all(betas == 0.5)
    assert ((betas == 0) | (betas == 1)).any()  # lr 0.5 drives some to the clamp
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items() if "num_batches" not in k)
    assert not any(m._forward_pre_hooks for m in norms.values())
    scores = hook.scores()
    name = next(iter(norms))
    expected = norms[name].weight.abs() * (2 * hook.beta[name].detach() - 1)
    torch.testing.assert_close(scores[name], expected)


def test_gaussian_knockoffs_match_the_first_two_moments():
    """Samples of a known Gaussian: knockoffs reproduce its mean and covariance."""
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(12, 12, generator=g)
    cov = basis @ basis.T / 12 + 0.1 * torch.eye(12)
    mean = torch.randn(12, generator=g)
    x = torch.randn(20000, 12, generator=g) @ torch.linalg.cholesky(cov).T + mean
    ko = GaussianKnockoffs.fit(x.reshape(-1, 3, 2, 2), n_components=12)
    s = ko(20000, generator=g).reshape(-1, 12)
    torch.testing.assert_close(s.mean(0), mean, atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(s.T), cov, atol=0.08, rtol=0)
    # fewer components: the residual is per-pixel noise, so the variances still match
    low = GaussianKnockoffs.fit(x.reshape(-1, 3, 2, 2), n_components=4)
    v = low(20000, generator=g).reshape(-1, 12).var(0)
    torch.testing.assert_close(v, torch.diag(cov), atol=0.1, rtol=0.05)
    # knockoffs are independent draws: uncorrelated with the images they are paired with
    c = torch.corrcoef(torch.cat([x[:20000, :1], s[:, :1]], 1).T)[0, 1]
    assert abs(c) < 0.03
    with pytest.raises(ConfigError):
        GaussianKnockoffs.fit(torch.randn(1, 3, 2, 2))


def test_knockoff_conditions_on_features(mnist_small):
    """On a conv layer's features: resampled knockoffs match the real first two moments, and
    the Gaussian ones do on linear features (the second-order construction) but not deeper."""
    torch.manual_seed(0)
    model = lv.create_model("resnet20_cifar", in_chans=1, width=0.25).eval()
    images = torch.stack([mnist_small.train_set[i][0] for i in range(256)])
    gauss = GaussianKnockoffs.fit(images, n_components=64)
    resampled = ResampledKnockoffs(mnist_small.train_set, seed=1)
    layers = ["conv1", "layer3"]
    with torch.no_grad():
        gap_r = feature_moment_gap(model, images, resampled(256), layers)
        gap_g = feature_moment_gap(model, images, gauss(256), layers)
    assert gap_r["conv1"]["mean_gap"] < 0.15 and abs(gap_r["conv1"]["std_ratio"] - 1) < 0.15
    assert gap_g["conv1"]["mean_gap"] < 0.15 and abs(gap_g["conv1"]["std_ratio"] - 1) < 0.2
    assert gap_r["layer3"]["mean_gap"] < 0.2


def test_compress_scop_prunes_and_round_trips(mnist_small, tmp_path):
    model = lv.create_model("resnet20_cifar", in_chans=1, width=0.5)
    pruned = lv.compress(
        model,
        "scop",
        mnist_small,
        pruning_ratio=0.4,
        control_epochs=1,
        control_max_steps=2,
        knockoff="gaussian",
        knockoff_images=128,
        knockoff_components=16,
        progress=False,
        log=False,
    )
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    back = lv.load(lv.save(pruned, tmp_path / "scop.pt"))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(back(x), pruned(x))
    with pytest.raises(ConfigError, match="knockoff"):
        lv.compress(model, "scop", mnist_small, knockoff="gan", control_max_steps=1)
    with pytest.raises(ConfigError, match="data"):
        lv.compress(model, "scop", input_size=[1, 28, 28])
