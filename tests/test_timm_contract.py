"""timm's model contract on one model of each family leanvision registers.

The full check is timm's own test file, run on every registered model by
``tools/timm_model_tests.py`` (it needs timm's source distribution and takes long, so it is not
part of this suite). These tests keep the parts it found broken from coming back, fast:
``device=`` / ``dtype=`` honoured by the constructors and by ``reset_classifier``,
``global_pool=""`` giving the feature map, timm's fx feature extraction and TorchScript.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import timm
import torch
from timm.models import create_feature_extractor, get_graph_node_names

import leanvision.models as lv_models

# The smallest model of each family, with a CIFAR-size build and fewer blocks where fx's node
# naming would take seconds.
FAMILY = {
    "resnet8_cifar": {},
    "resnet20_adder": {},
    "vgg_small": dict(width=0.25),
    "cmt_ti": dict(img_size=32, depths=(1, 1, 2, 1)),
    "ptnt_ti": dict(img_size=32),
    "augvit_tiny": dict(img_size=32, depth=2),
    "vit_res_tiny": dict(img_size=32),
    "vil_ls_medium": dict(img_size=32),
    "ghost_resnet50": dict(img_size=32),
    "tinynet_custom": dict(img_size=32, w=0.25, d=0.3),
    "mbnas_cifar": {},
    "bimlp_s": dict(img_size=32, layers=(1, 1), embed_dims=(32, 64)),
    "edsr_cpu": {},
    "ipt_cpu": dict(n_feats=4, crop=12, num_heads=2, enc_layers=1, dec_layers=1),
}
# Image-to-image families (super-resolution): no classifier, so no classifier tests; they
# refuse a class count instead (test below).
IMAGE_TO_IMAGE = {"edsr_cpu", "ipt_cpu"}
CLASSIFIERS = sorted(set(FAMILY) - IMAGE_TO_IMAGE)
# Families whose features are a (B, C, H, W) map (the others give tokens).
MAP_FEATURES = ["resnet8_cifar", "vgg_small", "cmt_ti", "ghost_resnet50", "bimlp_s"]
# TorchScript cannot compile autograd.Function layers (adder, binary sign), nor IPT's choice of
# head and tail by task name (a ModuleDict indexed at run time).
NOT_SCRIPTABLE = {"resnet20_adder", "bimlp_s", "ipt_cpu"}


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    torch.set_num_threads(1)


def test_every_family_is_covered():
    ours = set(lv_models.leanvision_models())
    modules = {m for m in timm.list_modules() if ours & set(timm.list_models(module=m))}
    missing = [m for m in modules if not set(FAMILY) & set(timm.list_models(module=m))]
    assert not missing, f"families without a model in FAMILY: {missing}"


@pytest.mark.parametrize("name", sorted(FAMILY))
def test_builds_on_the_requested_device_and_dtype(name):
    model = timm.create_model(name, device="meta", dtype=torch.float64, **FAMILY[name])
    tensors = dict(model.named_parameters()) | dict(model.named_buffers())
    assert {t.device.type for t in tensors.values()} == {"meta"}
    assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.float64}
    with pytest.raises(TypeError):  # unknown arguments still raise
        timm.create_model(name, device="meta", not_a_model_arg=1, **FAMILY[name])


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_reset_classifier_keeps_device_dtype_and_mode(name):
    model = timm.create_model(name, device="meta", **FAMILY[name]).eval()
    model.to(dtype=torch.float64)
    model.reset_classifier(3)
    head = model.get_classifier()
    assert {(p.device.type, p.dtype) for p in head.parameters()} == {("meta", torch.float64)}
    assert not any(m.training for m in model.modules())
    x = torch.randn(2, *model.pretrained_cfg["input_size"], device="meta", dtype=torch.float64)
    assert model(x).shape[-1] == 3


@pytest.mark.parametrize("name", MAP_FEATURES)
def test_global_pool_none_gives_the_feature_map(name):
    model = timm.create_model(name, device="meta", num_classes=0, global_pool="", **FAMILY[name])
    x = torch.randn(2, *model.pretrained_cfg["input_size"], device="meta")
    out = model(x)
    assert out.dim() == 4 and out.shape == model.forward_features(x).shape
    assert out.shape[1] == model.num_features
    model.reset_classifier(0, "avg")
    assert model(x).shape == (2, model.head_hidden_size)


@pytest.mark.parametrize("name", sorted(IMAGE_TO_IMAGE))
def test_image_to_image_models_refuse_a_classifier(name):
    from leanvision.errors import ConfigError

    with pytest.raises(ConfigError, match="no classifier"):
        timm.create_model(name, num_classes=10, **FAMILY[name])
    model = timm.create_model(name, device="meta", **FAMILY[name])
    model.reset_classifier(0)  # nothing to reset
    with pytest.raises(ConfigError, match="no classifier"):
        model.reset_classifier(3)
    x = torch.randn(2, *model.pretrained_cfg["input_size"], device="meta")
    assert model(x).shape[-1] == x.shape[-1] * model.scale  # an image out


def _classes(name: str) -> dict:
    """A class count for the classifiers (the image-to-image models take none)."""
    return {} if name in IMAGE_TO_IMAGE else {"num_classes": 10}


def _inputs(model: torch.nn.Module) -> torch.Tensor:
    return torch.randn(2, *model.pretrained_cfg["input_size"], generator=torch.manual_seed(1))


# IPT branches on the input's size (it chops a larger image into crops): not FX-traceable as a
# whole yet (its crop path would have to become a leaf module).
NOT_FX_TRACEABLE = {"ipt_cpu"}


@pytest.mark.parametrize("name", sorted(set(FAMILY) - NOT_FX_TRACEABLE))
def test_timm_fx_feature_extraction_traces_the_model(name):
    torch.manual_seed(0)
    model = timm.create_model(name, **_classes(name), **FAMILY[name]).eval()
    _, eval_nodes = get_graph_node_names(model)
    traced = create_feature_extractor(model, return_nodes=[eval_nodes[-1]])
    x = _inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(next(iter(traced(x).values())), model(x))


@pytest.mark.parametrize("name", sorted(set(FAMILY) - NOT_SCRIPTABLE))
def test_torchscript_compiles_the_model(name):
    torch.manual_seed(0)
    model = timm.create_model(name, **_classes(name), **FAMILY[name]).eval()
    scripted = torch.jit.script(model)
    x = _inputs(model)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))


def test_tool_says_how_to_get_timms_tests(monkeypatch, tmp_path):
    path = Path(__file__).resolve().parents[1] / "tools" / "timm_model_tests.py"
    spec = importlib.util.spec_from_file_location("timm_model_tests", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.delenv(tool.ENV_VAR, raising=False)
    for given in (None, str(tmp_path)):
        with pytest.raises(SystemExit, match=r"pip download timm==1\.0\.31 --no-binary"):
            tool.find_timm_tests(given)
    (tmp_path / "test_models.py").write_text("")
    assert tool.find_timm_tests(str(tmp_path)) == tmp_path / "test_models.py"
