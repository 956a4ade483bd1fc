#!/usr/bin/env bash
# GPU acceptance run (issues 11 and 17): three calls of the device tool, back to back on one warm machine,
# each carrying one part of the real CIFAR-100; planned to fit a 15-minute device slot with a rerun to spare.
#
#   bash scripts/gpu_acceptance.sh --plan               # the steps, their stages, limits, the total; runs nothing
#   bash scripts/gpu_acceptance.sh --step 1             # call 1 (carries .devdata/part-0, .devdata/assemble.sh)
#   bash scripts/gpu_acceptance.sh --step 2             # call 2 (carries .devdata/part-1)
#   bash .devdata/assemble.sh data && bash scripts/gpu_acceptance.sh --step 3   # call 3 (.devdata/part-2)
#   bash scripts/gpu_acceptance.sh --dry-run            # all three steps on a CPU: tiny sizes, synthetic data
#   bash scripts/gpu_acceptance.sh --stage tests,doctor # single stages, in the order given
#
# Steps and stages (limits in seconds; the environment variable named overrides each):
#   1  env       LIMIT_ENV=10      env.txt: GPU, driver, versions, capabilities, TF32 flags, git commit
#      tests     LIMIT_TESTS=40    `pytest -m gpu -k "not compile"` (tests/test_gpu.py without its compile test)
#      doctor    LIMIT_DOCTOR=25   `cvlab doctor` (its report, then its self-test on the GPU)
#      bench     LIMIT_BENCH=50    eager `cvlab bench`: handout loop vs cvlab path (fp32 and auto precision, NHWC),
#                                  both models; each row written to bench_eager.json as soon as it is measured
#   2  handout   LIMIT_HANDOUT=40  the `handout` preset on full-size synthetic data (50,000 / 10,000 images;
#                                  its timing does not depend on the pixels) until its limit stops it (Ctrl-C:
#                                  a valid run, "interrupted"); handout/projection.txt projects its 100 epochs
#      compiled  LIMIT_COMPILED=120  compiled bench of cifar_resnet18 alone, only when the slot's time left covers
#                                  it, the rest of the plan and a rerun of `fast` (else skipped, and said so). Time
#                                  left: --left S (the device tool's budget_left_s), else estimated on the machine
#                                  from step 1's start: 900 - MACHINE_START - seconds since step 1 began
#   3  data      LIMIT_DATA=10     (the call's command assembles the data first) check that data/ holds it
#      fast      LIMIT_FAST=240    the `fast` preset for its 30 epochs on the full real CIFAR-100
# Every stage runs under `timeout -s INT`: stopped by its limit, it still writes what it measured (pytest's
# summary, the bench rows so far, a run directory that says "interrupted").
#
# Writes to --out DIR (default docs/results/gpu/<date>-<gpu>/), meant to be committed: env.txt,
# stages-<step>.tsv (stage, exit code, seconds, limit), <stage>.txt logs, bench_*.json, and fast/ and handout/
# (config.json, history.csv, metrics.json; checkpoints stay in a temporary folder). When $OUT is set (the
# device tool), the folder goes there as gpu-acceptance-<step>.tar.gz, refreshed after every stage.
# --dry-run: one CPU thread, limits LIMIT_*_DRY (300 each), DRY_EPOCHS=2, tiny model, synthetic data, doctor without its
# self-test, no compile: it checks this script, its figures mean nothing.
# Data on the lent machine: `bash ../shared/tools/device_data.sh` here writes .devdata/part-0..2 + assemble.sh
# (docs/performance.md gives the three `run` calls).
set -uo pipefail

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

