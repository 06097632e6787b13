#!/bin/bash
# Llama-3.2-1B bf16 32+32, 64x1, cgroup 4608M, caps gpu 2G cpu 1G: the grid's policy (FlexGen's rule: 41% of the weights from the store) against --weight-layers 50 50 (every weight on the tiers), then HF Accelerate (max_memory cpu=3072MiB), alternated
cd /tmp/flexh2o-tables
d=cpu-bf16-flexh2o_full-llama-3.2-1b-32-32-gpu_2G_cpu_1G_os_4608M
B=/work/main/build/src/flexh2o
for r in 1 2 3; do
 for v in grid mixed; do
  if [ $v = grid ]; then P="--policy $d/policy.json"; else P="--policy /tmp/s30/pol-llama-mixed.json"; fi
  rm -f /tmp/s30/o.jsonl
  /tmp/s28/capped.sh 4608M $B generate --model store/llama-3.2-1b-bf16 $P --prompts $d/prompts.jsonl --out /tmp/s30/o.jsonl --max-new-tokens 32 --ignore-eos --device cpu --cpu-matmul bf16 2>&1 | grep -E "prompts on|rror|peak" | sed "s/^/$v $r: /"
 done
 /tmp/s28/capped.sh 4608M /work/venv-hf/bin/python /work/main/benchmarks/hf_offload.py --engine accelerate --model llama-3.2-1b --ckpt /tmp/flexh2o-tables/hf/llama-3.2-1b-bfloat16 --device cpu --dtype bfloat16 --batch 64 --prompt-len 32 --gen-len 32 --max-memory cpu=3072MiB --offload-dir /tmp/flexh2o-tables/offload/hf 2>/dev/null | tail -1 | sed "s/^/accelerate $r: /"
done
