"""Distillation methods on top of the KD hook: token alignment, the DeiT distillation token,
``manifold_kd`` (arXiv 2107.01378) and ``feature_kd`` (FitNets, arXiv 1412.6550)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import leanvision as lv
from leanvision.engine import Hook, StepContext
from leanvision.errors import ConfigError
from leanvision.methods.distillation import (
    FeatureKDHook,
    KDHook,
    ManifoldKDHook,
    align_tokens,
    as_tokens,
    build_adapters,
    default_pairs,
    manifold_terms,
)


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def mnist32():
    """The embedded digits at 32×32 (a patch-4 ViT sees an 8×8 grid), tiny splits."""
    return lv.load_data(
        "mnist5k", batch_size=16, image_size=32, max_train=64, max_val=32, max_test=32
    )


def _vit(name: str = "deit_tiny_patch16_224", depth: int = 4, dim: int = 48, **kw):
    kw = {"img_size": 32, "patch_size": 4, "in_chans": 1, "num_classes": 10, **kw}
    return lv.create_model(name, depth=depth, embed_dim=dim, num_heads=2, **kw)


class Recorder(Hook):
    """Records the loss terms of every step (runs after the method's hook)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_loss(self, trainer, ctx) -> None:
        self.steps.append({k: float(v.detach()) for k, v in ctx.losses.items()})


# ------------------------------------------------------------------------ token alignment


def test_as_tokens_of_maps_and_tokens():
    """Maps become raster-order tokens; extra leading tokens are inferred (N − ⌊√N⌋²)."""
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float).reshape(2, 3, 4, 4)
    t, grid = as_tokens(x)
    assert grid == (4, 4) and t.shape == (2, 16, 3)
    torch.testing.assert_close(t[:, 5], x[:, :, 1, 1])
    for n, extra in ((65, 1), (66, 2), (64, 0), (197, 1)):
        tok, grid = as_tokens(torch.randn(1, n, 8))
        assert tok.shape[1] == n - extra and grid[0] ** 2 == n - extra
    tok, grid = as_tokens(torch.randn(1, 12, 8), extra_tokens=0)  # 12 tokens: no square grid
    assert tok.shape[1] == 12 and grid is None


def test_align_merges_finer_grid_by_space_to_depth():
    """A 32×32 teacher map against an 8×8-patch student: 4×4 blocks become one token."""
    torch.manual_seed(0)
    teacher = torch.randn(2, 16, 32, 32)
    student = torch.randn(2, 65, 48)  # class token + 8×8 patches
    s, t = align_tokens(student, teacher)
    assert s.shape == (2, 64, 48) and t.shape == (2, 64, 16 * 16)
    torch.testing.assert_close(s, student[:, 1:])
    expected = F.pixel_unshuffle(teacher, 4).flatten(2).transpose(1, 2)
    torch.testing.assert_close(t, expected)
    # the merged token at grid (1, 2) holds exactly the 4×4 block rows 4..7, columns 8..11
    assert set(t[0, 1 * 8 + 2].tolist()) == set(teacher[0, :, 4:8, 8:12].flatten().tolist())
    # and the other way round: a finer student is merged to the teacher's grid
    s2, t2 = align_tokens(teacher, student)
    assert s2.shape == (2, 64, 256) and t2.shape == (2, 64, 48)


def test_align_rejects_incompatible_grids():
    with pytest.raises(ConfigError, match="cannot align"):
        align_tokens(torch.randn(2, 37, 8), torch.randn(2, 16, 8, 8))  # 6×6 vs 8×8
    with pytest.raises(ConfigError, match="cannot align"):
        align_tokens(torch.randn(2, 65, 8), torch.randn(2, 16, 6, 6))
    with pytest.raises(ConfigError, match="not a tensor"):
        align_tokens({"a": 1}, torch.randn(2, 16, 8, 8))
    with pytest.raises(ConfigError, match="batches differ"):
        align_tokens(torch.randn(2, 65, 8), torch.randn(3, 4, 8, 8))


