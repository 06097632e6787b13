#!/usr/bin/env python3
"""bench_torch_layer.py: torch's side of bench_cpu_linear's bf16 rows: one OPT layer's
four linear layers (fused QKV 3h x h, out h x h, fc1 4h x h, fc2 h x 4h) as
torch.nn.functional.linear in bfloat16 (oneDNN's matmuls, torch's own oneDNN) on 2
threads, median of 5, in ms per layer. Run it alternated with

    build/benchmarks/flexh2o-bench-cpu-linear --rows ROWS --hidden H

on a VM whose matmul rate moves (benchmarks/vm_noise.py):

    /work/venv-hf/bin/python benchmarks/bench_torch_layer.py ROWS H
"""
import statistics
import sys
import time

import torch


def main():
    rows, h = int(sys.argv[1]), int(sys.argv[2])
    reps = 5
    torch.set_num_threads(2)
    shapes = [(3 * h, h), (h, h), (4 * h, h), (h, 4 * h)]
    ws = [torch.randn(n, k, dtype=torch.bfloat16) for n, k in shapes]
    xs = [torch.randn(rows, k, dtype=torch.bfloat16) for n, k in shapes]

    def layer():
        for x, w in zip(xs, ws):
            torch.nn.functional.linear(x, w)

    layer()  # warm-up: oneDNN's kernel choice
    t = []
    for _ in range(reps):
        a = time.perf_counter()
        layer()
        t.append((time.perf_counter() - a) * 1e3)
    print(f"torch bf16 linear, {rows} rows, hidden {h}: {statistics.median(t):.1f} ms / layer "
          f"(median of {reps})")


if __name__ == "__main__":
    main()
