#!/usr/bin/env bash
# Every GPU benchmark of the MSTA kernels in one command:
#   bash benchmarks/gpu_benchmarks.sh [extra pytest arguments]
# Runs the GPU parity tests (bf16 and CUDA paths), builds the CUDA extension (cached), then the layer
# and end-to-end benchmarks; results land in benchmarks/results/ (*.json, *.md: device, date, commit,
# versions) together with pytest-benchmark's own JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"

"$PYTHON" - <<'PY'
import torch
assert torch.cuda.is_available(), "gpu_benchmarks.sh needs a CUDA device"
print("device:", torch.cuda.get_device_name(), "| torch", torch.__version__, "| cuda", torch.version.cuda)
PY

mkdir -p benchmarks/results
stamp="$(date -u +%Y%m%d-%H%M%S)"

# Build the C++/CUDA extension once (a few minutes with nvcc; cached afterwards).
MSTA_FAST_EXT_CUDA=1 "$PYTHON" -m msta_fast.ops.extension

# GPU parity first: numbers from wrong kernels are worthless.
"$PYTHON" -m pytest -q -p no:cacheprovider tests/test_kernels_triton.py tests/test_kernels_token_dwconv.py tests/test_extension.py \
  tests/test_dispatch.py \
  2>&1 | tee "benchmarks/results/gpu-parity-${stamp}.log"

"$PYTHON" -m pytest benchmarks --benchmark-only -q -p no:cacheprovider \
  --benchmark-json "benchmarks/results/pytest-benchmark-gpu-${stamp}.json" "$@"
ls -1 benchmarks/results | tail -n 8
