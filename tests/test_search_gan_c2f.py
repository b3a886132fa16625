"""Coarse-to-fine generator search (gan_c2f) on the sr_generator space: the three steps in
order, each holding the earlier groups at their choice and the later ones at the smallest
member, the distillation term, the SR generators, and errors at the door."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import leanvision as lv
from leanvision.engine import StepContext
from leanvision.errors import ConfigError
from leanvision.methods.search.gan_c2f import OutputDistillHook
from leanvision.search import get_space
from leanvision.search.space import SearchSpace

SR_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "sr"


@pytest.fixture(scope="module")
def sr_tiny():
    if not (SR_ROOT / "T91").is_dir():
        pytest.skip(f"no {SR_ROOT}")
    return lv.load_data("sr", root=SR_ROOT, scale=2, batch_size=8, patch_size=16, repeat=1,
                        max_val=2, max_test=2)  # fmt: skip


def test_sr_generators_build_edsr_and_searched_archs():
    edsr = lv.create_model("edsr_baseline", scale=2)
    assert sum(p.numel() for p in edsr.parameters()) == 1_369_859  # EDSR-baseline x2: 1.37 M
    space = get_space("sr_generator")
    sample = {**space.smallest, "depth": 4, "b1_op": "conv", "b2_op": "dsc", "width": 24}
    model = space.spec(sample).build(num_classes=0, in_chans=3).eval()
    assert [b.op for b in model.body[:-1]] == ["ir", "conv", "dsc", "ir"]
    x = torch.rand(2, 3, 11, 13)
    assert model(x).shape == (2, 3, 22, 26)
    with pytest.raises(ConfigError, match="op 'pool' is not allowed"):
        lv.create_model("srnet_custom", arch={"width": 8, "blocks": [["pool", 8]]})
    with pytest.raises(ConfigError, match="groups must hold every choice once"):
        SearchSpace("x", list(space.choices.values()), space._build, groups={"path": ["depth"]})


def test_output_distillation_adds_the_l1_to_the_teacher():
    student, teacher = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    ctx = StepContext(inputs=None, targets=None, outputs=student,
                      extras={"teacher_outputs": teacher})  # fmt: skip
    OutputDistillHook(torch.nn.Identity(), weight=0.5).on_loss(None, ctx)
    torch.testing.assert_close(ctx.losses["distill"], 0.5 * (student - teacher).abs().mean())


def test_gan_c2f_searches_path_then_operators_then_widths(sr_tiny, tmp_path):
    space = get_space("sr_generator")
    teacher = lv.create_model("edsr_cpu", scale=2)
    budget = 12e6  # MACs of one 16x16 LR patch; the teacher has ~41 M
    res = lv.search("sr_generator", sr_tiny, method="gan_c2f", teacher=teacher, n_trials=2,
                    out_dir=tmp_path, progress=False, max_steps=1, budget=budget,
                    sampler="random")  # fmt: skip
    steps = res.extra["steps"]
    assert list(steps) == ["path", "operator", "channel"]
    chosen = res.extra["chosen"]
    assert set(chosen) == set(space.choices)
    for i, result in enumerate(steps.values()):
        assert len(result.candidates) == 2
        earlier = [k for g in list(space.groups)[:i] for k in space.groups[g]]
        later = [k for g in list(space.groups)[i + 1 :] for k in space.groups[g]]
        for c in result.candidates:
            assert c.values["macs"] <= budget and "val_psnr" in c.values
            assert all(c.sample[k] == chosen[k] for k in earlier)
            assert all(c.sample[k] == space.smallest[k] for k in later)
    assert res.best.sample == chosen and res.cpu_hours >= sum(
        r.cpu_hours for g, r in steps.items() if g != "channel")  # fmt: skip


def test_gan_c2f_checks_its_inputs_at_the_door(sr_tiny, tmp_path):
    with pytest.raises(ConfigError, match="pass teacher="):
        lv.search("sr_generator", sr_tiny, method="gan_c2f", out_dir=tmp_path)
    saved = lv.save(lv.create_model("edsr_cpu", scale=2), tmp_path / "teacher.pt")
    from leanvision.search import get_search_method

    config = get_search_method("gan_c2f").make_config(teacher=str(saved))
    assert config.teacher.__class__.__name__ == "SRNet"  # a file of lv.save, loaded at the door
    with pytest.raises(lv.errors.CheckpointError):
        get_search_method("gan_c2f").make_config(teacher=str(tmp_path / "missing.pt"))
    x3 = lv.create_model("edsr_cpu", scale=3)
    with pytest.raises(ConfigError, match="not the target's"):
        lv.search("sr_generator", sr_tiny, method="gan_c2f", teacher=x3, out_dir=tmp_path)
    with pytest.raises(ConfigError, match="has none"):
        lv.search("mbv2_cifar", sr_tiny, method="gan_c2f", teacher=x3.__class__(
            {"width": 8, "blocks": []}, scale=2), out_dir=tmp_path)  # fmt: skip
