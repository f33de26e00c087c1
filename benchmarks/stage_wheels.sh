#!/usr/bin/env bash
# Download, on a machine that can reach PyPI, the wheels of what a GPU machine without internet access lacks, for
# its Python (3.12, manylinux x86_64, no dependencies), into git-ignored folders that travel with the checkout;
# benchmarks/device_check.sh installs them there (into .whl-site/, leaving the environment alone).
#
#   bash benchmarks/stage_wheels.sh            # .whl/: open_clip_torch, ftfy, wcwidth (about 1.6 MB)
#   bash benchmarks/stage_wheels.sh --dali     # also .whl-dali/: NVIDIA DALI (about 200 MB, split into parts of
#                                              # 48 MiB), decord2 and PyAV, for the optional decoding step
#
# What the device check needs: `import msta_fast` imports open_clip (and open_clip ftfy, ftfy wcwidth); without
# them the steps run with a stub that raises if used (none tokenizes). Versions: those installed here when there
# are any (what the tests ran with), else the newest. PYTHON_VERSION overrides 3.12.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
PY="${PYTHON_VERSION:-3.12}"
DALI=0
[ "${1:-}" = "--dali" ] && DALI=1

pinned() {  # "name==version" as installed here, or just "name"
  "$PYTHON" - "$@" <<'PY'
import importlib.metadata as md, sys
for name in sys.argv[1:]:
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        print(name)
PY
}

download() {  # dest packages...
  local dest=$1; shift
  mkdir -p "$dest"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary :all: --python-version "$PY" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux2010_x86_64 --dest "$dest" $(pinned "$@")
}

download .whl open_clip_torch ftfy wcwidth
du -sh .whl

if [ "$DALI" = 1 ]; then
  download .whl-dali decord2 av
  download .whl-dali nvidia-dali-cuda130
  # A command may carry 64 MiB in all: split what is larger; device_check.sh puts the parts back together.
  for whl in .whl-dali/*.whl; do
    if [ "$(stat -c %s "$whl")" -gt $((48 * 1024 * 1024)) ]; then
      split -b 48M "$whl" "$whl.part-" && rm "$whl"
    fi
  done
  ls -lh .whl-dali
fi
