#!/usr/bin/env bash
# The GPU throughput check, prepared for one lent NVIDIA H200 (16 cores): about 4 minutes, at
# most 285 s of benchmark (each step has its own timeout; rows are saved as they are measured,
# so a step stopped by its timeout keeps what it measured).
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine; results in $OUT
#   bash benchmarks/gpu_check.sh --quick    # anywhere (CPU): tiny CNN at 32 px, ~1 min on 2 cores
#
# Writes into $OUT (the device runner sets it; default benchmarks/results/gpu): training.tsv
# (one row per configuration), protocols.tsv (ST-Net and DeepSpaCE wall-clock estimates on this
# device), log.txt and env.txt. Copy training.tsv / protocols.tsv rows into benchmarks/results/
# and the tables into benchmarks/README.md and README.md ("Speed").
# Needs only python3 with torch, torchvision, numpy, pandas, pyyaml, tqdm and tabulate (the
# benchmark imports no anndata): the bare CUDA image of the device machine has them.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results/gpu}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="$OUT/log.txt"
: >"$LOG"

if [[ "${1:-}" == "--quick" ]]; then
  # plumbing check: the same steps with the tiny backbone at 32 px in fp32, 1 warm-up + 2 timed
  # steps (options given last win)
  DENSE=tiny VGG=tiny EXTRA=(--quick --size 32 --precisions fp32)
else
  DENSE=densenet121 VGG=vgg16 EXTRA=(--seconds 4)
fi

{
  date -u
  nvidia-smi 2>&1 || echo "no nvidia-smi"
  "$PY" -c 'import torch, torchvision, sys
print("python", sys.version.split()[0], "torch", torch.__version__, "torchvision", torchvision.__version__)
print("cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "available", torch.cuda.is_available())
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", "cpus", __import__("os").cpu_count())'
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

step() { # step SECONDS ARGS...: one benchmark invocation under a timeout
  local limit=$1 && shift
  echo "== $(date -u +%T) bench_training.py $* (timeout ${limit}s)" | tee -a "$LOG"
  timeout --kill-after=5 "$limit" "$PY" benchmarks/bench_training.py "$@" "${EXTRA[@]}" \
    --out "$OUT/training.tsv" --protocols-out "$OUT/protocols.tsv" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  [[ $rc == 0 ]] || echo "== step ended with rc $rc (124: timeout)" | tee -a "$LOG"
}

# 1. ST-Net: DenseNet-121 with its preset (SGD, batch 32, dihedral augmentation) and at batch 256
#    (the >= 4,000 img/s goal); bf16 and fp32, channels_last; 8- and 1-fold TTA prediction as
#    predict_fold runs it (batch 128, no loader workers); loader rates on the way.
step 110 --backbones "$DENSE" --preset stnet --batch 32 256 --precisions bf16 fp32 \
  --channels-last on --tta 8 1 --infer-workers 0
# 2. DeepSpaCE: VGG16 with its preset (Adam, batch 128, DeepSpaCE augmentation); the same grid.
step 90 --backbones "$VGG" --preset deepspace --precisions bf16 fp32 --channels-last on \
  --tta 1 8 --infer-workers 0
# 3. Comparisons in bf16 (each backbone with its preset): training without channels_last, and
#    1-fold TTA prediction with 15 loader workers (does predict_fold's 0 workers cost?).
step 45 --backbones "$DENSE" "$VGG" --modes train --precisions bf16 --channels-last off
step 40 --backbones "$DENSE" "$VGG" --modes infer --precisions bf16 --channels-last on \
  --tta 1 --infer-workers 15
echo "== $(date -u +%T) done; results in $OUT" | tee -a "$LOG"
