#!/usr/bin/env python3
"""How much does disk I/O alone slow the compute on this machine?

    python3 benchmarks/bench_io_interference.py --model opt-1.3b --offload-dir /tmp/off \
        [--gpu-batch-size 8 --num-gpu-batches 2 --prompt-len 32 --gen-len 8] [--threads 1]

The offloaded schedule can only reach max(disk, compute) when reading the disk
leaves the compute alone. This runs the same all-resident generation (no
transfers of its own) twice per thread count, in the same session:
  - alone;
  - next to an independent reader: `dd iflag=direct bs=4M` over a file of the
    model's weight size in --offload-dir, looping until the run ends.
The decode slowdown is what the machine charges for disk traffic, whatever
the scheduler does; the reader's own rate is printed too. Prints Markdown.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from benchlib import FLEXH2O, sh, summary, write_prompts


def generate(a, prompts, threads):
    out = tempfile.mktemp(suffix=".jsonl")
    cmd = [a.flexh2o, "generate", "--dummy", a.model, "--prompts", prompts, "--out", out,
           "--device", "cpu", "--gpu-batch-size", str(a.gpu_batch_size),
           "--num-gpu-batches", str(a.num_gpu_batches), "--max-new-tokens", str(a.gen_len),
           "--ignore-eos"]
    if threads:
        cmd += ["--threads", str(threads)]
    res = summary(sh(cmd).stderr)
    os.unlink(out)
    return res["prefill_tps"], res["decode_tps"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="opt-1.3b")
    ap.add_argument("--gpu-batch-size", type=int, default=8)
    ap.add_argument("--num-gpu-batches", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--gen-len", type=int, default=8)
    ap.add_argument("--offload-dir", default="/tmp/flexh2o-offload")
    ap.add_argument("--read-gib", type=float, default=2.0,
                    help="size of the file the reader loops over")
    ap.add_argument("--threads", default="0,1",
                    help="compute thread counts to try, 0 = every core")
    ap.add_argument("--flexh2o", default=FLEXH2O)
    a = ap.parse_args()
    os.makedirs(a.offload_dir, exist_ok=True)
    N = a.gpu_batch_size * a.num_gpu_batches
    tmp = tempfile.mkdtemp()
    prompts = os.path.join(tmp, "p.jsonl")
    write_prompts(prompts, N, a.prompt_len)
    blob = os.path.join(a.offload_dir, "interference.bin")
    mib = int(a.read_gib * 1024)
    subprocess.run(["dd", "if=/dev/urandom", f"of={blob}", "bs=1M", f"count={mib}",
                    "oflag=direct", "status=none"], check=True)
    print(f"## disk I/O next to compute: {a.model} all-resident on cpu, block "
          f"{a.gpu_batch_size}x{a.num_gpu_batches}, prompt {a.prompt_len}, gen {a.gen_len}, "
          f"{os.cpu_count()} cores\n")
    print("| compute threads | reader | prefill tok/s | decode tok/s | decode vs alone | "
          "reader GB/s |")
    print("|---|---|---|---|---|---|")
    try:
        for th in [int(x) for x in a.threads.split(",")]:
            alone = generate(a, prompts, th)
            print(f"| {th or 'all'} | none | {alone[0]:.1f} | {alone[1]:.2f} | 1.00 | - |",
                  flush=True)
            log = os.path.join(tmp, "dd.log")
            reader = subprocess.Popen(
                ["bash", "-c", f"while :; do dd if={blob} of=/dev/null bs=4M iflag=direct "
                 f"2>>{log} || exit; done"], start_new_session=True)
            t0 = time.time()
            busy = generate(a, prompts, th)
            dt = time.time() - t0
            os.killpg(reader.pid, 15)
            reader.wait()
            loops = open(log).read().count("copied") if os.path.exists(log) else 0
            os.unlink(log) if os.path.exists(log) else None
            gbps = loops * mib * 2**20 / dt / 1e9
            print(f"| {th or 'all'} | dd O_DIRECT | {busy[0]:.1f} | {busy[1]:.2f} | "
                  f"{busy[1] / alone[1]:.2f} | {gbps:.2f} (whole passes) |", flush=True)
    finally:
        os.unlink(blob)


if __name__ == "__main__":
    main()
