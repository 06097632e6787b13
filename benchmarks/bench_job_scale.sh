#!/usr/bin/env bash
# bench_job_scale.sh: memory and time of `generate` against the number of
# requests in the prompt file (issue 15 part 7): 10^4, 10^5 and 10^6 short
# prompts (3 tokens, 1 new token each) on the tiny model, read in windows
# of --window requests (default 8192), and once with the whole file as one
# window for comparison. Reports wall, user and system seconds and the peak
# resident set (GNU time), per request. Usage:
#   bash benchmarks/bench_job_scale.sh [BUILD_DIR] [OUT.md]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
out=${2:-/dev/stdout}
bin=$build/src/flexh2o
model=tests/fixtures/tiny-opt
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
python3 - "$dir" <<'X'
import json, sys
d = sys.argv[1]
with open(f"{d}/p1000000.jsonl", "w") as f:
    for i in range(1000000):
        f.write(json.dumps({"id": i, "prompt_ids": [2, 10 + i % 400, 20 + i % 300],
                            "max_new_tokens": 1}) + "\n")
for n in (10000, 100000):
    with open(f"{d}/p1000000.jsonl") as src, open(f"{d}/p{n}.jsonl", "w") as dst:
        for _, line in zip(range(n), src):
            dst.write(line)
X
run() { # n window -> one table row
    local n=$1 w=$2
    rm -f "$dir/o.jsonl"
    /usr/bin/time -f "%e %U %S %M" -o "$dir/time" "$bin" generate --model $model \
        --prompts "$dir/p$n.jsonl" --out "$dir/o.jsonl" --quiet --no-summary \
        --batch-size 64 --threads 1 --window "$w"
    local lines
    lines=$(wc -l < "$dir/o.jsonl")
    [ "$lines" -eq "$n" ] || { echo "only $lines of $n records" >&2; exit 1; }
    read -r wall user sys rss < "$dir/time"
    awk -v n="$n" -v w="$w" -v wall="$wall" -v user="$user" -v sys="$sys" -v rss="$rss" \
        'BEGIN { printf "| %d | %d | %.2f | %.2f | %.2f | %.1f | %.2f | %.1f |\n", n, w, wall,
                 user, sys, rss / 1024, 1e6 * (user + sys) / n, 1024 * rss / n }'
}
{
    echo "flexh2o generate, $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(date -u +%F)"
    echo
    echo "| requests | --window | wall s | user s | sys s | peak RSS MiB | CPU us/request | RSS bytes/request |"
    echo "|---:|---:|---:|---:|---:|---:|---:|---:|"
    run 10000 8192
    run 100000 8192
    run 1000000 8192
    run 1000000 1000000
} > "$out"
