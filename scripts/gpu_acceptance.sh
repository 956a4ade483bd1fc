#!/usr/bin/env bash
# GPU acceptance run (issues 11, 17 and 26): three calls of the device tool, back to back on one warm machine,
# each carrying one part of the real CIFAR-100; planned for a 15-minute device slot.
#
#   bash scripts/gpu_acceptance.sh --plan               # the calls, their stages, limits, device time; runs nothing
#   bash scripts/gpu_acceptance.sh --step 1             # call 1 (carries .devdata/part-0, .devdata/assemble.sh)
#   bash scripts/gpu_acceptance.sh --step 2             # call 2 (carries .devdata/part-1)
#   bash scripts/gpu_acceptance.sh --step 3             # call 3 (carries .devdata/part-2; assembles the data)
#   bash scripts/gpu_acceptance.sh --dry-run            # the three calls on a CPU (tiny sizes, synthetic data),
#                                                       # and the call checks on a lost part
#   bash scripts/gpu_acceptance.sh --stage tests,doctor # single stages, in the order given (no call check)
#
# Calls and stages (limits in seconds; the environment variable named overrides each):
#   1  env       LIMIT_ENV=10      env.txt: GPU, driver, versions, capabilities, TF32 flags, git commit; an older
#                                  torch/torchvision than pyproject.toml's floor ends the call at once (one line)
#      tests     LIMIT_TESTS=40    `pytest -m gpu -k "not compile"` (tests/test_gpu.py without its compile test)
#      doctor    LIMIT_DOCTOR=25   `cvlab doctor` (its report, then its self-test on the GPU)
#      bench     LIMIT_BENCH=60    eager `cvlab bench`: handout loop vs cvlab path (fp32 and auto precision, NHWC),
#                                  both models; each round of windows written to bench_eager.json when measured
#   2  handout   LIMIT_HANDOUT=40  the `handout` preset on full-size synthetic data (50,000 / 10,000 images;
#                                  its timing does not depend on the pixels) until its limit stops it (Ctrl-C:
#                                  a valid run, "interrupted"); handout/projection.txt projects its 100 epochs
#   3  data      LIMIT_DATA=10     joins .devdata's parts into data/ (sha256 checked), or finds the data there
#      fast      LIMIT_FAST=240    the `fast` preset for its 30 epochs on the full real CIFAR-100
#   -  compiled  LIMIT_COMPILED=120  compiled bench of cifar_resnet18 (the 50,000 img/s target): in no call, as it
#                                  cannot fit a slot beside them; `--stage compiled` in a session of its own
# Each call first checks that the files the calls before it carried are still there (.devdata, or DEVDATA);
# if not, it says in one line which call to repeat and exits 3. Every stage runs under `timeout -s INT -k 5`:
# stopped by its limit, it still writes what it measured (pytest's summary, the bench rows so far, a run
# directory that says "interrupted"); 5 s later it is killed. Stdout is the stage table alone (logs: files).
#
# Writes to --out DIR (default docs/results/gpu/<date>-<gpu>/), meant to be committed: env.txt,
# stages-<step>.tsv (stage, exit code, seconds, limit), <stage>.txt logs, bench_*.json, and fast/ and handout/
# (config.json, history.csv, metrics.json; checkpoints stay in a temporary folder). When $OUT is set (the
# device tool), the folder goes there as gpu-acceptance-<step>.tar.gz, refreshed after every stage.
# --dry-run: one CPU thread, limits LIMIT_*_DRY (300 each), DRY_EPOCHS=2, tiny model, synthetic data, doctor
# without its self-test, no compile, placeholder parts in a temporary DEVDATA: it checks this script, its
# figures mean nothing. Data on the lent machine: `bash ../shared/tools/device_data.sh` here writes
# .devdata/part-0..2 + assemble.sh (docs/performance.md gives the three `run` calls).
set -uo pipefail

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

