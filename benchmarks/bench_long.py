#!/usr/bin/env python3
"""Long context with a KV budget (issue 13 part 6, seed 004's stress test): a rotary
model generates far past its max_position_embeddings with H2O, positions counting
on; peak memory and decode speed should stay flat as the generation grows.

    python3 benchmarks/bench_long.py [--model configs/kjv-llama] [--budget 256]
        [--lengths 1000,2000,5000,10000] [--out DIR] [--flexh2o build/src/flexh2o]

One `generate` per length (the same prompt, --ignore-eos, h2o --kv-budget B
--sinks 4), each reporting its decode tok/s and peak memory; then the full cache
for the longest length it may run (max_position_embeddings). Writes long.md,
long.csv and long.png (gnuplot) under --out.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

from benchlib import FLEXH2O, ROOT


def run(a, n, flags, tmp):
    p, o = os.path.join(tmp, "p.jsonl"), os.path.join(tmp, f"o{n}.jsonl")
    with open(p, "w") as f:
        f.write(json.dumps({"id": "long", "prompt": "In the beginning God created the heaven "
                            "and the earth.", "max_new_tokens": n}) + "\n")
    if os.path.exists(o):
        os.remove(o)
    cmd = [a.flexh2o, "generate", "--model", a.model, "--prompts", p, "--out", o,
           "--ignore-eos", "--batch-size", "1"] + flags
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr}")
    dec = re.search(r"decode ([\d.]+) tok/s \((\d+) tokens\)", r.stderr)
    mem = re.search(r"peak memory: gpu ([\d.]+) GiB, cpu ([\d.]+) GiB", r.stderr)
    rec = json.loads(open(o).readline())
    return {"new_tokens": len(rec["tokens"]), "decode_tok_s": float(dec.group(1)),
            "peak_gpu_tier_MiB": float(mem.group(1)) * 1024,
            "cmd": " ".join(cmd[1:])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "configs", "kjv-llama"))
    ap.add_argument("--budget", type=int, default=256)
    ap.add_argument("--lengths", default="1000,2000,5000,10000")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "local"))
    ap.add_argument("--flexh2o", default=FLEXH2O)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    max_pos = cfg["max_position_embeddings"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(x) for x in a.lengths.split(",")]:
            r = run(a, n, ["--kv-policy", "h2o", "--kv-budget", str(a.budget), "--sinks", "4"],
                    tmp)
            r["policy"] = f"h2o {a.budget}"
            rows.append(r)
            print(r, flush=True)
        r = run(a, max(int(x) for x in a.lengths.split(",")), [], tmp)
        r["policy"] = "full"
        rows.append(r)
        print(r, flush=True)
    with open(os.path.join(a.out, "long.csv"), "w") as f:
        f.write("policy,new_tokens,decode_tok_s,peak_gpu_tier_MiB\n")
        for r in rows:
            f.write(f"{r['policy']},{r['new_tokens']},{r['decode_tok_s']},"
                    f"{r['peak_gpu_tier_MiB']:.3f}\n")
    with open(os.path.join(a.out, "long.md"), "w") as f:
        f.write(f"# Long generation on {os.path.basename(a.model.rstrip('/'))} "
                f"(max_position_embeddings {max_pos}), batch 1\n\n")
        f.write("| policy | generated tokens | decode tok/s | peak memory, GPU tier (MiB) |\n"
                "|---|---|---|---|\n")
        for r in rows:
            f.write(f"| {r['policy']} | {r['new_tokens']} | {r['decode_tok_s']:.1f} | "
                    f"{r['peak_gpu_tier_MiB']:.1f} |\n")
        f.write("\nCommands (flexh2o ...):\n\n")
        for r in rows:
            f.write(f"    {r['cmd']}\n")
    gp = os.path.join(a.out, "long.gp")
    with open(gp, "w") as f:
        f.write(f"""set datafile separator ','
set terminal pngcairo size 900,500
set output '{a.out}/long.png'
set xlabel 'generated tokens'
set ylabel 'decode tokens/s'
set y2label 'peak memory, GPU tier (MiB)'
set ytics nomirror
set y2tics
set yrange [0:*]
set y2range [0:*]
plot '< grep ^h2o {a.out}/long.csv' using 2:3 with linespoints title 'decode tok/s (h2o)', \\
     '< grep ^h2o {a.out}/long.csv' using 2:4 axes x1y2 with linespoints title 'peak MiB (h2o)'
""")
    subprocess.run(["gnuplot", gp], check=False)


if __name__ == "__main__":
    main()