STAGES=""; STEP=""; DRY=0; OUTDIR=""; PLAN=0; LEFT=auto
while [ $# -gt 0 ]; do
  case $1 in
    --stage) STAGES=${2:-}; shift 2 ;;
    --stage=*) STAGES=${1#--stage=}; shift ;;
    --step) STEP=${2:-}; shift 2 ;;
    --step=*) STEP=${1#--step=}; shift ;;
    --left) LEFT=${2:-}; shift 2 ;;
    --left=*) LEFT=${1#--left=}; shift ;;
    --plan) PLAN=1; shift ;;
    --dry-run) DRY=1; shift ;;
    --out) OUTDIR=${2:-}; shift 2 ;;
    --out=*) OUTDIR=${1#--out=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_acceptance: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case $LEFT in auto) ;; ''|*[!0-9]*) echo "gpu_acceptance: --left takes whole seconds, got '$LEFT'" >&2; exit 2 ;; esac

LIMIT_ENV=${LIMIT_ENV:-10}; LIMIT_TESTS=${LIMIT_TESTS:-40}; LIMIT_DOCTOR=${LIMIT_DOCTOR:-25}
LIMIT_BENCH=${LIMIT_BENCH:-50}; LIMIT_HANDOUT=${LIMIT_HANDOUT:-40}; LIMIT_COMPILED=${LIMIT_COMPILED:-120}
LIMIT_DATA=${LIMIT_DATA:-10}; LIMIT_FAST=${LIMIT_FAST:-240}
MACHINE_START=${MACHINE_START:-240}  # the device tool's start of a fresh machine, at most (device README)
SLOT=${SLOT:-900}                     # the device time of a slot, all calls together
PLAN_CAP=660                          # 11 minutes: the plan plus the machine's start must stay under this
T0_FILE=${TMPDIR:-/tmp}/cvlab-acceptance-step1-start  # on the machine: when step 1 began (epoch seconds)
STEP1="env tests doctor bench"; STEP2="handout compiled"; STEP3="data fast"

limit_of() {
  case $1 in
    env) echo "$LIMIT_ENV" ;; tests) echo "$LIMIT_TESTS" ;; doctor) echo "$LIMIT_DOCTOR" ;;
    bench) echo "$LIMIT_BENCH" ;; handout) echo "$LIMIT_HANDOUT" ;; compiled) echo "$LIMIT_COMPILED" ;;
    data) echo "$LIMIT_DATA" ;; fast) echo "$LIMIT_FAST" ;;
  esac
}
sum_limits() { local s=0 x; for x in "$@"; do [ "$x" = compiled ] || s=$((s + $(limit_of "$x"))); done; echo "$s"; }
call_timeout() {  # the `run` call's timeout_s for a step: its limits (the compiled bench's too) plus 30 s
  case $1 in 1) echo $(( $(sum_limits $STEP1) + 30 )) ;; 2) echo $(( $(sum_limits $STEP2) + LIMIT_COMPILED + 30 )) ;;
    3) echo $(( $(sum_limits $STEP3) + 30 )) ;; esac
}
BASE_TOTAL=$(sum_limits $STEP1 $STEP2 $STEP3)
# The compiled bench runs only if the time left covers it, the rest of the plan after step 1 and a rerun of fast.
COMPILED_NEEDS=$((LIMIT_COMPILED + $(sum_limits $STEP2 $STEP3) + LIMIT_FAST))

print_plan() {
  local step stages s total=0 t
  echo "gpu_acceptance plan: three calls of the device tool, back to back on one warm machine (limits in seconds)"
  for step in 1 2 3; do
    case $step in
      1) stages=$STEP1; echo "call 1  carry .devdata/part-0 .devdata/assemble.sh" ;;
      2) stages=$STEP2; echo "call 2  carry .devdata/part-1" ;;
      3) stages=$STEP3; echo "call 3  carry .devdata/part-2  (its command begins: bash .devdata/assemble.sh data &&)" ;;
    esac
    for s in $stages; do
      if [ "$s" = compiled ]; then
        printf '          %-9s %4s  only if the time left >= %s s (it, the rest, a rerun of fast); not in the total\n' \
          "$s" "$(limit_of "$s")" "$COMPILED_NEEDS"
      else
        printf '          %-9s %4s\n' "$s" "$(limit_of "$s")"
      fi
    done
    t=$(sum_limits $stages); total=$((total + t))
    printf '          step %s    %4s\n' "$step" "$t"
  done
  printf 'stages    %4s s\nmachine   %4s s (start of a fresh machine, at most)\n' "$total" "$MACHINE_START"
  t=$((total + MACHINE_START))
  printf 'total     %4s s = %d min %02d s (must stay under %d s = 11 min)\n' "$t" $((t / 60)) $((t % 60)) "$PLAN_CAP"
  printf 'rerun     %4s s (fast, the most important stage) -> %d s of the %d s slot\n' "$LIMIT_FAST" \
    $((t + LIMIT_FAST)) "$SLOT"
  echo "not counted: copying each part (~54 MiB) and the gaps between calls (keep them short: the machine is"
  echo "given back after about 30 s idle)"
  echo "the three calls, back to back (after: bash ../shared/tools/device_data.sh):"
  echo "run(carry=[\".devdata/part-0\", \".devdata/assemble.sh\"], timeout_s=$(call_timeout 1), command=\"bash scripts/gpu_acceptance.sh --step 1\")"
  echo "run(carry=[\".devdata/part-1\"], timeout_s=$(call_timeout 2), command=\"bash scripts/gpu_acceptance.sh --step 2\")"
  echo "run(carry=[\".devdata/part-2\"], timeout_s=$(call_timeout 3), command=\"bash .devdata/assemble.sh data && bash scripts/gpu_acceptance.sh --step 3\")"
  [ "$t" -lt "$PLAN_CAP" ] || { echo "gpu_acceptance: the plan (${t} s) does not fit in ${PLAN_CAP} s" >&2; return 1; }
}

