#!/usr/bin/env bash
# Puts the CPU build of the torch that constraints.txt pins into docker/wheelhouse, so the CPU
# images (Airflow, Spark) do not pull PyPI's CUDA build. pip looks in its configured indexes and
# find-links; set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu to fetch it from PyTorch's.
set -euo pipefail
cd "$(dirname "$0")/.."
pin=$(sed -n 's/^torch==//p' constraints.txt)
if compgen -G "docker/wheelhouse/torch-${pin}+cpu-cp311-*.whl" >/dev/null; then
  exit 0
fi
index=()
[ -n "${TORCH_INDEX_URL:-}" ] && index=(--index-url "$TORCH_INDEX_URL")
if ! python3 -m pip download -q --no-deps --only-binary :all: --python-version 3.11 \
     --platform manylinux_2_28_x86_64 -d docker/wheelhouse "${index[@]}" "torch==${pin}+cpu"; then
  echo "wheelhouse: torch ${pin}+cpu was not found; set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" >&2
  exit 1
fi