STAGES=""; STEP=""; DRY=0; OUTDIR=""; PLAN=0
while [ $# -gt 0 ]; do
  case $1 in
    --stage) STAGES=${2:-}; shift 2 ;;
    --stage=*) STAGES=${1#--stage=}; shift ;;
    --step) STEP=${2:-}; shift 2 ;;
    --step=*) STEP=${1#--step=}; shift ;;
    --plan) PLAN=1; shift ;;
    --dry-run) DRY=1; shift ;;
    --out) OUTDIR=${2:-}; shift 2 ;;
    --out=*) OUTDIR=${1#--out=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_acceptance: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

LIMIT_ENV=${LIMIT_ENV:-10}; LIMIT_TESTS=${LIMIT_TESTS:-40}; LIMIT_DOCTOR=${LIMIT_DOCTOR:-25}
LIMIT_BENCH=${LIMIT_BENCH:-60}; LIMIT_HANDOUT=${LIMIT_HANDOUT:-40}; LIMIT_COMPILED=${LIMIT_COMPILED:-120}
LIMIT_DATA=${LIMIT_DATA:-10}; LIMIT_FAST=${LIMIT_FAST:-240}
GRACE=5          # `timeout -k`: after its limit's SIGINT a stage has this long to write what it measured
CALL_MARGIN=10   # per call, outside the stages: the call check, the env header, the data look-up, the archive
GAP=15           # per call, assumed (not measured): copying its part (~54 MiB) and the wait before it goes out
SLOT=${SLOT:-900}                     # the device time of a slot, all calls together
STARTS="60 240"                       # a fresh machine's start, quick and slow (device README: minutes)
STEP1="env tests doctor bench"; STEP2="handout"; STEP3="data fast"
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"

limit_of() {
  case $1 in
    env) echo "$LIMIT_ENV" ;; tests) echo "$LIMIT_TESTS" ;; doctor) echo "$LIMIT_DOCTOR" ;;
    bench) echo "$LIMIT_BENCH" ;; handout) echo "$LIMIT_HANDOUT" ;; compiled) echo "$LIMIT_COMPILED" ;;
    data) echo "$LIMIT_DATA" ;; fast) echo "$LIMIT_FAST" ;;
  esac
}
stages_of() { case $1 in 1) echo "$STEP1" ;; 2) echo "$STEP2" ;; 3) echo "$STEP3" ;; esac; }
call_timeout() {  # the `run` call's timeout_s: each stage's limit and its kill grace, plus the call's margin
  local s t=$CALL_MARGIN
  for s in $(stages_of "$1"); do t=$((t + $(limit_of "$s") + GRACE)); done
  echo "$t"
}
device_time() {  # device_time START RERUNS: the machine's start, the three calls (and RERUNS of call 3), gaps
  local t=$1 n
  for n in 1 2 3; do t=$((t + $(call_timeout $n) + GAP)); done
  echo $((t + $2 * ($(call_timeout 3) + GAP)))
}
minutes() { printf '%d min %02d s' $(($1 / 60)) $(($1 % 60)); }
fits() { if [ "$1" -le "$SLOT" ]; then echo "fits"; else echo "does not fit"; fi; }

