"""PTQ for ViT as a method: streaming calibration, int8 counting, save/load, QDQ deployment."""

from __future__ import annotations

import pytest
import torch

import leanvision as lv
from leanvision.errors import ConfigError
from leanvision.layers import QuantLinear, QuantMatMul
from leanvision.methods.lowbit.ptq_vit import (
    PTQViTConfig,
    _ranking_penalty,
    _rebuild,
    _Rows,
    calibrate,
    quantize_vit,
)
from leanvision.methods.lowbit.quant import ranking_loss
from leanvision.profiling import count_ops


@pytest.fixture(autouse=True)
def _one_thread(_threads):
    torch.set_num_threads(1)


def _vit(depth: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return lv.create_model(
        "deit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=10, depth=depth,
        embed_dim=64, num_heads=2,
    ).eval()  # fmt: skip


def test_rows_keep_a_bounded_sample_and_the_global_max():
    gen = torch.Generator().manual_seed(0)
    rec = _Rows(rows=3, matmul=True, gen=gen)
    a = torch.randn(4, 2, 10, 5)  # (images, heads, query rows, dim)
    a[1, 0, 7, 2] = 50.0
    b = torch.randn(4, 2, 5, 10)
    rec(a, b)
    rec(a[:2], b[:2])
    x, w = rec.operands(None)
    assert x.shape == (6, 2, 3, 5) and w.shape == (6, 2, 5, 10)
    assert rec.a_max == 50.0
    for i in range(4):  # every kept row is a row of that image (same rows for all heads)
        for r in range(3):
            match = (a[i, 0] == x[i, 0, r]).all(-1)
            assert match.sum() == 1
            j = int(match.nonzero())
            torch.testing.assert_close(x[i, 1, r], a[i, 1, j])


def test_streamed_calibration_equals_whole_tensor_and_uses_num_images():
    model = _vit()
    x = torch.randn(24, 3, 32, 32)
    cfg = PTQViTConfig(num_images=20, batch_size=8, rows_per_image=4)
    q1, q2 = quantize_vit(model), quantize_vit(model)
    r1 = calibrate(q1, x, cfg)
    loader = [(x[i : i + 5], torch.zeros(5)) for i in range(0, 24, 5)]  # other chunking
    r2 = calibrate(q2, loader, cfg)
    assert r1.keys() == r2.keys()
    for n in r1:
        assert r1[n]["delta_w"] == pytest.approx(r2[n]["delta_w"])
        assert r1[n]["delta_x"] == pytest.approx(r2[n]["delta_x"])
    r3 = calibrate(quantize_vit(model), x[:20], cfg)  # images beyond num_images are ignored
    assert all(r3[n]["delta_x"] == pytest.approx(r1[n]["delta_x"]) for n in r1)


def test_ranking_term_changes_only_attention_scores_search():
    model = _vit(depth=1)
    x = torch.randn(16, 3, 32, 32)
    with_rank = calibrate(quantize_vit(model, 4), x, PTQViTConfig(bits=4, ranking_weight=10.0))
    without = calibrate(quantize_vit(model, 4), x, PTQViTConfig(bits=4, ranking_weight=0.0))
    for n in without:
        if not n.endswith(".qk"):
            assert with_rank[n]["delta_x"] == pytest.approx(without[n]["delta_x"])
    qk = "blocks.0.attn.qk"
    assert with_rank[qk]["objective"] <= without[qk]["objective"]  # penalty subtracted


def _hinge_sum(ref: torch.Tensor, out: torch.Tensor, theta: float) -> float:
    """Σ over every row of Σ_{i<j} (θ − (o_i − o_j)·sign(r_i − r_j))₊, as explicit loops."""
    total = 0.0
    r2, o2 = ref.reshape(-1, ref.shape[-1]).tolist(), out.reshape(-1, out.shape[-1]).tolist()
    for r, o in zip(r2, o2):
        for i in range(len(r)):
            for j in range(i + 1, len(r)):
                sign = (r[i] > r[j]) - (r[i] < r[j])
                total += max(0.0, theta - (o[i] - o[j]) * sign)
    return total


def test_ranking_penalty_is_gamma_times_the_papers_sum():
    """rank_norm="sum": γ × Σ_heads Σ_rows Σ_{i<j} Φ per image (Eq. 12-13), averaged over
    images; "per_pair": the old per-pair mean on the first ranking_rows rows."""
    torch.manual_seed(0)
    ref = torch.randn(3, 2, 6, 6)  # images, heads, every query row, keys
    out = ref + 0.4 * torch.randn_like(ref)
    cfg = PTQViTConfig(ranking_weight=0.1, ranking_theta=0.2)
    assert cfg.rank_norm == "sum"
    want = 0.1 * _hinge_sum(ref, out, 0.2) / 3
    assert _ranking_penalty(cfg)(ref, out) == pytest.approx(want, rel=1e-5)
    old = PTQViTConfig(ranking_weight=0.1, ranking_theta=0.2, rank_norm="per_pair", ranking_rows=5)
    rows = ref.reshape(-1, 6)[:5], out.reshape(-1, 6)[:5]
    per_pair = 0.1 * float(ranking_loss(*rows, 0.2)) / 15
    assert _ranking_penalty(old)(ref, out) == pytest.approx(per_pair, rel=1e-5)
    with pytest.raises(ConfigError, match="rank_norm"):
        _ranking_penalty(PTQViTConfig(rank_norm="mean"))


def test_ranking_penalty_row_sample_is_unbiased_for_the_sum():
    """With recorded rows a sample of each image's query rows (4 of 9) and ranking_rows = 5 of
    the 24 recorded: each estimate is heads × tokens × the mean pair-sum of the drawn rows, and
    over seeds it averages to heads × tokens × the mean over all recorded rows."""
    torch.manual_seed(1)
    ref = torch.randn(3, 2, 4, 9)
    out = ref + 0.5 * torch.randn_like(ref)
    target = 2 * 9 * _hinge_sum(ref, out, 0.0) / 24  # per image, γ = 1
    draws = []
    for seed in range(300):
        pen = _ranking_penalty(PTQViTConfig(ranking_weight=1.0, ranking_rows=5, seed=seed))
        draws.append(pen(ref, out))
        assert pen(ref, out) == draws[-1]  # the same rows for every candidate step
    assert len(set(draws)) > 10
    assert sum(draws) / len(draws) == pytest.approx(target, rel=0.05)


def test_probabilities_use_the_unsigned_grid_after_calibration():
    """At 4 bits the post-softmax probabilities get codes 0..15 (Δ ≈ max/15): the largest
    probabilities land above code 7, the signed grid's top; softmax_grid="signed" keeps them
    at ≤ 7, and a model saved before the option rebuilds with the signed grid."""
    model = _vit(depth=1)
    x = torch.randn(8, 3, 32, 32)
    codes = {}
    for grid in ("unsigned", "signed"):
        q = quantize_vit(model, 4)
        calibrate(q, x, PTQViTConfig(bits=4, num_images=8, rounds=0, softmax_grid=grid))
        av = q.blocks[0].attn.av
        assert av.unsigned_a is (grid == "unsigned")
        assert not q.blocks[0].attn.qk.unsigned_a
        probs = []
        av.record = lambda a, b, probs=probs: probs.append(a)
        with torch.no_grad():
            q(x)
        av.record = None
        c = av.quantize_a(torch.cat(probs)) / float(av.delta_x)
        torch.testing.assert_close(c, c.round())
        codes[grid] = (int(c.min().round()), int(c.max().round()))
    assert codes["unsigned"][0] >= 0 and 7 < codes["unsigned"][1] <= 15
    assert codes["signed"][1] <= 7
    assert not _rebuild(model, {"bits": {}}).blocks[0].attn.av.unsigned_a
    assert _rebuild(model, {"bits": {}, "softmax_grid": "unsigned"}).blocks[0].attn.av.unsigned_a


def test_quantized_vit_counts_int8_macs_and_survives_save_load(mnist_small, tmp_path):
    model = lv.create_model(
        "deit_tiny_patch16_224", img_size=28, patch_size=7, in_chans=1, num_classes=10,
        depth=2, embed_dim=64, num_heads=2,
    ).eval()  # fmt: skip
    with pytest.raises(ConfigError, match="data"):
        lv.compress(model, "ptq_vit")
    q = lv.compress(model, "ptq_vit", mnist_small, num_images=48, batch_size=16, bit_budget=6.0)
    size = (1, 28, 28)
    fp, iq = count_ops(model, size), count_ops(q, size)
    assert fp.int8_macs == 0 and iq.macs == fp.macs
    linear_macs = sum(  # every block op is int8 (bits ≤ 8): only patch embed and head stay fp32
        m.weight.numel() * 17 for m in q.modules() if isinstance(m, QuantLinear)
    )  # 16 patches + class token
    attn_macs = 2 * 2 * 17 * 17 * 32 * 2  # 2 blocks × (QKᵀ + AV) × heads × n × n × head dim
    assert iq.int8_macs == linear_macs + attn_macs
    energy = [lv.profile(m, size, latency=False).energy_uj for m in (model, q)]
    assert energy[1] < 0.5 * energy[0]
    x = next(iter(mnist_small.test))[0]
    with torch.no_grad():
        out = q(x)
        lv.save(q, tmp_path / "q.pt")
        back = lv.load(tmp_path / "q.pt").eval()
        torch.testing.assert_close(back(x), out)
    ops = (QuantLinear, QuantMatMul)
    bits = {n: m.bits_w for n, m in back.named_modules() if isinstance(m, ops)}
    assert bits == {n: r["bits"] for n, r in q.ptq_record.items()}


@pytest.mark.parametrize("bits", [8, 6])
def test_qdq_onnx_runs_integer_matmuls_and_matches_fake_quant(bits, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = _vit()
    q = quantize_vit(model, bits)
    x = torch.randn(8, 3, 32, 32)
    calibrate(q, x, PTQViTConfig(bits=bits, num_images=8))
    path = lv.export_onnx(q, tmp_path / "q.onnx", input_size=(3, 32, 32))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        ref = q(x)
    # same grid; float summation order differs, and a value on a rounding edge may land one
    # step away: compare the logits loosely and the predictions exactly
    torch.testing.assert_close(torch.from_numpy(got), ref, rtol=0.05, atol=0.05)
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
    assert {"MatMulIntegerToFloat", "QLinearMatMul"} & ops, ops
    assert "MatMul" not in ops  # no float matmul left in the blocks (head is a Gemm)
    # the probabilities are quantized to uint8 with zero point 0 (the unsigned grid)
    graph = onnx.load(str(path)).graph
    consts = {n.output[0]: n.attribute[0].t for n in graph.node if n.op_type == "Constant"}
    consts.update({i.name: i for i in graph.initializer})
    producer = {o: n for n in graph.node for o in n.output}

    def from_softmax(name: str) -> bool:  # directly, or through the clip of fewer bits
        node = producer.get(name)
        while node is not None and node.op_type in ("Clip", "Min", "Max"):
            node = producer.get(node.input[0])
        return node is not None and node.op_type == "Softmax"

    zero_points = [
        onnx.numpy_helper.to_array(consts[n.input[2]])
        for n in graph.node
        if n.op_type == "QuantizeLinear" and from_softmax(n.input[0])
    ]
    assert len(zero_points) == 2  # one A·V per block
    assert all(z.dtype == "uint8" and int(z) == 0 for z in zero_points)
    # every other quantizer is signed int8 with zero point 0 (OpenVINO then runs the attention
    # and the linear layers in int8 without zero-point subtractions)
    others = [
        onnx.numpy_helper.to_array(consts[n.input[2]])
        for n in graph.node
        if n.op_type == "QuantizeLinear" and not from_softmax(n.input[0])
    ]
    assert others and all(z.dtype == "int8" and int(z.max()) == 0 for z in others)
    # Q·Kᵀ: K is quantized before its transpose (the transpose sits next to the matmul)
    qk = [n for n in graph.node if n.op_type == "MatMul" and "/qk/" in n.name]
    assert len(qk) == 2
    for mm in qk:
        t = producer[mm.input[1]]
        assert t.op_type == "Transpose" and producer[t.input[0]].op_type == "DequantizeLinear"


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_deploy_runs_the_methods_own_int8_graph(backend):
    """lv.deploy of a ptq_vit model: its own QDQ graph with the searched steps (no calib, no
    second quantizer), on each int8 runtime; other precisions and uncalibrated models fail."""
    pytest.importorskip(backend)
    model = _vit()
    q = quantize_vit(model, 8)
    with pytest.raises(ConfigError, match="calibrate it first"):
        lv.deploy(q, backend, "int8", (3, 32, 32), threads=1)
    x = torch.randn(8, 3, 32, 32)
    calibrate(q, x, PTQViTConfig(bits=8, num_images=8))
    d = lv.deploy(q, backend, "int8", (3, 32, 32), batch=8, threads=1)  # no calib needed
    assert d.backend.endswith("int8")
    with torch.no_grad():
        ref, full = q(x), model(x)
    got = d(x)
    torch.testing.assert_close(got, ref, rtol=0.05, atol=0.05)  # the fake-quant model's grid
    # what ran is the method's graph: nearer the fake-quant model than the float one is
    assert (got - ref).abs().max() < (full - ref).abs().max()
    for precision in ("fp32", "bf16"):
        with pytest.raises(ConfigError, match="precision='int8'"):
            lv.deploy(q, "onnxruntime", precision, (3, 32, 32), threads=1)


@pytest.mark.parametrize(
    "bad",
    [
        {"bits": 1},
        {"num_images": 0},
        {"rows_per_image": 0},
        {"rounds": -1},
        {"calib_split": "test"},
    ],
)
def test_config_rejects_bad_values_by_name(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        PTQViTConfig(**bad)


@pytest.mark.parametrize(
    "bad", [{"softmax_grid": "int"}, {"rank_norm": "mean"}, {"bit_groups": "layer"}]
)
def test_calibrate_rejects_unknown_options_by_name(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        calibrate(quantize_vit(_vit(depth=1)), torch.randn(2, 3, 32, 32), PTQViTConfig(**bad))
