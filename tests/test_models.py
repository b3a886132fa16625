"""The model zoo: shapes, options, timm interface, exact sizes, and clear errors."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import leanvision as lv
from leanvision.errors import InputShapeError, UnknownModelError
from leanvision.models import TIMM_VERIFIED
from leanvision.profiling import count_ops, count_params

# The CIFAR baselines; the backbone zoo's families are checked in test_zoo.py.
CIFAR_MODELS = [
    "resnet8_cifar",
    "resnet14_cifar",
    "resnet20_cifar",
    "resnet32_cifar",
    "resnet44_cifar",
    "resnet56_cifar",
    "resnet110_cifar",
    "vgg_small",
]


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    """One torch thread: on a loaded 2-core machine two spinning OpenMP threads are far slower."""
    torch.set_num_threads(1)


def test_registry_lists_our_models():
    """list_models() holds our architectures and the verified timm ones, not all of timm."""
    listed = lv.list_models()
    assert set(CIFAR_MODELS) <= set(listed)
    assert set(TIMM_VERIFIED) <= set(listed)
    assert "resnet18" not in listed
    assert "resnet18" in lv.list_models("resnet1*", include_timm=True)
    assert lv.list_models("vgg*") == ["vgg_small"]


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_forward_backward_shape(name):
    """A (2, 3, 32, 32) batch gives (2, 10) logits and gradients reach every parameter."""
    torch.manual_seed(0)
    model = lv.create_model(name)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_num_classes_in_chans_width(name):
    """num_classes, in_chans=1 and width=0.5 are honoured; width 0.5 cuts params ~4x."""
    small = lv.create_model(name, num_classes=7, in_chans=1, width=0.5)
    out = small(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 7)
    first = small.get_submodule(small.pretrained_cfg["first_conv"])
    assert first.in_channels == 1
    full = lv.create_model(name, num_classes=7, in_chans=1)
    ratio = count_params(full) / count_params(small)
    assert 3.3 < ratio < 4.3, ratio


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_timm_interface(name):
    """forward_features / forward_head(pre_logits) / get_classifier / reset_classifier."""
    model = lv.create_model(name).eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.dim() == 4 and feats.shape[0] == 2
    assert feats.shape[1] == model.num_features  # timm: channels of the unpooled features
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (2, model.head_hidden_size)  # timm: the pre-logits width
    logits = model.forward_head(feats)
    torch.testing.assert_close(logits, model(x))
    clf = model.get_classifier()
    assert isinstance(clf, nn.Linear)
    assert clf.in_features == model.head_hidden_size and clf.out_features == 10
    model.reset_classifier(5)
    assert model.get_classifier().out_features == 5
    assert model(x).shape == (2, 5)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.head_hidden_size)
    model.reset_classifier(0, "")  # no pooling: the feature map
    assert model(x).shape == feats.shape


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_pretrained_cfg_names_real_modules(name):
    """pretrained_cfg has input_size (3, 32, 32); first_conv/classifier name real modules."""
    model = lv.create_model(name)
    cfg = model.pretrained_cfg
    assert tuple(cfg["input_size"]) == (3, 32, 32)
    modules = dict(model.named_modules())
    assert isinstance(modules[cfg["first_conv"]], nn.Conv2d)
    assert modules[cfg["first_conv"]].in_channels == 3
    assert modules[cfg["classifier"]] is model.get_classifier()


def test_registered_in_timm():
    """timm.create_model finds our models too (registered with timm's register_model)."""
    assert timm.is_model("resnet20_cifar") and timm.is_model("vgg_small")
    model = timm.create_model("resnet20_cifar", num_classes=3)
    assert type(model).__name__ == "ResNetCifar"
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize(
    "name, params, macs",
    [
        ("resnet20_cifar", 272_474, 40_813_184),
        ("resnet56_cifar", 855_770, 125_747_840),
        ("vgg_small", 4_660_106, 607_600_640),
    ],
)
def test_exact_params_and_macs(name, params, macs):
    """Parameter and MAC counts at 1x3x32x32 match the published/derived numbers exactly."""
    model = lv.create_model(name)
    assert count_params(model) == params
    counted = count_ops(model, (3, 32, 32)).macs
    assert counted == macs
    if name == "resnet20_cifar":
        assert round(counted / 1e6, 2) == 40.81
    if name == "resnet56_cifar":
        assert counted / 1e6 == pytest.approx(125.75, abs=0.01)


def test_option_a_shortcut():
    """shortcut='pad' is the paper's parameter-free option A: 0.27 M params, fewer than B."""
    a = lv.create_model("resnet20_cifar", shortcut="pad")
    b = lv.create_model("resnet20_cifar")
    pa, pb = count_params(a), count_params(b)
    assert round(pa / 1e6, 2) == 0.27
    assert pa == 269_722
    assert pa < pb
    # Option A has no 1x1 convolutions at all.
    assert not any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in a.modules())
    assert a(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_unknown_model_names_close_matches():
    """An unknown name raises UnknownModelError (a KeyError) naming it and close matches."""
    with pytest.raises(UnknownModelError) as info:
        lv.create_model("resnet21_cifar")
    msg = str(info.value)
    assert "resnet21_cifar" in msg
    assert "resnet20_cifar" in msg
    assert isinstance(info.value, KeyError)
    assert "resnet20_cifar" in info.value.allowed


def test_create_timm_model():
    """A timm architecture comes through create_model with num_classes honoured."""
    model = lv.create_model("resnet18", num_classes=10).eval()
    assert type(model).__module__.startswith("timm.")
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_profile_wrong_channels_raises_input_shape_error():
    """lv.profile with 1-channel input to a 3-channel model names the expected channels."""
    model = lv.create_model("resnet20_cifar")
    with pytest.raises(InputShapeError) as info:
        lv.profile(model, (1, 32, 32), latency=False, memory=False)
    msg = str(info.value)
    assert "in_channels=3" in msg
    assert "(1, 1, 32, 32)" in msg
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("resnet20_cifar", {"depth": 21}),
        ("resnet20_cifar", {"width": 0}),
        ("resnet20_cifar", {"width": -1.0}),
        ("resnet20_cifar", {"shortcut": "bogus"}),
        ("vgg_small", {"width": 0}),
    ],
)
def test_bad_depth_width_raise_value_error(name, kwargs):
    """A depth that is not 6n+2, a non-positive width or a bad shortcut is a ValueError."""
    from leanvision.models.resnet_cifar import ResNetCifar
    from leanvision.models.vgg_small import VGGSmall

    cls = ResNetCifar if name.startswith("resnet") else VGGSmall
    key = next(iter(kwargs))
    with pytest.raises(ValueError, match=key if key != "depth" else "6n"):
        cls(**kwargs)
    if key != "depth":  # the same check through the registry
        with pytest.raises(ValueError):
            lv.create_model(name, **kwargs)


def test_img_size_is_recorded_for_timm_models():
    """A timm model built with img_size= says so in pretrained_cfg (data and profilers read it)."""
    model = lv.create_model("deit_tiny_patch16_224", img_size=32, patch_size=4, in_chans=1)
    assert tuple(model.pretrained_cfg["input_size"]) == (1, 32, 32)
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 1000)
    default = lv.create_model("deit_tiny_patch16_224")
    assert tuple(default.pretrained_cfg["input_size"]) == (3, 224, 224)
