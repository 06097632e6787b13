#!/usr/bin/env python3
"""4-bit compression against the uncompressed engine, same policy, same run.

    python3 benchmarks/bench_compress.py --model opt-1.3b --device cpu \
        --percent "0 0 100 0 100 0" --gpu-batch-size 8 --num-gpu-batches 2 \
        --prompt-len 32 --gen-len 8 --offload-dir /tmp/off [--modes none,weight,both]
        [--gpu-mem 16G] [--cpu-attention] [--threads N]

Runs benchmarks/bench_offload.py once per mode (none = uncompressed, weight =
--compress-weight, cache = --compress-cache, both), one after the other in this
invocation, and prints each report (calibration, plan, the run, its compute
floor with the same flags, the bound of DESIGN.md from the plan's compressed
bytes) and then one table: decode and whole-generation tok/s, their ratio to
the uncompressed run of this invocation, and the efficiency against each
mode's own bound. Prints Markdown.
"""
import argparse
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", default="none,weight,both")
    a, rest = ap.parse_known_args()
    modes = a.modes.split(",")
    rows = []
    for mode in modes:
        r = subprocess.run([sys.executable, os.path.join(HERE, "bench_offload.py"),
                            "--compress", mode] + rest, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"bench_offload --compress {mode} failed:\n{r.stdout}{r.stderr}")
        print(f"### --compress {mode}\n")
        print(r.stdout)
        off = re.search(r"\| offloaded \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|",
                        r.stdout)
        eff = re.search(r"decode efficiency (\d+)% of the bound; whole generation (\d+)%",
                        r.stdout)
        links = re.search(r"links of the offloaded run: (.*)", r.stdout)
        if not off or not eff:
            sys.exit("cannot read the report of --compress " + mode)
        rows.append(dict(mode=mode, decode=float(off.group(3)), total=float(off.group(4)),
                         eff_dec=int(eff.group(1)), eff_tot=int(eff.group(2)),
                         links=links.group(1) if links else ""))
    ref = next((r for r in rows if r["mode"] == "none"), None)
    print("### summary\n")
    print("| mode | decode tok/s | vs none | total tok/s | vs none | decode % of bound | "
          "total % of bound | links |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        vs_d = f"{r['decode'] / ref['decode']:.2f}x" if ref else "-"
        vs_t = f"{r['total'] / ref['total']:.2f}x" if ref else "-"
        print(f"| {r['mode']} | {r['decode']:.2f} | {vs_d} | {r['total']:.2f} | {vs_t} | "
              f"{r['eff_dec']}% | {r['eff_tot']}% | {r['links']} |")


if __name__ == "__main__":
    main()