def test_default_pairs_reproduce_the_papers_layout():
    """12-block student ↔ 24-block teacher: 0 1 2 3 8 9 10 11 ↔ 0 1 2 3 20 21 22 23."""
    student, teacher = _vit(depth=12, dim=16), _vit(depth=24, dim=16)
    pairs = default_pairs(student, teacher)
    assert [int(s.split(".")[1]) for s, _ in pairs] == [0, 1, 2, 3, 8, 9, 10, 11]
    assert [int(t.split(".")[1]) for _, t in pairs] == [0, 1, 2, 3, 20, 21, 22, 23]
    # a 4-block student: every block, paired at the same relative depth of 12
    pairs = default_pairs(_vit(depth=4, dim=16), student)
    assert pairs == [("blocks.0", "blocks.2"), ("blocks.1", "blocks.5")] + [
        ("blocks.2", "blocks.8"),
        ("blocks.3", "blocks.11"),
    ]


# ---------------------------------------------------------------- DeiT distillation token


def _kd_ctx(outputs, teacher_logits) -> StepContext:
    ctx = StepContext(inputs=teacher_logits, targets=torch.tensor([0, 1]))
    ctx.outputs = outputs
    ctx.losses["task"] = torch.tensor(2.0)
    return ctx


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_distillation_token_puts_the_term_on_the_distillation_head(kind):
    """(cls, dist) outputs: the task loss stays on cls, the distillation term uses dist."""
    torch.manual_seed(0)
    cls, dist, teacher = torch.randn(2, 5), torch.randn(2, 5), torch.randn(2, 5)
    hook = KDHook(torch.nn.Identity(), T=2.0, alpha=0.5, kind=kind, distillation_token=True)
    ctx = _kd_ctx((cls, dist), teacher)
    hook.before_forward(None, ctx)
    hook.on_loss(None, ctx)
    if kind == "hard":
        expected = F.cross_entropy(dist, teacher.argmax(1))
    else:
        expected = 4.0 * F.kl_div(
            F.log_softmax(dist / 2, 1),
            F.log_softmax(teacher / 2, 1),
            reduction="batchmean",
            log_target=True,
        )
    torch.testing.assert_close(ctx.losses["kd"], 0.5 * expected)
    assert ctx.losses["task"].item() == pytest.approx(1.0)
    # without the token, the same hook acts on the class head
    plain = KDHook(torch.nn.Identity(), T=2.0, alpha=0.5, kind=kind)
    ctx2 = _kd_ctx((cls, dist), teacher)
    plain.before_forward(None, ctx2)
    plain.on_loss(None, ctx2)
    assert not torch.allclose(ctx2.losses["kd"], ctx.losses["kd"])


def _kl_sum(student, teacher, T):
    """Σ over the batch and classes of softmax(t/T)·(log softmax(t/T) − log softmax(s/T))."""
    p_t = torch.softmax(teacher / T, 1)
    return (p_t * (torch.log_softmax(teacher / T, 1) - torch.log_softmax(student / T, 1))).sum()


def test_kd_reduction_batchmean_or_numel():
    """batchmean: ΣKL·T²/B (Hinton; official ManifoldKD / DynamicViT); numel: ΣKL·T²/(B·K)
    (DeiT's losses.py soft distillation), i.e. K times smaller."""
    from leanvision.methods.distillation import kd as kd_mod

    torch.manual_seed(0)
    s, t = torch.randn(4, 7), torch.randn(4, 7)
    total = _kl_sum(s, t, 2.0) * 4.0
    torch.testing.assert_close(kd_mod.kd_loss(s, t, 2.0), total / 4)
    torch.testing.assert_close(kd_mod.kd_loss(s, t, 2.0, "batchmean"), total / 4)
    torch.testing.assert_close(kd_mod.kd_loss(s, t, 2.0, "numel"), total / 28)
    with pytest.raises(ConfigError, match="reduction"):
        kd_mod.kd_loss(s, t, 2.0, "mean")
    with pytest.raises(ConfigError, match="reduction"):
        KDHook(torch.nn.Identity(), reduction="sum")
    assert kd_mod.KDConfig().kd_reduction == "batchmean"
    assert kd_mod.DeiTConfig().kd_reduction == "numel"  # DeiT's own normalisation


