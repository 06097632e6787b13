#!/usr/bin/env python3
"""bench_sdpa.py: the peer of flexh2o-bench-kernels' prefill attention rows.

    python3 benchmarks/bench_sdpa.py [--device cuda]

Times torch.nn.functional.scaled_dot_product_attention (causal, fp16, the
fused kernel PyTorch picks: FlashAttention-2 or memory-efficient) on the
shapes of bench_kernels.c case 5 -- 16 and 64 prompts of 512 tokens, 32
heads of 128 (OPT-6.7B), and 32 query heads over 8 KV heads (Llama-3-8B,
enable_gqa) -- in its own layout (batch, heads, tokens, head_dim), so the
peer runs at its best. Median over repeats of 20 back-to-back calls closed
by a device sync, like bench_kernels.c. Prints Markdown rows in that
program's table format (rate: the causal half of Q K^T and P V). SDPA
computes no column sums: compare with the flash rows without them.
"""
import argparse
import statistics
import time

import torch
import torch.nn.functional as F

CASES = [(16, 512, 32, 32), (64, 512, 32, 32), (16, 512, 32, 8)]


def time_ms(fn, warm=2, reps=10, inner=20):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t0) * 1e3 / inner)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--head-dim", type=int, default=128)
    a = ap.parse_args()
    dev, hd = torch.device(a.device), a.head_dim
    print(f"## torch {torch.__version__} SDPA on {torch.cuda.get_device_name(dev)}\n")
    print("| measurement | shape | time (ms) | achieved |")
    print("|---|---|---|---|")
    for n_seq, n, h, kvh in CASES:
        g = torch.Generator(device=dev).manual_seed(10)
        q = torch.rand(n_seq, h, n, hd, device=dev, dtype=torch.float16, generator=g) * 2 - 1
        k = torch.rand(n_seq, kvh, n, hd, device=dev, dtype=torch.float16, generator=g) * 2 - 1
        v = torch.rand(n_seq, kvh, n, hd, device=dev, dtype=torch.float16, generator=g) * 2 - 1
        kw = {"enable_gqa": True} if kvh != h else {}

        def run():
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, **kw)

        out = run()
        torch.cuda.synchronize()
        if not torch.isfinite(out).all():
            raise SystemExit("SDPA left non-finite output")
        ms = time_ms(run)
        flop = 4.0 * n * (n + 1) / 2 * hd * h * n_seq
        print(f"| prefill attention, torch SDPA (causal) | {n_seq} seqs x {n} tokens, {h} heads "
              f"over {kvh} x {hd} | {ms:.3f} | {flop / (ms * 1e-3) / 1e12:.1f} TFLOP/s |")
        del q, k, v, out


if __name__ == "__main__":
    main()
