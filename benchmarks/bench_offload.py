#!/usr/bin/env python3
"""Offloaded decode throughput against the bound of DESIGN.md, same machine, same run.

    python3 benchmarks/bench_offload.py --model opt-1.3b --device cpu \
        --percent "0 0 100 0 100 0" --gpu-batch-size 8 --num-gpu-batches 2 \
        --prompt-len 32 --gen-len 8 --offload-dir /tmp/off [--gpu-mem 16G] [--cpu-attention]
        [--kv "--kv-policy h2o --kv-ratio 0.2"] [--threads N] [--flexh2o build/src/flexh2o]
        [--compress none|weight|cache|both] [--io-order-ab]
    python3 benchmarks/bench_offload.py --policy policy.json ...   # e.g. what `flexh2o search` wrote

Steps, all measured in this run (nothing extrapolated):
  1. `flexh2o calibrate`: disk read/write (disk engine, O_DIRECT), host->device,
     device->host, host memory, in GB/s.
  2. `flexh2o generate --plan`: the bytes of every tier under the policy.
  3. the policy's run, and the same block shape all-resident (--percent 100 0 100 0
     100 0) as the compute floor, both with --dummy weights and EOS ignored.
Bound (DESIGN.md "Throughput bound"), per decode step of the block:
  T_step >= max(W_cpu+W_disk + KV_cpu+KV_disk) / BW_h2d, (W_disk + KV_disk) / BW_disk,
               KV_out / BW_d2h, compute)
where compute = the all-resident run's step time (the same kernels and block, no
transfers) - a measured floor, not a datasheet FLOP rate. The KV terms count
the cache of the whole block (a decode step reads all of it). On the CPU
backend "h2d" is a memcpy into the compute arena. T_prefill likewise with the
all-resident prefill time. Efficiency = measured / bound, for decode tok/s and
for the whole generation (N*n / (T_prefill + (n-1) T_step)).
--threads N gives the offloaded run N compute threads (on a small CPU machine the
disk I/O needs a core of its own); the floor always uses every core, so the bound
stays the fastest all-resident compute.
--io-order-ab runs the offloaded policy a second time with FLEXH2O_IO_ORDER=host (CPU-tier
copies ordered by the I/O threads, the earlier design) as the peer of the default
(device-ordered on CUDA) and prints both with their ratio.
Prints Markdown.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

from benchlib import FLEXH2O, bound, calibrate, live_of, plan_tiers, sh, summary, write_prompts


def run(base, percent, extra, env=None):
    r = sh(base + ["--percent"] + percent.split() + extra, env)
    links = {l.group(1): (float(l.group(2)), float(l.group(3)))
             for l in re.finditer(r"link (\S+)\s+([\d.]+) GiB moved,\s+([\d.]+) GB/s", r.stderr)}
    return dict(summary(r.stderr), links=links, stderr=r.stderr)


COMPRESS = {"none": [], "weight": ["--compress-weight"], "cache": ["--compress-cache"],
            "both": ["--compress-weight", "--compress-cache"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="opt-1.3b")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--percent", default="0 0 100 0 100 0")
    ap.add_argument("--gpu-batch-size", type=int, default=8)
    ap.add_argument("--num-gpu-batches", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--gen-len", type=int, default=8)
    ap.add_argument("--offload-dir", default="/tmp/flexh2o-offload")
    ap.add_argument("--gpu-mem", default=None)
    ap.add_argument("--cpu-attention", action="store_true")
    ap.add_argument("--kv", default="", help="extra KV-policy flags for both runs")
    ap.add_argument("--compress", default="none", choices=list(COMPRESS),
                    help="4-bit weights and/or KV, for the plan, the run and the floor")
    ap.add_argument("--policy", default=None,
                    help="take block shape, --percent and CPU attention from a policy file")
    ap.add_argument("--threads", type=int, default=0,
                    help="compute threads of the offloaded run (default: every core)")
    ap.add_argument("--io-order-ab", action="store_true",
                    help="also run the policy with FLEXH2O_IO_ORDER=host as the peer")
    ap.add_argument("--flexh2o", default=FLEXH2O)
    a = ap.parse_args()
    if a.policy:
        pol = json.load(open(a.policy))
        a.gpu_batch_size = pol.get("gpu_batch_size", a.gpu_batch_size)
        a.num_gpu_batches = pol.get("num_gpu_batches", a.num_gpu_batches)
        if "percent" in pol:
            a.percent = " ".join(f"{v:g}" for v in pol["percent"])
        a.cpu_attention = pol.get("cpu_attention", a.cpu_attention)
    os.makedirs(a.offload_dir, exist_ok=True)
    N = a.gpu_batch_size * a.num_gpu_batches
    cal = calibrate(a.flexh2o, a.device, a.offload_dir)
    tmp = tempfile.mkdtemp()
    prompts = os.path.join(tmp, "p.jsonl")
    write_prompts(prompts, N, a.prompt_len)

    def base(tag):
        out = os.path.join(tmp, tag + ".jsonl")
        cmd = [a.flexh2o, "generate", "--dummy", a.model, "--prompts", prompts, "--out", out,
               "--device", a.device, "--gpu-batch-size", str(a.gpu_batch_size),
               "--num-gpu-batches", str(a.num_gpu_batches), "--max-new-tokens", str(a.gen_len),
               "--ignore-eos", "--offload-dir", a.offload_dir] + a.kv.split() + \
            COMPRESS[a.compress]
        if a.gpu_mem:
            cmd += ["--gpu-mem", a.gpu_mem]
        return cmd

    extra = ["--cpu-attention"] if a.cpu_attention else []
    if a.threads:
        extra += ["--threads", str(a.threads)]
    tiers = plan_tiers(base("plan") + ["--percent"] + a.percent.split())
    off = run(base("off"), a.percent, extra)
    host = run(base("host"), a.percent, extra, {"FLEXH2O_IO_ORDER": "host"}) \
        if a.io_order_ab else None
    # the compute floor runs without the cap: it measures the kernels, not a policy
    res_cmd = base("res")
    if a.gpu_mem:
        i = res_cmd.index("--gpu-mem")
        del res_cmd[i:i + 2]
    res = run(res_cmd, "100 0 100 0 100 0", [])
    n = a.gen_len
    steps = n - 1
    t_step = N / off["decode_tps"]
    t_step_res = N / res["decode_tps"]
    t_pre = off["prefill_tokens"] / off["prefill_tps"]
    t_pre_res = res["prefill_tokens"] / res["prefill_tps"]
    b = bound(tiers, cal, N, n, a.cpu_attention, t_step_res, t_pre_res,
              host_visible=a.device == "cpu", live=live_of(a.kv.split(), a.prompt_len, n))
    terms = {k.replace("compute", "compute (all-resident step)"): v
             for k, v in b["terms"].items()}
    bound_step, bound_pre, bound_tps = b["step"], b["prefill"], b["tps"]
    meas_tps = N * n / (t_pre + steps * t_step)
    print(f"## {a.model} {a.device}, block {a.gpu_batch_size}x{a.num_gpu_batches}, "
          f"prompt {a.prompt_len}, gen {n}, --percent {a.percent}"
          f"{' --cpu-attention' if a.cpu_attention else ''}"
          f"{f' --threads {a.threads}' if a.threads else ''} {a.kv}"
          f"{' ' + ' '.join(COMPRESS[a.compress]) if a.compress != 'none' else ''}\n")
    print("calibration (GB/s): " + ", ".join(f"{k} {v}" for k, v in cal.items()) + "\n")
    print("| tier | weights GiB | KV GiB | act GiB | staging GiB | work GiB |")
    print("|---|---|---|---|---|---|")
    for t in ("gpu", "cpu", "disk"):
        v = tiers[t]
        print(f"| {t} | {v['weights']/2**30:.3f} | {v['kv']/2**30:.3f} | {v['act']/2**30:.3f} "
              f"| {v['stage']/2**30:.3f} | {v['work']/2**30:.3f} |")
    print("\nbound terms of one decode step (s): " +
          ", ".join(f"{k} {v:.3f}" for k, v in terms.items()))
    print("\n| run | prefill s | decode step s | decode tok/s | total tok/s |")
    print("|---|---|---|---|---|")
    print(f"| all-resident (compute floor) | {t_pre_res:.2f} | {t_step_res:.3f} | "
          f"{res['decode_tps']:.2f} | {N*n/(t_pre_res+steps*t_step_res):.2f} |")
    order = re.search(r"CPU-tier copies: ([\w -]+)", off["stderr"])
    print(f"| offloaded ({order.group(1) if order else '?'}) | {t_pre:.2f} | {t_step:.3f} | "
          f"{off['decode_tps']:.2f} | {meas_tps:.2f} |")
    if host:
        h_step = N / host["decode_tps"]
        h_pre = host["prefill_tokens"] / host["prefill_tps"]
        print(f"| offloaded (FLEXH2O_IO_ORDER=host) | {h_pre:.2f} | {h_step:.3f} | "
              f"{host['decode_tps']:.2f} | {N*n/(h_pre+steps*h_step):.2f} |")
    print(f"| bound | {bound_pre:.2f} | {bound_step:.3f} | {N/bound_step:.2f} | {bound_tps:.2f} |")
    print(f"\ndecode efficiency {100*bound_step/t_step:.0f}% of the bound; whole generation "
          f"{100*meas_tps/bound_tps:.0f}%\n")
    if host:
        print(f"default / FLEXH2O_IO_ORDER=host, decode tok/s: "
              f"{off['decode_tps'] / host['decode_tps']:.2f}x (same run)\n")
    print("links of the offloaded run: " + ", ".join(
        f"{k} {v[0]:.2f} GiB at {v[1]:.2f} GB/s" for k, v in off["links"].items()))


if __name__ == "__main__":
    main()
