"""Hit-Detector (arXiv 2003.11818): the operations and the searched FCOS family, the mixed
positions, the group-sparsity screening's proximal step, the budgeted derivation, and the
search end to end through ``lv.search`` (resuming a finished search trains nothing again)."""

from __future__ import annotations

import pytest
import torch

import leanvision as lv
from leanvision.errors import ConfigError
from leanvision.methods.search.hit_detector import ArchHook, derive
from leanvision.models.hitdet import OPS, MixedOp, hand_design, make_op, mixed_positions
from leanvision.profiling import count_ops


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    return lv.load_data("digits_det", batch_size=4, n_train=8, n_val=4, n_test=4)


def test_every_operation_keeps_or_changes_the_shape_as_asked():
    x = torch.randn(2, 16, 9, 9)  # odd size
    for name in OPS:
        assert make_op(name, 16, 16)(x).shape == (2, 16, 9, 9), name
        if name != "skip":
            assert make_op(name, 16, 24, stride=2)(x).shape == (2, 24, 5, 5), name
    with pytest.raises(ConfigError, match="skip cannot change"):
        make_op("skip", 16, 24)
    with pytest.raises(ConfigError, match="unknown operation"):
        make_op("ir_k4", 16, 16)


def test_mixed_op_sums_weighted_operations_and_skips_zeroed_ones():
    torch.manual_seed(0)
    m = MixedOp(["ir_k3_e3", "sep_k3", "skip"], 8, 8).eval()
    x = torch.randn(1, 8, 6, 6)
    m.alpha, m.mode = torch.tensor([0.5, 0.0, 2.0]), "raw"
    calls = []
    m.ops[1].register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        out = m(x)
        assert torch.allclose(out, (0.5 * m.ops[0](x) + 2.0 * x) / 2.5, atol=1e-6)  # ℓ1 = 1
        m.alpha = m.alpha * 0.1  # a shrunk group: the same output
        assert torch.allclose(m(x), out, atol=1e-6)
    assert calls == []  # a zero weight is not computed
    m.mode = "softmax"
    w = m.alpha.softmax(0)
    with torch.no_grad():
        assert torch.allclose(m(x), sum(w[i] * m.ops[i](x) for i in range(3)), atol=1e-6)
    assert not [n for n, _ in m.named_parameters() if ".bn" in n]  # norms are not affine


def test_the_hand_design_trains_saves_loads_and_profiles(digits, tmp_path):
    torch.manual_seed(0)
    model = lv.create_model("hitdet_detector", num_classes=10, image_size=64)
    assert model.lv_spec["kwargs"].get("backbone") is None  # the hand design, by default
    res = lv.train(model, digits, epochs=1, max_steps=2, progress=False)
    assert "val_map" in res.history[-1]
    lv.save(res.model.eval(), tmp_path / "hit.pt")
    back = lv.load(tmp_path / "hit.pt").eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = res.model(x), back(x)
    assert torch.equal(a[0]["scores"], b[0]["scores"])
    assert lv.profile(back, input_size=(3, 64, 64), threads=1).macs > 0
    with pytest.raises(ConfigError, match="backbone: 8 operations"):
        lv.create_model("hitdet_detector", backbone=["conv3"] * 3)
    with pytest.raises(ConfigError, match="not an operation"):
        lv.create_model("hitdet_detector", head=["conv5"])


def _hook(mode: str = "raw", **kw) -> ArchHook:
    nets = {k: [MixedOp(["ir_k3_e1", "sep_k3", "skip"], 8, 8)] for k in ("a", "b")}
    return ArchHook(nets, mode, arch_lr=0.1, **kw)


def test_group_lasso_prox_shrinks_groups_and_stops_at_keep():
    hook = _hook(sparsity=1.0, keep=2)
    with torch.no_grad():
        hook.alphas["a"].copy_(torch.tensor([0.30, 0.05, 0.40]))
        hook.alphas["b"].copy_(torch.tensor([0.40, 0.05, 0.30]))
    hook._prox()  # threshold 0.1 * 1.0 * sqrt(2) per group
    t = 0.1 * 2**0.5
    assert hook.alphas["a"][1] == 0 and hook.alphas["b"][1] == 0  # norm 0.0707 < t: zeroed
    assert torch.allclose(hook.alphas["a"][0], torch.tensor(0.30 * (1 - t / 0.5)))
    assert hook.died == {"sep_k3": 1}
    for _ in range(10):  # both survivors would die next; keep=2 holds them
        hook._prox()
    assert (hook.alphas["a"][[0, 2]] > 0).all()
    assert hook.ranking()[-1] == "sep_k3"


def test_derive_takes_the_argmax_then_repairs_the_budget():
    probs = {"x": [0.6, 0.4], "y": [0.9, 0.1]}
    names = {"x": ["big", "small"], "y": ["big", "small"]}
    macs = {"x": [100, 10], "y": [100, 50]}
    assert derive(probs, names, macs, 5.0, None) == ({"x": "big", "y": "big"}, 205.0)
    # over 150: moving x costs 0.2 probability for 90 MACs, y 0.8 for 50: x moves
    assert derive(probs, names, macs, 5.0, 150.0) == ({"x": "small", "y": "big"}, 115.0)
    with pytest.raises(ConfigError, match="no member of the sub-spaces fits"):
        derive(probs, names, macs, 5.0, 40.0)


