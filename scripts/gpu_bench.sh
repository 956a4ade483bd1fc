#!/usr/bin/env bash
# Issue 6 evidence on a GPU, in one call: at most 550 s of steps (+90 s with FAST_PRESET, -100 s with
# FP32_COMPILE=0); give the device call timeout_s=600, and no FAST_PRESET on a 15-minute device budget
# (the machine's start counts against it too). Nothing to download.
#
#   bash scripts/gpu_bench.sh              # on the lent machine, from the repository root; results in $OUT
#   QUICK=1 DEVICE=cpu bash scripts/gpu_bench.sh   # smoke test of this script on a CPU (a few minutes)
#
# Steps, most important first, each under its own time limit so one slow step cannot eat the others:
#   1. eager: both models, both paths (handout loop vs cvlab), cvlab in fp32 and bf16, NCHW and NHWC:
#      the cvlab/handout ratios (fp32 = same numerics) and the data-pipeline share of a step;
#   2. compiled, bf16: cvlab path, both models (the 50,000 images/s target for cifar_resnet18);
#   3. end to end: the `handout` preset for 3 epochs on full-size synthetic data (50,000 + 10,000
#      images), as is (fp32, eager) and with bf16 + channels_last + compile: real epoch seconds;
#   4. compiled, fp32: cvlab path, both models (skipped with FP32_COMPILE=0);
#   5. optional: FAST_PRESET=<name> runs that preset for 3 epochs on the same synthetic data.
# Writes to $OUT: env.txt, bench_*.txt/.json, train_*.txt and each run's config/history/metrics
# (checkpoints stay in /tmp). Every figure is synthetic data, one seed; say so wherever it is quoted.
set -uo pipefail

OUT=${OUT:-bench-out}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
FAST_PRESET=${FAST_PRESET:-}
FP32_COMPILE=${FP32_COMPILE:-1}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
RUNS=$(mktemp -d /tmp/cvlab-gpu-bench.XXXXXX)

if [ "$QUICK" = 1 ]; then
  SIZE=(--batch-size 8 --eval-batch-size 16 --steps 2 --windows 2 --warmup 1)
  DATA=(--set synthetic_train=64 --set synthetic_test=32 --set batch_size=16 --set eval_batch_size=16)
  EPOCHS=2; LIMIT=(300 300 300 300 300 300); COMPILE=no
else
  SIZE=(--batch-size 1024 --eval-batch-size 2048 --steps 10 --windows 3 --warmup 5)
  DATA=(--set synthetic_train=50000 --set synthetic_test=10000)
  EPOCHS=3; LIMIT=(120 150 60 120 100 90); COMPILE=yes
fi
if [ "$DEVICE" = cpu ]; then PRECISIONS=fp32; FAST_PRECISION=fp32; else PRECISIONS=fp32,bf16; FAST_PRECISION=bf16; fi

step() {  # step NAME LIMIT_S COMMAND...: run, log to $OUT/NAME.txt, never abort the script
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*" | tee "$OUT/$name.txt"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$OUT/$name.txt"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s" | tee -a "$OUT/$name.txt"
}

keep_run() {  # copy a run directory's small files into $OUT
  mkdir -p "$OUT/$1" && cp "$RUNS/$1"/{config.json,history.csv,metrics.json} "$OUT/$1/" 2>/dev/null
}

{
  date -u +%FT%TZ
  git rev-parse HEAD 2>/dev/null; git status --short 2>/dev/null | head -20
  nvidia-smi 2>&1 || echo "no nvidia-smi"
  python - <<'EOF'
import platform, torch, torchvision
print("python", platform.python_version(), "torch", torch.__version__, "torchvision", torchvision.__version__,
      "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version() if torch.cuda.is_available() else None)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(p.name, f"{p.total_memory / 2**30:.1f} GiB", f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs")
    print("tf32 matmul", torch.backends.cuda.matmul.allow_tf32, "tf32 cudnn", torch.backends.cudnn.allow_tf32)
EOF
  nproc; grep -m1 "model name" /proc/cpuinfo
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

step bench_eager "${LIMIT[0]}" python -m cvlab bench --device "$DEVICE" "${SIZE[@]}" \
  --precision "$PRECISIONS" --channels-last no,yes --json "$OUT/bench_eager.json"

step bench_compiled_fast "${LIMIT[1]}" python -m cvlab bench --device "$DEVICE" "${SIZE[@]}" --paths cvlab \
  --precision "$FAST_PRECISION" --channels-last yes --compile "$COMPILE" --json "$OUT/bench_compiled_fast.json"

TRAIN=(python -m cvlab train --preset handout --synthetic "${DATA[@]}" --epochs "$EPOCHS" --device "$DEVICE" --no-progress)
step train_handout_asis "${LIMIT[2]}" "${TRAIN[@]}" --out "$RUNS/handout_asis"
keep_run handout_asis
step train_handout_fast "${LIMIT[3]}" "${TRAIN[@]}" --set precision="$FAST_PRECISION" --set channels_last=true \
  --set compile="$( [ "$COMPILE" = yes ] && echo true || echo false )" --out "$RUNS/handout_fast"
keep_run handout_fast

if [ "$DEVICE" != cpu ] && [ "$FP32_COMPILE" = 1 ]; then
  step bench_compiled_fp32 "${LIMIT[4]}" python -m cvlab bench --device "$DEVICE" "${SIZE[@]}" --paths cvlab \
    --precision fp32 --channels-last yes --compile "$COMPILE" --json "$OUT/bench_compiled_fp32.json"
fi

if [ -n "$FAST_PRESET" ]; then
  step "train_${FAST_PRESET//[^A-Za-z0-9_-]/_}" "${LIMIT[5]}" python -m cvlab train --preset "$FAST_PRESET" --synthetic \
    "${DATA[@]}" --epochs "$EPOCHS" --device "$DEVICE" --no-progress --out "$RUNS/fast_preset"
  keep_run fast_preset
fi
rm -rf "$RUNS"
ls -l "$OUT"
