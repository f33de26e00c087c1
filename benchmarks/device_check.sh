#!/usr/bin/env bash
# The GPU check of the fast adapter kernels in one command, ordered by value, each step bounded by its own time limit.
#
#   bash benchmarks/device_check.sh [--budget SECONDS] [--only "STEP ..."] [--results DIR] [--dry-run]
#
# Setup: installs the wheels staged by benchmarks/stage_wheels.sh (.whl/, and .whl-dali/ if staged; both
# git-ignored; $WHEEL_DIRS overrides) into .whl-site/ without touching the Python environment. Then the steps, each a script in
# benchmarks/device/ run under `timeout`:
#   probe       device, versions, clocks; copy bandwidth and bf16 matmul rate (the measured roofline)
#   parity      bf16 and fp32 parity of every Triton op with the reference at ViCLIP-B/16 shapes
#   layer       one MSTA video and text layer, fwd and fwd+bwd, dims 256/128: eager, torch.compile, Triton
#   e2e         ViCLIP-B/16 + MSTA training step (batch 32, 8 frames, bf16) per backend vs the frozen backbone
#   token_conv  M2-CLIP's token convolution: eager, torch.compile, Triton
#   extension   the C++/CUDA extension: build (nvcc is slow: last), parity, timings
#   decoding    DALI on NVDEC against decord2 with 16 workers (only if DALI was staged)
# A step that fails or runs out of time is recorded and the next one runs. Each step's rows are saved as they
# come (JSON lines) to the results folder (default benchmarks/results/device-check-<UTC time>/) and, when $OUT is
# set, to $OUT/device-check/; at the end summary.md holds one table of every step and every number.
#
#   --budget SECONDS  skip a step whose usual time no longer fits (and cut its limit to what is left)
#   --only "STEPS"    run these steps only (a rerun of what failed)
#   --dry-run         every step's code at tiny shapes on the CPU (Triton's interpreter, the C++ CPU op), into
#                     a temporary folder: proves the script without a GPU (tests/test_device_check.py runs it)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

# name, time limit and usual time (seconds, on one H100/H200; --budget reserves the usual time)
STEPS=(
  "probe 60 20"
  "parity 180 90"
  "layer 240 150"
  "e2e 180 90"
  "token_conv 120 45"
  "extension 300 200"
  "decoding 150 75"
)
SUMMARY_RESERVE=15

BUDGET=0
DRY=0
ONLY=""
RESULTS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --budget) BUDGET="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    --results) RESULTS="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "device_check.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

START=$(date +%s)
STAMP="$(date -u +%Y%m%d-%H%M%S)"
if [ -z "$RESULTS" ]; then
  if [ "$DRY" = 1 ]; then RESULTS="$(mktemp -d "${TMPDIR:-/tmp}/msta-device-check-dry-run.XXXXXX")"
  else RESULTS="benchmarks/results/device-check-$STAMP"; fi
fi
mkdir -p "$RESULTS"
: > "$RESULTS/steps.tsv"
FLAGS=()
if [ "$DRY" = 1 ]; then
  touch "$RESULTS/DRY_RUN"
  FLAGS=(--dry-run)
  # CPU only, even on a GPU machine; Triton in its interpreter; the CPU build of the extension; and no step may
  # need open_clip (the GPU machine lacks it): the steps see a stub that raises when used.
  export CUDA_VISIBLE_DEVICES="" TRITON_INTERPRET=1 MSTA_FAST_EXT_CUDA=0 MSTA_DEVICE_CHECK_NO_OPEN_CLIP=1
else
  unset TRITON_INTERPRET
fi

mirror() {  # results so far to $OUT (a step's rows are already there; this adds logs and the step table)
  if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT/device-check" && cp -r "$RESULTS"/. "$OUT/device-check/" 2>/dev/null
  fi
}

record() {  # name status seconds limit note
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$(echo "$5" | tr '\t\n' '  ' | cut -c1-300)" >> "$RESULTS/steps.tsv"
  echo "== $1: $2 (${3}s of ${4}s) $5"
  mirror
}

