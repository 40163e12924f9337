#!/usr/bin/env bash
# One GPU session in one command, the most important evidence first. Every part runs under its own
# time limit and writes into $OUT as it goes, so a run cut at any point keeps what came before it.
#
#   bash bench/gpu_run.sh [--dry-run] [--budget SECONDS]     (from any directory: it runs from the repository root)
#
#   part 1  device, versions, the build with SGAN_CUDA=1, whether the extension loads  summary.txt build.log
#   part 2  the attention and loss tests, SGAN_REQUIRE_BACKENDS=cpp,cuda,triton          tests.log
#   part 3  attention benchmark at 41x41, B = 15, float32 and bfloat16, every backend    bench.log results.json
#   part 4  the demo at toy sizes with device=cuda                                        demo.log
#   part 5  losses benchmark; sgan_train at 321² with each backend; attention 161x161     bench.log results.json
#   part 6  while time remains: attention at 65 and 81, the profile, sgan_train at 1281² in bf16,
#           channels-last, with checkpointing and its largest side, sgan_train --find-max-size
#
# --dry-run      the same parts on the CPU at toy sizes: no build (the installed extension), the
#                backends the CPU has, three of the eight test files
# --budget S     seconds for the whole run (default 540 on the GPU, 600 for --dry-run); parts 1 to 5
#                get at most their planned seconds each, part 6 what is left
# OUT            the output folder (default /tmp/sgan_gpu_out); PYTHON the interpreter (default python3)
# .whl/*.whl     installed first into /tmp/sgan_site (GPU run only), e.g. a pydensecrf wheel for the CRF
# Exit status: 0 when every step of parts 1 to 5 passed (a cut part 6 is no failure), 1 otherwise,
# 2 for a wrong argument. summary.txt has one line per step: its status, its time and its limit.
set -uo pipefail

usage() { sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; }

dry=0
budget=
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) dry=1 ;;
    --budget)
      budget=${2:-}
      if ! [[ $budget =~ ^[0-9]+$ ]]; then
        echo "bench/gpu_run.sh: --budget: expected whole seconds, got '$budget'" >&2
        exit 2
      fi
      shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "bench/gpu_run.sh: unknown argument '$1' (expected --dry-run, --budget SECONDS or --help)" >&2; exit 2 ;;
  esac
  shift
done

cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/sgan_gpu_out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1
SUMMARY=$OUT/summary.txt BUILD_LOG=$OUT/build.log TESTS_LOG=$OUT/tests.log BENCH_LOG=$OUT/bench.log
DEMO_LOG=$OUT/demo.log RESULTS=$OUT/results.json

# Seconds planned per part (parts 1 to 5); part 6 gets the rest of the budget.
if [ $dry = 1 ]; then
  budget=${budget:-600}
  PLAN=(0 60 60 60 180 150)
  device=cpu require=cpp,triton fused=cpp small=(--warmup 0 --repeats 1)
  tests=(tests/ops/test_attention_errors.py tests/ops/test_attention_memory.py tests/ops/test_backends.py)
  attention=(--device cpu --batch 2 --channels 16 --key-channels 8 --warmup 0 --repeats 2)
  sizes_41=9 sizes_161=13 sizes_large=17 train_size=33 train_options=(--batch 1 --width 0.125) large_train_size=41
  crf=(--train-crf-images 2 --test-crf-images 1)
else
  budget=${budget:-540}
  PLAN=(0 150 100 50 90 110)
  device=cuda require=cpp,cuda,triton fused=cuda,triton small=()
  tests=(tests/ops/test_attention.py tests/ops/test_attention_compile.py tests/ops/test_attention_cuda.py
    tests/ops/test_attention_errors.py tests/ops/test_attention_memory.py tests/ops/test_attention_triton.py
    tests/ops/test_loss_ops.py tests/models/test_losses.py tests/ops/test_backends.py)
  attention=(--device cuda --batch 15)
  sizes_41=41 sizes_161=161 sizes_large=65,81 train_size=321 train_options=(--batch 15) large_train_size=1281
  crf=()
fi
start=$(date +%s)
deadline=$((start + budget))
failed=0

say() { echo "$*" | tee -a "$SUMMARY"; }

