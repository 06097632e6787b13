#!/usr/bin/env python3
"""vm_noise.py: how steady is this machine's matmul rate, second by second?

A grid cell is one run, so its ratio to a peer run minutes later is only as good as
the machine is steady over those minutes. On shared VMs the rate of the matrix
units can swing with a neighbour's load while a scalar loop stays put (the Xeon VM
of 2026-12-05: torch bf16 matmuls of 2048 x 2048 x 8192 on 2 threads at 0.52-1.64
TFLOP/s within 45 s). Run this before a sitting (and after) and keep its output
beside the results:

    /work/venv-hf/bin/python benchmarks/vm_noise.py --seconds 45 [--dtype bfloat16]

Prints one line per sample (seconds since start, TFLOP/s) and a summary line:
min / median / max and max / min. Needs torch (the peers' venv).
"""
import argparse
import statistics
import time

import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=45.0)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--threads", type=int, default=0, help="default: torch's")
    ap.add_argument("--m", type=int, default=2048)
    ap.add_argument("--k", type=int, default=2048)
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--reps", type=int, default=10, help="matmuls per sample")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dt = getattr(torch, a.dtype)
    x = torch.randn(a.m, a.k, dtype=dt)
    w = torch.randn(a.k, a.n, dtype=dt)
    for _ in range(3):  # warm-up: oneDNN's kernel choice, pages
        x @ w
    flop = 2.0 * a.m * a.k * a.n * a.reps
    t0 = time.perf_counter()
    rates = []
    while time.perf_counter() - t0 < a.seconds:
        t = time.perf_counter()
        for _ in range(a.reps):
            x @ w
        d = time.perf_counter() - t
        rates.append(flop / d / 1e12)
        print(f"{t - t0:6.1f} s  {rates[-1]:.3f} TFLOP/s", flush=True)
    lo, med, hi = min(rates), statistics.median(rates), max(rates)
    print(f"{a.dtype} {a.m}x{a.k}x{a.n} on {torch.get_num_threads()} threads, "
          f"{len(rates)} samples over {a.seconds:.0f} s: min {lo:.3f} median {med:.3f} "
          f"max {hi:.3f} TFLOP/s, max/min {hi / lo:.2f}")


if __name__ == "__main__":
    main()
