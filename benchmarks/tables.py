#!/usr/bin/env python3
"""The papers' tables (DESIGN.md "Tables to reproduce") as a resumable grid of runs.

    python3 benchmarks/tables.py --grid cpu [--csv FILE] [--only TEXT] [--dry-run]
    python3 benchmarks/tables.py --grid gpu --dry-run      # every cell's command line
    python3 benchmarks/tables.py --report [--csv FILE] [--report-dir DIR]

A cell is one system x model x prompt+gen x cap: one complete generation (no
extrapolation), its generation at most --cell-limit seconds by the estimate that picks
its block, the run killed after --cell-limit + --setup-limit seconds (every system's
set-up, loading and writing its offload, is outside the clock). Each finished cell is
appended to the CSV (default benchmarks/results/tables.csv) at once; a cell whose key
(system, model, prompt_len, gen_len, cap, machine) is already there is skipped (--redo
reruns the failed and skipped ones), so successive sessions fill the same grid.

Systems:
  flexh2o full            policy from `flexh2o search` for the cap
  flexh2o H2O 20%         --kv-policy h2o --kv-ratio 0.2, searched with the same flags
  flexh2o H2O 20% + 4-bit and --compress-weight --compress-cache
  HF Accelerate           transformers + accelerate (benchmarks/hf_offload.py): a random
                          checkpoint of the same config, device_map="auto" under
                          max_memory (the GPU cap, and the CPU cap), the rest in an
                          offload folder; greedy, EOS ignored; at its best block:
                          batches 8, 16, 32, ... up to the full-cache cell's block
                          (or those --peer-batches names), each a complete run, until one is slower than the one
                          before, is killed at the cell limit, or would take longer
                          than it on the line through the last two runs' times (the
                          tries are in the note column). In the gpu grid no
                          checkpoint: random weights made in memory and placed by the
                          same device map, the CPU share kept in RAM (hf_offload.py
                          --random-init; OPT-30B's 60 GB checkpoint does not fit the
                          lent machine's 64 GiB disk)
  DeepSpeed ZeRO-Inference the same with ZeRO stage 3 parameter offload (to the CPU, or
                          to NVMe through DeepSpeed's async_io, which needs
                          libaio-dev, when the weights exceed the cap), when `import
                          deepspeed` works in the HF python (else skipped)
Grids:
  gpu  OPT-6.7B and OPT-30B, --gpu-mem 16G --cpu-mem 96G, 512+32 / 512+512 / 512+1024,
       --device cuda: the H2O paper's Table 3 (the search picks the block; it maximises the bound,
       in practice the largest block that fits).
  cpu  opt-1.3b, llama-3.2-1b and opt-6.7b on the CPU backend with the GPU tier (the
       compute arena) capped so that weights reach the disk; both systems read the same
       random 16-bit checkpoint (HF into fp32; flexh2o through its weight store of it,
       streamed 16-bit and widened per block); the whole process (flexh2o, or python
       for HF) runs in a cgroup v1 memory cgroup (memory.limit_in_bytes) of the same
       size, and the page cache is dropped before each run. Each flexh2o cell takes the
       largest block (64, 32, 16, ...) whose estimate fits the cell limit.
Columns: tok/s = generated tokens / wall of the generation (the wall time of flexh2o's
summary line, HF's generate() call; in the gpu grid after a warm-up off the clock, each
system's --warm-up); bound = DESIGN.md's for the cell's plan (benchlib.bound) with
the rates of `flexh2o calibrate` on this machine (saved beside the CSV) and the
compute term 2*params*N / the calibrated GEMM rate (params: the layers' matrices and the
LM head, which a prefill multiplies for each sequence's last row only; on the CPU
backend no weights cross the h2d link), efficiency = tok/s / bound (flexh2o
rows only: HF's placement is not a flexh2o plan); load = 1-minute load average before
the cell (the machine may be shared).
--report writes from the CSV alone: tables.md (the papers' format, tok/s with (block,
lowest tier), "-" for empty cells, the empty cells listed) and gnuplot PNGs.
"""
import argparse
import csv
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from benchlib import FLEXH2O, ROOT, bound, calibrate, live_of, lowest_tier, plan_tiers, sh, \
    summary, write_prompts

COLUMNS = ["machine", "date", "commit", "grid", "system", "model", "prompt_len", "gen_len",
           "cap", "block", "lowest_tier", "tok_s", "bound_tok_s", "efficiency", "load",
           "status", "command", "setup_s", "note"]
KEY = ("system", "model", "prompt_len", "gen_len", "cap", "machine")
H2O = ["--kv-policy", "h2o", "--kv-ratio", "0.2"]
Q4 = ["--compress-weight", "--compress-cache"]
SYSTEMS = {  # name: (engine, extra flexh2o flags)
    "HF Accelerate": ("accelerate", []),
    "DeepSpeed ZeRO-Inference": ("deepspeed", []),
    "flexh2o full": ("flexh2o", []),
    "flexh2o H2O 20%": ("flexh2o", H2O),
    "flexh2o H2O 20% + 4-bit": ("flexh2o", H2O + Q4),
}
COLORS = {"HF Accelerate": "#888888", "DeepSpeed ZeRO-Inference": "#bbbbbb",
          "flexh2o full": "#1f77b4", "flexh2o H2O 20%": "#ff7f0e",
          "flexh2o H2O 20% + 4-bit": "#2ca02c"}  # one per system in every plot
