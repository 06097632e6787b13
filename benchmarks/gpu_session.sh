#!/usr/bin/env bash
# gpu_session.sh: everything a lent GPU machine does for flexh2o, in one call.
#
#   bash benchmarks/gpu_session.sh [test] [kernels] [generate MODELS] ...
#
# Builds with the carried Debian libraries (.deps, see ../shared/tools/gpu-deps),
# runs the whole test suite (the gpu suite included), the kernel benchmark and
# the end-to-end comparison with PyTorch + transformers, writing logs and
# Markdown tables under $OUT (default benchmarks/results/local).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/local}
mkdir -p "$OUT"
[ -f .deps/env.sh ] && source .deps/env.sh
export PATH=/opt/torch/.venv/bin:$PATH   # meson, ninja, python with torch there
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
  | tee "$OUT/gpu.txt"
if [ ! -f build-gpu/build.ninja ]; then
  meson setup build-gpu -Dgpu_archs=90 > "$OUT/setup.log" 2>&1 \
    || { tail -30 "$OUT/setup.log"; exit 1; }
fi
ninja -C build-gpu > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "build ok"
steps=${*:-test kernels}
set -- $steps
while [ $# -gt 0 ]; do
  case $1 in
    test)
      meson test -C build-gpu --print-errorlogs > "$OUT/test.log" 2>&1 || true
      cp build-gpu/meson-logs/testlog.txt "$OUT/testlog.txt"
      grep -E "^ *[0-9]+/[0-9]+ |^Ok|^Fail|^Skipped" "$OUT/test.log"
      ;;
    kernels)
      build-gpu/benchmarks/flexh2o-bench-kernels | tee "$OUT/kernels.md"
      ;;
    generate)
      shift
      for m in ${1//,/ }; do
        python3 benchmarks/bench_generate.py --device cuda --model "$m" --prompt-len 512 \
          --gen-len 32 --batches 1,16,64 --flexh2o build-gpu/src/flexh2o \
          | tee "$OUT/generate-$m.md"
      done
      ;;
    *) echo "unknown step $1"; exit 2 ;;
  esac
  shift
done
