#!/usr/bin/env bash
# The test command: installs (if needed) and runs the whole suite on CPU (Triton via its interpreter).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/install.sh
"$PY" -m pytest -q tests "$@"