GRIDS = {
    # source "dummy": flexh2o --dummy (random weights made in memory; FlexGen's
    # benchmarks do the same), HF random fp16 weights of the same shape (made in
    # memory too: hf_random_init below; DeepSpeed a random checkpoint)
    "gpu": dict(device="cuda", models=["opt-6.7b", "opt-30b"],
                sizes=[(512, 32), (512, 512), (512, 1024)],
                # the CPU tier capped below the GPU machine's 128 GiB (FlexGen's T4 host
                # had 208 GB): what pinning leaves the OS, the dummy weights' making
                # and the page cache
                caps={"opt-6.7b": dict(gpu="16G", cpu="96G"),
                      "opt-30b": dict(gpu="16G", cpu="96G")},
                max_block={"opt-6.7b": 1024, "opt-30b": 1024}, source="dummy",
                # HF Accelerate from random weights made in memory (hf_offload.py
                # --random-init): OPT-30B's 60 GB checkpoint does not fit the lent
                # machine's 64 GiB disk beside the offload folders
                hf_random_init=True,
                # every system warmed up first, as FlexGen's benchmarks do (a short
                # generation before the clock): a cell of 0.5 s otherwise spends a
                # third of it loading GPU kernels on first use and choosing GEMM plans
                # (H200, 2026-12-04: 165 ms of the full cache's 516 ms). flexh2o
                # --warm-up runs the cell's block to 2 tokens; the peers, hf_offload.py
                # --warm-up, generate 2 tokens for the same batch.
                warm_up=True),
    # source "store": one random fp16 checkpoint per model that both systems
    # read (HF loads it into fp32, the CPU's compute type; flexh2o converts it
    # once to its weight store, which its CPU backend streams as fp16 and
    # widens per block), both prepared outside the clock and the cap.
    # caps: the compute arena below the weights, a CPU tier for part of the
    # weights and the KV, the rest of the weights on disk; os = the cgroup
    # limit of the whole process (both tiers + ~1.5 GiB of runtime), and for HF
    # max_memory cpu = gpu + cpu. max_block: the largest block the search may
    # pick; the cell takes the largest of 64, 32, 16, 8, ... up to it whose
    # estimate fits the cell limit.
    # Llama-3.2-1B: bf16 as published, so its checkpoint is bf16 and flexh2o's
    # store too (convert --dtype bf16); its fp32 embedding (1 GiB, tied to the
    # head) stays on the GPU tier, so that cap is larger and the CPU tier's
    # smaller, to put layers on disk.
    "cpu": dict(device="cpu", models=["opt-1.3b", "llama-3.2-1b", "opt-6.7b"],
                sizes=[(32, 8), (32, 32), (128, 32)],
                caps={"opt-1.3b": dict(gpu="1G", cpu="3G", os="5632M"),
                      "llama-3.2-1b": dict(gpu="2G", cpu="1G", os="4608M"),
                      "opt-6.7b": dict(gpu="3G", cpu="6G", os="10752M")},
                max_block={"opt-1.3b": 64, "llama-3.2-1b": 64, "opt-6.7b": 64},
                source="store", ckpt_dtype={"llama-3.2-1b": "bfloat16"}),
}
# the cpu grid with bf16 compute on every side: flexh2o --cpu-matmul bf16 over a bf16 store
# (OPT's fp16 checkpoint converted with --dtype bf16: its values rounded to bf16, as
# torch's .to(bfloat16) rounds them), HF and DeepSpeed in torch bfloat16 (oneDNN's bf16
# matmuls, the same AMX / AVX512-BF16 units); the calibration measures bf16 matmuls. Its
# own CSV. The small models' caps are the cpu grid's scaled to the weights' bytes (half of
# fp32's), so that about the same share of each is on disk: with the fp32 caps (their cells
# before 2026-12-06) opt-1.3b and Llama-3.2-1B fit in RAM whole on both sides, so no tier
# was exercised. os keeps the ~1.5 GiB of runtime the cpu grid allows beside the tiers.
# opt-6.7b keeps the fp32 caps: its 13.4 GB of bf16 weights reach the disk under them.
GRIDS["cpu-bf16"] = dict(GRIDS["cpu"], matmul="bf16",
                         caps=dict(GRIDS["cpu"]["caps"],
                                   **{"opt-1.3b": dict(gpu="512M", cpu="1536M", os="3584M"),
                                      "llama-3.2-1b": dict(gpu="1G", cpu="512M", os="3072M")}))
BLOCK_TRIES = (1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1)
CGROUP = "/sys/fs/cgroup/memory/flexh2o-tables"
WORK = "/tmp/flexh2o-tables"
ASSUMED_EFF = 0.5  # of the bound, to skip cells that cannot finish in time (the cpu
                   # grid's first cells reached 49-67%)


def size_bytes(s):
    m = re.fullmatch(r"([\d.]+)([KMGT]?)", s)
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " "))


def cap_str(c):
    return ", ".join(f"{k} {c[k]}" for k in ("gpu", "cpu", "os") if c.get(k))


def cells(grid):
    g = GRIDS[grid]
    for model in g["models"]:
        for p, n in g["sizes"]:
            for system in sorted(SYSTEMS, key=lambda s: not s.startswith("flexh2o")):
                yield dict(grid=grid, system=system, model=model, prompt_len=p, gen_len=n,
                           caps=g["caps"][model], cap=cap_str(g["caps"][model]),
                           device=g["device"], max_block=g["max_block"][model],
                           source=g["source"])


def machine(device):
    if device == "cuda":
        if not shutil.which("nvidia-smi"):
            return "no GPU"
        r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                           capture_output=True, text=True)
        if r.returncode == 0 and r.stdout.strip():
            return r.stdout.strip().splitlines()[0]
        return "no GPU"
    return cpu_machine(open("/proc/cpuinfo").read(), os.cpu_count())


def cpu_machine(cpuinfo, cores):
    """The name of a CPU machine from /proc/cpuinfo's text: its model name, cores, and
    family / model numbers, which tell apart VMs that report one model name (session
    33's Xeon VM, model 167, and sessions 25-32's, model 207, both "Intel(R) Xeon(R)
    Processor"): rows, and the calibration file named after the machine, stay apart.
    Rows before 2026-12-06 carry the name without the numbers."""
    f = {}
    for line in cpuinfo.splitlines():
        k, _, v = line.partition(":")
        f.setdefault(k.strip(), v.strip())
    num = ""
    if f.get("cpu family") and f.get("model"):
        num = f", family {f['cpu family']} model {f['model']}"
    return f"{f.get('model name', '?')} ({cores} cores{num})"


