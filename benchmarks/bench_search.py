#!/usr/bin/env python3
"""Does the policy search pick a fast policy? Predicted bound vs measured, same run.

    python3 benchmarks/bench_search.py --model opt-1.3b --device cpu --gpu-mem 1G \
        --cpu-mem 4G --offload-dir /tmp/off --prompt-len 32 --gen-len 8 --max-block 16 \
        [--top 3] [--hardware FILE] [--flexh2o build/src/flexh2o]

Steps, all in this run:
  1. `flexh2o calibrate --out`: the hardware profile (unless --hardware is given);
  2. `flexh2o search`: its --top candidates, each with the bound it predicts;
  3. peers at the search's block shape: its KV and activation placement with the
     weights all on disk or a third on the CPU, and a placement by hand;
  4. every policy generates the same block of prompts (--dummy weights, EOS
     ignored); measured decode and total tok/s next to the prediction.
The search did its job when its first pick is the fastest measured policy (or
within the run-to-run noise of it). Prints Markdown.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

from benchlib import FLEXH2O, sh, summary, write_prompts


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="opt-1.3b")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gpu-mem", default="1G")
    ap.add_argument("--cpu-mem", default="4G")
    ap.add_argument("--offload-dir", default="/tmp/flexh2o-offload")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--gen-len", type=int, default=8)
    ap.add_argument("--max-block", type=int, default=16)
    ap.add_argument("--top", type=int, default=3)
    ap.add_argument("--hardware", default=None)
    ap.add_argument("--flexh2o", default=FLEXH2O)
    a = ap.parse_args()
    os.makedirs(a.offload_dir, exist_ok=True)
    tmp = tempfile.mkdtemp()
    hw = a.hardware
    if not hw:
        hw = os.path.join(tmp, "hw.json")
        sh([a.flexh2o, "calibrate", "--device", a.device, "--offload-dir", a.offload_dir,
            "--out", hw])
    caps = ["--gpu-mem", a.gpu_mem, "--cpu-mem", a.cpu_mem, "--offload-dir", a.offload_dir]
    r = sh([a.flexh2o, "search", "--dummy", a.model, "--device", a.device, "--hardware", hw,
            "--prompt-len", str(a.prompt_len), "--gen-len", str(a.gen_len),
            "--max-block", str(a.max_block), "--top", str(a.top)] + caps)
    rows = []
    for line in r.stdout.splitlines():
        m = re.match(r"\s+(\d+)\s+(\d+) x (\d+)\s+(\d+)\s+" + r"(\S+)\s+" * 6 +
                     r"(yes|no)\s+([\d.]+)", line)
        if m:
            g = m.groups()
            rows.append(dict(name=f"search #{g[0]}", gbs=int(g[1]), k=int(g[2]),
                             pct=list(g[4:10]), attn=g[10] == "yes", pred=float(g[11])))
    if not rows:
        sys.exit("no candidates in:\n" + r.stdout)
    best = rows[0]
    # peers: the pick's KV and activations with other weight placements, and a
    # placement by hand
    kv_act = best["pct"][2:]
    peers = [("the pick, every weight on disk", ["0", "0"] + kv_act),
             ("the pick, weights 0/34/66", ["0", "34"] + kv_act),
             ("by hand: 10/40/50, KV 50/50", ["10", "40", "50", "50", "100", "0"])]
    for name, pct in peers:
        rows.append(dict(name=name, gbs=best["gbs"], k=best["k"], pct=pct, attn=False,
                         pred=None))

    N = best["gbs"] * best["k"]
    prompts = os.path.join(tmp, "p.jsonl")
    write_prompts(prompts, N, a.prompt_len)
    print(f"## policy search on {a.device}: {a.model}, prompt {a.prompt_len} + gen {a.gen_len}, "
          f"--gpu-mem {a.gpu_mem} --cpu-mem {a.cpu_mem}, block <= {a.max_block}\n")
    print("hardware profile: " + open(hw).read().strip() + "\n")
    print("| policy | block | --percent | cpu-attn | predicted bound tok/s | measured decode "
          "tok/s | measured total tok/s | total / bound |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        out = os.path.join(tmp, "o.jsonl")
        if os.path.exists(out):
            os.unlink(out)
        cmd = [a.flexh2o, "generate", "--dummy", a.model, "--prompts", prompts, "--out", out,
               "--device", a.device, "--gpu-batch-size", str(row["gbs"]),
               "--num-gpu-batches", str(row["k"]), "--max-new-tokens", str(a.gen_len),
               "--ignore-eos", "--percent"] + row["pct"] + caps
        if row["attn"]:
            cmd.append("--cpu-attention")
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            msg = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "failed"
            print(f"| {row['name']} | {row['gbs']}x{row['k']} | {' '.join(row['pct'])} | "
                  f"{'yes' if row['attn'] else 'no'} | - | refused: {msg} | | |")
            continue
        res = summary(p.stderr)
        dec, tot = res["decode_tps"], res["total_tps"]
        pred = f"{row['pred']:.2f}" if row["pred"] else "-"
        ratio = f"{tot / row['pred']:.2f}" if row["pred"] else "-"
        print(f"| {row['name']} | {row['gbs']}x{row['k']} | {' '.join(row['pct'])} | "
              f"{'yes' if row['attn'] else 'no'} | {pred} | {dec:.2f} | {tot:.2f} | {ratio} |",
              flush=True)


if __name__ == "__main__":
    main()
