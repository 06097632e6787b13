#!/bin/bash
# usage: run.sh BIN TAG [extra flags]
BIN=$1; TAG=$2; shift 2
cd /tmp/kvlog
rm -rf off-$TAG; mkdir off-$TAG
sync; echo 3 > /proc/sys/vm/drop_caches
$BIN generate --model /tmp/flexh2o-tables/store/opt-1.3b-bf16 --prompts p32.jsonl --out q-$TAG.jsonl --max-new-tokens 480 \
   --ignore-eos --device cpu --cpu-matmul bf16 --gpu-batch-size 4 --num-gpu-batches 2 \
   --percent 100 0 0 0 100 0 --offload-dir off-$TAG "$@" > log-$TAG.txt 2>&1
echo "rc=$?" >> log-$TAG.txt
rm -rf off-$TAG