def commit():
    r = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                       capture_output=True, text=True)
    # changes to the docs (README, results) do not change a run
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no",
                            "--", ".", ":!*.md", ":!benchmarks/results"],
                           capture_output=True, text=True).stdout.strip()
    return r.stdout.strip() + ("-dirty" if dirty else "")


def model_matmul_params(model):
    """(layers, head): the parameters an OPT or Llama-shaped (llama, mistral, qwen2)
    config multiplies per token in its layers' matrices and in the LM head, as
    scheduler/blob.c's sched_matmul_params counts them (embedding tables are looked up,
    not multiplied; biases and norms are no GEMM FLOPs), else None."""
    c = json.load(open(os.path.join(ROOT, "configs", "models", model + ".json")))
    h, L, V = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
    if c.get("model_type") == "opt":
        layer = 4 * h * h + 2 * h * c["ffn_dim"]
    elif c.get("model_type") in ("llama", "mistral", "qwen2"):
        H = c["num_attention_heads"]
        hd = c.get("head_dim") or h // H
        kv = c.get("num_key_value_heads", H) * hd
        layer = 2 * h * H * hd + 2 * h * kv + 3 * h * c["intermediate_size"]
    else:
        return None
    return L * layer, V * h


def rel(path):
    return os.path.relpath(path, ROOT) if path.startswith(ROOT) else path


def show(cmd):
    return " ".join(shlex.quote(rel(x)) for x in cmd)


