#!/usr/bin/env bash
# ab.sh ROUNDS: base vs pack, Llama-3.2-1B bf16 store all resident, --cpu-matmul bf16, 32 new tokens
for r in $(seq 1 $1); do for B in 4 16 64; do
  python3 -c "
import sys; sys.path.insert(0,'/work/main/benchmarks')
from benchlib import write_prompts; write_prompts('/tmp/ab$B.jsonl',$B,4)"
  for b in ${BINS:-base pack}; do
    rm -f /tmp/ab-o.jsonl
    line=$(./flexh2o-$b generate --model st-hfllama-bf16 --cpu-matmul bf16 --device cpu --prompts /tmp/ab$B.jsonl --out /tmp/ab-o.jsonl --max-new-tokens 32 --ignore-eos --gpu-batch-size $B --num-gpu-batches 1 2>&1 | grep "prompts on")
    dec=$(echo "$line" | sed -n 's/.*decode \([0-9.]*\) tok\/s.*/\1/p')
    tot=$(echo "$line" | sed -n 's/.*total \([0-9.]*\) generated.*/\1/p')
    echo "$r,$B,$b,$dec,$tot,$(cut -d' ' -f1 /proc/loadavg)"
  done
done; done