if [ "$PLAN" = 1 ]; then print_plan; exit $?; fi

if [ -n "$STEP" ]; then
  [ -z "$STAGES" ] || { echo "gpu_acceptance: give --step or --stage, not both" >&2; exit 2; }
  for n in ${STEP//,/ }; do
    case $n in 1) STAGES+=" $STEP1" ;; 2) STAGES+=" $STEP2" ;; 3) STAGES+=" $STEP3" ;; all) STAGES+=" $STEP1 $STEP2 $STEP3" ;;
      *) echo "gpu_acceptance: unknown step '$n'; choose 1, 2, 3 or all" >&2; exit 2 ;;
    esac
  done
elif [ -z "$STAGES" ]; then
  if [ "$DRY" = 1 ]; then STAGES="$STEP1 $STEP2 $STEP3"; else
    echo "gpu_acceptance: give --step 1|2|3, --stage LIST, --plan or --dry-run (see --help)" >&2; exit 2; fi
fi
STAGES=${STAGES//,/ }
read -r -a WANT <<<"$STAGES"
for s in "${WANT[@]}"; do
  case $s in env|tests|doctor|bench|handout|compiled|data|fast) ;;
    *) echo "gpu_acceptance: unknown stage '$s'; choose from env, tests, doctor, bench, handout, compiled, data, fast" >&2
       exit 2 ;;
  esac
done
if [ -n "$STEP" ]; then TAG=step-${STEP//,/-}; else TAG=$(echo "${WANT[*]}" | tr ' ' '-'); fi

cd "$(dirname "$0")/.." || exit 2
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DATA=${DATA:-data}
HANDOUT_DATA=(--synthetic --set synthetic_train=50000 --set synthetic_test=10000)  # full size, made-up pixels

if [ "$DRY" = 1 ]; then  # the flow on a CPU in a few minutes: synthetic data, tiny sizes, no compile
  DEVICE=cpu; GPU=cpu-dry-run
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread: a shared CPU slows several threads down many times
  for v in ENV TESTS DOCTOR BENCH HANDOUT COMPILED DATA FAST; do
    d=LIMIT_${v}_DRY; printf -v "LIMIT_$v" '%s' "${!d:-300}"
  done
  HANDOUT_DATA=(--synthetic --set synthetic_train=200 --set synthetic_test=100)
  FAST_DATA=(--synthetic --set synthetic_train=200 --set synthetic_test=100)
  TINY=(--batch-size 50 --set eval_batch_size=100 --set model=tiny_resnet18)
  FAST_ARGS=(--epochs "${DRY_EPOCHS:-2}" "${TINY[@]}"); HANDOUT_ARGS=(--epochs "${DRY_EPOCHS:-2}" "${TINY[@]}")
  BENCH_SIZE=(--batch-size 8 --eval-batch-size 16 --steps 1 --windows 1 --warmup 0 --threads 1)
  BENCH_MODELS=handout_resnet18; TEST_FILTER="not compile"; DOCTOR_ARGS=(--no-selftest)
else
  DEVICE=${DEVICE:-cuda}
  GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9' '-' | sed 's/-$//')
  GPU=${GPU:-$DEVICE}
  FAST_DATA=(--data-root "$DATA" --set download=false)
  FAST_ARGS=(); HANDOUT_ARGS=()
  BENCH_SIZE=(--batch-size 1024 --eval-batch-size 2048 --steps 6 --windows 3 --warmup 3)
  BENCH_MODELS=handout_resnet18,cifar_resnet18; TEST_FILTER="not compile"; DOCTOR_ARGS=()
fi
OUTDIR=${OUTDIR:-docs/results/gpu/$(date -u +%F)-$GPU}
mkdir -p "$OUTDIR" || exit 2
RUNS=$(mktemp -d "${TMPDIR:-/tmp}/cvlab-acceptance.XXXXXX")
PREP_PID=""
cleanup() { [ -z "$PREP_PID" ] || kill "$PREP_PID" 2>/dev/null; rm -rf "$RUNS"; }
trap cleanup EXIT
STAGES_TSV="$OUTDIR/stages-$TAG.tsv"  # one per invocation: three calls, one folder
printf 'stage\texit\tseconds\tlimit\tfinished_utc\n' >"$STAGES_TSV"
FAILED=()

bring_back() {  # the folder into $OUT (the device tool brings back at most 8 files): after every stage
  if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    tar -czf "$OUT/gpu-acceptance-$TAG.tar.gz" -C "$(dirname "$OUTDIR")" "$(basename "$OUTDIR")" 2>/dev/null
    cp "$STAGES_TSV" "$OUT/" 2>/dev/null
  fi
  return 0
}

record() {  # record NAME EXIT SECONDS LIMIT: a row of the stage table; any exit but 0 or "skipped" fails
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$(date -u +%FT%TZ)" >>"$STAGES_TSV"
  case $2 in 0|skipped) ;; *) FAILED+=("$1") ;; esac
  bring_back
}

