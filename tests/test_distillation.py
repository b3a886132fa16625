"""Hinton KD (arXiv 1503.02531): the loss, the trainer hook and ``compress("kd")``."""

from __future__ import annotations

import math

import pytest
import torch

import leanvision as lv
from leanvision.engine import StepContext
from leanvision.errors import ConfigError
from leanvision.methods.distillation import KDHook, TeacherHook, kd_loss


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    """One torch thread: on a loaded 2-core machine two spinning OpenMP threads are far slower."""
    torch.set_num_threads(1)


def _by_hand(s: list[list[float]], t: list[list[float]], T: float) -> float:
    """T²·mean over rows of KL(softmax(t/T) ‖ softmax(s/T)), in plain Python."""
    total = 0.0
    for srow, trow in zip(s, t):
        zs = sum(math.exp(v / T) for v in srow)
        zt = sum(math.exp(v / T) for v in trow)
        p = [math.exp(v / T) / zs for v in srow]
        q = [math.exp(v / T) / zt for v in trow]
        total += sum(qi * math.log(qi / pi) for pi, qi in zip(p, q))
    return T * T * total / len(s)


# ------------------------------------------------------------------------------- kd_loss


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_loss_zero_iff_equal(T):
    """Zero when student == teacher logits, positive otherwise."""
    torch.manual_seed(0)
    s = torch.randn(4, 10)
    assert kd_loss(s, s.clone(), T).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(s, torch.randn(4, 10), T).item() > 1e-3


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_kd_loss_matches_hand_computation(T):
    """Equals T²·KL(softmax(t/T) ‖ softmax(s/T)) averaged over the batch."""
    s = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    t = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    got = kd_loss(torch.tensor(s), torch.tensor(t), T).item()
    assert got == pytest.approx(_by_hand(s, t, T), rel=1e-5)
    # The direction matters: KL(q‖p) is not KL(p‖q) here.
    assert got != pytest.approx(_by_hand(t, s, T), rel=1e-3)


def test_kd_loss_shift_invariant():
    """Adding a constant to all logits of a row (student or teacher) changes nothing."""
    torch.manual_seed(1)
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    shift = torch.tensor([[5.0], [-3.0], [100.0]])
    ref = kd_loss(s, t, 3.0)
    torch.testing.assert_close(kd_loss(s + shift, t, 3.0), ref)
    torch.testing.assert_close(kd_loss(s, t - shift, 3.0), ref)


def test_kd_loss_gradient_goes_to_student_only():
    """d/ds = T·(softmax(s/T) − softmax(t/T)) / B; a detached teacher gets no gradient."""
    torch.manual_seed(2)
    T, B = 2.0, 4
    s = torch.randn(B, 6, requires_grad=True)
    t = torch.randn(B, 6, requires_grad=True)
    kd_loss(s, t.detach(), T).backward()
    assert t.grad is None
    expected = T * (torch.softmax(s.detach() / T, 1) - torch.softmax(t.detach() / T, 1)) / B
    torch.testing.assert_close(s.grad, expected)


# ---------------------------------------------------------------------------------- hooks


def test_teacher_hook_runs_teacher_without_grad():
    """before_forward puts the teacher's logits in ctx.extras, computed under no_grad."""
    torch.manual_seed(3)
    teacher = torch.nn.Linear(8, 3)
    assert all(p.requires_grad for p in teacher.parameters())
    x = torch.randn(5, 8)
    for hook in (TeacherHook(teacher), KDHook(teacher, T=2.0, alpha=0.5)):
        ctx = StepContext(inputs=x, targets=torch.zeros(5, dtype=torch.long))
        hook.before_forward(None, ctx)
        out = ctx.extras["teacher_logits"]
        assert out.requires_grad is False
        assert ctx.extras["teacher_outputs"] is out
        torch.testing.assert_close(out, teacher(x).detach())


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9, 1.0])
def test_kd_hook_loss_terms(alpha):
    """on_loss: task → (1−α)·task; adds kd = α·T²·KL with the hand-computed value."""
    T = 4.0
    s = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    t = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    hook = KDHook(torch.nn.Identity(), T=T, alpha=alpha)
    ctx = StepContext(inputs=torch.tensor(t), targets=torch.tensor([1, 2]))
    hook.before_forward(None, ctx)  # the "teacher" is the identity: its logits are t
    ctx.outputs = torch.tensor(s)
    ctx.losses["task"] = torch.tensor(2.5)
    hook.on_loss(None, ctx)
    assert set(ctx.losses) == {"task", "kd"}
    assert ctx.losses["task"].item() == pytest.approx((1 - alpha) * 2.5)
    assert ctx.losses["kd"].item() == pytest.approx(alpha * _by_hand(s, t, T), rel=1e-5)


