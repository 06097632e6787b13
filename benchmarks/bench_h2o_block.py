#!/usr/bin/env python3
"""H2O against full attention under the same memory cap: the largest block that fits
and the throughput at that block, same machine, same run.

    python3 benchmarks/bench_h2o_block.py [--model opt-125m] [--device cpu] [--gpu-mem 700M]
        [--prompt-len 128] [--gen-len 32] [--kv-ratio 0.2] [--percent "100 0 100 0 100 0"]
        [--max-batch 256] [--flexh2o build/src/flexh2o]

For each KV policy (full, and h2o with --kv-ratio R), `generate --plan` is asked
for ever larger --gpu-batch-size (one GPU batch per block) under --gpu-mem until
the plan is refused (bisection); then both run at their largest block with dummy
weights, EOS ignored, and the summary lines are compared. Prints Markdown.
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
    ap.add_argument("--model", default="opt-125m")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gpu-mem", default="700M")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--kv-ratio", default="0.2")
    ap.add_argument("--percent", default="100 0 100 0 100 0")
    ap.add_argument("--offload-dir", default="/tmp/flexh2o-offload")
    ap.add_argument("--max-batch", type=int, default=256)
    ap.add_argument("--extra", default="", help="more generate flags for both runs, e.g. "
                    "\"--compress-weight\"")
    ap.add_argument("--flexh2o", default=FLEXH2O)
    a = ap.parse_args()
    os.makedirs(a.offload_dir, exist_ok=True)
    tmp = tempfile.mkdtemp()
    prompts = os.path.join(tmp, "p.jsonl")
    write_prompts(prompts, a.max_batch, a.prompt_len)
    policies = {"full": [], f"h2o {a.kv_ratio}": ["--kv-policy", "h2o", "--kv-ratio", a.kv_ratio]}

    def cmd(kv, B, out, n_prompts):
        p = os.path.join(tmp, f"p{n_prompts}.jsonl")
        if not os.path.exists(p):
            with open(prompts) as f, open(p, "w") as g:
                g.writelines(f.readlines()[:n_prompts])
        return [a.flexh2o, "generate", "--dummy", a.model, "--prompts", p, "--out", out,
                "--device", a.device, "--gpu-batch-size", str(B), "--max-new-tokens",
                str(a.gen_len), "--ignore-eos", "--gpu-mem", a.gpu_mem, "--percent",
                *a.percent.split(), "--offload-dir", a.offload_dir] + a.extra.split() + kv

    def fits(kv, B):
        r = subprocess.run(cmd(kv, B, os.path.join(tmp, "x.jsonl"), B) + ["--plan"],
                           capture_output=True, text=True)
        if r.returncode not in (0, 1):
            sys.exit(r.stderr)
        return r.returncode == 0

    rows = []
    for name, kv in policies.items():
        lo, hi = 0, a.max_batch + 1  # fits(lo), not fits(hi)
        if not fits(kv, 1):
            sys.exit(f"{name}: not even one sequence fits under --gpu-mem {a.gpu_mem}")
        lo = 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(kv, mid) else (lo, mid)
        out = os.path.join(tmp, name.replace(" ", "_") + ".jsonl")
        r = subprocess.run(cmd(kv, lo, out, lo), capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(r.stderr)
        m = re.search(r"prefill ([\d.]+) tok/s .*decode ([\d.]+) tok/s .*total ([\d.]+) "
                      r"generated tok/s in ([\d.]+) s", r.stderr)
        mem = re.search(r"peak memory: gpu ([\d.]+) GiB", r.stderr)
        slots = re.search(r"KV cache of (\d+) slots", r.stderr)
        rows.append((name, lo, float(m.group(1)), float(m.group(2)), float(m.group(3)),
                     float(m.group(4)), float(mem.group(1)),
                     slots.group(1) if slots else str(a.prompt_len + a.gen_len)))
    print(f"## {a.model} on {a.device}, --gpu-mem {a.gpu_mem}, --percent {a.percent} "
          f"{a.extra}, prompt {a.prompt_len} + gen {a.gen_len}\n")
    print("| KV policy | KV slots / seq | largest block | GPU tier GiB | prefill tok/s | "
          "decode tok/s | total tok/s | time s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[7]} | {r[1]} | {r[6]:.3f} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.1f} "
              f"| {r[5]:.1f} |")
    f, h = rows[0], rows[1]
    print(f"\nH2O {a.kv_ratio}: {h[1] / f[1]:.1f}x the block, {h[4] / f[4]:.2f}x the total "
          f"throughput and {h[3] / f[3]:.2f}x the decode throughput of full, same cap.")


if __name__ == "__main__":
    main()