stage() {  # stage NAME LIMIT COMMAND...: run under `timeout -s INT`, log to NAME.txt, record, never abort
  local name=$1 limit=$2; shift 2
  local start=$SECONDS rc
  echo "=== $name (limit ${limit} s): $*" | tee "$OUTDIR/$name.txt"
  timeout -s INT -k 10 "$limit" "$@" 2>&1 | tee -a "$OUTDIR/$name.txt"
  rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$OUTDIR/$name.txt"
  record "$name" "$rc" "$((SECONDS - start))" "$limit"
}

skip() {  # skip NAME REASON [fail]: say why a stage did not run; with "fail" it counts as failed ("missing")
  echo "=== $1: skipped, $2" | tee "$OUTDIR/$1.txt"
  record "$1" "$([ -n "${3:-}" ] && echo missing || echo skipped)" 0 "$(limit_of "$1")"
}

keep_run() {  # the run directory's small files into OUTDIR/NAME/
  mkdir -p "$OUTDIR/$1" && cp "$RUNS/$1"/{config.json,history.csv,metrics.json} "$OUTDIR/$1/" 2>/dev/null
  bring_back
}

have_data() {
  "$PY" -c "import sys; from cvlab.core.data import locate; sys.exit(locate('$DATA') is None)" 2>/dev/null
}

interrupted_run() {  # a train stage stopped by its limit (exit 130) whose run directory is valid: the expected end
  [ "${#FAILED[@]}" -gt 0 ] && [ "${FAILED[-1]}" = "$1" ] && grep -q '"status": "interrupted"' "$OUTDIR/$1/metrics.json"
}

time_left() {  # the slot's seconds left: --left, else estimated from step 1's start on this machine (0 if unknown)
  if [ "$LEFT" != auto ]; then echo "$LEFT"; return; fi
  local t0; t0=$(cat "$T0_FILE" 2>/dev/null) || { echo 0; return; }
  echo $(( SLOT - MACHINE_START - ($(date +%s) - t0) ))
}