@pytest.mark.parametrize("reduction", ["batchmean", "numel"])
def test_manifold_hook_logit_term_uses_the_official_normalisation(reduction):
    """manifold_kd's logit term: α·ΣKL·τ²/B by default (ManifoldKD's losses.py,
    reduction='batchmean'); kd_reduction="numel" divides by B·K as DeiT's code."""
    from leanvision.methods.distillation import ManifoldKDConfig

    assert ManifoldKDConfig().kd_reduction == "batchmean"
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5), torch.randn(2, 5)
    hook = ManifoldKDHook(torch.nn.Identity(), [("s", "t")], T=2.0, alpha=0.5, reduction=reduction)
    ctx = _kd_ctx(student, teacher)
    hook.before_forward(None, ctx)
    ctx.extras["student_features"] = {"s": torch.randn(2, 5, 8)}
    ctx.extras["teacher_features"] = {"t": torch.randn(2, 4, 8)}
    hook.on_loss(None, ctx)
    count = 2 if reduction == "batchmean" else 10
    torch.testing.assert_close(ctx.losses["kd"], 0.5 * 4.0 * _kl_sum(student, teacher, 2.0) / count)
    assert {"mf_patch", "mf_sample", "mf_rand"} <= set(ctx.losses)


def test_distillation_token_needs_a_student_with_one(mnist32):
    hook = KDHook(torch.nn.Identity(), distillation_token=True)
    ctx = _kd_ctx(torch.randn(2, 5), torch.randn(2, 5))
    hook.before_forward(None, ctx)
    with pytest.raises(ConfigError, match="distillation_logits"):
        hook.on_loss(None, ctx)
    teacher = _vit(depth=1, dim=16)
    with pytest.raises(ConfigError, match="no set_distilled_training"):
        lv.compress(
            _vit(depth=1, dim=16),
            "deit_kd",
            mnist32,
            teacher=teacher,
            max_steps=1,
            finetune_epochs=1,
            progress=False,
            log=False,
        )
    with pytest.raises(ConfigError, match="'soft' or 'hard'"):
        KDHook(torch.nn.Identity(), kind="medium")


def test_compress_deit_kd_trains_both_heads_and_averages_them(mnist32):
    torch.manual_seed(0)
    teacher = lv.create_model("resnet20_cifar", in_chans=1, width=0.25)
    student = _vit("deit_tiny_distilled_patch16_224", depth=2, dim=32)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    rec = Recorder()
    from leanvision.methods.distillation.kd import KDHook as Hk

    lv.train(
        student,
        mnist32,
        epochs=1,
        max_steps=2,
        progress=False,
        log=False,
        hooks=[Hk(teacher, T=1.0, alpha=0.5, kind="hard", distillation_token=True), rec],
    )
    assert set(rec.steps[0]) == {"task", "kd"} and rec.steps[0]["kd"] > 0
    after = student.state_dict()
    for head in ("head.weight", "head_dist.weight"):
        assert not torch.equal(before[head], after[head])
    assert student.distilled_training is False  # switched back after training
    student.eval()
    x = torch.randn(2, 1, 32, 32)
    out = student(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)
    model = lv.compress(
        _vit("deit_tiny_distilled_patch16_224", depth=2, dim=32),
        "deit_kd",
        mnist32,
        teacher=teacher,
        finetune_epochs=1,
        max_steps=1,
        progress=False,
        log=False,
    )
    assert not model.training


# --------------------------------------------------------------------------- manifold_kd


def test_manifold_hook_terms_are_the_weighted_pair_averages():
    """The hook's losses equal β·w·mean over pairs of manifold_terms, computed by hand."""
    torch.manual_seed(0)
    pairs = [("a", "x"), ("b", "y")]
    sf = {"a": torch.randn(3, 17, 8), "b": torch.randn(3, 17, 6)}  # cls + 4×4 patches
    tf = {"x": torch.randn(3, 5, 8, 8), "y": torch.randn(3, 16, 12)}  # a finer map, tokens
    hook = ManifoldKDHook(
        torch.nn.Identity(),
        pairs,
        beta=0.5,
        w_patch=4.0,
        w_sample=0.1,
        w_rand=0.2,
        num_samples=10_000,  # ≥ B·N: the random term uses every row, so it is deterministic
    )
    got = hook.manifold_losses(sf, tf)
    ref = {k: 0.0 for k in ("patch", "sample", "rand")}
    for s, t in pairs:
        s_tok, t_tok = align_tokens(sf[s], tf[t])
        for k, v in manifold_terms(s_tok, t_tok, num_samples=10_000).items():
            ref[k] += v / 2
    w = {"patch": 4.0, "sample": 0.1, "rand": 0.2}
    assert set(got) == {"mf_patch", "mf_sample", "mf_rand"}
    for k in w:
        torch.testing.assert_close(got[f"mf_{k}"], 0.5 * w[k] * ref[k])
        assert got[f"mf_{k}"] > 0
    zero = ManifoldKDHook(torch.nn.Identity(), pairs, w_sample=0.0).manifold_losses(sf, tf)
    assert set(zero) == {"mf_patch", "mf_rand"}


