"""Shared pieces of the benchmark scripts: running flexh2o, the synthetic
prompts every benchmark feeds (the same ids for the same index and length,
so runs compare), and the end-of-run summary line."""
import json
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
