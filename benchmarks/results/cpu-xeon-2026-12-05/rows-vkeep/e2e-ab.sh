T=/tmp/flexh2o-tables
for cell in "flexh2o_full-opt-1.3b-32-32-gpu_1G_cpu_3G_os_5632M" "flexh2o_H2O_20_4-bit-opt-1.3b-32-32-gpu_1G_cpu_3G_os_5632M"; do
  D=$T/$cell
  extra=""; case $cell in *4-bit*) extra="--kv-policy h2o --kv-ratio 0.2 --compress-weight --compress-cache";; esac
  for r in 1 2 3; do for b in old new; do
    rm -f /tmp/ab-out-$b.jsonl; s=$(date +%s.%N)
    /tmp/flexh2o-$b generate --model $T/store/opt-1.3b-f16 --policy $D/policy.json --prompts $D/prompts.jsonl --out /tmp/ab-out-$b.jsonl --max-new-tokens 32 --ignore-eos --device cpu $extra 2>/tmp/ab-err-$b.txt >/dev/null || echo FAIL
    e=$(date +%s.%N)
    echo "$cell round $r $b $(echo "$e - $s" | bc) s; $(grep -i "tok/s" /tmp/ab-err-$b.txt | tail -1)"
  done; done
  cmp /tmp/ab-out-old.jsonl /tmp/ab-out-new.jsonl && echo "$cell: outputs identical"
done