print_plan() {
  local step s start t0 t1 ok=0
  echo "gpu_acceptance plan: three calls of the device tool, back to back on one warm machine (seconds)"
  for step in 1 2 3; do
    case $step in
      1) echo "call 1  carry .devdata/part-0 .devdata/assemble.sh" ;;
      2) echo "call 2  carry .devdata/part-1" ;;
      3) echo "call 3  carry .devdata/part-2  (the data stage joins the three parts)" ;;
    esac
    for s in $(stages_of $step); do
      printf '          %-9s %4s + %s' "$s" "$(limit_of "$s")" "$GRACE"
      [ "$s" != bench ] || printf '   (~35-45 s of work: ~86k images through the handout loop, 4 trainer builds; + a third)'
      echo
    done
    printf '          %-9s %4s       (the call check, env header, data look-up, archive)\n' "(call)" "$CALL_MARGIN"
    printf '          timeout_s %4s\n' "$(call_timeout $step)"
  done
  echo "each stage: its limit + ${GRACE} s of \`timeout -k ${GRACE}\` (SIGINT at the limit, SIGKILL ${GRACE} s later)"
  echo "device time, every stage to its limit: the machine's start + each call's timeout_s + ${GAP} s before each"
  echo "call (copying its part, the gap: assumed, not measured); give_back right after the last call"
  for start in $STARTS; do
    t0=$(device_time "$start" 0); t1=$(device_time "$start" 1)
    printf 'start %3s s: %4s s (%s) without a rerun (%s), %4s s (%s) with one rerun of call 3 (%s) of the %s s slot\n' \
      "$start" "$t0" "$(minutes "$t0")" "$(fits "$t0")" "$t1" "$(minutes "$t1")" "$(fits "$t1")" "$SLOT"
  done
  t1=$(device_time 0 1)
  echo "a rerun of call 3 fits when the machine's start took at most $((SLOT - t1)) s ($SLOT - $t1): ask status's held_s"
  echo "not in any call: compiled (limit $LIMIT_COMPILED s, compile included): \`--stage compiled\` in a session of its own"
  echo "the three calls, back to back: each answers with its stage table alone, so send the next at once"
  echo "(after, here, once: bash ../shared/tools/device_data.sh):"
  echo "run(carry=[\".devdata/part-0\", \".devdata/assemble.sh\"], timeout_s=$(call_timeout 1), command=\"bash scripts/gpu_acceptance.sh --step 1\")"
  echo "run(carry=[\".devdata/part-1\"], timeout_s=$(call_timeout 2), command=\"bash scripts/gpu_acceptance.sh --step 2\")"
  echo "run(carry=[\".devdata/part-2\"], timeout_s=$(call_timeout 3), command=\"bash scripts/gpu_acceptance.sh --step 3\")"
  # Fits: all three calls after the slowest start; a rerun of call 3 after the quickest.
  set -- $STARTS
  t0=$(device_time "${!#}" 0); t1=$(device_time "$1" 1)
  [ "$t0" -le "$SLOT" ] || { echo "gpu_acceptance: the plan (${t0} s with a ${!#} s start) does not fit in ${SLOT} s" >&2; ok=1; }
  [ "$t1" -le "$SLOT" ] || { echo "gpu_acceptance: a rerun of call 3 (${t1} s with a $1 s start) does not fit in ${SLOT} s" >&2; ok=1; }
  return $ok
}

if [ "$PLAN" = 1 ]; then print_plan; exit $?; fi

DEVDATA=${DEVDATA:-.devdata}
carried_by() { case $1 in part-0|assemble.sh) echo 1 ;; part-1) echo 2 ;; part-2) echo 3 ;; esac; }
check_call() {  # check_call N: the files that calls 1..N carry are here; else one line naming the call to repeat
  local n=$1 f k
  for f in part-0 assemble.sh part-1 part-2; do
    k=$(carried_by $f)
    [ "$k" -le "$n" ] && [ ! -f "$DEVDATA/$f" ] || continue
    if [ "$k" = "$n" ]; then
      echo "gpu_acceptance: call $n did not bring $DEVDATA/$f: repeat call $n with it in carry (see --plan)" >&2
    else
      echo "gpu_acceptance: call $n finds no $DEVDATA/$f (call $k carries it: it did not run on this machine, or the machine was replaced since): repeat call $k, then the calls after it" >&2
    fi
    return 3
  done
}

dry_run_calls() {  # --dry-run: the three calls as the device tool would see them, and two lost parts
  local dev rc=0 n
  dev=$(mktemp -d "${TMPDIR:-/tmp}/cvlab-devdata.XXXXXX")
  call() { DEVDATA=$dev bash "$SELF" --dry-run --step "$1" ${OUTDIR:+--out "$OUTDIR"}; }
  expect_check() {  # expect_check N WORDS: call N stops at once, one line that says WORDS
    local out code
    out=$(call "$1" 2>&1); code=$?
    if [ "$code" = 3 ] && [ "$(printf '%s\n' "$out" | wc -l)" = 1 ] && [[ $out == *"$2"* ]]; then
      echo "call-check $1: ok, exit 3: $out"
    else
      echo "call-check $1: FAILED (exit $code, expected 3 and one line with '$2'): $out"; rc=1
    fi
  }
  echo "dry run: call 2 on a fresh machine (call 1's files are not there)"
  : >"$dev/part-1"; expect_check 2 "repeat call 1"
  rm -f "$dev/part-1"; : >"$dev/part-0"; printf '#!/usr/bin/env bash\n' >"$dev/assemble.sh"
  for n in 1 2 3; do
    [ "$n" = 1 ] || : >"$dev/part-$((n - 1))"
    if [ "$n" = 3 ]; then
      echo "dry run: call 3 on a machine that lost part-1"
      mv "$dev/part-1" "$dev/lost"; expect_check 3 "repeat call 2"; mv "$dev/lost" "$dev/part-1"
    fi
    echo "dry run: call $n"
    call "$n" || rc=1
  done
  rm -rf "$dev"
  if [ "$rc" = 0 ]; then echo "gpu_acceptance: dry run passed (three calls, two call checks)"
  else echo "gpu_acceptance: dry run FAILED"; fi
  return $rc
}

