#!/usr/bin/env bash
# The GPU proof of issue 11 as one command: environment, CUDA test suite, student-step benchmark,
# avdigits grid. Each stage has its own time budget (timeout) and writes its own small file under
# OUTDIR; a stage that fails or runs out of time is recorded and the next one runs. On a GPU the
# whole script ends inside TOTAL_S (440 s) plus a few seconds, well inside the device tool's 8 minutes.
#
#   bash benchmarks/gpu_check.sh [--data DIR] [--work DIR] OUTDIR             # on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run [--data DIR] [--work DIR] OUTDIR   # the same stages on the CPU, toy size
#   bash benchmarks/gpu_check.sh --stage NAME [--dry-run] [--work DIR] OUTDIR # one stage alone, no time limit
#
# --data: raw avdigits inputs, folders fsdd/ mnist/ noise/ (default .gpu_data, filled by gpu_carry.sh);
# --work: scratch for the prepared data and the runs (default: a new folder under /tmp).
# OUTDIR (empty) gets at most 8 files, no subfolders (what the device tool brings back):
#   summary.txt  env.txt  cuda_tests.txt  cuda_tests.xml  cuda_report.json
#   student_step.txt  student_step.json  avdigits.txt
# Stages, in order: environment cuda_tests profile student_step augment_cost prepare grid grid_report.
# docs/results/gpu.md says what each does and how to fire the whole check.
set -uo pipefail

usage() { echo "usage: bash benchmarks/gpu_check.sh [--dry-run] [--data DIR] [--work DIR] OUTDIR" >&2; exit 2; }
fail() { echo "gpu_check: error: $*" >&2; exit 2; }

SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DRY=0
DATA="$ROOT/.gpu_data"
WORK=""
OUTDIR=""
STAGE=""  # internal: the script runs each stage as a child of itself, so that timeout can bound it
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    --data) [ $# -ge 2 ] || usage; DATA=$2; shift 2 ;;
    --work) [ $# -ge 2 ] || usage; WORK=$2; shift 2 ;;
    --stage) [ $# -ge 2 ] || usage; STAGE=$2; shift 2 ;;
    -*) usage ;;
    *) [ -z "$OUTDIR" ] || usage; OUTDIR=$1; shift ;;
  esac
done
[ -n "$OUTDIR" ] || usage
if [ -z "$STAGE" ]; then
  for folder in fsdd mnist noise; do
    [ -d "$DATA/$folder" ] || fail "$DATA/$folder: raw avdigits folder not found (run benchmarks/gpu_carry.sh, or pass --data DIR)"
  done
  if [ -e "$OUTDIR" ] && [ -n "$(ls -A "$OUTDIR" 2>/dev/null)" ]; then
    fail "$OUTDIR: output folder is not empty (results already there are never replaced)"
  fi
  if [ -n "$WORK" ] && [ -e "$WORK" ] && [ -n "$(ls -A "$WORK" 2>/dev/null)" ]; then
    fail "$WORK: work folder is not empty"
  fi
  mkdir -p "$OUTDIR" || fail "$OUTDIR: cannot create the output folder"
fi
if [ -z "$WORK" ]; then WORK=$(mktemp -d /tmp/g2d_gpu_check.XXXXXX); else mkdir -p "$WORK"; fi
OUTDIR=$(cd "$OUTDIR" && pwd)
DATA=$(cd "$DATA" && pwd)
WORK=$(cd "$WORK" && pwd)

cd "$ROOT"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] && PYTHON=$ROOT/.venv/bin/python
# The package is used from the checkout: the GPU machine has no network to install it.
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export G2D_GPU_CHECK_OUT="$OUTDIR"

# The avdigits schedule on the GPU: ResNet-18 at full width (64), batch 16 and SGD momentum 0.9 as
# the paper; 6 epochs instead of 300, so SMP's window is the first 3 (the paper's 150 of 300) and
# the learning rate is 1e-2 (the paper's 1e-3 is for 300 epochs), x0.1 after epoch 4 (200 of 300).
# trainer.fast=true: the check measures the fast path, which auto does not pick until it passed here.
EPOCHS=6
GRID_OVERRIDES=(trainer.epochs=$EPOCHS "smp.tau=[$((EPOCHS / 2))]" optim.lr=1.0e-2 optim.lr_step=$((EPOCHS * 2 / 3))
                model.encoder.width=64 trainer.batch_size=16 trainer.progress=false trainer.fast=true)