# part N: start part N; its steps end by min(now + its planned seconds, the run's deadline).
part() {
  current=$1
  local planned=$((deadline - $(date +%s)))
  if [ "$current" -le 5 ] && [ "${PLAN[$current]}" -lt "$planned" ]; then planned=${PLAN[$current]}; fi
  part_end=$(($(date +%s) + planned))
  say "== part $current: $2 (${planned} s at most; $(($(date +%s) - start)) s elapsed)"
}

# step NAME LOG LIMIT CMD...: run CMD for at most min(LIMIT, the part's time left) seconds (in a dry
# run, on a slower and shared CPU, the part's time left), its output appended to LOG; it is stopped
# with SIGINT, so that pytest and the benchmarks still report, and killed 15 s later. One status
# line into summary.txt; returns CMD's exit status (124: cut).
step() {
  local name=$1 log=$2 limit=$3 now rc status
  shift 3
  now=$(date +%s)
  if [ $dry = 1 ] || [ $((part_end - now)) -lt "$limit" ]; then limit=$((part_end - now)); fi
  if [ "$limit" -lt 5 ]; then
    say "   $name: not run, no time left in part $current"
    [ "$current" -le 5 ] && failed=1
    return 124
  fi
  echo "=== part $current, $name (at most $limit s): $*" >>"$log"
  timeout -s INT -k 15 "$limit" "$@" >>"$log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124) status="cut at its limit" ;;
    137) status="killed after its limit" ;;
    *) status="failed (exit status $rc)" ;;
  esac
  say "   $name: $status in $(($(date +%s) - now)) s (limit $limit s); log $(basename "$log")"
  if [ $rc != 0 ]; then
    tail -n 15 "$log"
    if [ "$current" -le 5 ] || [ $dry = 1 ] || { [ $rc != 124 ] && [ $rc != 137 ]; }; then failed=1; fi
  fi
  return $rc
}

# bench NAME LIMIT BENCHMARK ARGS...: one benchmark (python -m bench.run), its JSON added to
# results.json under NAME, also when it was cut after writing its rows.
bench() {
  local name=$1 limit=$2
  shift 2
  step "$name" "$BENCH_LOG" "$limit" "$PY" -m bench.run "$@" --output "$WORK/$name.json"
  if [ -f "$WORK/$name.json" ]; then
    "$PY" -m bench.collect "$RESULTS" "$name" "$WORK/$name.json" >>"$BENCH_LOG" 2>&1 || failed=1
  else
    say "   $name: wrote no JSON"
  fi
}

part 1 "device, versions, build, extension"
if [ $dry = 1 ]; then
  say "dry run on the CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores"
else
  say "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
fi
say "$("$PY" -c "import platform, torch, triton
print('python', platform.python_version(), 'torch', torch.__version__, 'triton', triton.__version__,
      'cuda', torch.version.cuda)" 2>&1)"
