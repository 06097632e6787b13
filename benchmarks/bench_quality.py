#!/usr/bin/env python3
"""What H2O costs in quality (issue 13 part 5): streaming perplexity of a model on
held-out text under every KV policy, as `flexh2o eval` measures it.

    python3 benchmarks/bench_quality.py [--model configs/kjv-llama]
        [--text configs/kjv-llama/heldout.txt] [--context 1024] [--max-windows 24]
        [--out benchmarks/results/cpu-DATE/quality-kjv-llama] [--flexh2o build/src/flexh2o]

Writes, under --out: seed004.md and seed004.csv (the Pythia H2O + StreamingLLM
patch's table on this model: full, streaming_8_256, h2o_8_32_256, h2o_8_64_512,
then the same shapes scaled to the context: budgets of 25% and 50% of it), and
budget.md, budget.csv, budget.png, agreement.png (perplexity, top-1 agreement
with the full cache and KL against it at budgets of 5, 10, 20, 40, 60% of the
context for h2o, window, streaming with 0 and 4 sinks, and h2o with 4-bit KV).
Every row is one `flexh2o eval` run; the command of each is in commands.txt.
"""
import argparse
import csv
import json
import os
import subprocess
import sys

from benchlib import FLEXH2O, ROOT


def run_eval(a, flags, log):
    cmd = [a.flexh2o, "eval", "--model", a.model, "--text", a.text, "--context",
           str(a.context), "--batch-size", str(a.batch), "--quiet"] + \
          (["--max-windows", str(a.max_windows)] if a.max_windows else []) + flags
    log.write(" ".join(cmd) + "\n")
    log.flush()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr.strip()}")
    return json.loads(r.stdout)


def table(path_md, path_csv, rows, cols, title):
    with open(path_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow([r.get(c, "") for c in cols])
    with open(path_md, "w") as f:
        f.write(title + "\n\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n")
        for r in rows:
            cells = []
            for c in cols:
                v = r.get(c, "")
                cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
            f.write("| " + " | ".join(cells) + " |\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "configs", "kjv-llama"))
    ap.add_argument("--text", default=os.path.join(ROOT, "configs", "kjv-llama", "heldout.txt"))
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--max-windows", type=int, default=0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "local",
                                                  "quality"))
    ap.add_argument("--flexh2o", default=FLEXH2O)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    log = open(os.path.join(a.out, "commands.txt"), "w")
    C = a.context

    # (a) seed 004's table, and its shapes scaled to this context
    seed = [("full", []),
            ("streaming_8_256", ["--kv-policy", "streaming", "--kv-budget", "264", "--sinks", "8"]),
            ("h2o_8_32_256", ["--kv-policy", "h2o", "--kv-budget", "256", "--sinks", "8",
                              "--recent", "32"]),
            ("h2o_8_64_512", ["--kv-policy", "h2o", "--kv-budget", "512", "--sinks", "8",
                              "--recent", "64"])]
    for pct in (25, 50):
        b = C * pct // 100
        seed.append((f"streaming_8_{b - 8} ({pct}%)",
                     ["--kv-policy", "streaming", "--kv-budget", str(b), "--sinks", "8"]))
        seed.append((f"h2o_8_{b // 8}_{b} ({pct}%)",
                     ["--kv-policy", "h2o", "--kv-budget", str(b), "--sinks", "8", "--recent",
                      str(b // 8)]))
    rows = []
    for name, flags in seed:
        r = run_eval(a, flags, log)
        rows.append({"config": name, "budget": r["budget"], "ppl": r["ppl"],
                     "tok_s": r["tok_s"], "kv_MiB": r["kv_bytes"] / 2**20,
                     "windows": r["windows"], "tokens": r["tokens"]})
        print(rows[-1], flush=True)
    table(os.path.join(a.out, "seed004.md"), os.path.join(a.out, "seed004.csv"), rows,
          ["config", "budget", "ppl", "tok_s", "kv_MiB", "windows", "tokens"],
          f"# Seed 004's configurations on {os.path.basename(a.model.rstrip('/'))}, "
          f"held-out text, context {C}")

    # (b, c) perplexity, agreement and KL against the budget
    pols = [("h2o", ["--kv-policy", "h2o"]), ("window", ["--kv-policy", "window"]),
            ("streaming", ["--kv-policy", "streaming"]),
            ("streaming+4", ["--kv-policy", "streaming", "--sinks", "4"]),
            ("h2o 4-bit KV", ["--kv-policy", "h2o", "--compress-cache"])]
    full = run_eval(a, ["--compare-full", "--kv-policy", "h2o", "--kv-budget", str(C)], log)
    rows = []
    for pct in (5, 10, 20, 40, 60):
        b = max(2, C * pct // 100)
        row = {"budget_pct": pct, "budget": b, "full": full["ppl"]}
        for name, flags in pols:
            r = run_eval(a, flags + ["--kv-budget", str(b), "--compare-full"], log)
            row[name] = r["ppl"]
            row[name + " agree"] = r["agreement"]
            row[name + " kl"] = r["kl"]
        rows.append(row)
        print(row, flush=True)
    cols = ["budget_pct", "budget", "full"] + [p for p, _ in pols] + \
           [p + " agree" for p, _ in pols] + [p + " kl" for p, _ in pols]
    table(os.path.join(a.out, "budget.md"), os.path.join(a.out, "budget.csv"), rows, cols,
          f"# Perplexity, top-1 agreement and KL(full || policy) against the KV budget, "
          f"context {C}")
    gp = os.path.join(a.out, "plots.gp")
    with open(gp, "w") as f:
        f.write(f"""set datafile separator ','
set terminal pngcairo size 900,560
set key top right
set xlabel 'KV budget (% of the {C}-token context)'
set output '{a.out}/budget.png'
set ylabel 'perplexity (held-out)'
plot """ + ", ".join(f"'{a.out}/budget.csv' every ::1 using 1:{i + 3} with linespoints "
                       f"title '{n}'" for i, n in enumerate(['full'] + [p for p, _ in pols])) +
                f"""
set output '{a.out}/agreement.png'
set ylabel 'top-1 agreement with the full cache'
plot """ + ", ".join(f"'{a.out}/budget.csv' every ::1 using 1:{i + 4 + len(pols)} with "
                       f"linespoints title '{n}'" for i, (n, _) in enumerate(pols)) + "\n")
    subprocess.run(["gnuplot", gp], check=False)


if __name__ == "__main__":
    main()
