"""Shared pieces of the benchmark scripts: running flexh2o, the synthetic
prompts every benchmark feeds (the same ids for the same index and length,
so runs compare), and the end-of-run summary line."""
import json
import math
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLEXH2O = os.path.join(ROOT, "build", "src", "flexh2o")


def sh(cmd, env=None):
    """Run cmd (with these variables added to the environment); exit with its stderr
    when it fails."""
    r = subprocess.run(cmd, capture_output=True, text=True,
                       env=dict(os.environ, **env) if env else None)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr.strip()}")
    return r


def prompt_ids(i, length):
    """Prompt i of the synthetic set: BOS then length - 1 ids spread over the vocabulary."""
    return [2] + [(i * 131 + j * 17) % 50000 + 4 for j in range(length - 1)]


def write_prompts(path, n, length):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": i, "prompt_ids": prompt_ids(i, length)}) + "\n")


def summary(stderr):
    """prefill / decode / total tok/s and token counts of generate's summary line."""
    m = re.search(r"prefill ([\d.]+) tok/s \((\d+) tokens\), decode ([\d.]+) tok/s \((\d+) "
                  r"tokens\), total ([\d.]+) generated tok/s in ([\d.]+) s", stderr)
    if not m:
        sys.exit("no summary line:\n" + stderr)
    return dict(prefill_tps=float(m.group(1)), prefill_tokens=int(m.group(2)),
                decode_tps=float(m.group(3)), decode_tokens=int(m.group(4)),
                total_tps=float(m.group(5)), total_s=float(m.group(6)))


def calibrate(flexh2o, device, offload_dir, nbytes="1G", out=None, extra=()):
    """`flexh2o calibrate`'s profile (GB/s, TFLOP/s) as a dict; also written to out if given.
    extra: more flags (--cpu-matmul bf16)."""
    cmd = [flexh2o, "calibrate", "--device", device, "--offload-dir", offload_dir,
           "--bytes", nbytes] + list(extra)
    r = sh(cmd + (["--out", out] if out else []))
    return json.load(open(out)) if out else json.loads(r.stdout)


def plan_tiers(cmd):
    """Bytes per tier of `flexh2o generate ... --plan` (cmd without --plan):
    {tier: {weights, kv, act, stage, work, total}} for tier in gpu, cpu, disk. The
    disk share of the weights read from a weight store as it is counts in the disk
    tier's weights (it is read from disk each step) and alone in disk["store"]; the
    disk KV's row logs (scheduler/kv_dirty.c: new rows not yet written back, not KV
    of their own) are left out of its kv and alone in disk["kv_log"]."""
    r = sh(cmd + ["--plan"])
    tiers = {}
    store = kv_log = 0.0
    for line in r.stdout.splitlines():
        m = re.search(r"disk share read from the weight store: ([\d.]+) GiB", line)
        if m:
            store = float(m.group(1)) * 2**30
        m = re.search(r"disk KV: ([\d.]+) GiB of it the records' row logs", line)
        if m:
            kv_log = float(m.group(1)) * 2**30
        m = re.match(r"\[flexh2o\] plan\s+(gpu|cpu|disk)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+"
                     r"([\d.]+)\s+([\d.]+)\s+([\d.]+)", line)
        if m:
            v = [float(x) * 2**30 for x in m.groups()[1:]]
            tiers[m.group(1)] = dict(weights=v[0], kv=v[1], act=v[2], stage=v[3], work=v[4],
                                     total=v[5])
    if "disk" in tiers:
        tiers["disk"]["weights"] += store
        tiers["disk"]["store"] = store
        tiers["disk"]["kv"] -= kv_log
        tiers["disk"]["kv_log"] = kv_log
    return tiers


def lowest_tier(tiers):
    """The slowest tier a plan puts weights, KV or activations on: disk, cpu or gpu."""
    for t in ("disk", "cpu"):
        if any(tiers.get(t, {}).get(k, 0) > 0 for k in ("weights", "kv", "act")):
            return t
    return "gpu"


def live_frac(prompt_len, gen_len, cap):
    """The share of a sequence's cap KV slots that a decode step reads, and moves where
    the cache is off the GPU, on average over the gen_len - 1 steps: step i (1..) reads
    the prompt_len + i - 1 slots in use and stores one more (scheduler/kv_dirty.c)."""
    steps = max(gen_len - 1, 1)
    return sum(min(prompt_len + i - 0.5, cap) for i in range(1, steps + 1)) / steps / cap


def kv_cap(prompt_len, gen_len, ratio=None):
    """The KV slots of a sequence: prompt + gen, or H2O's budget at --kv-ratio ratio
    (scheduler/kv_policy.c: ceil(ratio * (prompt + gen)))."""
    total = prompt_len + gen_len
    return total if ratio is None else min(total, math.ceil(ratio * total - 1e-9))


def live_of(flags, prompt_len, gen_len):
    """live_frac of a job run with the flexh2o flags `flags` (a list): H2O's budget
    where they give --kv-ratio, else the full cache."""
    ratio = float(flags[flags.index("--kv-ratio") + 1]) if "--kv-ratio" in flags else None
    return live_frac(prompt_len, gen_len, kv_cap(prompt_len, gen_len, ratio))


def bound(tiers, cal, N, n, cpu_attention, compute_step, compute_prefill, extra_step=None,
          host_visible=False, live=1.0):
    """DESIGN.md "Throughput bound" of a block of N sequences generating n tokens under
    the plan `tiers` (plan_tiers) with the link rates of `cal` (calibrate).

    compute_step / compute_prefill: the compute term, in seconds, of one decode step and
    of the prefill of the block (bench_offload.py: a measured all-resident run;
    tables.py: 2*params*N / the calibrated GEMM rate, the LM head once per sequence in
    the prefill). The KV terms count the slots in use of the whole block's cache: live
    (live_frac) of it on average; with CPU attention the KV does not cross the link.
    extra_step: further {name: seconds} terms of a decode step (the caller scales
    their KV by live).
    host_visible: the CPU backend, whose compute reads the CPU tier's weights where they
    lie and whose disk share is read straight into the weight slot (scheduler/cost.c):
    no weights cross the h2d link.
    @return dict(step, prefill, tps, terms, pre_terms): tps = N*n / (prefill + (n-1) step)."""
    w_cpu, w_disk = tiers["cpu"]["weights"], tiers["disk"]["weights"]
    w_link = 0 if host_visible else w_cpu + w_disk
    kv_cpu, kv_disk = tiers["cpu"]["kv"], tiers["disk"]["kv"]
    bw_h2d, bw_d2h = cal["h2d_GBps"] * 1e9, cal["d2h_GBps"] * 1e9
    bw_disk = cal["disk_read_GBps"] * 1e9
    kv_link_in = 0 if cpu_attention else (kv_cpu + kv_disk) * live
    terms = {
        "h2d (W_cpu+W_disk+KV in)": (w_link + kv_link_in) / bw_h2d,
        "d2h (KV out)": kv_link_in / bw_d2h,
        "disk (W_disk+KV_disk)": (w_disk + kv_disk * live) / bw_disk,
        "compute": compute_step,
    }
    terms.update(extra_step or {})
    pre_terms = {"h2d": w_link / bw_h2d, "disk": w_disk / bw_disk,
                 "compute": compute_prefill}
    step, pre = max(terms.values()), max(pre_terms.values())
    return dict(step=step, prefill=pre, tps=N * n / (pre + (n - 1) * step), terms=terms,
                pre_terms=pre_terms)