PREPARE_CAPS=()
STUDENT_ARGS=(--warmup 6 --steps 30)
PROFILE_ARGS=(--profile-only)
AUGMENT_ARGS=(--device cuda --rounds 7 --batches 5)
# Budgets (seconds) per stage; the whole run stops starting stages at TOTAL_S.
TOTAL_S=440
B_ENV=20; B_TESTS=120; B_PROFILE=40; B_STEP=120; B_AUGMENT=20; B_PREPARE=45; B_GRID=300
if [ "$DRY" = 1 ]; then
  export CUDA_VISIBLE_DEVICES=""
  EPOCHS=2
  GRID_OVERRIDES=(trainer.epochs=$EPOCHS "smp.tau=[1]" optim.lr=1.0e-2 optim.lr_step=2 model.encoder.width=4
                  trainer.batch_size=16 trainer.eval_batch_size=64 trainer.progress=false trainer.fast=true)
  PREPARE_CAPS=(--max-train 160 --max-test 60 --test-images 60)
  STUDENT_ARGS=(--width 4 --batch-sizes 2 --warmup 1 --steps 1)
  PROFILE_ARGS=(--profile-only --width 4 --batch-sizes 2)
  AUGMENT_ARGS=(--size 32 --rounds 2 --batches 1)
  # Generous: the CPU run proves the stages work, and a shared 2-core machine can be slow.
  TOTAL_S=3600
  B_ENV=300; B_TESTS=600; B_PROFILE=600; B_STEP=900; B_AUGMENT=300; B_PREPARE=300; B_GRID=1500
fi
# The paper's Table 4 rows that issue 11 asks for; the first run that needs teachers (G²D) trains them.
VARIANTS=("Joint-Train" "G²D" "Joint-Train + SMP" "G²D loss (no SMP)")

environment() {
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(uname -srm); cores: $(nproc); memory: $(free -g 2>/dev/null | awk '/Mem:/ {print $2 " GiB"}')"
  echo "checkout: $(cat "$DATA/commit.txt" 2>/dev/null || git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "python: $PYTHON"
  "$PYTHON" - <<'EOF'
import importlib.metadata as metadata
import platform

import torch

print(f"python {platform.python_version()}; torch {torch.__version__}; CUDA {torch.version.cuda}; "
      f"cuDNN {torch.backends.cudnn.version()}")
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    print(f"device: {props.name}; capability {props.major}.{props.minor}; {props.total_memory / 2**30:.1f} GiB; "
          f"{props.multi_processor_count} SMs; bf16 {torch.cuda.is_bf16_supported()}")
else:
    print("device: no CUDA device")
for name in ("numpy", "omegaconf", "soundfile", "safetensors", "tensorboard", "tqdm", "pytest"):
    try:
        print(f"{name} {metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(f"{name} MISSING")
EOF
  if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi: not found"; fi
}

cuda_tests() {
  "$PYTHON" -m pytest -m cuda -v --tb=short -rfEs --durations=15 -p no:cacheprovider --junitxml="$OUTDIR/cuda_tests.xml" tests
}

profile() {
  "$PYTHON" benchmarks/student_step.py "${PROFILE_ARGS[@]}"
}

student_step() {
  "$PYTHON" benchmarks/student_step.py "${STUDENT_ARGS[@]}" --json "$OUTDIR/student_step.json"
}

# dataset.augment's and dataset.normalize's cost per batch at CREMA-D's shape (issue 23), on the device.
augment_cost() {
  echo "== augmentation cost (benchmarks/augment_cost.py ${AUGMENT_ARGS[*]})"
  "$PYTHON" benchmarks/augment_cost.py "${AUGMENT_ARGS[@]}"
}

prepare() {
  echo "== g2d prepare avdigits (raw files from $DATA)"
  "$PYTHON" -m g2d.cli prepare avdigits --fsdd "$DATA/fsdd" --mnist "$DATA/mnist" --noise "$DATA/noise" \
    --out "$WORK/avdigits" "${PREPARE_CAPS[@]}"
}

grid() {
  echo "== avdigits grid: ${GRID_OVERRIDES[*]}"
  "$PYTHON" benchmarks/grid.py configs/avdigits.yaml --seeds 0 --out "$WORK/grid" \
    dataset.root="$WORK/avdigits" "${GRID_OVERRIDES[@]}" --variants "${VARIANTS[@]}"
}

# What finished, even when the grid was cut short: it rewrites its table after every variant.
grid_report() {
  if [ -f "$WORK/grid/summary.md" ]; then
    echo "== summary (test accuracy %, $WORK/grid/summary.md)"
    cat "$WORK/grid/summary.md"
  fi
  [ -d "$WORK/grid" ] || return 0
  "$PYTHON" - "$WORK/grid" <<'PY'
import json
import sys
from pathlib import Path

print("== runs (metrics.json): epochs, wall seconds, best epoch, test accuracy, training path")
for path in sorted(Path(sys.argv[1]).rglob("metrics.json")):
    m = json.loads(path.read_text())
    print(f"{path.parent.name}: {m['method']} {'+'.join(m['modalities'])}, {m['epochs']} epochs, {m['wall_seconds']} s, "
          f"best epoch {m['best_epoch']}, test {100 * m['test']['multimodal']['accuracy']:.1f} %; "
          f"{json.dumps(m['environment']['training_path'])}")
PY
}

if [ -n "$STAGE" ]; then
  case "$STAGE" in
    environment|cuda_tests|profile|student_step|augment_cost|prepare|grid|grid_report) cd "$ROOT" && "$STAGE"; exit $? ;;
    *) fail "unknown stage $STAGE" ;;
  esac