def test_hit_detector_search_end_to_end_resumes_and_fits_the_budget(digits, tmp_path):
    hand = lv.create_model("hitdet_detector", num_classes=10, image_size=64).eval()
    budget = count_ops(hand, (3, 64, 64)).macs
    kw = {"budget": budget, "out_dir": tmp_path, "screen_epochs": 2, "search_epochs": 2,
          "arch_warmup_epochs": 1, "max_steps": 1, "progress": False, "keep": 3}  # fmt: skip
    torch.manual_seed(0)
    res = lv.search("hitdet_fcos", digits, "hit_detector", **kw)
    spec = res.best.spec
    model = spec.build(num_classes=10, image_size=64).eval()
    macs = count_ops(model, (3, 64, 64)).macs
    assert macs <= budget and macs == res.extra["joint"]["expected_macs"] == res.best.values["macs"]
    assert set(res.extra["screened"]) == {"backbone", "neck", "head"}
    assert all(len(s["kept"]) == 3 for s in res.extra["screened"].values())
    for key, opts in res.extra["joint"]["options"].items():
        part = "backbone" if key.startswith("bb") else key.rstrip("0123456789")
        assert set(opts) <= set(res.extra["screened"][part]["kept"]) or len(opts) == 1
    assert res.cpu_hours >= res.extra["supernet_cpu_hours"] > 0
    stamp = (tmp_path / "joint.json").stat().st_mtime
    again = lv.search("hitdet_fcos", digits, "hit_detector", **kw)
    assert again.best.spec.as_dict() == spec.as_dict()
    assert (tmp_path / "joint.json").stat().st_mtime == stamp  # not searched again
    assert len(again.candidates) == 1


def test_hit_detector_refuses_bad_input_at_the_door(digits):
    with pytest.raises(ConfigError, match="detection set"):
        lv.search("hitdet_fcos", lv.load_data("mnist5k", max_train=8), "hit_detector")
    with pytest.raises(ConfigError, match="arch_warmup_epochs=4"):
        lv.search("hitdet_fcos", digits, "hit_detector", search_epochs=4, arch_warmup_epochs=4)
    with pytest.raises(ConfigError, match="screen_epochs=1"):
        lv.search("hitdet_fcos", digits, "hit_detector", screen_epochs=1, arch_warmup_epochs=1)
    with pytest.raises(ConfigError, match="keep=0"):
        lv.search("hitdet_fcos", digits, "hit_detector", keep=0)
    with pytest.raises(ConfigError, match="smallest reachable"):
        lv.search("hitdet_fcos", digits, "hit_detector", budget=1000)


def test_head_towers_hold_no_batch_statistics():
    """Every pyramid level runs through the same towers: their norms are group norms."""
    net = lv.create_model("hitdet_detector", num_classes=10, image_size=64,
                          head=["ir_k5_e6", "sep_k3", [*OPS]])  # fmt: skip
    for tower in (net.head.classification_head.conv, net.head.regression_head.conv):
        kinds = {type(m).__name__ for m in tower.modules()}
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in tower.modules()), kinds
        assert any(isinstance(m, torch.nn.GroupNorm) for m in tower.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.backbone.modules())


def test_mixed_positions_follow_the_space_keys():
    both = [list(OPS)] * 3
    net = lv.create_model("hitdet_detector", num_classes=10, image_size=64,
                          neck=both, head=[list(OPS)] * 2)  # fmt: skip
    mixed = mixed_positions(net)
    assert sorted(mixed) == ["head0", "head1", "neck0", "neck1", "neck2"]
    assert len(mixed["head0"]) == 2 and len(mixed["neck0"]) == 1  # two towers share a key
    assert hand_design()["head"] == ["conv3"] * 3


def test_the_macs_term_is_linear_or_a_hinge_that_is_zero_within_the_budget():
    macs = {"a": [30, 20, 0], "b": [30, 20, 0]}
    linear = _hook("softmax", macs=macs, reference=100.0, cost_weight=1.0)
    hinge = _hook("softmax", macs=macs, reference=100.0, cost_weight=1.0, cost_form="hinge",
                  fixed_macs=50.0)  # fmt: skip
    # uniform softmax: E[MACs] = 2 x (30 + 20 + 0) / 3 = 33.3; with 50 fixed, 83.3 <= 100
    assert torch.allclose(linear.cost(), torch.tensor(100 / 3 / 100))
    assert hinge.cost().item() == 0.0
    with torch.no_grad():  # push both positions to the 30-MAC operation: 50 + 60 = 110
        for a in hinge.alphas.values():
            a.copy_(torch.tensor([20.0, 0.0, 0.0]))
    assert torch.allclose(hinge.cost(), torch.tensor(0.1), atol=1e-4)
    hinge.cost().backward()
    assert hinge.alphas["a"].grad is not None and hinge.alphas["a"].grad.abs().sum() > 0