LAST_STEP=""
if [ -n "$STEP" ]; then
  [ -z "$STAGES" ] || { echo "gpu_acceptance: give --step or --stage, not both" >&2; exit 2; }
  for n in ${STEP//,/ }; do
    case $n in 1|2|3) STAGES+=" $(stages_of "$n")"; LAST_STEP=$n ;; all) STAGES+=" $STEP1 $STEP2 $STEP3"; LAST_STEP=3 ;;
      *) echo "gpu_acceptance: unknown step '$n'; choose 1, 2, 3 or all" >&2; exit 2 ;;
    esac
  done
elif [ -z "$STAGES" ]; then
  if [ "$DRY" = 1 ]; then cd "$(dirname "$SELF")/.." || exit 2; dry_run_calls; exit $?; fi
  echo "gpu_acceptance: give --step 1|2|3, --stage LIST, --plan or --dry-run (see --help)" >&2; exit 2
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

cd "$(dirname "$SELF")/.." || exit 2
[ -z "$LAST_STEP" ] || check_call "$LAST_STEP" || exit 3
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
TABLE_HEAD=0

bring_back() {  # the folder into $OUT (the device tool brings back at most 8 files): after every stage
  if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
    tar -czf "$OUT/gpu-acceptance-$TAG.tar.gz" -C "$(dirname "$OUTDIR")" "$(basename "$OUTDIR")" 2>/dev/null
    cp "$STAGES_TSV" "$OUT/" 2>/dev/null
  fi
  return 0
}

record() {  # record NAME EXIT SECONDS LIMIT: a row of the stage table (file and stdout); any exit but 0 or "skipped" fails
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$(date -u +%FT%TZ)" >>"$STAGES_TSV"
  [ "$TABLE_HEAD" = 1 ] || { printf '%-9s %7s %7s %5s   (%s: %s)\n' stage exit seconds limit "$TAG" "$OUTDIR"; TABLE_HEAD=1; }
  printf '%-9s %7s %7s %5s\n' "$1" "$2" "$3" "$4"
  case $2 in 0|skipped) ;; *) FAILED+=("$1") ;; esac
  bring_back
}

stage() {  # stage NAME LIMIT COMMAND...: run under `timeout -s INT -k GRACE`, log to NAME.txt, record, never abort
  local name=$1 limit=$2; shift 2
  local start=$SECONDS rc
  echo "=== $name (limit ${limit} s, then ${GRACE} s to stop): $*" >"$OUTDIR/$name.txt"
  timeout -s INT -k "$GRACE" "$limit" "$@" >>"$OUTDIR/$name.txt" 2>&1
  rc=$?
  echo "=== $name: exit $rc after $((SECONDS - start)) s" >>"$OUTDIR/$name.txt"
  record "$name" "$rc" "$((SECONDS - start))" "$limit"
}

