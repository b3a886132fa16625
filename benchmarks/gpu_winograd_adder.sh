#!/usr/bin/env bash
# Train Winograd AdderNet variants of benchmarks/winograd_adder_cifar10.py on a lent CUDA GPU,
# all at once (one process each, fp32, the core's backward compiled by torch.compile), and
# pack their runs into $OUT/runs.tgz; their parts are written here, where the test images are.
#
#   python tools/device_data.py --out .gpu                       # here, once
#   # device tool, from a clean commit, carry [".gpu"]:
#   LV_TRAINED_AT=<commit> bash benchmarks/gpu_winograd_adder.sh balanced_a_anneal ...
#   # here: tar xzf runs.tgz; then per variant
#   python benchmarks/winograd_adder_cifar10.py part --variant V --runs runs/bench_winograd_adder
set -u
data=${CIFAR:-.gpu/cifar10}
out=${OUT:-/tmp/gpu_out}
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
# the fused backward against the chunked one on this GPU before anything trains
python3 - <<'PY' || exit 1
import torch
from leanvision.layers import winograd_adder as wa
torch.manual_seed(0)
for p in (1.0, 1.5):
    v, u, gm = (torch.randn(16, 300, 16, device="cuda") for _ in range(3))
    pt = torch.tensor(p, device="cuda")
    a = wa._run_fused(gm, v, u, p, True, p != 1.0)
    b = wa.pairwise_grads(gm.double(), v.double(), u.double(), pt.double(), p == 1.0, True, p != 1.0)
    assert a is not None, wa.cuda_backward_backend()
    for x, y in zip(a, b):
        if y is not None:
            err = ((x.double() - y).abs().max() / y.abs().max()).item()
            assert err < 1e-5, (p, err)
print("fused backward:", wa.cuda_backward_backend(), "agrees with float64")
PY
for v in "$@"; do
  python3 benchmarks/winograd_adder_cifar10.py --data "$data" --threads 2 train --variant "$v" \
    --epochs 15 --device cuda --no-part > "$out/$v.log" 2>&1 &
done
wait
tail -n 3 "$out"/*.log
tar czf "$out/runs.tgz" runs/bench_winograd_adder
