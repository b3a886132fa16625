"""Every native kernel builds for lower instruction sets, and the portable paths are right.

One fresh process per level, the levels started together (``LEANVISION_KERNEL_ISA=AVX2`` /
``DEFAULT``, its own ``TORCH_EXTENSIONS_DIR``, ``LEANVISION_REQUIRE_KERNELS=1``) builds all
five kernels (about 15 s each) and runs ``tests/scripts/portable_kernels.py``: on this
machine too the scalar / portable code runs, not the AVX-512 code, and must equal the float
layers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from leanvision import kernels

SCRIPT = Path(__file__).parent / "scripts" / "portable_kernels.py"
_ORDER = ("DEFAULT", "AVX2", "AVX512")
# levels this CPU can build for, below AVX-512 (DEFAULT everywhere, AVX2 on x86-64 with it)
LEVELS = [
    lvl
    for lvl in ("AVX2", "DEFAULT")
    if _ORDER.index(lvl) <= _ORDER.index(kernels._machine_level())
]
VECTOR = {"AVX2": "vec256", "DEFAULT": "vec128"}


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, tuple[int, str, str]]:
    """Every level's build-and-check process, all started at once (each build is one
    compiler process, so on two cores the levels build side by side): level → (return code,
    stdout, stderr)."""
    procs = {}
    for isa in LEVELS:
        env = dict(os.environ)
        env.pop("LEANVISION_NO_KERNELS", None)
        env.update(
            LEANVISION_KERNEL_ISA=isa,
            LEANVISION_REQUIRE_KERNELS="1",
            TORCH_EXTENSIONS_DIR=str(tmp_path_factory.mktemp(f"ext_{isa}")),
        )
        procs[isa] = subprocess.Popen(
            [sys.executable, str(SCRIPT)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    out = {}
    for isa, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=1100)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
        out[isa] = (proc.returncode, stdout, stderr)
    return out


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("isa", LEVELS)
def test_all_kernels_build_and_portable_paths_match(isa, builds):
    returncode, stdout, stderr = builds[isa]
    assert returncode == 0, stderr[-4000:]
    report = json.loads(stdout.strip().splitlines()[-1])
    status = report["status"]
    assert sorted(status) == ["adder", "adder_int8", "binary", "conv3x3", "gated_block"]
    assert all(s["built"] and s["isa"] == isa and s["error"] is None for s in status.values())
    paths = {name: s["path"] for name, s in status.items()}
    assert paths == {
        "adder": "none",  # AVX-512 only: the layer runs PyTorch
        "adder_int8": "scalar",
        "binary": "scalar",
        "conv3x3": "none",
        "gated_block": VECTOR[isa],
    }
    backends = report["backends"]
    vec = VECTOR[isa]
    assert backends == {
        "binary_conv": "+leanvision:binary_conv2d[scalar],binary_pack[scalar]",
        "binary_gconv": "+leanvision:binary_gconv2d[scalar],binary_pack[scalar]",
        "binary_linear": "+leanvision:binary_linear[scalar],binary_pack[scalar]",
        "adder_int8": "+leanvision:adder_int8_forward[scalar]",
        "adder_int16": "+leanvision:adder_int16_forward[scalar]",
        "adder": "+fallback:AdderConv2d[no-avx512]",
        "winograd_adder": "+fallback:WinogradAdderConv2d[no-avx512]",
        "conv3x3": "+fallback:FusedConv3x3[no-avx512]",
        "gated_block": f"+leanvision:gated_basic_block[{vec}],gated_block_chain[{vec}]",
    }
    assert report["choices"] == 0  # optimize_for_cpu fuses nothing without the AVX-512 kernel
