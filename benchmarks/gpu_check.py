"""leanvision on a CUDA GPU: the check to run when a session is lent one (not part of CI).

1. **No silent wrong output on CUDA.** Every layer with a native CPU kernel (fused 3×3 conv
   and Ghost module, packed binary conv / grouped conv / linear, adder and int8 adder convs,
   ManiDP's gated block) is built on the CPU, moved to CUDA, and run on the same input: its
   PyTorch path must run there and give the CPU kernel's output, or the call must fail with a
   clear error. Whatever happens is recorded, with the fallback reasons the layer reports.
2. **Training on CUDA**: ``lv.train`` of ResNet-8 on the embedded MNIST subset, a few steps
   with AMP (the default on CUDA), then resumed from its checkpoint; the loss and the
   checkpoint's device are recorded.
3. **The CPU runtimes refuse CUDA input** with a clear error (``lv.deploy``).
4. **GPU latency** of ResNet-56 and Ghost-ResNet-56 (fp32, channels-last, cuDNN), side by side
   with ``compare`` at batch 1, 32 and 256: what Ghost's MACs cut buys on a GPU.

    PYTHONPATH=src python benchmarks/gpu_check.py --out results_dir

Writes ``gpu_check.json`` to ``--out`` and prints one line per check.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import leanvision as lv
from leanvision import kernels

SIZE = (3, 32, 32)


def _layers() -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]]:
    """Each native-kernel layer, built on the CPU in eval mode, with an input."""
    from leanvision.layers import FusedConv3x3
    from leanvision.layers.adder import AdderConv2d, QuantAdderConv2d
    from leanvision.layers.binary import (
        BinaryConv2d,
        BinaryLinear,
        PackedBinaryConv2d,
        PackedBinaryLinear,
    )
    from leanvision.layers.ghost import FusedGhost3x3
    from leanvision.methods.pruning.manidp import gate_model

    torch.manual_seed(0)
    out: dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]] = {}
    cl = torch.channels_last
    x16 = torch.randn(2, 16, 9, 9).contiguous(memory_format=cl)
    out["FusedConv3x3+add+relu"] = (
        FusedConv3x3(nn.Conv2d(16, 32, 3, padding=1), relu=True, residual=True),
        (x16, torch.randn(2, 32, 9, 9).contiguous(memory_format=cl)),
    )
    bn = nn.BatchNorm2d(32).eval()
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    primary = nn.Conv2d(16, 16, 3, padding=1, bias=False)
    cheap = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
    out["FusedGhost3x3+relu"] = (FusedGhost3x3(primary, cheap, bn, relu=True), (x16,))
    out["PackedBinaryConv2d"] = (
        PackedBinaryConv2d(BinaryConv2d(16, 32, 3, 1, 1, bias=True).eval()),
        (x16,),
    )
    grouped = BinaryConv2d(32, 32, (1, 7), 1, (0, 3), groups=32, bias=True).eval()
    out["PackedBinaryConv2d grouped 1x7"] = (
        PackedBinaryConv2d(grouped),
        (torch.randn(1, 32, 16, 16),),
    )
    out["PackedBinaryLinear"] = (
        PackedBinaryLinear(BinaryLinear(130, 10, bias=True).eval()),
        (torch.randn(4, 130),),
    )
    adder = AdderConv2d(16, 32, 3, padding=1).eval()
    out["AdderConv2d"] = (adder, (x16,))
    scale = max(x16.abs().max().item(), adder.weight.abs().max().item()) / 127
    out["QuantAdderConv2d int8"] = (QuantAdderConv2d(adder, scale, bits=8), (x16,))
    gated = gate_model(lv.create_model("resnet20_cifar", num_classes=10)).eval()
    out["ManiDP gated ResNet-20"] = (gated, (torch.randn(2, *SIZE),))
    fast, _ = lv.optimize_for_cpu(lv.create_model("resnet20_cifar", num_classes=10), SIZE, batch=2)
    xs = torch.randn(2, *SIZE).contiguous(memory_format=cl)
    out["optimize_for_cpu ResNet-20"] = (fast, (xs,))
    return out


def check_layers() -> list[dict[str, Any]]:
    rows = []
    for name, (layer, args) in _layers().items():
        row: dict[str, Any] = {"layer": name}
        with torch.inference_mode():
            ref = layer(*args)
        gpu = copy.deepcopy(layer).cuda()
        try:
            with kernels.recording_fallbacks() as why, torch.inference_mode():
                y = gpu(*(a.cuda() for a in args))
            err = (y.float().cpu() - ref.float()).abs().max().item()
            scale = ref.float().abs().max().item() or 1.0
            row.update(ran=True, device=str(y.device), max_abs_err=err,
                       rel_err=err / scale, fallbacks=why, ok=err / scale < 1e-3)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - recorded: a clear error is an acceptable answer
            row.update(ran=False, error=f"{type(exc).__name__}: {exc}"[:400], ok=None)
        print(f"layer {name}: {row}", flush=True)
        rows.append(row)
    rows.append(_pack_on_cuda())
    return rows


def _pack_on_cuda() -> dict[str, Any]:
    """A binary layer that lives on CUDA packs there, and runs there as on the CPU."""
    from leanvision.layers.binary import BinaryConv2d, PackedBinaryConv2d

    torch.manual_seed(0)
    layer = BinaryConv2d(70, 24, 3, 1, 1, bias=True).eval()
    x = torch.randn(2, 70, 7, 7)
    row: dict[str, Any] = {"layer": "PackedBinaryConv2d packed on CUDA"}
    try:
        with torch.inference_mode():
            ref = PackedBinaryConv2d(layer)(x)
            y = PackedBinaryConv2d(copy.deepcopy(layer).cuda())(x.cuda())
        err = (y.cpu() - ref).abs().max().item()
        row.update(ran=True, max_abs_err=err, ok=err < 1e-3 * ref.abs().max().item())
    except Exception as exc:  # noqa: BLE001
        row.update(ran=False, error=f"{type(exc).__name__}: {exc}"[:400], ok=None)
    print(f"layer {row['layer']}: {row}", flush=True)
    return row


def check_training(tmp: Path) -> dict[str, Any]:
    data = lv.load_data("mnist5k", batch_size=64, max_train=1024, max_val=256, max_test=256)
    torch.manual_seed(0)
    model = lv.create_model("resnet8_cifar", num_classes=10, in_chans=1)
    common = dict(lr=0.05, device="cuda", out_dir=str(tmp / "train"), progress=False, log=False)
    t = time.perf_counter()
    res = lv.train(model, data, epochs=1, max_steps=12, **common)
    first = time.perf_counter() - t
    again = lv.train(
        lv.create_model("resnet8_cifar", num_classes=10, in_chans=1), data, epochs=2,
        max_steps=24, resume=True, **common,
    )  # fmt: skip
    ckpt = torch.load(tmp / "train" / "last.pt", map_location="cpu", weights_only=False)
    row = {
        "first_run_s": round(first, 2),
        "history_first": _history(res),
        "history_resumed": _history(again),
        "model_device": str(next(again.model.parameters()).device),
        "checkpoint_keys": sorted(ckpt)[:12] if isinstance(ckpt, dict) else type(ckpt).__name__,
        "test": lv.evaluate(again.model, data.test),
    }
    print(f"training: {row}", flush=True)
    return row


def _history(res: Any) -> Any:
    hist = getattr(res, "history", None)
    return hist[-3:] if isinstance(hist, list) else str(hist)[:300]


def check_deploy_refuses_cuda() -> dict[str, Any]:
    model = lv.create_model("resnet20_cifar", num_classes=10).eval()
    d = lv.deploy(model, "torch", input_size=SIZE, batch=2, threads=2)
    try:
        d(torch.randn(2, *SIZE, device="cuda"))
        row = {"refused": False}
    except Exception as exc:  # noqa: BLE001
        row = {"refused": True, "error": f"{type(exc).__name__}: {exc}"[:300]}
    print(f"deploy with a CUDA input: {row}", flush=True)
    return row


def gpu_latency() -> list[dict[str, Any]]:
    from leanvision.methods.ghost import ghostify
    from leanvision.profiling import compare, count_ops

    torch.manual_seed(0)
    dense = lv.create_model("resnet56_cifar", num_classes=10).eval()
    ghost = ghostify(dense, ratio=2, dw_size=3)[0].eval()
    macs = {n: count_ops(m, SIZE).macs for n, m in (("resnet56", dense), ("ghost", ghost))}
    models = {n: m.cuda().to(memory_format=torch.channels_last)
              for n, m in (("resnet56", dense), ("ghost", ghost))}  # fmt: skip
    torch.backends.cudnn.benchmark = True
    rows = []
    for batch in (1, 32, 256):
        with torch.inference_mode():
            stats = compare(models, SIZE, batch=batch, repeats=50)
        row = {"batch": batch, **{f"{n}_ms": round(stats[n].median_ms, 4) for n in models},
               "backend": stats["resnet56"].backend, "macs": macs}  # fmt: skip
        row["ghost_speedup"] = round(row["resnet56_ms"] / row["ghost_ms"], 3)
        print(f"latency: {row}", flush=True)
        rows.append(row)
    return rows


def _guard(name: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - one check's failure must not hide the others
        tb = traceback.format_exc()
        print(f"{name} FAILED:\n{tb}", flush=True)
        return {"failed": tb[-1500:]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="gpu_check_out")
    a = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    info = {
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "python": platform.python_version(),
        "cpu_kernels": {k: kernels.why_not(k) for k in ("conv3x3", "binary", "adder")},
    }
    print(f"info: {info}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        result = {
            "info": info,
            "layers": _guard("layers", check_layers),
            "training": _guard("training", lambda: check_training(Path(tmp))),
            "deploy_cuda_input": _guard("deploy", check_deploy_refuses_cuda),
            "latency": _guard("latency", gpu_latency),
        }
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