skip() {  # skip NAME REASON [fail]: say why a stage did not run; with "fail" it counts as failed ("missing")
  echo "=== $1: skipped, $2" >"$OUTDIR/$1.txt"
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

env_header() {  # the first lines of env.txt, every call
  echo "date_utc $(date -u +%FT%TZ)"
  echo "git $(git rev-parse HEAD 2>/dev/null || echo none) $(git status --porcelain --untracked-files=no 2>/dev/null | wc -l) changed files"
  echo "dry_run $DRY device $DEVICE stages ${WANT[*]}"
}

write_env() {  # env.txt; returns 3 (and writes $RUNS/floor.txt) when torch or torchvision is older than the floor
  local rc
  {
    env_header
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv 2>&1 || true
    nvidia-smi 2>&1 || echo "no nvidia-smi"
    timeout -k "$GRACE" "$LIMIT_ENV" "$PY" - "$DEVICE" "$RUNS/floor.txt" <<'EOF'
import platform, re, sys
from pathlib import Path

def release(version):  # "2.1.2+cu121" -> (2, 1, 2)
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])

# The floors first, before anything imports cvlab: an older torch on the image ends the call in one line.
requirements = Path("pyproject.toml").read_text(encoding="utf-8")
for name in ("torch", "torchvision"):
    floor = re.search(rf'"{name}\s*>=\s*([0-9.]+)', requirements).group(1)
    module = __import__(name)
    if release(module.__version__) < release(floor):
        Path(sys.argv[2]).write_text(
            f"gpu_acceptance: {name} {module.__version__} on this machine is older than the floor {name}>={floor} "
            f"(pyproject.toml): use a device image with {name} >= {floor}\n")
        sys.exit(3)
import torch, torchvision
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
    rc=$?
    echo "cpu $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2-)"
    return $rc
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
}

data_root() { case $DATA in /*) echo "$DATA" ;; *) echo "$PWD/$DATA" ;; esac; }

case " ${WANT[*]} " in *" env "*) ;; *) env_header >"$OUTDIR/env.txt" ;; esac
for s in "${WANT[@]}"; do
  case $s in
    env)
      start=$SECONDS; write_env; rc=$?
      if [ -s "$RUNS/floor.txt" ]; then  # an older torch: nothing else can be trusted, end the call at once
        printf 'env\t%s\t%s\t%s\t%s\n' "$rc" "$((SECONDS - start))" "$LIMIT_ENV" "$(date -u +%FT%TZ)" >>"$STAGES_TSV"
        bring_back; cat "$RUNS/floor.txt" >&2; exit 2
      fi
      record env "$rc" "$((SECONDS - start))" "$LIMIT_ENV"
      # Call 2's full-size synthetic data, made while the tests run (cached in this machine's temp folder).
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
      else
        stage compiled "$LIMIT_COMPILED" "$PY" -m cvlab bench --device "$DEVICE" --models cifar_resnet18 --paths cvlab \
          "${BENCH_SIZE[@]}" --precision auto --channels-last yes --compile yes --json "$OUTDIR/bench_compiled.json"
      fi ;;
    data)
      if [ "$DRY" = 1 ]; then skip data "synthetic data in the dry run"
      elif have_data; then record data 0 0 "$LIMIT_DATA"; echo "=== data: CIFAR-100 in $DATA" >"$OUTDIR/data.txt"
      elif [ -f "$DEVDATA/assemble.sh" ]; then stage data "$LIMIT_DATA" bash "$DEVDATA/assemble.sh" "$(data_root)"
      else skip data "no CIFAR-100 in $DATA and no $DEVDATA/assemble.sh" fail
      fi ;;
    fast)
      if [ "$DRY" = 1 ] || have_data; then
        stage fast "$LIMIT_FAST" "$PY" -m cvlab train --preset fast "${FAST_DATA[@]}" "${FAST_ARGS[@]}" \
          --device "$DEVICE" --no-progress --out "$RUNS/fast"
        keep_run fast
      else
        skip fast "no CIFAR-100 in $DATA (the data stage assembles it from $DEVDATA)" fail
      fi ;;
  esac
done
if [ -n "$PREP_PID" ]; then wait "$PREP_PID" 2>/dev/null; PREP_PID=""; fi

bring_back
if [ "${#FAILED[@]}" -gt 0 ]; then echo "gpu_acceptance: $TAG FAILED: ${FAILED[*]}"; exit 1; fi
case $LAST_STEP in
  1|2) echo "gpu_acceptance: $TAG passed; send call $((LAST_STEP + 1)) now" ;;
  *) echo "gpu_acceptance: $TAG passed" ;;
esac
