#!/usr/bin/env bash
# One full GPU session (run from the repository root on the GPU machine): build the CUDA extension,
# run the whole test suite on the GPU, run the benchmarks, copy logs and JSON results to $OUT.
# Usage: bash bench/gpu_run.sh [tests|bench|all]   (default all)
# BENCHMARKS="attention losses sgan_train seg_train" chooses the benchmarks (`python -m bench.run --list`;
# default attention losses), each run as `python -m bench.run NAME --device cuda`.
# The GPU image lacks pydensecrf (CRF tests then skip): build a cp312 wheel here with
#   /root/.pyenv/versions/3.12.1/bin/python -m pip wheel --no-deps -w .whl pydensecrf2
# carry `.whl` in the device call and start it with
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
set -uo pipefail
what=${1:-all}
OUT=${OUT:-/tmp/sgan_gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/device.txt"
start=$(date +%s)
SGAN_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} \
  "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . >"$OUT/build.log" 2>&1
echo "build rc=$? in $(( $(date +%s) - start )) s" | tee -a "$OUT/device.txt"
tail -n 40 "$OUT/build.log"
"$PY" -c "import sgan._ext as e; print('extension cpu', e.available('cpu'), 'cuda', e.available('cuda'))" | tee -a "$OUT/device.txt"
if [ "$what" = tests ] || [ "$what" = all ]; then
  "$PY" -m pytest -q -p no:cacheprovider tests ${PYTEST_ARGS:-} 2>&1 | tee "$OUT/tests.log" | tail -n 60
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  for name in ${BENCHMARKS:-attention losses}; do
    "$PY" -m bench.run "$name" --device cuda 2>&1 | tee "$OUT/bench_$name.log" | tail -n 40
  done
  cp bench/results/*.json "$OUT/" 2>/dev/null
fi
