#!/usr/bin/env bash
# The README's main command: installs SGAN (scripts/install.sh), then runs the demo: the whole
# method (stage 0, the four Table II variants of stage 1, stage 2, evaluation) on a generated
# synthetic VOC-layout benchmark, on CPU. Arguments go to `sgan demo`, e.g.
#   bash scripts/demo.sh work_dir=/tmp/demo train_cam.iterations=2000
#   bash scripts/demo.sh --overwrite
# Outputs (tables, figures, loss plot, metrics/demo.json) go to work_dir (runs/demo by default).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/install.sh
"$PY" -m sgan.cli demo configs/demo.yaml "$@"
