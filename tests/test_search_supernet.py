"""One-shot search's pieces: sliced ops against the plain ops, the mbv2_cifar supernet computing
exactly the member mbnas_cifar builds, uniform path sampling, BN recalibration, and the oneshot
method end to end on the embedded data."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import leanvision as lv
from leanvision.errors import ConfigError
from leanvision.layers.sliced import SlicedBatchNorm2d, SlicedConv2d
from leanvision.models.mbnas import MBNASSuperNet
from leanvision.search import get_space
from leanvision.search.supernet import UniformPathHook, recalibrate_bn


def test_sliced_conv_and_bn_are_the_plain_ops_on_the_first_channels():
    torch.manual_seed(0)
    conv = SlicedConv2d(12, 20, 3, stride=2)
    conv.set_active_out(7)
    x = torch.randn(2, 5, 9, 9)
    ref = F.conv2d(x, conv.weight[:7, :5], None, 2, 1)
    assert torch.equal(conv(x), ref)
    dw = SlicedConv2d(20, 20, 5, depthwise=True)
    y = torch.randn(2, 11, 6, 6)
    assert torch.equal(dw(y), F.conv2d(y, dw.weight[:11], None, 1, 2, 1, 11))
    with pytest.raises(ConfigError, match="13 input channels"):
        conv(torch.randn(1, 13, 4, 4))
    with pytest.raises(ConfigError, match="not in"):
        conv.set_active_out(21)

    bn = SlicedBatchNorm2d(16)
    before = bn.running_mean.clone()
    z = torch.randn(4, 6, 5, 5) + 3.0
    out = bn(z)  # training: batch statistics, running stats of the first 6 channels move
    assert torch.allclose(out, F.batch_norm(z, None, None, training=True), atol=1e-5)
    assert not torch.equal(bn.running_mean[:6], before[:6])
    assert torch.equal(bn.running_mean[6:], before[6:])
    bn.eval()
    ref = F.batch_norm(z, bn.running_mean[:6], bn.running_var[:6], bn.weight[:6], bn.bias[:6])
    assert torch.equal(bn(z), ref)


def _members(n: int, seed: int = 0):
    space = get_space("mbv2_cifar")
    rng = random.Random(seed)
    samples = [space.smallest, *(space.sample(rng) for _ in range(n))]
    return space, samples


def test_the_supernet_computes_the_member_mbnas_cifar_builds():
    space, samples = _members(3)
    torch.manual_seed(0)
    net = MBNASSuperNet(num_classes=10)
    for m in net.modules():  # non-trivial statistics, so the slices matter
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    for sample in samples:
        spec = space.activate(net, sample)
        member = spec.build(num_classes=10).eval()
        member.load_state_dict(net.member_state_dict())  # strict: every tensor, every shape
        torch.testing.assert_close(net(x), member(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="does not fit"):
        net.set_arch([["ir_r1_k3_s2_e3_c24"], ["ir_r1_k3_s2_e3_c32"], ["ir_r1_k3_s2_e3_c64"],
                      ["ir_r1_k3_s1_e3_c96"]])  # fmt: skip
    with pytest.raises(ConfigError, match="not a supernet operator"):
        net.set_arch([["ir_r1_k9_s1_e3_c24"], ["ir_r1_k3_s2_e3_c32"], ["ir_r1_k3_s2_e3_c64"],
                      ["ir_r1_k3_s1_e3_c96"]])  # fmt: skip


def test_uniform_path_hook_draws_members_and_resumes_its_sequence():
    space = get_space("mbv2_cifar")
    net = MBNASSuperNet(10)
    trainer = type("T", (), {"model": net.train()})()
    hook = UniformPathHook(space, seed=3)
    paths = []
    for _ in range(4):
        hook.before_forward(trainer, None)
        paths.append([list(s) for s in net.path])
    assert len({str(p) for p in paths}) > 1
    state = hook.state_dict()
    hook.before_forward(trainer, None)
    nxt = [list(s) for s in net.path]
    again = UniformPathHook(space, seed=99)
    again.load_state_dict({"rng": [list(v) if isinstance(v, tuple) else v for v in state["rng"]]})
    again.before_forward(trainer, None)
    assert [list(s) for s in net.path] == nxt  # the checkpointed generator continues
    with pytest.raises(ConfigError, match="not allowed"):
        UniformPathHook(space, fixed={"s0_width": 2.0})


def test_recalibrate_bn_takes_the_mean_over_the_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3))
    batches = [(torch.randn(4, 1, 5, 5) * (i + 1), torch.zeros(4)) for i in range(3)]
    recalibrate_bn(model, batches, batches=2)
    with torch.no_grad():
        means = [model[0](x).mean((0, 2, 3)) for x, _ in batches[:2]]
    torch.testing.assert_close(model[1].running_mean, (means[0] + means[1]) / 2)
    assert not model.training and model[1].momentum == 0.1


def test_oneshot_search_end_to_end(mnist_small, tmp_path):
    res = lv.search(
        "mbv2_cifar", mnist_small, method="oneshot", n_trials=3, out_dir=tmp_path,
        progress=False, supernet_epochs=1, max_steps=2, bn_batches=1, sampler="random",
    )  # fmt: skip
    assert len(res.candidates) == 3
    assert res.extra["supernet_record"]["epochs"] == 1 and res.extra["supernet_cpu_hours"] > 0
    assert res.cpu_hours >= res.extra["supernet_cpu_hours"]
    assert (tmp_path / "supernet" / "last.pt").exists()
    for c in res.candidates:
        assert c.values["macs"] == lv.profile(c.spec.build(num_classes=10, in_chans=1),
                                              (1, 28, 28)).macs  # fmt: skip
    with pytest.raises(ConfigError, match="bn_batches=0"):
        lv.search("mbv2_cifar", mnist_small, method="oneshot", bn_batches=0, out_dir=tmp_path)


def test_hournas_searches_the_vital_blocks_first(mnist_small, tmp_path):
    space = get_space("mbv2_cifar")
    hourglass = space.hourglass()
    assert set(space.vital) == {k for k in space.choices if k.endswith(("_b0", "_width"))}
    assert set(hourglass) == set(space.choices) - set(space.vital)
    assert set(hourglass.values()) == {"skip"}
    res = lv.search(
        "mbv2_cifar", mnist_small, method="hournas", n_trials=3, out_dir=tmp_path,
        progress=False, vital_epochs=1, rest_epochs=1, vital_trials=3, max_steps=2,
        bn_batches=1, sampler="random", budget=30e6,
    )  # fmt: skip
    vital = res.extra["vital"]
    assert len(res.extra["vital_result"].candidates) == 3 and len(res.candidates) == 3
    # the vital stage tried hourglass networks only; the main study kept its vital choices
    for c in res.extra["vital_result"].candidates:
        assert all(c.sample[k] == "skip" for k in hourglass)
    for c in res.candidates:
        assert {k: c.sample[k] for k in space.vital} == vital and c.values["macs"] <= 30e6
    records = res.extra["supernet_records"]
    assert records["vital"]["epochs"] == 1 and records["rest"]["epochs"] == 1
    assert res.cpu_hours > res.extra["supernet_cpu_hours"] > 0
    with pytest.raises(ConfigError, match="vital choice"):
        type(space)("x", list(space.choices.values()), lambda s: None, vital=["nope"])


def test_dcnas_clusters_members_and_scores_each_with_its_cluster(mnist_small, tmp_path):
    with pytest.raises(ConfigError, match="n_clusters=5 is more than"):
        lv.search("mbv2_cifar", mnist_small, method="dcnas", n_trials=4, n_clusters=5,
                  out_dir=tmp_path)  # fmt: skip
    res = lv.search(
        "mbv2_cifar", mnist_small, method="dcnas", n_trials=6, out_dir=tmp_path,
        progress=False, supernet_epochs=1, max_steps=2, bn_batches=1, n_clusters=2,
        probe_images=16, budget=25e6,
    )  # fmt: skip
    assert len(res.candidates) == 6 == res.distinct()
    clusters = {c.metrics["cluster"] for c in res.candidates}
    assert clusters == {0, 1} and set(res.extra["cluster_records"]) == {0, 1}
    for c in res.candidates:
        assert c.values["macs"] <= 25e6 and "oneshot_val_top1" in c.metrics
    # each cluster's weights were fine-tuned apart from the shared supernet
    assert all((tmp_path / f"cluster_{c}" / "last.pt").exists() for c in (0, 1))


def _vit_members(n: int, seed: int = 0):
    space = get_space("vit_res_cifar")
    rng = random.Random(seed)
    # the widest of every choice, no skip: ViT-Res-Tiny itself
    largest = {k: [o for o in c.options if o != "skip"][-1] for k, c in space.choices.items()}
    return space, [space.smallest, largest, *(space.sample(rng) for _ in range(n))]


def test_the_vit_supernet_computes_the_member_vit_res_builds():
    from leanvision.models.vit_res_supernet import ViTResSuperNet

    space, samples = _vit_members(3)
    torch.manual_seed(0)
    net = space.supernet(num_classes=10)
    assert isinstance(net, ViTResSuperNet)
    with torch.no_grad():  # every weight non-trivial, so a wrong slice shows
        for p in net.parameters():
            p.add_(torch.rand_like(p) * 0.2)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    net.eval()
    x = torch.randn(4, 3, 32, 32)
    outs = []
    for sample in samples:
        spec = space.activate(net, sample)
        member = spec.build(num_classes=10).eval()
        member.load_state_dict(net.member_state_dict())  # strict: every tensor, every shape
        outs.append(net(x))
        torch.testing.assert_close(outs[-1], member(x), rtol=1e-4, atol=1e-5)
    # several members share a batch: each computes its own part
    space.activate_group(net, samples[:2])
    torch.testing.assert_close(net(x), torch.cat([outs[0][:2], outs[1][2:]]), rtol=1e-4,
                               atol=1e-4)  # fmt: skip
    big = [[4, 256], [1, [256, 3, 64], [256, 512], 1], [3, 256, 384],
           [1, [384, 6, 64], [384, 768], 1], [3, 384, 768], [1, [768, 6, 64], [768, 768], 1],
           [2, 768, 10]]  # fmt: skip
    with pytest.raises(ConfigError, match="stage 0 .*width 256.*does not fit"):
        net.set_arch(big)
    with pytest.raises(ConfigError, match="not a network_def"):
        net.set_arch([[9, 3]])
    with pytest.raises(ConfigError, match="one member per batch"):
        UniformPathHook(get_space("mbv2_cifar"), archs_per_step=2)


def test_vit_resnas_search_end_to_end(cifar_tiny, tmp_path):
    data = cifar_tiny
    with pytest.raises(ConfigError, match="cannot run several members per batch"):
        lv.search("mbv2_cifar", data, method="vit_resnas", out_dir=tmp_path / "mb")
    with pytest.raises(ConfigError, match="population=4 sizes NSGA-II"):
        lv.search("vit_res_cifar", data, method="vit_resnas", population=4, sampler="tpe",
                  out_dir=tmp_path / "p")  # fmt: skip
    seen = []
    original = ViTResSuperNetSpy.install(seen)
    try:
        res = lv.search(
            "vit_res_cifar", data, method="vit_resnas", n_trials=2, out_dir=tmp_path / "v",
            progress=False, supernet_epochs=1, max_steps=2, bn_batches=1, population=2,
        )  # fmt: skip
    finally:
        ViTResSuperNetSpy.uninstall(original)
    # two members in each of the 2 training steps, then one per BN recalibration (2 trials)
    assert seen == [2, 2, 1, 1]
    assert len(res.candidates) == 2 and res.extra["supernet_record"]["epochs"] == 1
    for c in res.candidates:
        assert c.spec.name == "vit_res_tiny" and c.values["macs"] == lv.profile(
            c.spec.build(num_classes=10), latency=False, memory=False).macs  # fmt: skip


class ViTResSuperNetSpy:
    """Records how many members each training forward of the ViT supernet runs."""

    @staticmethod
    def install(seen: list):
        from leanvision.models.vit_res_supernet import ViTResSuperNet

        original = ViTResSuperNet.forward

        def forward(self, x):
            if self.training:
                seen.append(len(self.archs))
            return original(self, x)

        ViTResSuperNet.forward = forward
        return original

    @staticmethod
    def uninstall(original):
        from leanvision.models.vit_res_supernet import ViTResSuperNet

        ViTResSuperNet.forward = original


def test_recalibration_sends_batches_to_the_model_device():
    """A supernet trained on a GPU gets its recalibration batches there, not CPU tensors (the
    meta device stands in for a GPU)."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3)).to("meta")
    seen = []
    net.register_forward_pre_hook(lambda m, args: seen.append(args[0].device))
    recalibrate_bn(net, [(torch.randn(2, 3, 8, 8), torch.zeros(2))], batches=1)
    assert seen == [torch.device("meta")] and not net.training
