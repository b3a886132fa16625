#!/usr/bin/env bash
# Train Winograd AdderNet variants of benchmarks/winograd_adder_cifar10.py on a lent CUDA GPU,
# all at once (one process each, fp32, the core's backward compiled by torch.compile), and
# pack each run into $OUT/<variant>.tgz; their parts are written here, where the test images are.
#
#   python tools/device_data.py --out .gpu                       # here, once
#   # device tool, from a clean commit (its hash declared: the copy has no .git), carry .gpu:
#   LEANVISION_SOURCE_COMMIT=<its hash> bash benchmarks/gpu_winograd_adder.sh balanced_a_anneal ...
#   # here: tar xzf each <variant>.tgz; then per variant
#   python benchmarks/winograd_adder_cifar10.py part --variant V --runs runs/bench_winograd_adder
# A dry run here: DEVICE=cpu EPOCHS=1 EXTRA="--max-train 256 --max-val 64" OUT=/tmp/x bash ...
set -u
data=${CIFAR:-.gpu/cifar10}
out=${OUT:-/tmp/gpu_out}
device=${DEVICE:-cuda}
epochs=${EPOCHS:-15}
extra=${EXTRA:-}
mkdir -p "$out"
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
    --variant "$v" --epochs "$epochs" --device "$device" --no-part > "$out/$v.log" 2>&1 &
done
wait
# one archive per variant (the device tool returns 8 files of 16 MiB at most): what `part`
# reads, and the log
for v in "$@"; do
  tail -n 3 "$out/$v.log"
  r=runs/bench_winograd_adder/$v
  tar czf "$out/$v.tgz" "$r/last.pt" "$r/summary.json" -C "$out" "$v.log" && rm "$out/$v.log"
done
ls -la "$out"
