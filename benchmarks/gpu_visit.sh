#!/usr/bin/env bash
# gpu_visit.sh SECONDS STEP...: one lent GPU call. Runs gpu_session.sh's STEPs with
# every stage capped so that all of it ends within SECONDS (GS_DEADLINE), its files
# staged in /tmp/gs and packed into $OUT/gs.tgz, with tables.csv and the calibration
# beside it (the device tool brings back at most 8 files). gpu_session.sh's variables
# (GS_TARGETS, TABLES_ONLY, TABLES_CELL_LIMIT, ...) pass through. Exit status:
# gpu_session.sh's. E.g., within a 600 s call:
#
#   GS_TARGETS="src/flexh2o tests/test_kern_cuda tests/test_gpu_e2e \
#     benchmarks/libflexh2o-cupti-trace.so" TABLES_CELL_LIMIT=180 \
#   TABLES_ONLY='HF_Accelerate-opt-6.7b-512-32- flexh2o_H2O_20_-opt-30b-512-32-' \
#   bash benchmarks/gpu_visit.sh 555 gpu overlap tables
set -uo pipefail
[ $# -ge 2 ] || { sed -n '2,12p' "$0"; exit 2; }
secs=$1
shift
real=${OUT:?"OUT: the folder whose files come back (the device tool sets it)"}
stage=/tmp/gs
rm -rf "$stage"
mkdir -p "$stage"
export GS_DEADLINE=$(( $(date +%s) + secs ))
OUT=$stage bash "$(dirname "$0")/gpu_session.sh" "$@" 2>&1 | tee "$stage/session.log"
rc=${PIPESTATUS[0]}
cp "$stage"/tables.csv "$stage"/hardware-*.json "$real/" 2> /dev/null
tar czf "$real/gs.tgz" -C "$stage" .
echo "gpu_session exit $rc; $(du -h "$real/gs.tgz" | cut -f1) packed into gs.tgz"
exit "$rc"
