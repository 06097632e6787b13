#!/usr/bin/env bash
# tests/fuzz/run.sh [SECONDS] [TARGET...]: run each libFuzzer harness of
# tests/fuzz/ (all, or those named) for SECONDS (default 5) over its
# committed seeds and regressions, and fail on any crash, leak, timeout or
# broken property. Builds build-fuzz (clang, -Dfuzz=enabled) when missing.
#
#   tests/fuzz/run.sh 5                      # CI: every target, 5 s each
#   FUZZ_STATS=out.csv tests/fuzz/run.sh 130 # a recorded run: a CSV line per target
#   FUZZ_RUNS=10000000 tests/fuzz/run.sh 0 store  # 10 M executions, no time limit
#
# New inputs libFuzzer finds go to a scratch corpus ($FUZZ_WORK, default a
# temporary directory, removed unless FUZZ_KEEP=1), never into the tree; a
# crashing input is saved as $FUZZ_WORK/crash/<target>-crash-<sha1> and its
# path printed: commit it under tests/fuzz/regressions/<target>/ with the fix.
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-5}
shift || true
all=(safetensors st_index model_config tok_bpe tok_json tok_config job_prompts job_resume
     policy calib store score eval_resume)
targets=("${@:-${all[@]}}")
build=${FUZZ_BUILD:-build-fuzz}
if [ ! -f "$build/build.ninja" ]; then
    CC=clang meson setup "$build" -Dfuzz=enabled -Dcuda=disabled -Dnative=false >/dev/null
fi
ninja -C "$build" $(printf "tests/fuzz/fuzz_%s " "${targets[@]}") >/dev/null
work=${FUZZ_WORK:-$(mktemp -d)}
mkdir -p "$work/crash"
[ "${FUZZ_KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
[ -z "${FUZZ_STATS:-}" ] ||
    echo "target,limit_s,elapsed_s,executions,exec_per_s,corpus_units,coverage,peak_rss_mb,result" \
        > "$FUZZ_STATS"
runs=()
[ -z "${FUZZ_RUNS:-}" ] || runs=(-runs="$FUZZ_RUNS")
# FUZZ_SEED: libFuzzer's -seed (default 0: a new one each run); with
# FUZZ_RUNS it makes a run repeatable (CI)
runs+=(-seed="${FUZZ_SEED:-0}")
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export OMP_NUM_THREADS=1
failed=()
printf "%-13s %8s %12s %10s %7s %6s\n" target elapsed executions exec/s units cov
for t in "${targets[@]}"; do
    mkdir -p "$work/corpus/$t"
    dirs=("$work/corpus/$t" "tests/fuzz/corpus/$t")
    [ -d "tests/fuzz/regressions/$t" ] && dirs+=("tests/fuzz/regressions/$t")
    log="$work/$t.log"
    rc=0
    t0=$(date +%s)
    "$build/tests/fuzz/fuzz_$t" -max_total_time="$secs" "${runs[@]}" -timeout=25 \
        -rss_limit_mb=2048 -dict=tests/fuzz/json.dict -print_final_stats=1 \
        -artifact_prefix="$work/crash/$t-" "${dirs[@]}" >"$log" 2>&1 || rc=$?
    elapsed=$(( $(date +%s) - t0 ))
    # (a target that crashed on a seed has no "corp:" line: no grep may fail the script)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
    units=$(sed -n 's/.*corp: \([0-9]*\).*/\1/p' "$log" | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' "$log" | tail -1)
    printf "%-13s %8s %12s %10s %7s %6s\n" "$t" "$elapsed" "${execs:-?}" "${rate:-?}" \
        "${units:-?}" "${cov:-?}"
    res=ok
    [ "$rc" -eq 0 ] || res="crash (exit $rc)"
    [ -z "${FUZZ_STATS:-}" ] ||
        echo "$t,$secs,$elapsed,${execs:-},${rate:-},${units:-},${cov:-},${rss:-},$res" \
            >> "$FUZZ_STATS"
    if [ "$rc" -ne 0 ]; then
        failed+=("$t")
        echo "---- fuzz_$t failed (exit $rc); the end of its log:"
        tail -n 60 "$log"
        ls "$work/crash/" | sed "s|^|crash input: $work/crash/|"
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "run.sh: failed: ${failed[*]}"
    [ "${FUZZ_KEEP:-0}" = 1 ] || { mkdir -p fuzz-crashes; cp "$work"/crash/* fuzz-crashes/ 2>/dev/null || true;
                                   echo "run.sh: the crashing inputs are in fuzz-crashes/"; }
    exit 1
fi