def test_manifold_hook_is_zero_for_the_teacher_itself():
    """Student features equal to the teacher's (up to per-token scale): every term is zero."""
    torch.manual_seed(1)
    t = torch.randn(4, 16, 8)
    s = torch.cat([torch.randn(4, 1, 8), t * torch.rand(4, 16, 1).add(0.5)], dim=1)
    losses = ManifoldKDHook(torch.nn.Identity(), [("s", "t")]).manifold_losses({"s": s}, {"t": t})
    for v in losses.values():
        assert v.item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("bad", [{"w_patch": -1.0}, {"beta": -0.1}, {"num_samples": 1}])
def test_manifold_hook_bad_values(bad):
    with pytest.raises(ConfigError):
        ManifoldKDHook(torch.nn.Identity(), [("a", "b")], **bad)
    with pytest.raises(ConfigError, match="at least one"):
        ManifoldKDHook(torch.nn.Identity(), [])


def test_manifold_kd_between_timm_deit_teacher_and_our_shallower_narrower_vit(mnist32):
    """Acceptance: a timm DeiT teacher (12 blocks, 64 wide) and an Aug-ViT student (4, 32)."""
    torch.manual_seed(0)
    teacher = _vit(depth=12, dim=64)
    student = lv.create_model(
        "augvit_tiny",
        img_size=32,
        patch_size=4,
        in_chans=1,
        num_classes=10,
        depth=4,
        embed_dim=32,
        num_heads=2,
    )
    rec = Recorder()
    from leanvision.methods.distillation.manifold_kd import resolve_pairs

    pairs = resolve_pairs(student, teacher, None, None)
    assert pairs[0] == ("blocks.0", "blocks.2") and pairs[-1] == ("blocks.3", "blocks.11")
    before = student.blocks[0].attn.qkv.weight.detach().clone()
    lv.train(
        student,
        mnist32,
        epochs=1,
        max_steps=2,
        progress=False,
        log=False,
        hooks=[ManifoldKDHook(teacher, pairs), rec],
    )
    assert set(rec.steps[0]) == {"task", "kd", "mf_patch", "mf_sample", "mf_rand"}
    assert rec.steps[0]["task"] == 0.0  # α = 1: no label term, as the paper's command
    assert all(v > 0 for k, v in rec.steps[0].items() if k.startswith("mf_"))
    assert not torch.equal(before, student.blocks[0].attn.qkv.weight)


def test_compress_manifold_kd_with_a_cnn_teacher(mnist32):
    """A ResNet teacher's 32×32 and 8×8 maps against a patch-4 ViT's 8×8 grid."""
    torch.manual_seed(0)
    teacher = lv.create_model("resnet20_cifar", in_chans=1, width=0.25)
    student = _vit(depth=4, dim=32)
    out = lv.compress(
        student,
        "manifold_kd",
        mnist32,
        teacher=teacher,
        finetune_epochs=1,
        max_steps=2,
        student_layers=[0, 3],
        teacher_layers=["layer1.0", "layer3.2"],
        progress=False,
        log=False,
    )
    assert not out.training and out is not student
    assert not torch.equal(out.blocks[0].attn.qkv.weight, student.blocks[0].attn.qkv.weight)
    with pytest.raises(ConfigError, match="both"):
        lv.compress(student, "manifold_kd", mnist32, teacher=teacher, student_layers=[0])


# ---------------------------------------------------------------------------- feature_kd


