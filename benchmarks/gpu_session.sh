#!/usr/bin/env bash
# Train benchmark runs on a lent CUDA GPU, all of a batch at once (fp32), and pack them into
# $OUT for the trip back (tools/device_pack.py); the reports test and time them here, on the CPU.
#
#   cifar  (carry .gpu from `python tools/device_data.py cifar10 --out .gpu`):
#          the Winograd AdderNet variants named in $WINOGRAD (15 epochs each; the core's
#          backward compiled by torch.compile, checked against float64 first) and the
#          drnet_cifar10 models in $DRNET (default: all three)
#   sr     (carry .gpu from `python tools/device_data.py sr --out .gpu`):
#          the sr_x2 models in $SR (default: all three), and ipt_pretrain's runs: both
#          pre-trainings and both scratch runs, then the four fine-tunings
#
# The copied tree has no .git: declare the commit it was made from (a clean one),
#   LEANVISION_SOURCE_COMMIT=<hash> WINOGRAD="balanced_a_anneal ..." bash benchmarks/gpu_session.sh cifar
# then here: python tools/device_pack.py unpack <folder>; the Winograd benchmark's `part` per
# variant, and each benchmark's `report`.
# Dry run here (tiny models, a few steps): DEVICE=cpu SMOKE=1 OUT=/tmp/x bash ... cifar|sr
set -u
phase=${1:?cifar or sr}
out=${OUT:-/tmp/gpu_out}
device=${DEVICE:-cuda}
smoke=${SMOKE:+--smoke}
mkdir -p "$out" runs
export PYTHONPATH=src PYTHONUNBUFFERED=1
py() { python3 "$@"; }
if [ "$device" = cuda ]; then
  py -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1
fi
t0=$(date +%s)
case $phase in
cifar)
  data=.gpu/cifar10
  if [ "$device" = cuda ] && [ -n "${WINOGRAD:-}" ]; then
    py - <<'PY' || exit 1
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
  wa=(--threads 2); [ -n "$smoke" ] && wa+=(--max-train 256 --max-val 64)
  ep=15; [ -n "$smoke" ] && ep=1
  mkdir -p runs/bench_winograd_adder runs/bench_drnet_cifar10
  for v in ${WINOGRAD:-}; do
    py benchmarks/winograd_adder_cifar10.py --data $data "${wa[@]}" train --variant "$v" \
      --epochs $ep --device "$device" --no-part > "runs/bench_winograd_adder/$v.log" 2>&1 &
  done
  for m in ${DRNET-fixed32 fixed24 drnet}; do
    py benchmarks/drnet_cifar10.py --data $data --threads 2 --device "$device" $smoke train \
      --model "$m" > "runs/bench_drnet_cifar10/$m.log" 2>&1 &
  done
  wait
  dirs=(runs/bench_winograd_adder runs/bench_drnet_cifar10)
  ;;
sr)
  data=.gpu/sr
  mkdir -p runs/bench_sr_x2 runs/bench_ipt_pretrain
  common=(--data $data --threads 2 --device "$device" $smoke)
  for m in ${SR-edsr ghostsr fadn}; do
    py benchmarks/sr_x2.py "${common[@]}" train --model "$m" > "runs/bench_sr_x2/$m.log" 2>&1 &
  done
  ipt=benchmarks/ipt_pretrain.py
  log=runs/bench_ipt_pretrain
  (
    for c in on off; do py $ipt "${common[@]}" pretrain --contrastive $c > $log/pre_$c.log 2>&1 & done
    for t in sr2 noise30; do py $ipt "${common[@]}" scratch --target $t > $log/scratch_$t.log 2>&1 & done
    wait
    for t in sr2 noise30; do for c in on off; do
      py $ipt "${common[@]}" finetune --target $t --contrastive $c > $log/ft_${t}_$c.log 2>&1 &
    done; done
    wait
  ) &
  wait
  dirs=(runs/bench_sr_x2 runs/bench_ipt_pretrain)
  ;;
*) echo "unknown phase $phase (cifar or sr)"; exit 2 ;;
esac
echo "trained in $(( $(date +%s) - t0 )) s"
for f in $(find "${dirs[@]}" -name '*.log'); do echo "== $f"; tail -n 2 "$f"; done
py tools/device_pack.py pack --out "$out" --name "$phase" "${dirs[@]}"