write_env() {
  {
    echo "date_utc $(date -u +%FT%TZ)"
    echo "git $(git rev-parse HEAD 2>/dev/null || echo none) $(git status --porcelain --untracked-files=no 2>/dev/null | wc -l) changed files"
    echo "dry_run $DRY device $DEVICE stages ${WANT[*]} left ${LEFT}"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv 2>&1 || true
    nvidia-smi 2>&1 || echo "no nvidia-smi"
    timeout "$LIMIT_ENV" "$PY" - "$DEVICE" <<'EOF'
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

project_handout() {  # handout/projection.txt: the 100-epoch wall time projected from the epochs done
  [ -f "$OUTDIR/handout/metrics.json" ] || return 0
  "$PY" - "$OUTDIR/handout/metrics.json" "$1" >"$OUTDIR/handout/projection.txt" 2>&1 <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
done, planned = m["epochs_done"], m["epochs_planned"]
print(f"handout preset: {done} of {planned} epochs done ({m['status']}), data: {sys.argv[2]}")
if done:
    epoch = m["total_seconds"] / done
    save = m["save_seconds"] / done
    print(f"start-up {m['startup_seconds']} s (fit called -> first epoch: data, model, CUDA start; the interpreter's "
          f"own start before that is not included), mean epoch {epoch:.2f} s, mean save {save:.2f} s")
    print(f"projected wall time for {planned} epochs = start-up + {planned} x (mean epoch + mean save) = "
          f"{m['projected_wall_seconds']} s ({m['projected_wall_seconds'] / 60:.2f} min)"
          + ("; target < 180 s" if planned == 100 else ""))
EOF
  cat "$OUTDIR/handout/projection.txt"
}

write_env
echo "gpu_acceptance: stages ${WANT[*]} -> $OUTDIR"
for s in "${WANT[@]}"; do
  case $s in
    env)
      record env "$([ -s "$OUTDIR/env.txt" ] && echo 0 || echo 1)" 0 "$LIMIT_ENV"
      [ "$DRY" = 1 ] || date +%s >"$T0_FILE"  # step 2 estimates the slot's time left from it
      # Step 2's full-size synthetic data, made while the tests run (cached in this machine's temp folder).
      if [ "$DRY" = 0 ]; then
        timeout 60 "$PY" -c "from cvlab.core.data import synthetic_root; synthetic_root(50000, 10000, 0)" \
          >/dev/null 2>&1 &
        PREP_PID=$!
      fi ;;
    tests)
      stage tests "$LIMIT_TESTS" "$PY" -m pytest -m gpu -k "$TEST_FILTER" -o addopts= -q -rs -p no:cacheprovider \
        tests/test_gpu.py ;;
    doctor)
      stage doctor "$LIMIT_DOCTOR" "$PY" -m cvlab doctor --device "$DEVICE" --data-root "$DATA" "${DOCTOR_ARGS[@]}" ;;
    bench)
      stage bench "$LIMIT_BENCH" "$PY" -m cvlab bench --device "$DEVICE" --models "$BENCH_MODELS" \
        --paths handout,cvlab "${BENCH_SIZE[@]}" --precision fp32,auto --channels-last yes --json "$OUTDIR/bench_eager.json" ;;
    handout)
      stage handout "$LIMIT_HANDOUT" "$PY" -m cvlab train --preset handout "${HANDOUT_DATA[@]}" "${HANDOUT_ARGS[@]}" \
        --device "$DEVICE" --no-progress --out "$RUNS/handout"
      keep_run handout
      if interrupted_run handout; then unset 'FAILED[-1]'; fi  # stopped by its limit: the epochs done are the result
      project_handout "synthetic, full size (${HANDOUT_DATA[*]}): the timing does not depend on the pixels" ;;
    compiled)
      if [ "$DRY" = 1 ]; then
        skip compiled "no compile in the dry run"
      elif [ "$(time_left)" -lt "$COMPILED_NEEDS" ]; then
        skip compiled "$(time_left) s left of the slot (--left ${LEFT}) < ${COMPILED_NEEDS} s (it, the rest of the plan, a rerun of fast)"
      else
        stage compiled "$LIMIT_COMPILED" "$PY" -m cvlab bench --device "$DEVICE" --models cifar_resnet18 --paths cvlab \
          "${BENCH_SIZE[@]}" --precision auto --channels-last yes --compile yes --json "$OUTDIR/bench_compiled.json"
      fi ;;
    data)
      if [ "$DRY" = 1 ]; then skip data "synthetic data in the dry run"
      elif have_data; then record data 0 0 "$LIMIT_DATA"; echo "=== data: CIFAR-100 in $DATA" | tee "$OUTDIR/data.txt"
      elif [ -f .devdata/assemble.sh ]; then stage data "$LIMIT_DATA" bash .devdata/assemble.sh "$DATA"
      else skip data "no CIFAR-100 in $DATA and no .devdata/assemble.sh" fail
      fi ;;
    fast)
      if [ "$DRY" = 1 ] || have_data; then
        stage fast "$LIMIT_FAST" "$PY" -m cvlab train --preset fast "${FAST_DATA[@]}" "${FAST_ARGS[@]}" \
          --device "$DEVICE" --no-progress --out "$RUNS/fast"
        keep_run fast
      else
        skip fast "no CIFAR-100 in $DATA (assemble it first: bash .devdata/assemble.sh data)" fail
      fi ;;
  esac
done
if [ -n "$PREP_PID" ]; then wait "$PREP_PID" 2>/dev/null; PREP_PID=""; fi

bring_back
echo "gpu_acceptance: wrote $OUTDIR"; cat "$STAGES_TSV"
if [ "${#FAILED[@]}" -gt 0 ]; then echo "gpu_acceptance: FAILED: ${FAILED[*]}"; exit 1; fi
echo "gpu_acceptance: all stages passed"
