#!/usr/bin/env bash
# GPU acceptance run (issue 11): one H100-class GPU, at most 10 minutes once the real CIFAR-100 is in data/.
#
#   bash scripts/gpu_acceptance.sh                       # every stage, in order of importance
#   bash scripts/gpu_acceptance.sh --stage tests,bench   # stages that need no data set
#   bash scripts/gpu_acceptance.sh --stage fast,handout  # after the data is in data/
#   bash scripts/gpu_acceptance.sh --dry-run             # this script's own check on a CPU: tiny sizes, synthetic data
#
# Stages, most important first, each under its own time limit (seconds; env vars override):
#   tests    LIMIT_TESTS=150   `pytest -m gpu` (tests/test_gpu.py), then `cvlab doctor` (its self-test)
#   fast     LIMIT_FAST=150    the `fast` preset on the full real CIFAR-100 for its 30 epochs
#   bench    LIMIT_BENCH=150   `cvlab bench`: handout loop vs cvlab path, both models, fp32 and auto precision,
#                              NHWC (60%); then the cvlab path compiled, bf16/auto, NHWC (the rest)
#   handout  LIMIT_HANDOUT=150 the `handout` preset for as many of its 100 epochs as its limit allows (stopped
#                              with Ctrl-C, so its run directory stays valid and says "interrupted")
# With several stages the handout stage gets at most TOTAL_S=600 minus the time already spent.
# --dry-run: limits LIMIT_*_DRY (300 each), TOTAL_S_DRY=1800, one CPU thread.
# Other stages: env (always written first), data (join the parts of .devdata/ into data/, see below).
#
# Writes to --out DIR (default docs/results/gpu/<date>-<gpu>/), meant to be committed: env.txt (GPU, driver,
# nvidia-smi, versions, TF32 flags, git commit), stages-<stages>.tsv (stage, exit code, seconds, limit), <stage>.txt
# logs, bench_*.json, and fast/ and handout/ with config.json, history.csv, metrics.json (checkpoints stay
# in a temporary folder). When $OUT is set (the device tool), the folder also goes there as one .tar.gz.
#
# On the lent machine (64 MiB per call): `bash ../shared/tools/device_data.sh` here cuts the data into
# .devdata/part-0..2 + assemble.sh; send them in three calls to the same warm machine, e.g.
#   carry [.devdata/part-0, .devdata/assemble.sh]: bash scripts/gpu_acceptance.sh --stage tests
#   carry [.devdata/part-1]:                        bash scripts/gpu_acceptance.sh --stage bench
#   carry [.devdata/part-2]:                        bash scripts/gpu_acceptance.sh --stage data,fast,handout
# (the data stage runs .devdata/assemble.sh data; docs/performance.md has the details).
set -uo pipefail

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

STAGES=all; DRY=0; OUTDIR=""
while [ $# -gt 0 ]; do
  case $1 in
    --stage) STAGES=${2:-}; shift 2 ;;
    --stage=*) STAGES=${1#--stage=}; shift ;;
    --dry-run) DRY=1; shift ;;
    --out) OUTDIR=${2:-}; shift 2 ;;
    --out=*) OUTDIR=${1#--out=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_acceptance: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ "$STAGES" = all ] && STAGES=tests,fast,bench,handout
IFS=, read -r -a WANT <<<"$STAGES"
for s in "${WANT[@]}"; do
  case $s in env|data|tests|fast|bench|handout) ;;
    *) echo "gpu_acceptance: unknown stage '$s'; choose from env, data, tests, fast, bench, handout, all" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DATA=${DATA:-data}
TOTAL_S=${TOTAL_S:-600}
LIMIT_TESTS=${LIMIT_TESTS:-150}; LIMIT_FAST=${LIMIT_FAST:-150}; LIMIT_BENCH=${LIMIT_BENCH:-150}
LIMIT_HANDOUT=${LIMIT_HANDOUT:-150}

