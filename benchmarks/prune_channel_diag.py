"""Where the ℓ1/SCOP ResNet-56 speed-up goes: the diagnostics behind the prune findings.

Prints, for the pruned ℓ1 model of ``prune_cifar10.py`` (batch 32, channels_last, BN folded):
per-stage latency of the dense and pruned nets; the speed-up timed alone in a loop against
interleaved (as the report times it); the same pair under ``torch.compile`` (inductor,
freezing) and ``torch.jit.freeze`` + ``optimize_for_inference``; and other stage widths at
about 50 % MACs (untrained: latency does not depend on weights); the GMAC/s of single 3×3
convolutions of the net's shapes in ATen and in leanvision's kernel; and the pair through
``lv.optimize_for_cpu``.

    python benchmarks/prune_cifar10.py channels --method l1_filter   # first
    python benchmarks/prune_channel_diag.py --threads 1
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import leanvision as lv  # noqa: E402
import prune_cifar10 as pc  # noqa: E402
from leanvision.deploy import fold_batchnorm  # noqa: E402
from leanvision.layers.conv3x3 import FusedConv3x3  # noqa: E402
from leanvision.profiling import compare, count_ops  # noqa: E402

CL = torch.channels_last
ORIG = {1: 16, 2: 32, 3: 64}


def _alone_ms(fn, repeats: int = 20) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _interleaved(runners: dict, threads: int, sessions: int = 5) -> dict[str, float]:
    lat = {k: [] for k in runners}
    for _ in range(sessions):
        with torch.inference_mode():
            res = compare(runners, (3, 32, 32), batch=32, threads=threads, repeats=10)
        for k in runners:
            lat[k].append(res[k].median_ms)
    return {k: statistics.median(v) for k, v in lat.items()}


def _widths(dense: torch.nn.Module, res: dict[int, int], inner: dict[int, int]):
    ratios = {}
    for s in (1, 2, 3):
        if res[s] < ORIG[s]:
            ratios[f"layer{s}.0.conv2"] = 1 - res[s] / ORIG[s]
        if inner[s] < ORIG[s]:
            ratios.update({f"layer{s}.{b}.conv1": 1 - inner[s] / ORIG[s] for b in range(9)})
    return pc.untrained_l1(dense, 32, layer_ratios=ratios)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pc._warm_allocator()
    dense = pc.dense_resnet().eval()
    pruned = lv.load(pc.RUNS / "l1_filter" / "model.pt").eval()
    size = (3, 32, 32)
    gain = count_ops(dense, size).macs / count_ops(pruned, size).macs
    x = torch.randn(32, 3, 32, 32).contiguous(memory_format=CL)
    folded = {k: fold_batchnorm(m)[0].to(memory_format=CL) for k, m in
              (("dense", dense), ("l1", pruned))}  # fmt: skip

    with torch.inference_mode():
        for k, m in (("dense", dense), ("l1", pruned)):  # per stage, each folded alone
            m = copy.deepcopy(m).to(memory_format=CL)
            h = m.act1(m.bn1(m.conv1(x)))
            stages = []
            for stage in (m.layer1, m.layer2, m.layer3):
                f = fold_batchnorm(stage)[0]
                stages.append(round(_alone_ms(lambda f=f, h=h: f(h)), 2))
                h = stage(h)
            print(f"{k}: stage ms {stages}")
        alone = {k: _alone_ms(lambda m=m: m(x)) for k, m in folded.items()}
    print(f"alone in a loop: {alone['dense'] / alone['l1'] / gain:.3f} of the MACs gain")
    runners = {k: (lambda m=m: m(x)) for k, m in folded.items()}
    with torch.no_grad():
        for k, m in (("dense", dense), ("l1", pruned)):
            j = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(m, x)))
            runners[f"{k}_jit"] = lambda j=j: j(x)
            torch._inductor.config.freezing = True
            c = torch.compile(copy.deepcopy(m).to(memory_format=CL))
            c(x)
            runners[f"{k}_compiled"] = lambda c=c: c(x)

    with torch.inference_mode():  # one conv per shape: ATen's rate against the kernel's
        for hw, cin, cout in ((32, 16, 16), (16, 16, 16), (16, 32, 32), (8, 32, 32), (8, 64, 64)):
            conv = torch.nn.Conv2d(cin, cout, 3, padding=1).eval().to(memory_format=CL)
            fused = FusedConv3x3(conv)
            h = torch.randn(32, cin, hw, hw).contiguous(memory_format=CL)
            giga = 32 * hw * hw * cin * cout * 9 / 1e6  # GMAC/s = giga / ms
            aten = _alone_ms(lambda c=conv, h=h: c(h))
            ours = _alone_ms(lambda f=fused, h=h: f(h))
            print(f"conv {cin}->{cout} at {hw}x{hw}, batch 32: ATen {giga / aten:.0f} GMAC/s, "
                  f"kernel {giga / ours:.0f} GMAC/s")  # fmt: skip
    for k, m in (("dense", dense), ("l1", pruned)):
        opt = lv.optimize_for_cpu(m, tuple(x.shape[1:]), batch=x.shape[0])[0]
        runners[f"{k}_lv"] = lambda opt=opt: opt(x)
    lat = _interleaved(runners, args.threads)
    for tag in ("", "_jit", "_compiled", "_lv"):
        ratio = lat[f"dense{tag}"] / lat[f"l1{tag}"] / gain
        print(f"interleaved{tag or ' (eager)'}: {ratio:.3f} of the MACs gain")
    for k in ("dense", "l1"):
        print(f"{k}: lv.optimize_for_cpu {lat[k] / lat[k + '_lv']:.2f}× faster than ATen (folded)")

    models, gains = {"dense": dense}, {}
    for r2, i2, r3, i3 in itertools.product((16, 32), (16, 32), (16, 32, 48, 64), (16, 32, 48, 64)):
        m = _widths(dense, {1: 16, 2: r2, 3: r3}, {1: 16, 2: i2, 3: i3})
        kept = count_ops(m, size).macs / count_ops(dense, size).macs
        if 0.45 <= kept <= 0.53:
            key = f"residual 16/{r2}/{r3}, inner 16/{i2}/{i3}"
            models[key], gains[key] = m, 1 / kept
    folded = {k: fold_batchnorm(m)[0].to(memory_format=CL) for k, m in models.items()}
    runners = {k: (lambda f=f: f(x)) for k, f in folded.items()}
    lat = _interleaved(runners, args.threads, sessions=3)
    for k, g in gains.items():
        print(f"{k}: MACs gain {g:.2f}, {lat['dense'] / lat[k] / g:.3f} of it")


if __name__ == "__main__":
    main()
