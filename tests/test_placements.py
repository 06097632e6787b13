#!/usr/bin/env python3
"""tests/test_placements.py: random jobs run twice, all-resident and under a random
placement (weights, KV cache and activations over the GPU, CPU and disk tiers, block
shapes, CPU attention, no overlap, weights cut per layer, weights read from a weight
store), must write byte-identical records: tokens, logprobs and all. Each job draws a
fixture model of every family, prompts of random ids and lengths, n completions (the KV
copy), a KV policy (full, H2O, window, streaming), 4-bit KV and weights, greedy or
sampled. A property test beside sched/every_placement_equals_all_resident's fixed
list: it explores the combinations. Seeded: the same jobs every run.

    FLEXH2O_BIN=build/src/flexh2o python3 tests/test_placements.py [FIRST [COUNT]]
    FLEXH2O_BIN=build/tests/flexh2o-emu FLEXH2O_DEVICE=cuda python3 tests/test_placements.py

(default: seeds 0-11; a session's wider sweep: e.g. 1000 100; the second line: both runs
on the emulated CUDA device, tests/cuda_emu). Exit 1 on a difference
or a failed run, naming the seed and how to repeat it."""
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
MODELS = ["tiny-opt", "tiny-llama", "tiny-qwen2", "tiny-neox", "tiny-mistral"]
KV = ["", "--kv-policy h2o --kv-ratio 0.5 --sinks 1", "--kv-policy window --kv-budget 9",
      "--kv-policy streaming --kv-budget 10 --sinks 2", "--kv-policy h2o --kv-budget 7 --recent 2"]


STORE_DIR = None


def stores(model):
    """A weight store of model (made once per run)."""
    global STORE_DIR
    if STORE_DIR is None:
        STORE_DIR = tempfile.mkdtemp(prefix="fh_placements_stores_")
    out = os.path.join(STORE_DIR, model)
    if not os.path.exists(out):
        binary = os.environ.get("FLEXH2O_BIN", os.path.join(ROOT, "build", "src", "flexh2o"))
        subprocess.run([binary, "convert", "--model", os.path.join(FIX, model), "--out", out,
                        "--dtype", "f32"], check=True, capture_output=True)
    return out


def attention(flag):
    """flag, but on CUDA no --cpu-attention: the host computes in fp32 what the GPU
    kernels compute in 16 bits, close but not the same bits."""
    return "" if flag == "--cpu-attention" and os.environ.get("FLEXH2O_DEVICE") == "cuda" \
        else flag


def job(seed, work):
    """The prompt file, the shared flags and the placement flags of job seed."""
    r = random.Random(seed)
    model = r.choice(MODELS)
    with open(os.path.join(FIX, model, "config.json")) as f:
        max_pos = json.load(f).get("max_position_embeddings", 128)
    gbs, k = r.randint(1, 4), r.randint(1, 3)
    lines = []
    for i in range(r.randint(1, 9)):
        rec = {"id": i, "prompt_ids": [r.randrange(3, 200) for _ in range(r.randint(1, 12))],
               "max_new_tokens": r.randint(1, min(90, max_pos - 13))}
        if r.random() < 0.3:
            rec["n"] = r.randint(1, min(3, gbs * k))
        lines.append(json.dumps(rec))
    prompts = os.path.join(work, "p.jsonl")
    with open(prompts, "w") as f:
        f.write("\n".join(lines) + "\n")
    kv = r.choice(KV) + (" --compress-cache" if r.random() < 0.3 else "")
    if r.random() < 0.25:
        kv += " --compress-weight"
    if r.random() < 0.3:  # sampled: the same draws wherever the caches live
        kv += f" --temperature 0.8 --top-p 0.9 --seed {r.randint(0, 99)}"
    cg = r.choice([0, 0, 30, 50])
    cc = r.choice([0, 0, 40, 100 - cg])
    wg = r.choice([100, 50, 0])
    wc = r.choice([0, 100 - wg])
    hg = r.choice([100, 0])
    hc = r.choice([0, 100 - hg])
    common = (f"generate --prompts {prompts} --ignore-eos --quiet --no-summary "
              f"--gpu-batch-size {gbs} --num-gpu-batches {k} {kv}")
    if os.environ.get("FLEXH2O_DEVICE"):
        common += " --device " + os.environ["FLEXH2O_DEVICE"]
    # the placed run reads its weights from the checkpoint or from a weight store
    # (`convert --dtype f32`, the fixtures' type), whose disk share streams as it lies
    source = f"--model {os.path.join(FIX, model)}"
    placed = (("--model " + stores(model)) if r.random() < 0.3 else source) + (f" --percent {wg} {wc} {cg} {cc} {hg} {hc} --offload-dir {work}/off "
              + attention(r.choice(["", "--no-overlap", "--cpu-attention"]))
              + r.choice(["", "", " --weight-layers"]))
    return f"{common} {source}", f"{common} {placed}"


def main():
    binary = os.environ.get("FLEXH2O_BIN", os.path.join(ROOT, "build", "src", "flexh2o"))
    first = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 12
    bad = 0
    for seed in range(first, first + count):
        work = tempfile.mkdtemp(prefix="fh_placements_")
        os.mkdir(os.path.join(work, "off"))
        common, placed = job(seed, work)
        outs = []
        for name, flags in (("a", common), ("b", placed)):
            out = os.path.join(work, name + ".jsonl")
            cmd = [binary] + shlex.split(f"{flags} --out {out}")
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                print(f"seed {seed}: exit {r.returncode}: {' '.join(cmd)}\n{r.stderr.strip()}")
                break
            with open(out) as f:
                outs.append(f.read())
        if len(outs) == 2 and outs[0] == outs[1] and outs[0]:
            shutil.rmtree(work)
            continue
        if len(outs) == 2:
            print(f"seed {seed}: {work}/b.jsonl differs from the all-resident a.jsonl: "
                  f"{placed}")
        print(f"  (kept {work}; repeat: python3 tests/test_placements.py {seed} 1)")
        bad += 1
    if STORE_DIR:
        shutil.rmtree(STORE_DIR)
    print(f"{count} random jobs from seed {first}: {bad} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