setup() {  # staged wheels -> .whl-site/ (on sys.path through PYTHONPATH)
  local t0=$(date +%s) wheels=() parts=() tmp dir
  shopt -s nullglob
  for dir in ${WHEEL_DIRS:-.whl .whl-dali}; do
    wheels+=("$dir"/*.whl)
    parts+=("$dir"/*.whl.part-*)
  done
  shopt -u nullglob
  if [ ${#parts[@]} -gt 0 ]; then  # a large wheel (DALI) staged in parts: put it back together
    tmp="$(mktemp -d)"
    for whl in $(printf '%s\n' "${parts[@]}" | sed 's/\.part-[a-z]*$//' | sort -u); do
      cat "$whl".part-* > "$tmp/$(basename "$whl")" && wheels+=("$tmp/$(basename "$whl")")
    done
  fi
  if [ ${#wheels[@]} -eq 0 ]; then
    record setup ok 0 0 "no staged wheels (benchmarks/stage_wheels.sh); open_clip absent means a stub"
    return
  fi
  local names
  names="$(printf '%s\n' "${wheels[@]}" | xargs -n1 basename | cut -d- -f1 | paste -sd' ')"
  if [ "$DRY" = 1 ]; then  # the staged wheels are for the GPU machine's Python: check they are readable wheels
    "$PYTHON" -c 'import sys, zipfile; [zipfile.ZipFile(w).testzip() for w in sys.argv[1:]]' "${wheels[@]}" \
      && record setup ok $(( $(date +%s) - t0 )) 0 "dry run: staged wheels readable ($names)" \
      || record setup failed $(( $(date +%s) - t0 )) 0 "a staged wheel is not a readable zip"
    return
  fi
  if "$PYTHON" -m pip install --quiet --no-index --no-deps --upgrade --target .whl-site "${wheels[@]}" \
      > "$RESULTS/setup.log" 2>&1; then
    record setup ok $(( $(date +%s) - t0 )) 0 "installed $names"
  else
    record setup failed $(( $(date +%s) - t0 )) 0 "pip install of staged wheels failed: $(tail -n 1 "$RESULTS/setup.log")"
  fi
  export PYTHONPATH="$PWD/.whl-site${PYTHONPATH:+:$PYTHONPATH}"
}

run_step() {  # name limit usual
  local name=$1 limit=$2 usual=$3 now left t0 rc status note
  if [ -n "$ONLY" ] && ! [[ " $ONLY " == *" $name "* ]]; then
    record "$name" skipped 0 "$limit" "not selected (--only)"
    return
  fi
  now=$(date +%s)
  if [ "$BUDGET" -gt 0 ]; then
    left=$(( BUDGET - (now - START) - SUMMARY_RESERVE ))
    if [ "$left" -lt "$usual" ]; then
      record "$name" skipped 0 "$limit" "would not fit: usually ${usual}s, ${left}s of the budget left"
      return
    fi
    [ "$left" -lt "$limit" ] && limit=$left
  fi
  [ "$DRY" = 1 ] && limit=$(( limit > 300 ? limit : 300 ))  # the interpreter and CPU builds are slower
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$PYTHON" "benchmarks/device/$name.py" --results "$RESULTS" "${FLAGS[@]}" \
    2>&1 | tee "$RESULTS/$name.log"
  rc=${PIPESTATUS[0]}
  case $rc in
    0) status=ok; note="" ;;
    3) status=skipped; note="does not apply here" ;;
    124|137) status=timeout; note="killed after ${limit}s" ;;
    *) status=failed; note="exit $rc: $(grep -v '^\s*$' "$RESULTS/$name.log" | tail -n 1)" ;;
  esac
  record "$name" "$status" $(( $(date +%s) - t0 )) "$limit" "$note"
}

setup
for entry in "${STEPS[@]}"; do
  # shellcheck disable=SC2086
  run_step $entry
done
timeout 60 "$PYTHON" benchmarks/device/summary.py --results "$RESULTS" > /dev/null
mirror
echo "summary: $RESULTS/summary.md"
sed -n '1,/^## /p' "$RESULTS/summary.md" | sed '$d'
# exit status 1 if a step failed or ran out of time (the summary says which)
awk -F'\t' '$2 == "failed" || $2 == "timeout" { bad = 1 } END { exit bad }' "$RESULTS/steps.tsv"
