#!/usr/bin/env bash
# Issue 17's GPU check in one device run (about 9 minutes on a lent H100/H200; the session has 15 in all):
# environment, the tests whose code paths change on CUDA, an end-to-end study with every arch and compression
# (studies/gpu-check.yaml, 2 trials sharing the GPU) with front and export --verify, the GPU rows of
# `micronet-search bench`, and one candidate trained on the GPU and on the CPU with the same seed.
#
# Here, first (the device image has torch but not optuna, ptflops, torch-pruning ...; it reaches no registry):
#   scripts/gpu_wheels.sh                                    # .whl/ (git-ignored)
#   mkdir -p .data && cp ../shared/data/cifar10-dev.npz .data/   # .data/ (git-ignored)
# On the device (run tool: carry [".whl", ".data"], timeout_s 600):
#   scripts/gpu_check.sh
# Each step writes one log into $OUT (at most 8 files come back); summary.txt has each step's exit code and time.
# STEPS="study quality" runs only those steps. QUICK=1 runs the same steps at tiny sizes (a CPU try of the script itself: no GPU figure means anything then).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/gpu-check}
DATA=${DATA:-.data/cifar10-dev.npz}
QUICK=${QUICK:-0}
mkdir -p "$OUT"
export OUT DATA QUICK PYTHONUNBUFFERED=1
if [ -d .whl ] && ! python3 -c 'import optuna, ptflops, torch_pruning' 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl failed" | tee "$OUT/summary.txt"; exit 1; }
  export PYTHONPATH="$PWD:/tmp/site"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
ms() { python3 -m search "$@"; }
step() {  # step NAME SECONDS: run the function NAME with a time limit, log to $OUT/NAME.log, a line in summary.txt
  local name=$1 limit=$2 start rc
  start=$(date +%s)
  timeout "$limit" bash -c "$name" > "$OUT/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc, $(( $(date +%s) - start )) s (limit $limit s)" | tee -a "$OUT/summary.txt"
}
env_info() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
              torch.cuda.get_device_name() if torch.cuda.is_available() else "")'
  nproc
}
tests() {  # the tests whose code paths differ on CUDA (device auto = cuda there); databases and browsers skip
  local parallel=()
  python3 -c 'import xdist' 2>/dev/null && parallel=(-n 8)  # pytest-xdist is in the device image
  python3 -m pytest -q -x -p no:cacheprovider "${parallel[@]}" tests/test_train.py tests/test_train_options.py \
    tests/test_tta_flip.py tests/test_pruning.py tests/test_quantize.py tests/test_bases.py tests/test_candidate.py \
    tests/test_resume.py tests/test_export.py tests/test_steps.py
}
study() {  # every arch and compression once, 2 trials sharing the GPU; then the front and an export verified
  local db="sqlite:////tmp/gpu-check.db" n=10 file=studies/gpu-check.yaml
  rm -f /tmp/gpu-check.db && rm -rf studies/gpu-check-artifacts /tmp/gpu-check-export  # the default artifact store
  if [ "$QUICK" = 1 ]; then  # 2 epochs per trial and for the teacher, 6 trials (the 5 enqueued, one sampled)
    n=6 file=/tmp/gpu-check-quick.yaml
    sed -e "s#^space: #space: $PWD/#" -e 's/epochs: [0-9]*/epochs: 2/g' studies/gpu-check.yaml > "$file"
  fi
  ms run "$file" --storage "$db" --data-path "$DATA" --n-trials "$n" --trials-per-gpu 2 || return 1
  ms front --storage "$db" --study gpu-check || return 1
  ms export --storage "$db" --study gpu-check --knee --out /tmp/gpu-check-export --verify --data-path "$DATA"
}
bench() {  # the GPU rows: epoch of 50,000 images, 1/2/4/8 trials at once, compile, peak memory
  if [ "$QUICK" = 1 ]; then ms bench --quick --out "$OUT/BENCH.md"; else ms bench --out "$OUT/BENCH.md"; fi
}
quality() {  # the same candidate and seed on the GPU and on the CPU: validation accuracy within 1.5 points
  local epochs=15 gpu=cuda
  [ "$QUICK" = 1 ] && epochs=2 gpu=cpu  # a try of the script on a CPU: both runs there
  for run in gpu cpu; do
    local dev=$gpu
    [ "$run" = cpu ] && dev=cpu
    ms train --dataset npz --data-path "$DATA" --val-fraction 0.2 --arch resnet20 --width 1.0 --ps 0.5 --qw 8 \
      --qa 8 --epochs "$epochs" --batch-size 128 --seed 0 --device "$dev" --json > "/tmp/quality-$run.out" || return 1
    tail -1 "/tmp/quality-$run.out" > "/tmp/quality-$run.json"
  done
  python3 - <<'PY'
import json
gpu, cpu = (json.load(open(f"/tmp/quality-{d}.json")) for d in ("gpu", "cpu"))
g, c = gpu["val_accuracy"], cpu["val_accuracy"]
print(f"validation accuracy: GPU {g:.4f}, CPU {c:.4f}, difference {100 * (g - c):+.2f} points "
      f"(target within 1.5: {'met' if abs(g - c) <= 0.015 else 'not met'})")
PY
}
export -f ms env_info tests study bench quality  # timeout runs them in a child bash
: > "$OUT/summary.txt"
declare -A limit=([env_info]=20 [tests]=120 [study]=170 [bench]=150 [quality]=80)
for name in ${STEPS:-env_info tests study bench quality}; do  # STEPS="study quality": run again what failed
  step "$name" "${limit[$name]}"
done
cat "$OUT/summary.txt"
