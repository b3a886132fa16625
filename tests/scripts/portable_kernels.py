"""Build every native kernel for a lowered instruction set and check its portable path.

Run as a script by ``tests/test_kernel_builds.py`` in a fresh process with
``LEANVISION_KERNEL_ISA`` (AVX2 or DEFAULT), ``LEANVISION_REQUIRE_KERNELS=1`` (a kernel a layer
asks for and cannot get raises) and its own ``TORCH_EXTENSIONS_DIR``. Compares each layer, run
through the kernel the build gives it, with the float layer or a reference op on odd shapes
(channels not a multiple of 64, outputs not a multiple of 8, stride 2, padding 0 and 1, with
and without bias), and prints one JSON line: the kernels' status and the backends the
profiler detected.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

import leanvision as lv
from leanvision import kernels
from leanvision.layers import adder as la
from leanvision.layers.binary import (
    BinaryConv2d,
    BinaryLinear,
    PackedBinaryConv2d,
    PackedBinaryLinear,
)
from leanvision.layers.conv3x3 import FusedConv3x3
from leanvision.layers.gated import GatedBasicBlock
from leanvision.layers.winograd_adder import WinogradAdderConv2d, winograd_adder2d
from leanvision.methods.pruning.manidp import gate_model
from leanvision.profiling.latency import native_backend

torch.manual_seed(0)
torch.set_num_threads(2)
CONV_SHAPES = [  # n, c, o, h, w, k, stride, padding, bias
    (2, 70, 20, 7, 9, 3, 1, 1, True),
    (1, 130, 17, 8, 6, 3, 2, 1, False),
    (2, 3, 9, 5, 5, 1, 2, 0, True),
    (1, 64, 72, 6, 7, 3, 1, 0, False),
]
backends: dict[str, str] = {}


def close(got: torch.Tensor, want: torch.Tensor, what: str, atol: float = 1e-4) -> None:
    if not torch.allclose(got.double(), want.double(), atol=atol, rtol=1e-5):
        err = (got.double() - want.double()).abs().max().item()
        raise AssertionError(f"{what}: differs from the reference by {err}")


def run(name: str, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``, recording the backend the profiler detects for it."""
    with torch.no_grad():
        out, suffix = native_backend(lambda: layer(x))
    backends.setdefault(name, suffix)
    return out


# every kernel builds (the test checks the status); those with a portable path are required
status = {k: s.as_dict() for k, s in kernels.status(build=True).items()}
for name in ("binary", "adder_int8", "gated_block"):
    kernels.load(name)  # KernelError if it did not build or has no path

# binary: scalar popcount path against the float binary layers
for n, c, o, h, w, k, s, p, bias in CONV_SHAPES:
    layer = BinaryConv2d(c, o, k, s, p, bias=bias).eval()
    x = torch.randn(n, c, h, w)
    packed = PackedBinaryConv2d(layer)
    with torch.no_grad():
        want = layer(x)
    close(run("binary_conv", packed, x), want, f"PackedBinaryConv2d {c}->{o} k{k} s{s}")
# grouped / depthwise / rectangular: the word-operation counters of binary_gconv2d
for c, o, g, k, p in ((64, 32, 32, (1, 7), (0, 3)), (70, 140, 70, (3, 5), (1, 2))):
    layer = BinaryConv2d(c, o, k, 1, p, groups=g, bias=True).eval()
    x = torch.randn(2, c, 7, 9)
    packed = PackedBinaryConv2d(layer)
    with torch.no_grad():
        want = layer(x)
    close(run("binary_gconv", packed, x), want, f"PackedBinaryConv2d {c}->{o} groups {g} k{k}")
for c, o, bias in ((70, 20, True), (200, 9, False)):
    layer = BinaryLinear(c, o, bias=bias).eval()
    x = torch.randn(5, c)
    packed = PackedBinaryLinear(layer)
    with torch.no_grad():
        want = layer(x)
    close(run("binary_linear", packed, x), want, f"PackedBinaryLinear {c}->{o}")

# integer adder: portable int8 / int16 loops against the brute-force adder on the integers
for bits in (8, 16):
    for n, c, o, h, w, k, s, p, bias in CONV_SHAPES:
        f = la.AdderConv2d(c, o, k, s, p, bias=bias)
        if bias:
            nn.init.normal_(f.bias)
        scale = f.weight.abs().max().item() / (2 ** (bits - 1) - 1)
        q = la.QuantAdderConv2d(f, scale, bits=bits).eval()
        x = torch.randn(n, c, h, w)
        xq = q.quantize_input(x).double()
        want = la.adder2d_reference(xq, q.weight_q.double(), s, p) * float(q.scale)
        if bias:
            want = want + f.bias.double().view(1, -1, 1, 1)
        atol = 1e-3 if bits == 8 else 1e-2  # fp32 rounding of the integer sums
        close(run(f"adder_int{bits}", q, x), want, f"int{bits} adder {c}->{o}", atol)

# fp32 adder and 3x3 conv: AVX-512 only, so their layers run PyTorch and say so
f = la.AdderConv2d(70, 20, 3, 2, 1)
x = torch.randn(2, 70, 7, 9)
close(run("adder", f, x), la.adder2d_reference(x, f.weight, 2, 1), "AdderConv2d", 1e-3)
wino = WinogradAdderConv2d(24, 20)  # its kernels live in adder.cpp: PyTorch here too
x = torch.randn(2, 24, 7, 9)
ref = winograd_adder2d(x.double(), wino.weight.double(), wino.transform)
close(run("winograd_adder", wino, x), ref, "WinogradAdderConv2d", 1e-3)
conv = nn.Conv2d(24, 32, 3, padding=1)
fused = FusedConv3x3(conv, relu=True).eval()
x = torch.randn(2, 24, 9, 7)
with torch.no_grad():
    want = F.relu(conv(x))
close(run("conv3x3", fused, x), want, "FusedConv3x3")
_, choices = lv.optimize_for_cpu(lv.create_model("resnet8_cifar"), (3, 32, 32))

# gated blocks: the vector-extension kernel (chains included) against the masked network
model = gate_model(lv.create_model("resnet20_cifar", num_classes=10)).eval()
for blk in model.modules():
    if isinstance(blk, GatedBasicBlock):
        for g in (blk.gate1, blk.gate2):
            g.fc2.weight.data.normal_(0.0, 0.05)
            g.thre.fill_(0.9)
x = torch.randn(2, 3, 32, 32)
with torch.no_grad():
    dense = model(x)
for i in range(2):
    got = run("gated_block", model, x[i : i + 1])
    close(got, dense[i : i + 1], "gated resnet20", 1e-4 * dense.abs().max().item())

print(
    json.dumps(
        {
            "isa": os.environ.get("LEANVISION_KERNEL_ISA"),
            "status": status,
            "backends": backends,
            "choices": len(choices),
        }
    )
)
sys.stdout.flush()
