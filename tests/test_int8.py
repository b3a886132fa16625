"""The int8 method: static post-training int8 of any exportable model, deployed on a CPU
runtime, calibrated on validation images, measured as deployed."""

from __future__ import annotations

import pytest
import torch

import leanvision as lv
from leanvision.deploy import DeployedModel, supported
from leanvision.errors import ConfigError
from leanvision.methods import Int8Config
from leanvision.profiling import count_ops, count_params


@pytest.fixture(scope="module")
def mnist_small_module():
    return lv.load_data("mnist5k", batch_size=32, max_train=1024, max_val=128, max_test=256)


@pytest.fixture(scope="module")
def trained(mnist_small_module):
    torch.manual_seed(0)
    model = lv.create_model("resnet20_cifar", num_classes=10, in_chans=1, width=0.5)
    lv.train(model, mnist_small_module, epochs=3, progress=False, log=False)
    return model.eval()


@pytest.mark.parametrize("backend", ["inductor", "onnxruntime", "openvino"])
def test_int8_keeps_accuracy_and_counts_int8_macs(trained, mnist_small_module, backend):
    data = mnist_small_module
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    q = lv.compress(trained, "int8", data=data, backend=backend, calib_batches=4, batch=8)
    assert isinstance(q, DeployedModel) and backend in q.backend and "int8" in q.backend
    fp = lv.evaluate(trained, data.test)["top1"]
    i8 = lv.evaluate(q, data.test)["top1"]
    assert fp > 30  # it learned something, so the comparison means something
    assert abs(fp - i8) <= 3.0, (fp, i8)
    size = tuple(data.input_size)
    ops = count_ops(q, size)
    assert ops.int8_macs == ops.macs == count_ops(trained, size).macs
    assert count_params(q) == count_params(trained)
    assert q.lv_history[-1]["method"] == "int8"
    for k, v in trained.state_dict().items():  # the input model is left as it was
        assert torch.equal(v, before[k]), k


def test_int8_auto_times_every_runtime_and_saves_its_graph(trained, mnist_small_module, tmp_path):
    cfg = Int8Config(calib_batches=2, batch=4, threads=1)
    q = lv.compress(trained, cfg, data=mnist_small_module)
    runs = supported("int8")  # leanvision's runtime where the CPU has AVX512-VNNI
    assert len(q.candidates) == len(runs) >= 3 and all("int8" in k for k in q.candidates)
    # the fastest is deployed; a key adds the native kernels the timing probe saw running
    chosen = [k for k in q.candidates if k.startswith(q.backend)]
    assert chosen and q.candidates[chosen[0]] == min(q.candidates.values())
    if not q.has_onnx:  # inductor or leanvision: no ONNX graph, and it says so
        with pytest.raises(ConfigError, match="no ONNX graph"):
            q.save_onnx(tmp_path / "int8.onnx")
        cfg.backend = "onnxruntime"
        q = lv.compress(trained, cfg, data=mnist_small_module)
    path = q.save_onnx(tmp_path / "int8.onnx")
    import onnx

    graph = onnx.load(str(path)).graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)
    with pytest.raises(ConfigError, match="save_onnx"):
        lv.save(q, tmp_path / "q.pt")


def test_int8_refuses_the_test_split_and_a_deployed_model(trained, mnist_small_module):
    with pytest.raises(ConfigError, match="calib_split"):
        lv.compress(trained, "int8", data=mnist_small_module, calib_split="test")
    with pytest.raises(ConfigError, match="data"):
        lv.compress(trained, "int8")
    q = lv.compress(trained, "int8", data=mnist_small_module, backend="onnxruntime",
                    calib_batches=1)  # fmt: skip
    with pytest.raises(ConfigError, match="already deployed"):
        lv.compress(q, "int8", data=mnist_small_module, calib_batches=1)