fi

STARTED=$(date +%s)
SUMMARY="$OUTDIR/summary.txt"
{
  echo "gpu_check $([ "$DRY" = 1 ] && echo "--dry-run ")started $(date -u +%FT%TZ); total budget ${TOTAL_S} s"
  echo "avdigits schedule: ${GRID_OVERRIDES[*]}; variants: ${VARIANTS[*]}"
  printf '%-14s %-8s %4s %7s %7s  %s\n' stage status rc seconds budget file
} > "$SUMMARY"

# stage NAME BUDGET FILE: run the stage NAME (this script, --stage NAME) with its output appended
# to OUTDIR/FILE, inside BUDGET seconds and what is left of TOTAL_S, and record how it went.
stage() {
  local name=$1 budget=$2 file=$3 left status rc begin seconds
  left=$((TOTAL_S - ($(date +%s) - STARTED)))
  [ "$budget" -le "$left" ] || budget=$left
  if [ "$budget" -lt 5 ]; then
    printf '%-14s %-8s %4s %7s %7s  %s\n' "$name" skipped - 0 "$budget" "$file (no time left)" >> "$SUMMARY"
    return 0
  fi
  local flags=(--stage "$name" --data "$DATA" --work "$WORK")
  [ "$DRY" = 1 ] && flags+=(--dry-run)
  begin=$(date +%s)
  timeout --kill-after=10 "$budget" bash "$SELF" "${flags[@]}" "$OUTDIR" >> "$OUTDIR/$file" 2>&1
  rc=$?
  seconds=$(($(date +%s) - begin))
  case $rc in
    0) status=ok ;;
    124|137) status=timeout ;;
    *) status=failed ;;
  esac
  printf '%-14s %-8s %4s %7s %7s  %s\n' "$name" "$status" "$rc" "$seconds" "$budget" "$file" >> "$SUMMARY"
}

stage environment "$B_ENV" env.txt
stage cuda_tests "$B_TESTS" cuda_tests.txt
stage profile "$B_PROFILE" student_step.txt
stage student_step "$B_STEP" student_step.txt
stage augment_cost "$B_AUGMENT" student_step.txt
stage prepare "$B_PREPARE" avdigits.txt
if [ -d "$WORK/avdigits" ]; then
  stage grid "$B_GRID" avdigits.txt
else
  printf '%-14s %-8s %4s %7s %7s  %s\n' grid skipped - 0 "$B_GRID" "avdigits.txt (no prepared data)" >> "$SUMMARY"
fi
TOTAL_S=$((TOTAL_S + 15))  # the report reads files only; it gets its own few seconds past the total
stage grid_report 15 avdigits.txt
echo "finished in $(($(date +%s) - STARTED)) s; work folder $WORK" >> "$SUMMARY"
cat "$SUMMARY"