def test_feature_kd_adapters_match_widths_and_learn():
    """Linear adapters where widths differ; gradients reach student and adapters only."""
    torch.manual_seed(0)
    teacher = _vit(depth=2, dim=64)
    student = _vit(depth=2, dim=32)
    pairs = [("blocks.0", "blocks.0"), ("blocks.1", "blocks.1")]
    x = torch.randn(2, 1, 32, 32)
    adapters = build_adapters(student, teacher, pairs, x)
    assert [tuple(a.weight.shape) for a in adapters.values()] == [(64, 32), (64, 32)]
    same = build_adapters(student, _vit(depth=2, dim=32), pairs, x)
    assert len(same) == 0  # equal widths: no adapter, a plain hint loss
    hook = FeatureKDHook(teacher, pairs, adapters, beta=2.0)
    trainer = type("T", (), {"device": torch.device("cpu"), "channels_last": False})()
    trainer.model = student
    hook.on_train_start(trainer)
    ctx = StepContext(inputs=x, targets=torch.tensor([0, 1]))
    hook.before_forward(trainer, ctx)
    ctx.outputs = student(x)
    ctx.losses["task"] = F.cross_entropy(ctx.outputs, ctx.targets)
    hook.on_loss(trainer, ctx)
    assert set(ctx.losses) == {"task", "kd", "hint"} and ctx.losses["hint"] > 0
    assert ctx.losses["kd"].item() == 0.0  # alpha = 0 by default: no logit term
    sum(ctx.losses.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in hook.parameters())
    assert student.blocks[0].mlp.fc1.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    # the hint equals the hand-computed mean of the two pairs' MSEs
    feats_s, feats_t = ctx.extras["student_features"], ctx.extras["teacher_features"]
    ref = (
        sum(
            F.mse_loss(
                adapters[f"blocks_{i}->blocks_{i}"](feats_s[f"blocks.{i}"][:, 1:]),
                feats_t[f"blocks.{i}"][:, 1:],
            )
            for i in (0, 1)
        )
        / 2
    )
    torch.testing.assert_close(ctx.losses["hint"], 2.0 * ref)
    hook.on_train_end(trainer)
    # the adapters travel with the trainer's checkpoint
    other = FeatureKDHook(teacher, pairs, build_adapters(student, teacher, pairs, x))
    other.load_state_dict(hook.state_dict())
    for a, b in zip(other.parameters(), hook.parameters()):
        torch.testing.assert_close(a, b)


def test_compress_feature_kd_between_cnns_of_different_widths(mnist32):
    torch.manual_seed(0)
    teacher = lv.create_model("resnet20_cifar", in_chans=1, width=0.5)
    student = lv.create_model("resnet20_cifar", in_chans=1, width=0.25)
    out = lv.compress(
        student,
        "feature_kd",
        mnist32,
        teacher=teacher,
        finetune_epochs=1,
        max_steps=2,
        student_layers=["layer2", "layer3"],
        teacher_layers=["layer2", "layer3"],
        progress=False,
        log=False,
    )
    assert not torch.equal(out.conv1.weight, student.conv1.weight)
    assert set(out.state_dict()) == set(student.state_dict())  # adapters are not in the model
    with pytest.raises(ConfigError, match="no block list"):
        lv.compress(student, "feature_kd", mnist32, teacher=teacher, finetune_epochs=1)


def test_distilled_student_saves_and_loads(mnist32, tmp_path):
    """A student built from a spec (with a distillation token) round-trips through lv.save/load."""
    torch.manual_seed(0)
    teacher = lv.create_model("resnet20_cifar", in_chans=1, width=0.25)
    spec = {"name": "deit_tiny_distilled_patch16_224", "img_size": 32, "patch_size": 4}
    spec.update(depth=2, embed_dim=32, num_heads=2)
    student = lv.compress(
        teacher,
        "deit_kd",
        mnist32,
        teacher=teacher,
        student=spec,
        finetune_epochs=1,
        max_steps=1,
        progress=False,
        log=False,
    )
    path = lv.save(student, tmp_path / "student.pt")
    back = lv.load(path)
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(back(x), student(x))
    assert type(back).__name__ == type(student).__name__