if [ "$DRY" = 1 ]; then  # the flow on a CPU in a few minutes: synthetic data, tiny sizes, no compile
  DEVICE=cpu; GPU=cpu-dry-run
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread: a shared CPU slows several threads down many times
  LIMIT_TESTS=${LIMIT_TESTS_DRY:-300}; LIMIT_FAST=${LIMIT_FAST_DRY:-300}; LIMIT_BENCH=${LIMIT_BENCH_DRY:-300}
  LIMIT_HANDOUT=${LIMIT_HANDOUT_DRY:-300}; TOTAL_S=${TOTAL_S_DRY:-1800}
  DATA_ARGS=(--synthetic --set synthetic_train=200 --set synthetic_test=100)
  FAST_ARGS=(--epochs 2 --batch-size 50 --set eval_batch_size=100 --set model=tiny_resnet18)
  HANDOUT_ARGS=(--epochs 2 --batch-size 50 --set eval_batch_size=100 --set model=tiny_resnet18)
  BENCH_SIZE=(--batch-size 8 --eval-batch-size 16 --steps 1 --windows 1 --warmup 0 --threads 1)
  BENCH_MODELS=handout_resnet18; COMPILE=no; DOCTOR_ARGS=(--no-selftest)
else
  DEVICE=${DEVICE:-cuda}
  GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9' '-' | sed 's/-$//')
  GPU=${GPU:-$DEVICE}
  DATA_ARGS=(--data-root "$DATA" --set download=false)
  FAST_ARGS=(); HANDOUT_ARGS=()
  BENCH_SIZE=(--batch-size 1024 --eval-batch-size 2048 --steps 10 --windows 3 --warmup 5)
  BENCH_MODELS=handout_resnet18,cifar_resnet18; COMPILE=yes; DOCTOR_ARGS=()
fi
OUTDIR=${OUTDIR:-docs/results/gpu/$(date -u +%F)-$GPU}
mkdir -p "$OUTDIR" || exit 2
RUNS=$(mktemp -d "${TMPDIR:-/tmp}/cvlab-acceptance.XXXXXX")
trap 'rm -rf "$RUNS"' EXIT
STAGES_TSV="$OUTDIR/stages-$(echo "$STAGES" | tr ',' '-').tsv"  # one per invocation: several calls, one folder
printf 'stage\texit\tseconds\tlimit\tfinished_utc\n' >"$STAGES_TSV"
FAILED=()

stage() {  # stage NAME LIMIT COMMAND...: run under `timeout -s INT`, log to NAME.txt, record, never abort
  local name=$1 limit=$2; shift 2
  local start=$SECONDS rc
  echo "=== $name (limit ${limit} s): $*" | tee "$OUTDIR/$name.txt"
  timeout -s INT -k 20 "$limit" "$@" 2>&1 | tee -a "$OUTDIR/$name.txt"
  rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$OUTDIR/$name.txt"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$limit" "$(date -u +%FT%TZ)" >>"$STAGES_TSV"
  [ "$rc" = 0 ] || FAILED+=("$name")
  return 0
}

keep_run() {  # the run directory's small files into OUTDIR/NAME/
  mkdir -p "$OUTDIR/$1" && cp "$RUNS/$1"/{config.json,history.csv,metrics.json} "$OUTDIR/$1/" 2>/dev/null
}

have_data() {
  [ "$DRY" = 1 ] && return 0
  "$PY" -c "import sys; from cvlab.core.data import locate; sys.exit(locate('$DATA') is None)"
}