def test_kd_hook_uses_first_output_of_tuple():
    """A model returning a tuple: the logits are its first item (student and teacher)."""

    class TupleNet(torch.nn.Module):
        def forward(self, x):
            return x * 2.0, torch.zeros(1)

    hook = KDHook(TupleNet(), T=1.0, alpha=1.0)
    x = torch.tensor([[0.0, 1.0]])
    ctx = StepContext(inputs=x, targets=torch.tensor([0]))
    hook.before_forward(None, ctx)
    torch.testing.assert_close(ctx.extras["teacher_logits"], x * 2.0)
    ctx.outputs = (x * 2.0, torch.zeros(1))
    ctx.losses["task"] = torch.tensor(1.0)
    hook.on_loss(None, ctx)
    assert ctx.losses["kd"].item() == pytest.approx(0.0, abs=1e-7)
    assert ctx.losses["task"].item() == 0.0


@pytest.mark.parametrize("kwargs", [{"T": 0.0}, {"T": -1.0}, {"alpha": -0.1}, {"alpha": 1.5}])
def test_kd_hook_bad_values(kwargs):
    """T ≤ 0 or α outside [0, 1] is a ConfigError naming the parameter."""
    name = next(iter(kwargs))
    with pytest.raises(ConfigError, match=name if name == "T" else "alpha"):
        KDHook(torch.nn.Identity(), **kwargs)


# ------------------------------------------------------------------------ compress("kd")


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_compress_kd_trains_student_not_teacher(mnist_small):
    """kd trains a copy of the student; the teacher and the input student are unchanged."""
    torch.manual_seed(0)
    teacher = lv.create_model("resnet20_cifar", in_chans=1, width=0.25)
    student = lv.create_model("resnet20_cifar", in_chans=1, width=0.25)
    t0, s0 = _params(teacher), _params(student)
    out = lv.compress(
        student,
        "kd",
        data=mnist_small,
        teacher=teacher,
        finetune_epochs=1,
        max_steps=3,
        progress=False,
        log=False,
    )
    assert out is not student and not out.training
    s1 = out.state_dict()
    assert not torch.equal(s0["fc.weight"], s1["fc.weight"])
    assert not torch.equal(s0["conv1.weight"], s1["conv1.weight"])
    assert s1["bn1.num_batches_tracked"].item() == 3
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in s0.items())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in t0.items())


def test_compress_kd_does_not_freeze_callers_teacher(mnist_small):
    """The caller's teacher keeps requires_grad and its train mode, so it can be trained later."""
    teacher = lv.create_model("resnet20_cifar", in_chans=1, width=0.25).train()
    student = lv.create_model("resnet20_cifar", in_chans=1, width=0.25)
    lv.compress(
        student,
        "kd",
        data=mnist_small,
        teacher=teacher,
        finetune_epochs=1,
        max_steps=1,
        progress=False,
        log=False,
    )
    assert all(p.requires_grad for p in teacher.parameters())
    assert teacher.training
    res = lv.train(teacher, mnist_small, epochs=1, max_steps=1, progress=False, log=False)
    assert res.steps == 1


def test_compress_kd_needs_teacher():
    """'kd' without a teacher is a ConfigError saying teacher= is needed."""
    student = lv.create_model("resnet20_cifar", width=0.25)
    with pytest.raises(ConfigError, match="teacher"):
        lv.compress(student, "kd", finetune_epochs=0)
    with pytest.raises(ConfigError, match="teacher"):
        lv.compress(student, "kd")


def test_teacher_hook_collects_features_of_both_models_by_name(mnist_small):
    """Student features keep their graph (a loss on them trains the student); teacher's don't."""
    import leanvision as lv
    from leanvision.methods.distillation import TeacherHook

    seen: dict[str, tuple] = {}

    class FeatureMSE(TeacherHook):
        name = "feature_mse"

        def on_loss(self, trainer, ctx):
            s = ctx.extras["student_features"]["layer3"]
            t = ctx.extras["teacher_features"]["layer2"]
            seen["shapes"] = (tuple(s.shape), tuple(t.shape))
            seen["grads"] = (s.requires_grad, t.requires_grad)
            ctx.losses["feat"] = (s.mean() - t.mean()) ** 2

    teacher = lv.create_model("resnet20_cifar", in_chans=1, width=0.5)
    student = lv.create_model("resnet20_cifar", in_chans=1, width=0.25)
    hook = FeatureMSE(teacher, student_features=["layer3"], teacher_features=["layer2"])
    lv.train(student, mnist_small, epochs=1, max_steps=2, hooks=[hook], progress=False, log=False)
    assert seen["shapes"] == ((32, 16, 7, 7), (32, 16, 14, 14))
    assert seen["grads"] == (True, False)
    # recorders are detached from both models after training
    assert not student.layer3._forward_hooks and not teacher.layer2._forward_hooks
