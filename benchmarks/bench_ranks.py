#!/usr/bin/env python3
"""One job over MPI ranks against one process with the same cores, same machine, same run.

    python3 benchmarks/bench_ranks.py [--model opt-125m] [--prompts 32] [--prompt-len 64]
        [--gen-len 32] [--batch-size 8] [--cores 2] [--repeat 2] [--flexh2o build/src/flexh2o]

The same job (--prompts synthetic prompts of --prompt-len tokens, --gen-len greedy tokens
each, EOS ignored, --dummy weights of the model's shape, CPU backend, everything resident)
runs as
  A  one process with --threads C            (the peer: C cores, one block schedule)
  B  mpirun -n C, --threads 1 per rank       (C ranks, one core and one schedule each)
  C  mpirun -n 1 with --threads C            (A under mpirun: what the MPI layer costs)
with C = --cores. Each is run --repeat times, alternating, and the best kept. Reported:
wall seconds of the process (mpirun included: start-up, model load, the run), the job's
generated tok/s from its summary (every rank's tokens over rank 0's wall time of the run),
and the ratio to A. The outputs must be identical files (greedy, --batch-size 1 is not
needed for that here: the test suite checks bytes; this checks tokens).

Bound (DESIGN.md "Throughput bound"): everything is resident, so the step is compute-bound
and the bound is the compute floor: the fastest measured run of the same kernels on the
same cores. A is that floor by construction (its efficiency is 100%); B's efficiency is
B / A: what splitting the job by ranks instead of threads gains or loses. On a machine of
2 cores that is all the scaling a run can show; on a GPU node each rank gets its own GPU
and the plan in README "Scale-out" applies. Prints Markdown.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchlib import FLEXH2O, summary, write_prompts

MPIRUN_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def run(cmd, env=None):
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True,
                       env=dict(os.environ, **(env or {})))
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr.strip()}")
    return wall, r.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="opt-125m")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--flexh2o", default=FLEXH2O)
    a = ap.parse_args()
    if not shutil.which("mpirun"):
        sys.exit("no mpirun: install openmpi-bin (and build with -Dmpi)")
    tmp = tempfile.mkdtemp()
    prompts = os.path.join(tmp, "p.jsonl")
    write_prompts(prompts, a.prompts, a.prompt_len)
    C = a.cores

    def gen(tag, threads):
        out = os.path.join(tmp, tag + ".jsonl")
        if os.path.exists(out):
            os.remove(out)
        return out, [a.flexh2o, "generate", "--dummy", a.model, "--prompts", prompts,
                     "--out", out, "--device", "cpu", "--batch-size", str(a.batch_size),
                     "--max-new-tokens", str(a.gen_len), "--ignore-eos", "--quiet",
                     "--threads", str(threads)]

    configs = {
        "A": (f"1 process x {C} threads", lambda: gen("A", C), None),
        "B": (f"mpirun -n {C} x 1 thread", lambda: gen("B", 1), C),
        "C": (f"mpirun -n 1 x {C} threads", lambda: gen("C", C), 1),
    }
    best = {}
    for rep in range(a.repeat):
        for key, (label, make, ranks) in configs.items():
            out, cmd = make()
            env = {"OMP_WAIT_POLICY": "passive"}
            if ranks:
                cmd = ["mpirun", "--oversubscribe", "-n", str(ranks), "-x",
                       "OMP_WAIT_POLICY=passive"] + cmd
                env.update(MPIRUN_ENV)
            wall, err = run(cmd, env)
            s = summary(err)
            with open(out) as f:
                toks = [json.loads(l)["tokens"] for l in f]
            if key not in best or s["total_tps"] > best[key]["total_tps"]:
                best[key] = dict(s, wall=wall, label=label, toks=toks)
    same = all(best[k]["toks"] == best["A"]["toks"] for k in best)
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    print(f"## {a.model} --dummy, CPU backend, {a.prompts} prompts x ({a.prompt_len} + "
          f"{a.gen_len}) tokens, --batch-size {a.batch_size}, {C} cores\n")
    print(f"{os.cpu_count()} cores ({cpu}), {time.strftime('%Y-%m-%d', time.gmtime())}; best "
          f"of {a.repeat} alternating runs each; outputs {'identical' if same else 'DIFFER'}\n")
    print("| run | wall s (process) | run s | generated tok/s | prefill tok/s | decode tok/s |"
          " vs A (= efficiency vs the compute floor) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for k in "ABC":
        b = best[k]
        print(f"| {k}: {b['label']} | {b['wall']:.2f} | {b['total_s']:.2f} | "
              f"{b['total_tps']:.1f} | {b['prefill_tps']:.1f} | {b['decode_tps']:.1f} | "
              f"{b['total_tps'] / best['A']['total_tps']:.2f} |")
    shutil.rmtree(tmp)
    if not same:
        sys.exit("the runs' tokens differ")


if __name__ == "__main__":
    main()
