#!/usr/bin/env bash
# Fill the git-ignored folders that travel to a lent GPU machine, then print the device call.
#
# The GPU machine (python 3.12, x86-64, its own torch; no network) lacks omegaconf, soundfile
# (+ cffi, pycparser) and kornia (+ kornia_rs), and ../shared/data does not travel. This script, run here before the call:
#   .whl/       wheels for those packages (python 3.12, manylinux x86_64), the versions this venv uses;
#   .gpu_data/  the raw avdigits inputs: FSDD recordings, the MNIST files, two ESC-10 noise clips
#               per class (a subset: the whole ESC-10 folder would not fit the 64 MiB that travels).
# It measures what will travel (checkout + both folders) and refuses to print the call above the limit.
#
#   bash benchmarks/gpu_carry.sh [--data DIR]   # DIR: the shared data folder (default $G2D_DATA_ROOT or ../shared/data)
set -euo pipefail

usage() { echo "usage: bash benchmarks/gpu_carry.sh [--data DIR]" >&2; exit 2; }
fail() { echo "gpu_carry: error: $*" >&2; exit 2; }

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DATA="${G2D_DATA_ROOT:-$ROOT/../shared/data}"
while [ $# -gt 0 ]; do
  case "$1" in
    --data) [ $# -ge 2 ] || usage; DATA=$2; shift 2 ;;
    *) usage ;;
  esac
done
LIMIT_MIB=64
NOISE_PER_CLASS=2
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)
# What the GPU image lacks (KINDS.md lists what it has: numpy, pyyaml, safetensors, tqdm, tensorboard,
# pillow, pytest, typing-extensions are there). antlr4 is no longer an omegaconf >= 2.4 dependency.
PACKAGES=(omegaconf soundfile cffi pycparser kornia kornia_rs)

cd "$ROOT"
for folder in fsdd/recordings mnist esc10/audio; do
  [ -d "$DATA/$folder" ] || fail "$DATA/$folder: folder not found (pass --data DIR, the shared data folder)"
done
[ -f "$DATA/esc10/esc10.csv" ] || fail "$DATA/esc10/esc10.csv: ESC-10 metadata not found"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] && PYTHON=.venv/bin/python

# Pin each wheel to the version installed here, so the GPU run uses what the suite was run with.
pins=()
for name in "${PACKAGES[@]}"; do
  version=$("$PYTHON" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null) \
    || fail "$name is not installed in $PYTHON (run make test first)"
  pins+=("$name==$version")
done
rm -rf .whl.tmp && mkdir .whl.tmp
platform_args=()
for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platform_args[@]}" -d .whl.tmp "${pins[@]}" 2>&1 | grep -v "^WARNING: Location" >&2 || true
for pin in "${pins[@]}"; do
  name=${pin%%==*}
  ls .whl.tmp/"${name}"-*.whl >/dev/null 2>&1 || fail "no python 3.12 manylinux x86_64 wheel downloaded for $pin"
done
# The device call's install line, run here into a throwaway folder for the GPU's python and platform.
check_site=$(mktemp -d)
if ! log=$("$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$check_site" --python-version 3.12 --implementation cp "${platform_args[@]}" --only-binary=:all: \
    .whl.tmp/*.whl 2>&1); then
  echo "$log" >&2
  fail "the wheels in .whl.tmp do not install for python 3.12 manylinux x86_64"
fi
rm -rf "$check_site"
rm -rf .whl && mv .whl.tmp .whl

rm -rf .gpu_data.tmp && mkdir -p .gpu_data.tmp/fsdd .gpu_data.tmp/mnist .gpu_data.tmp/noise
cp "$DATA"/fsdd/recordings/*.wav .gpu_data.tmp/fsdd/
cp "$DATA"/mnist/t10k-images-idx3-ubyte.gz "$DATA"/mnist/t10k-labels-idx1-ubyte.gz "$DATA"/mnist/mnist_5k.csv.gz \
  .gpu_data.tmp/mnist/
# The first NOISE_PER_CLASS clips of each ESC-10 category, in file-name order: the same subset every time.
tail -n +2 "$DATA/esc10/esc10.csv" | sort -t, -k4,4 -k1,1 \
  | awk -F, -v n="$NOISE_PER_CLASS" '{ if (count[$4]++ < n) print $1 }' \
  | while read -r clip; do cp "$DATA/esc10/audio/$clip" .gpu_data.tmp/noise/; done
# The commit the GPU run is of (the device machine gets the files, not the git history).
dirty=$(git status --porcelain --untracked-files=no | grep -q . && echo " + uncommitted changes" || true)
echo "$(git rev-parse HEAD)$dirty" > .gpu_data.tmp/commit.txt
rm -rf .gpu_data && mv .gpu_data.tmp .gpu_data

# What travels: tracked and untracked-not-ignored files, plus the carried folders.
checkout_kib=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -ck 2>/dev/null | tail -1 | cut -f1)
carried_kib=$(du -sk .whl .gpu_data | awk '{s += $1} END {print s}')
total_kib=$((checkout_kib + carried_kib))
printf 'gpu_carry: .whl %s, .gpu_data %s (%s fsdd, %s mnist, %s noise files), checkout %d KiB: %.1f MiB of %d MiB\n' \
  "$(du -sh .whl | cut -f1)" "$(du -sh .gpu_data | cut -f1)" "$(ls .gpu_data/fsdd | wc -l)" "$(ls .gpu_data/mnist | wc -l)" \
  "$(ls .gpu_data/noise | wc -l)" "$checkout_kib" "$(awk -v k="$total_kib" 'BEGIN {print k / 1024}')" "$LIMIT_MIB" >&2
[ "$total_kib" -le $((LIMIT_MIB * 1024 - 2048)) ] || fail "what would travel exceeds ${LIMIT_MIB} MiB less a 2 MiB margin"

cat <<'EOF'
run tool call (one command; the script ends inside 8 minutes):
  carry: [".whl", ".gpu_data"]
  timeout_s: 560
  command: python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; bash benchmarks/gpu_check.sh "$OUT"
EOF
