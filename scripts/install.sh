#!/usr/bin/env bash
# Installs SGAN and its dependencies into the current Python environment.
# torch: kept as it is when importable (e.g. a CUDA build on a GPU machine); otherwise the CPU
# build 2.13.0 is installed. An unpinned torch would pull several GB of CUDA packages.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet "torch==2.13.0"
fi
if ! "$PY" -c "import triton" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet "triton>=3.6"
fi
"$PY" -m pip install --quiet -r requirements.txt
# setup.py imports torch, so no build isolation (an isolated build would fetch another torch).
MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip install --quiet --no-build-isolation --no-deps -e .
"$PY" -c "import sgan, sgan._ext as e; print('sgan installed; C++ extension:', e.available('cpu'), '; CUDA extension:', e.available('cuda'))"
