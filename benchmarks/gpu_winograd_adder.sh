#!/usr/bin/env bash
# Train Winograd AdderNet variants of benchmarks/winograd_adder_cifar10.py on a lent CUDA GPU,
# all at once (one process each, fp32, the core's backward compiled by torch.compile), and pack
# the runs into $OUT (tools/device_pack.py); their parts are written here, where the test
# images are.
#
#   python tools/device_data.py cifar10 --out .gpu                 # here, once
#   # device tool, from a clean commit (the copy has no .git: declare its hash), carry .gpu:
#   LEANVISION_SOURCE_COMMIT=<hash> bash benchmarks/gpu_winograd_adder.sh balanced_a_anneal ...
#   # here, with the files it returned:
#   python tools/device_pack.py unpack <folder>
#   python benchmarks/winograd_adder_cifar10.py part --variant V     # each variant
# A dry run here: DEVICE=cpu EPOCHS=1 EXTRA="--max-train 256 --max-val 64" OUT=/tmp/x bash ...
set -u
data=${CIFAR:-.gpu/cifar10}
out=${OUT:-/tmp/gpu_out}
device=${DEVICE:-cuda}
epochs=${EPOCHS:-15}
extra=${EXTRA:-}
runs=runs/bench_winograd_adder
mkdir -p "$out" "$runs"
export PYTHONPATH=src PYTHONUNBUFFERED=1
if [ "$device" = cuda ]; then
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
# the fused backward against the float64 broadcast form on this GPU before anything trains
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
fi
for v in "$@"; do
  # shellcheck disable=SC2086
  python3 benchmarks/winograd_adder_cifar10.py --data "$data" --threads 2 $extra train \
    --variant "$v" --epochs "$epochs" --device "$device" --no-part > "$runs/$v.log" 2>&1 &
done
wait
for v in "$@"; do tail -n 2 "$runs/$v.log"; done
python3 tools/device_pack.py pack --out "$out" "$runs"