if [ $dry = 0 ] && compgen -G ".whl/*.whl" >/dev/null; then
  step "wheels from .whl" "$BUILD_LOG" 60 \
    "$PY" -m pip install --no-index --no-deps --no-compile --upgrade --target /tmp/sgan_site .whl/*.whl
  export PYTHONPATH=/tmp/sgan_site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ $dry = 1 ]; then
  say "   build: left out (dry run: the installed C++ extension is used; an editable build starts from scratch)"
  echo "dry run: no build" >>"$BUILD_LOG"
else
  step "build (SGAN_CUDA=1)" "$BUILD_LOG" 150 env SGAN_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" \
    MAX_JOBS="${MAX_JOBS:-16}" "$PY" -m pip install --no-build-isolation --no-deps --no-index -e .
fi
step "extension loads for $device" "$BUILD_LOG" 60 "$PY" -c "
import sys
from sgan import _ext
print('sgan._C: cpu', _ext.available('cpu'), '| cuda', _ext.available('cuda'), '|', _ext.problem('$device'))
sys.exit(0 if _ext.available('$device') else 1)"
say "   $(grep '^sgan._C:' "$BUILD_LOG" | tail -n 1)"
crf_import=$("$PY" -c 'import pydensecrf; print("imports")' 2>&1 | tail -n 1)
say "   pydensecrf (the CRF of stage 2 and of the losses benchmark): $crf_import"

part 2 "the attention and loss tests, SGAN_REQUIRE_BACKENDS=$require"
step "pytest" "$TESTS_LOG" 100 env SGAN_REQUIRE_BACKENDS=$require "$PY" -m pytest -q -rfEs --durations=10 \
  -p no:cacheprovider "${tests[@]}"
tests_result=$(grep -E '[0-9]+ (passed|failed|errors?|skipped)|no tests ran' "$TESTS_LOG" | tail -n 1)
say "   ${tests_result:-$(tail -n 1 "$TESTS_LOG")}"

part 3 "attention benchmark at ${sizes_41}x${sizes_41}, float32 and bfloat16, every backend and the SDPA comparison"
bench attention_41 50 attention "${attention[@]}" --shapes $sizes_41 --dtype float32,bfloat16

part 4 "the demo at toy sizes on $device"
step "sgan demo device=$device" "$DEMO_LOG" 80 "$PY" -m sgan.cli demo configs/demo.yaml \
  device=$device work_dir="$WORK/demo" \
  demo.num_train=12 demo.num_val=4 "demo.image_size=[64,64]" data.input_size=64 \
  figures.count=1 train_cam.iterations=6 train_sgan.iterations=6 train_seg.iterations=4 \
  train_cam.batch_size=4 train_sgan.batch_size=4 train_seg.batch_size=4 \
  train_cam.checkpoint_every=3 train_sgan.checkpoint_every=3 train_seg.checkpoint_every=3 \
  train_seg.resize=72 train_seg.crop=64 train_seg.boundary_loss_warmup=2 pretrain.iterations=4 \
  pretrain.num_images=16 pretrain.batch_size=4 "pretrain.image_size=[48,48]" pretrain.checkpoint_every=2
if grep -q "Table II style" "$DEMO_LOG" && [ -s "$WORK/demo/metrics/demo.json" ]; then
  say "   demo: Table II printed, metrics/demo.json written"
else
  say "   demo: no Table II or no metrics/demo.json"
  failed=1
fi

part 5 "losses benchmark, sgan_train at ${train_size}² per backend, attention ${sizes_161}x${sizes_161} memory"
bench losses 40 losses --device $device "${small[@]}" "${crf[@]}"
bench sgan_train_$train_size 35 sgan_train --device $device "${train_options[@]}" --sizes $train_size \
  --fused $fused "${small[@]}"
bench attention_$sizes_161 35 attention "${attention[@]}" --shapes $sizes_161 --dtype float32 --repeats 3

part 6 "while time remains: larger attention sizes, the profile, sgan_train in bf16 at ${large_train_size}², --find-max-size"
bench attention_large 120 attention "${attention[@]}" --shapes $sizes_large --dtype float32,bfloat16
if [ $dry = 1 ]; then
  step "profile" "$BENCH_LOG" 60 "$PY" -m bench.profile_attention --device cpu --size $sizes_41 --channels 16 \
    --key-channels 8 --repeats 1
else
  step "profile" "$BENCH_LOG" 120 "$PY" -m bench.profile_attention --device cuda --size 41 --dtype bfloat16 \
    --backends reference,cuda,triton
fi
large_mode=(--precision bf16 --memory-format channels_last --checkpointing on)
if [ $dry = 1 ]; then
  bench sgan_train_bf16_$large_train_size 60 sgan_train --device cpu "${train_options[@]}" \
    --sizes $large_train_size --fused $fused "${large_mode[@]}" "${small[@]}"
  say "   sgan_train --find-max-size: left out (it needs CUDA)"
else
  bench sgan_train_bf16_$large_train_size 200 sgan_train --device cuda --batch 15 --sizes $large_train_size \
    --fused $fused "${large_mode[@]}" --find-max-size --max-size-backends cuda
  bench sgan_train_max_size 300 sgan_train --device cuda --batch 15 --fused $fused --find-max-size
fi

verdict="every step of parts 1 to 5 passed"
[ $failed = 0 ] || verdict="some step failed: see above"
say "== done in $(($(date +%s) - start)) s of $budget s; $verdict"
exit $failed