write_env() {
  {
    echo "date_utc $(date -u +%FT%TZ)"
    echo "git $(git rev-parse HEAD 2>/dev/null || echo none) $(git status --porcelain --untracked-files=no 2>/dev/null | wc -l) changed files"
    echo "dry_run $DRY device $DEVICE stages $STAGES"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv 2>&1 || true
    nvidia-smi 2>&1 || echo "no nvidia-smi"
    "$PY" - "$DEVICE" <<'EOF'
import platform, sys, torch, torchvision
from cvlab.core import device as devices
print("python", platform.python_version(), "torch", torch.__version__, "torchvision", torchvision.__version__,
      "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version() if torch.cuda.is_available() else None)
dev = devices.resolve_device(sys.argv[1])
caps = devices.probe(dev)
print("capabilities", caps)
print("tf32 (PyTorch defaults, not changed by cvlab)", devices.tf32_state())
if dev.type == "cuda":
    p = torch.cuda.get_device_properties(dev)
    print(p.name, f"{p.total_memory / 2**30:.1f} GiB", f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs")
EOF
    echo "cpu $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2-)"
  } >"$OUTDIR/env.txt" 2>&1
}

write_env
echo "gpu_acceptance: stages $STAGES -> $OUTDIR"
for s in "${WANT[@]}"; do
  case $s in
    env) ;;
    data)
      if [ -f .devdata/assemble.sh ] && ! have_data; then
        stage data 120 bash .devdata/assemble.sh "$DATA"
      else
        echo "=== data: $( have_data && echo "already in $DATA" || echo "no .devdata/assemble.sh and no data in $DATA" )"
      fi ;;
    tests)
      stage tests "$LIMIT_TESTS" "$PY" -m pytest -m gpu -o addopts= -q -rs -p no:cacheprovider tests/test_gpu.py
      stage doctor "$LIMIT_TESTS" "$PY" -m cvlab doctor --device "$DEVICE" --data-root "$DATA" "${DOCTOR_ARGS[@]}" ;;
    fast)
      if have_data; then
        stage fast "$LIMIT_FAST" "$PY" -m cvlab train --preset fast "${DATA_ARGS[@]}" "${FAST_ARGS[@]}" \
          --device "$DEVICE" --no-progress --out "$RUNS/fast"
        keep_run fast
      else
        echo "=== fast: skipped, no CIFAR-100 in $DATA (run the data stage first)" | tee "$OUTDIR/fast.txt"; FAILED+=(fast)
      fi ;;
    bench)
      stage bench_eager "$((LIMIT_BENCH * 6 / 10))" "$PY" -m cvlab bench --device "$DEVICE" --models "$BENCH_MODELS" \
        --paths handout,cvlab "${BENCH_SIZE[@]}" --precision fp32,auto --channels-last yes --json "$OUTDIR/bench_eager.json"
      if [ "$COMPILE" = yes ]; then
        stage bench_compiled "$((LIMIT_BENCH - LIMIT_BENCH * 6 / 10))" "$PY" -m cvlab bench --device "$DEVICE" \
          --models cifar_resnet18,handout_resnet18 --paths cvlab "${BENCH_SIZE[@]}" --precision auto --channels-last yes \
          --compile yes --json "$OUTDIR/bench_compiled.json"
      fi ;;
    handout)
      limit=$LIMIT_HANDOUT
      if [ "${#WANT[@]}" -gt 1 ] && [ $((TOTAL_S - SECONDS)) -lt "$limit" ]; then limit=$((TOTAL_S - SECONDS)); fi
      if [ "$limit" -lt 20 ]; then
        echo "=== handout: skipped, ${limit} s left of TOTAL_S=$TOTAL_S" | tee "$OUTDIR/handout.txt"; FAILED+=(handout)
      elif have_data; then
        stage handout "$limit" "$PY" -m cvlab train --preset handout "${DATA_ARGS[@]}" "${HANDOUT_ARGS[@]}" \
          --device "$DEVICE" --no-progress --out "$RUNS/handout"
        keep_run handout
        # Stopped by its time limit (Ctrl-C, exit 130) is this stage's expected end: the epochs done are the result.
        if [ "${FAILED[-1]:-}" = handout ] && grep -q '"status": "interrupted"' "$OUTDIR/handout/metrics.json" 2>/dev/null; then
          unset 'FAILED[-1]'
        fi
      else
        echo "=== handout: skipped, no CIFAR-100 in $DATA (run the data stage first)" | tee "$OUTDIR/handout.txt"; FAILED+=(handout)
      fi ;;
  esac
done

if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then  # the device tool brings $OUT back: one archive of the folder
  tar -czf "$OUT/gpu-acceptance-$(echo "$STAGES" | tr ',' '-').tar.gz" -C "$(dirname "$OUTDIR")" "$(basename "$OUTDIR")"
  cp "$STAGES_TSV" "$OUT/"
fi
echo "gpu_acceptance: wrote $OUTDIR"; cat "$STAGES_TSV"
if [ "${#FAILED[@]}" -gt 0 ]; then echo "gpu_acceptance: FAILED: ${FAILED[*]}"; exit 1; fi
echo "gpu_acceptance: all stages passed"