def drop_caches():
    try:
        subprocess.run(["sync"])
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def run_capped(cmd, os_cap, limit):
    """Run cmd with a wall limit, inside the memory cgroup CGROUP limited to os_cap
    (bytes string like "5632M") when given. @return (rc or "timeout", stdout, stderr,
    note): note says when the cgroup's OOM killer fired."""
    pre = None
    if os_cap:
        os.makedirs(CGROUP, exist_ok=True)
        with open(os.path.join(CGROUP, "memory.limit_in_bytes"), "w") as f:
            f.write(str(size_bytes(os_cap)))
        oom0 = cg_oom_kills()

        def pre():
            with open(os.path.join(CGROUP, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=pre, start_new_session=True)
    try:
        out, err = p.communicate(timeout=limit)
        rc = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        rc = "timeout"
    note = ""
    if os_cap and cg_oom_kills() > oom0:
        note = f"killed by the cgroup memory cap ({os_cap})"
    return rc, out, err, note


def cg_oom_kills():
    try:
        for line in open(os.path.join(CGROUP, "memory.oom_control")):
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def last_line(text):
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return lines[-1][:300] if lines else "no output"


class Runner:
    def __init__(self, a, grid):
        self.a, self.g = a, GRIDS[grid]
        os.makedirs(os.path.dirname(os.path.abspath(a.csv)), exist_ok=True)
        self.device = self.g["device"]
        self.machine = machine(self.device)
        self.commit = commit()
        self.bf16 = self.g.get("matmul") == "bf16"
        self.hw = os.path.join(os.path.dirname(os.path.abspath(a.csv)),
                               "hardware-" + re.sub(r"[^\w.-]+", "_", self.machine).strip("_") +
                               ("-bf16" if self.bf16 else "") + ".json")
        self.mm = ["--cpu-matmul", "bf16"] if self.bf16 else []
        self.warm = ["--warm-up"] if self.g.get("warm_up") else []  # every system's run
        self.off = os.path.join(a.offload_dir, "flexh2o")
        self.blocks = {}  # (model, p, n, cap) -> N of the full-cache search, HF's batch
        self.py = a.hf_python
        self.recalibrate = a.recalibrate  # once per sitting, before its first cell

    def calibration(self):
        if not os.path.exists(self.hw) or self.recalibrate:
            self.recalibrate = False
            os.makedirs(self.off, exist_ok=True)
            calibrate(self.a.flexh2o, self.device, self.off, out=self.hw, extra=self.mm)
        return json.load(open(self.hw))

    def ckpt_dtype(self, c):
        return self.g.get("ckpt_dtype", {}).get(c["model"], "float16")

    def ckpt(self, c):
        """The random checkpoint the HF rows load (and, with source "store", flexh2o's
        store is converted from): fp16, or the model's own 16-bit type."""
        return os.path.join(WORK, "hf", f"{c['model']}-{self.ckpt_dtype(c)}")

    def store_dtype(self, c):
        return "bf16" if self.ckpt_dtype(c) == "bfloat16" or self.bf16 else "f16"

    def store(self, c):
        return os.path.join(WORK, "store", f"{c['model']}-{self.store_dtype(c)}")

    def model_args(self, c):
        if c["source"] == "store":
            return ["--model", self.store(c)]
        return ["--dummy", c["model"]]

    def prep_cmds(self, c):
        """Commands that make what a cell reads, untimed and uncapped, once per model:
        the HF checkpoint, and with source "store" flexh2o's store of it."""
        script = os.path.join(ROOT, "benchmarks", "hf_offload.py")
        cmds = [[self.py, script, "--prepare", "--model", c["model"], "--ckpt", self.ckpt(c),
                 "--dtype", self.ckpt_dtype(c)]]
        if c["source"] == "store":
            cmds.append([self.a.flexh2o, "convert", "--model", self.ckpt(c), "--out",
                         self.store(c), "--dtype", self.store_dtype(c)])
        return cmds

    def prepare(self, c, engine):
        cmds = self.prep_cmds(c)
        if engine == "flexh2o" and c["source"] == "dummy":
            return
        if not os.path.exists(os.path.join(self.ckpt(c), "config.json")):
            sh(cmds[0])
        if engine == "flexh2o" and not os.path.exists(os.path.join(self.store(c),
                                                                    "model.flxh2o")):
            os.makedirs(os.path.dirname(self.store(c)), exist_ok=True)
            sh(cmds[1])

    def search_cmd(self, c, flags, pol, max_block=None):
        cmd = [self.a.flexh2o, "search"] + self.model_args(c) + ["--device", self.device,
               "--hardware", self.hw, "--prompt-len", str(c["prompt_len"]),
               "--gen-len", str(c["gen_len"]), "--gpu-mem", c["caps"]["gpu"],
               "--offload-dir", self.off, "--max-block", str(max_block or c["max_block"]),
               "--top", "1", "--out", pol,
               # the grid's own limits pick the block (max_block, then the cell limit in
               # best_plan), not search's 60 s cap on a prefill, its guard for a job it
               # is told no prompts of: at opt-6.7b 32+32 on the CPU that cap held every
               # flexh2o row to 56 rows where 64 fit the cell and the memory
               "--max-prefill-seconds", "0"] + self.mm + flags
        if c["caps"].get("cpu"):
            cmd += ["--cpu-mem", c["caps"]["cpu"]]
        return cmd

    def gen_cmd(self, c, flags, pol, prompts, out):
        return [self.a.flexh2o, "generate"] + self.model_args(c) + ["--policy", pol,
                "--prompts", prompts, "--out", out, "--max-new-tokens", str(c["gen_len"]),
                "--ignore-eos", "--device", self.device] + self.mm + flags + self.warm

    def random_init(self, engine):
        """HF Accelerate from weights made in memory (the grid's hf_random_init), no
        checkpoint; DeepSpeed always reads one."""
        return bool(self.g.get("hf_random_init")) and engine == "accelerate"

    def hf_cmds(self, c, engine, N):
        ckpt = self.ckpt(c)
        off = os.path.join(self.a.offload_dir, "hf")
        script = os.path.join(ROOT, "benchmarks", "hf_offload.py")
        random_init = self.random_init(engine)
        prep = None if random_init else self.prep_cmds(c)[0]
        gpu = size_bytes(c["caps"]["gpu"])
        cpu = size_bytes(c["caps"]["cpu"]) if c["caps"].get("cpu") else None
        if self.device == "cpu":  # no GPU: the compute arena is host memory too
            mem = f"cpu={(gpu + (cpu or 0)) // 2**20}MiB"
        else:
            mem = f"0={gpu // 2**20}MiB" + (f",cpu={cpu // 2**20}MiB" if cpu else "")
        run = [self.py, script, "--engine", engine, "--model", c["model"]] + \
            (["--random-init"] if random_init else ["--ckpt", ckpt]) + \
            ["--device", self.device, "--dtype", self.hf_dtype(), "--batch", str(N),
             "--prompt-len", str(c["prompt_len"]), "--gen-len", str(c["gen_len"]),
             "--max-memory", mem, "--offload-dir", off] + self.warm
        return prep, run, off

    def hf_dtype(self):
        """HF's compute type: fp32 on the CPU (torch's fp16 GEMMs there are slow), bf16 in
        the bf16 grid."""
        if self.bf16:
            return "bfloat16"
        return "float32" if self.device == "cpu" else "float16"

    def capped(self, c, cmd):
        os_cap = c["caps"].get("os")
        return (f"[memory cgroup {os_cap}, page cache dropped] " if os_cap else "") + show(cmd)

    def dry(self, c):
        engine, flags = SYSTEMS[c["system"]]
        d = os.path.join(WORK, slug(c))
        pol = os.path.join(d, "policy.json")
        if engine == "flexh2o":
            prep = "".join(show(x) + " && " for x in self.prep_cmds(c)) \
                if c["source"] == "store" else ""
            return prep + show(self.search_cmd(c, flags, pol)) + " && " + self.capped(
                c, self.gen_cmd(c, flags, pol, os.path.join(d, "prompts.jsonl"),
                                os.path.join(d, "out.jsonl")))
        prep, run, _ = self.hf_cmds(c, engine, "N_FULL")
        return (show(prep) + " && " if prep else "") + self.capped(c, run) + \
            "   # N_FULL = the block `flexh2o search` picks for the full-cache cell"

    def search(self, c, flags, pol, max_block=None):
        """@return (N, predicted bound tok/s) or raise RuntimeError with search's message."""
        r = subprocess.run(self.search_cmd(c, flags, pol, max_block), capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise RuntimeError("search: " + last_line(r.stderr))
        m = re.search(r"^\s+1\s+(\d+) x (\d+)\s+(\d+)\s+" + r"\S+\s+" * 6 +
                      r"(?:yes|no)\s+([\d.]+)", r.stdout, re.M)
        return int(m.group(1)) * int(m.group(2)), float(m.group(4))

    def cell(self, c):
        """Runs one cell; @return the CSV row."""
        engine, flags = SYSTEMS[c["system"]]
        row = dict(machine=self.machine, date=datetime.date.today().isoformat(),
                   commit=self.commit, grid=c["grid"], system=c["system"], model=c["model"],
                   prompt_len=c["prompt_len"], gen_len=c["gen_len"], cap=c["cap"], block="",
                   lowest_tier="", tok_s="", bound_tok_s="", efficiency="", load="",
                   command=self.dry(c), setup_s="", note="")
        if self.device == "cuda" and self.machine == "no GPU":
            return dict(row, status="skipped: no GPU on this machine")
        d = os.path.join(WORK, slug(c))
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        os.makedirs(self.off, exist_ok=True)
        pol = os.path.join(d, "policy.json")
        cal = self.calibration()
        try:
            if engine == "flexh2o":
                return self.flexh2o_cell(c, row, flags, d, pol, cal)
            return self.hf_cell(c, row, engine, d)
        except RuntimeError as e:
            return dict(row, status=f"failed: {e}")

    def plan(self, c, flags, d, cal, max_block):
        """search's policy for blocks of at most max_block, its plan and DESIGN.md's bound
        for it. @return dict(N, p (the policy), cmd (generate), tiers, b (bound or None),
        pb, which (the rate the estimate takes), est (seconds at ASSUMED_EFF))."""
        pol = os.path.join(d, "policy.json")
        N, pred = self.search(c, flags, pol, max_block)
        p = json.load(open(pol))
        prompts, out = os.path.join(d, "prompts.jsonl"), os.path.join(d, "out.jsonl")
        write_prompts(prompts, N, c["prompt_len"])
        cmd = self.gen_cmd(c, flags, pol, prompts, out)
        tiers = plan_tiers(cmd)
        n = c["gen_len"]
        params = model_matmul_params(c["model"])
        b = None
        if params:
            gemm = cal["gemm_TFLOPs"] * 1e12
            layers, head = params
            live = live_of(flags, c["prompt_len"], n)
            extra = {"device memory": (tiers["gpu"]["weights"] + tiers["gpu"]["kv"] * live) /
                     (cal["dev_mem_GBps"] * 1e9)}
            if p.get("cpu_attention"):
                extra["cpu attention (KV_cpu)"] = tiers["cpu"]["kv"] * live / \
                    (cal["dram_GBps"] * 1e9)
            # DESIGN.md's 2 params N (s), less what a prefill skips: the LM head
            # multiplies each sequence's last row only (scheduler/cost.c)
            b = bound(tiers, cal, N, n, p.get("cpu_attention", False),
                      2 * (layers + head) * N / gemm,
                      2 * (layers * c["prompt_len"] + head) * N / gemm, extra,
                      host_visible=self.device == "cpu", live=live)
        # the bound above when there is one (the search's own bound takes the GEMM rate
        # at the block's row count, far below it on a loaded CPU), else the search's
        pb, which = (b["tps"], "bound") if b else (pred, "search's bound")
        return dict(N=N, p=p, cmd=cmd, tiers=tiers, b=b, pb=pb, which=which,
                    est=N * n / pb / ASSUMED_EFF, max_block=max_block)

    def best_plan(self, c, flags, d, cal):
        """The plan of the largest block (BLOCK_TRIES up to the grid's max_block) whose
        estimate fits the cell limit, else the smallest block's."""
        mb = c["max_block"]
        while True:
            x = self.plan(c, flags, d, cal, mb)
            smaller = [m for m in BLOCK_TRIES if m < x["N"]]
            if x["est"] <= self.a.cell_limit or not smaller:
                return x
            mb = smaller[0]

    def flexh2o_cell(self, c, row, flags, d, pol, cal):
        self.prepare(c, "flexh2o")
        x = self.best_plan(c, flags, d, cal)
        N, p, cmd, tiers, b = x["N"], x["p"], x["cmd"], x["tiers"], x["b"]
        if not flags:
            self.blocks[(c["model"], c["prompt_len"], c["gen_len"], c["cap"])] = N
        block = f"{p['gpu_batch_size']}x{p['num_gpu_batches']}"
        n = c["gen_len"]
        row = dict(row, block=block, lowest_tier=lowest_tier(tiers),
                   bound_tok_s=f"{b['tps']:.3f}" if b else "",
                   command=show(self.search_cmd(c, flags, pol, x["max_block"])) + " && " +
                   self.capped(c, cmd))
        if x["est"] > self.a.cell_limit:
            return dict(row, status=f"skipped: estimated {x['est']:.0f} s ({x['which']} "
                        f"{x['pb']:.2f} tok/s at {ASSUMED_EFF:.0%}) > {self.a.cell_limit} s")
        row["load"] = f"{os.getloadavg()[0]:.2f}"
        drop_caches()
        # set-up (reading and widening the store, the disk tier's file) is outside the
        # clock and has the peers' allowance on top of the cell limit
        limit = self.a.cell_limit + self.a.setup_limit
        t0 = time.time()
        rc, so, se, note = run_capped(cmd, c["caps"].get("os"), limit)
        wall = time.time() - t0
        if rc == "timeout":
            return dict(row, status=f"skipped: killed after {limit} s of set-up + generation")
        if rc != 0:
            return dict(row, status=f"failed: {note or last_line(se)}")
        # the summary's tok/s has one decimal: the count over its wall time (2 decimals)
        total = summary(se)["total_s"]
        tps = N * n / total
        return dict(row, tok_s=f"{tps:.3f}", setup_s=f"{wall - total:.1f}",
                    efficiency=f"{tps / b['tps']:.3f}" if b else "", status="ok")

    def hf_cell(self, c, row, engine, d):
        probe = "import deepspeed" if engine == "deepspeed" else "import accelerate"
        r = subprocess.run([self.py, "-c", probe], capture_output=True, text=True)
        if r.returncode != 0:
            return dict(row, status=f"skipped: not installed ({last_line(r.stderr)})")
        key = (c["model"], c["prompt_len"], c["gen_len"], c["cap"])
        if key not in self.blocks:  # the full-cache cell ran in an earlier session
            self.prepare(c, "flexh2o")
            self.blocks[key] = self.best_plan(c, [], d, self.calibration())["N"]
        N_full = self.blocks[key]
        if not self.random_init(engine):
            # the random checkpoint, once per model, outside the cap and the clock
            self.prepare(c, engine)
        # HF at its best block: batches from 8 up to the full-cache cell's block, each a
        # complete run, until one is slower than the one before, fails, is killed at the
        # cell limit, or would by the last two runs' times take longer than it
        tries = peer_tries(N_full, self.a.peer_batches)
        best, notes, runs = None, [], []
        # from_pretrained writes the offload folder (minutes for a few GB under the
        # cap): it is set-up, outside the clock as flexh2o's loading is, with its own
        # allowance on top of the cell limit
        limit = self.a.cell_limit + self.a.setup_limit
        for N in tries:
            est = projected(runs, N)
            if est is not None and est > self.a.cell_limit:
                notes.append(f"batch {N} not run (projected {est:.0f} s from batches "
                             f"{runs[-2][0]} and {runs[-1][0]})")
                break
            prep, run, off = self.hf_cmds(c, engine, N)
            shutil.rmtree(off, ignore_errors=True)
            load = f"{os.getloadavg()[0]:.2f}"
            drop_caches()
            rc, so, se, note = run_capped(run, c["caps"].get("os"), limit)
            loaded = re.search(r"\[hf_offload\] loaded in ([\d.]+) s", se)
            if rc == "timeout":
                notes.append(f"batch {N}: killed after {limit} s of set-up + generation" +
                             (f" (loaded in {loaded.group(1)} s)" if loaded else ""))
                break
            if rc != 0:
                notes.append(f"batch {N}: failed: {note or last_line(se)}")
                break
            res = json.loads(last_line(so))
            notes.append(f"batch {N}: {res['tok_s']:.3f} tok/s")
            runs.append((N, res["wall_s"]))
            if best and res["tok_s"] <= best[1]["tok_s"]:
                break
            best = (N, res, loaded.group(1) if loaded else "", load,
                    (show(prep) + " && " if prep else "") + self.capped(c, run))
        row["note"] = "; ".join(notes)
        if not best:
            first = notes[0] if notes else "no run"
            return dict(row, status=("failed: " if "failed" in first else "skipped: ") + first)
        N, res, setup, load, cmd = best
        return dict(row, block=f"{N}x1", tok_s=f"{res['tok_s']:.3f}",
                    lowest_tier=res["lowest"], status="ok", setup_s=setup, load=load,
                    command=cmd)


def peer_tries(n_full, given=None):
    """A peer's batches in the order tried: 8, 16, 32, ... below the full-cache cell's
    block n_full, then n_full; or the batches --peer-batches gives ("32,64": a cell's
    earlier best and the block a changed rule now gives flexh2o)."""
    if given:
        tries = sorted({int(x) for x in given.split(",")})
        if tries[0] < 1:
            raise ValueError(f"--peer-batches {given}: batches of at least 1")
        return tries
    return sorted({n for n in BLOCK_TRIES if 8 <= n < n_full} | {n_full})


def projected(runs, N):
    """Seconds of generation at batch N on the line through the last two (batch,
    seconds) runs, None before two. Not proportional to the batch: an offloaded
    decode step reads every weight once whatever the batch, so a peer's time grows
    far slower than its batch (OPT-6.7B under Accelerate: 169 s at batch 8), and a
    proportional guess would stop it short of its best block."""
    if len(runs) < 2:
        return None
    (n0, t0), (n1, t1) = runs[-2:]
    return t1 + max((t1 - t0) / (n1 - n0), 0.0) * (N - n1)


def held(r):
    """"†" for a peer cell whose tries stopped on the old proportional rule (its note
    says "batch N not run (batch M took S s)"), else ""."""
    return "†" if r and r.get("status") == "ok" and \
        re.search(r"not run \(batch \d+ took", r.get("note") or "") else ""


def slug(c):
    # a grid of the same cells computed otherwise (cpu-bf16) keeps its own folders
    pre = c["grid"] + "-" if GRIDS.get(c.get("grid"), {}).get("matmul") else ""
    return re.sub(r"[^\w.-]+", "_", f"{pre}{c['system']}-{c['model']}-{c['prompt_len']}-"
                  f"{c['gen_len']}-{c['cap']}")


def read_csv(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def append_csv(path, row):
    new = not os.path.exists(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not new:  # a CSV from before a column was added: rewritten with the new header
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if header != COLUMNS:
            rows = read_csv(path)
            with open(path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=COLUMNS, restval="")
                w.writeheader()
                w.writerows({k: r.get(k) or "" for k in COLUMNS} for r in rows)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        w.writerow(row)


def key(row):
    return tuple(str(row[k]) for k in KEY)


def run_grid(a):
    runner = Runner(a, a.grid)
    rows = read_csv(a.csv)
    done = {key(r): r for r in rows}
    todo = [c for c in cells(a.grid) if (a.only is None or re.search(a.only, slug(c))) and
            (a.skip is None or not re.search(a.skip, slug(c)))]
    start = time.time()
    for c in todo:
        k = key(dict(c, machine=runner.machine))
        if a.dry_run:
            print(f"# {c['system']} | {c['model']} {c['prompt_len']}+{c['gen_len']} | "
                  f"{c['cap']}{' (in the CSV)' if k in done else ''}\n{runner.dry(c)}\n")
            continue
        old = done.get(k)
        if old and not a.rerun and (old["status"] == "ok" or not a.redo):
            continue
        if a.budget and time.time() - start + a.cell_limit > a.budget:
            print(f"--budget {a.budget} s: the rest of the grid is left for the next session")
            break
        t0 = time.time()
        row = runner.cell(c)
        append_csv(a.csv, row)
        print(f"{c['system']:26s} {c['model']:9s} {c['prompt_len']}+{c['gen_len']:<5d} "
              f"{row['block']:>7s} {row['lowest_tier']:5s} {row['tok_s'] or '-':>9s} tok/s "
              f"eff {row['efficiency'] or '-':6s} load {row['load'] or '-':5s} "
              f"{time.time() - t0:5.0f} s  {row['status']}", flush=True)


# ---------------------------------------------------------------------------- report

def short(model):
    """opt-1.3b -> 1.3B, llama-3.2-1b -> Llama-3.2-1B"""
    if model.startswith("opt-"):
        return model[4:].upper()
    return model[:1].upper() + model[1:-1] + model[-1:].upper()


def latest(rows):
    """One row per key: the last ok one, else the last one."""
    by = {}
    for r in rows:
        k = key(r)
        if k not in by or r["status"] == "ok" or by[k]["status"] != "ok":
            by[k] = r
    return by


def report(a):
    rows = read_csv(a.csv)
    os.makedirs(a.report_dir, exist_ok=True)
    md = ["# Tables", "",
          f"From `{rel(os.path.abspath(a.csv))}` by `python3 benchmarks/tables.py --report`. "
          "tok/s = generated tokens / wall of the generation, (block, lowest tier: G gpu, "
          "C cpu, D disk); \"-\" = no measurement yet. Efficiency = tok/s / DESIGN.md's bound "
          "for the cell's plan (flexh2o rows).", ""]
    pngs = []
    for grid, g in GRIDS.items():
        mine = [r for r in rows if r["grid"] == grid]
        machines = sorted({r["machine"] for r in mine}) or [None]
        for mach in machines:
            by = latest([r for r in mine if r["machine"] == mach])
            md += grid_table(grid, g, mach, by)
            if mach and by:
                pngs += plots(grid, mach, by, a.report_dir)
    if pngs:
        md += ["## Plots", ""] + [f"![{p}]({p})" for p in pngs] + [""]
    path = os.path.join(a.report_dir, "tables.md")
    open(path, "w").write("\n".join(md))
    print(f"wrote {rel(path)}" + "".join(f", {p}" for p in pngs))


def grid_table(grid, g, mach, by):
    cols = [(m, p, n) for p, n in g["sizes"] for m in g["models"]]
    out = [f"## --grid {grid} on {mach or 'no machine yet'}", ""]
    note = "caps: " + "; ".join(f"{m} {cap_str(g['caps'][m])}" for m in g["models"]) + \
        f"; device {g['device']}"
    loads = [float(r["load"]) for r in by.values() if r.get("load")]
    if loads:
        note += f"; 1-minute load average before the cells {min(loads):.1f}-{max(loads):.1f}"
    out.append(note + ".")
    out += ["", "| system | " + " | ".join(f"{short(m)} {p}+{n}" for m, p, n in cols) + " |",
            "|---" * (len(cols) + 1) + "|"]
    empty, effs, ratios = [], [], []
    for system in SYSTEMS:
        cells_, eff, ratio = [], [], []
        for m, p, n in cols:
            r = by.get((system, m, str(p), str(n), cap_str(g["caps"][m]), mach))
            ok = r and r["status"] == "ok"
            hf = by.get(("HF Accelerate", m, str(p), str(n), cap_str(g["caps"][m]), mach))
            ratio.append(f"{float(r['tok_s']) / float(hf['tok_s']):.2f}x{held(hf)}"
                         if ok and hf and hf["status"] == "ok" else "-")
            cells_.append(f"{float(r['tok_s']):.2f} ({r['block']},{r['lowest_tier'][:1].upper()})"
                          f"{held(r)}" if ok else "-")
            eff.append(f"{float(r['efficiency']):.0%} of {float(r['bound_tok_s']):.2f}"
                       if ok and r["efficiency"] else "-")
            if not ok:
                empty.append(f"{system}, {m} {p}+{n}: " + (r["status"] if r else "not run"))
        out.append(f"| {system} | " + " | ".join(cells_) + " |")
        if system.startswith("flexh2o"):
            effs.append(f"| {system} | " + " | ".join(eff) + " |")
            ratios.append(f"| {system} | " + " | ".join(ratio) + " |")
    out.append("")
    if any("x" in r for r in ratios):
        out += ["Against HF Accelerate in the same grid (each at its best block, same cap):",
                "", "| system | " + " | ".join(f"{short(m)} {p}+{n}" for m, p, n in cols) +
                " |", "|---" * (len(cols) + 1) + "|"] + ratios + [""]
    if any(r.get("efficiency") for r in by.values()):
        out += ["Efficiency against the bound (tok/s):", "",
                "| system | " + " | ".join(f"{short(m)} {p}+{n}" for m, p, n in cols) + " |",
                "|---" * (len(cols) + 1) + "|"] + effs + [""]
    if any(held(r) for r in by.values()):
        out += ["† a peer held below its best batch by the rule tables.py used before "
                "`projected` (the next batch's time taken as proportional to the batch): "
                "understated; remeasure with `--rerun --only ...`.", ""]
    if not by:
        out += [f"No runs yet: all {len(empty)} cells empty.", ""]
    elif empty:
        out += [f"Empty cells ({len(empty)}):", ""] + [f"- {e}" for e in empty] + [""]
    return out


def current_rows(grid, mach, by):
    """The measured rows of by that are cells of the grid as it is now: this machine, and
    each model's current caps (a grid whose caps changed keeps its older rows in the CSV
    under their own cap key; the tables look cells up by that key, the plots use these)."""
    g = GRIDS[grid]
    return [r for r in by.values() if r["status"] == "ok" and r["machine"] == mach and
            r["model"] in g["caps"] and r["cap"] == cap_str(g["caps"][r["model"]])]


def plots(grid, mach, by, outdir):
    """throughput per system, tok/s against block size (full vs H2O), efficiency; PNGs
    by gnuplot. @return the file names written."""
    if not shutil.which("gnuplot"):
        print("gnuplot not found (apt-get install -y gnuplot-nox): no PNGs", file=sys.stderr)
        return []
    g = GRIDS[grid]
    ok = current_rows(grid, mach, by)
    if not ok:
        return []
    tag = grid + "-" + re.sub(r"[^\w]+", "_", mach).strip("_").lower()[:40]
    tmp = tempfile.mkdtemp()
    cols = [(m, p, n) for p, n in g["sizes"] for m in g["models"]]
    cols = [c for c in cols if any((r["model"], r["prompt_len"], r["gen_len"]) ==
                                   (c[0], str(c[1]), str(c[2])) for r in ok)]

    def val(system, c, field):
        for r in ok:
            if (r["system"], r["model"], r["prompt_len"], r["gen_len"]) == \
                    (system, c[0], str(c[1]), str(c[2])) and r[field]:
                return float(r[field])
        return None

    def histogram(name, field, systems, ylabel, scale=1.0):
        dat = os.path.join(tmp, name + ".dat")
        with open(dat, "w") as f:
            f.write("cell " + " ".join(f'"{s}"' for s in systems) + "\n")
            for c in cols:
                vs = [val(s, c, field) for s in systems]
                f.write(f'"{short(c[0])} {c[1]}+{c[2]}" ' +
                        " ".join("-" if v is None else f"{v * scale:.4f}" for v in vs) + "\n")
        png = f"{tag}-{name}.png"
        plot = ", ".join(f"'{dat}' using {i + 2}:xtic(1) title columnheader lc rgb "
                         f"'{COLORS[s]}'" for i, s in enumerate(systems))
        gp(f"""set terminal pngcairo size 900,500; set output '{os.path.join(outdir, png)}'
set style data histograms; set style histogram clustered gap 1; set style fill solid 0.8
set datafile missing '-'; set key outside right; set ylabel '{ylabel}'; set yrange [0:*]
set offsets 0, 0, graph 0.08, 0; set xtics rotate by 30 right noenhanced
set bmargin 6; set title '{grid} grid, {mach}' noenhanced
plot {plot}""")
        return png

    out = [histogram("throughput", "tok_s", list(SYSTEMS), "generated tok/s")]
    fx = [s for s in SYSTEMS if s.startswith("flexh2o")]
    if any(r["efficiency"] for r in ok):
        out.append(histogram("efficiency", "efficiency", fx, "% of the bound", 100))
    # tok/s against block size N, full vs H2O (every cell of the grid as a point)
    lines = []
    for s in ("flexh2o full", "flexh2o H2O 20%", "flexh2o H2O 20% + 4-bit"):
        dat = os.path.join(tmp, re.sub(r"\W+", "_", s) + ".dat")
        pts = [(eval_block(r["block"]), float(r["tok_s"]), f"{short(r['model'])} "
                f"{r['prompt_len']}+{r['gen_len']}") for r in ok if r["system"] == s]
        if pts:
            with open(dat, "w") as f:
                for N, t, lab in sorted(pts):
                    f.write(f'{N} {t:.4f} "{lab}"\n')
            lines.append(f"'{dat}' using 1:2 with points pt 7 ps 1.5 lc rgb '{COLORS[s]}' "
                         f"title '{s}', "
                         f"'{dat}' using 1:2:3 with labels offset 0,1 font ',8' notitle")
    if lines:
        png = f"{tag}-block.png"
        gp(f"""set terminal pngcairo size 900,500; set output '{os.path.join(outdir, png)}'
set logscale x 2; set xlabel 'block size N (gpu batch x batches)'; set ylabel 'generated tok/s'
set key outside right; set yrange [0:*]; set title '{grid} grid, {mach}: full vs H2O' noenhanced
plot {', '.join(lines)}""")
        out.append(png)
    return out


def eval_block(b):
    x, _, k = b.partition("x")
    return int(x) * int(k or 1)


def gp(script):
    r = subprocess.run(["gnuplot"], input=script, capture_output=True, text=True)
    if r.returncode != 0:
        print("gnuplot: " + r.stderr.strip(), file=sys.stderr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", choices=list(GRIDS))
    ap.add_argument("--report", action="store_true", help="tables.md and PNGs from the CSV")
    ap.add_argument("--csv", default=os.path.join(ROOT, "benchmarks", "results", "tables.csv"))
    ap.add_argument("--report-dir", default=None, help="default: the CSV's folder")
    ap.add_argument("--dry-run", action="store_true", help="print every cell's command")
    ap.add_argument("--only", default=None, help="only the cells whose slug matches this regular expression (re.search; "
                    "a plain part of a slug matches it)")
    ap.add_argument("--skip", default=None, help="leave out the cells whose slug matches this regular expression")
    ap.add_argument("--redo", action="store_true", help="rerun the failed and skipped cells")
    ap.add_argument("--rerun", action="store_true",
                    help="rerun the cells --only picks, measured ones too (a method changed)")
    ap.add_argument("--recalibrate", action="store_true",
                    help="measure the machine's rates again before the first cell (a VM's "
                    "bf16 GEMM rate moved 3x between sittings: the bound must use this one's)")
    ap.add_argument("--peer-batches", default=None,
                    help="the peers' batches to try, comma-separated (default: 8, 16, 32, ... "
                    "up to the full-cache cell's block)")
    ap.add_argument("--cell-limit", type=int, default=240, help="seconds per cell")
    ap.add_argument("--setup-limit", type=int, default=360,
                    help="seconds of set-up a run may take on top (HF writing its offload "
                    "folder in from_pretrained, DeepSpeed loading, flexh2o reading its store)")
    ap.add_argument("--budget", type=int, default=0,
                    help="start no cell that could end after this many seconds (a lent GPU)")
    ap.add_argument("--hf-python", default="/work/venv-hf/bin/python"
                    if os.path.exists("/work/venv-hf/bin/python") else sys.executable,
                    help="python with torch + transformers + accelerate for the HF rows")
    ap.add_argument("--offload-dir", default=os.path.join(WORK, "offload"))
    ap.add_argument("--flexh2o", default=FLEXH2O)
    a = ap.parse_args()
    if a.report:
        a.report_dir = a.report_dir or os.path.dirname(os.path.abspath(a.csv))
        report(a)
    elif a.grid:
        run_grid(a)
    else:
        ap.error("--grid NAME or --report")


if __name__ == "__main__":
    main()
