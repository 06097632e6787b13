#!/usr/bin/env python3
"""Throughput of flexh2o against Hugging Face transformers, same machine, same run.

    python3 benchmarks/bench_generate.py [--device cpu|cuda] [--model opt-125m]
        [--prompt-len 128] [--gen-len 32] [--batches 1,8,32] [--flexh2o build/src/flexh2o]

Any family of configs/models (opt-*, llama-*, mistral-*, qwen2.5-*, pythia-*,
gpt-neox-20b): transformers builds the family's own model class from the same
config.json. Both sides run the same shape with random ("dummy") weights, in fp32 on all
CPU cores (--device cpu) or in fp16 on the GPU with the whole model resident
(--device cuda): a batch of B prompts of prompt-len tokens, then gen-len greedy tokens
with EOS ignored; transformers' prefill keeps only the last position's logits
(logits_to_keep=1), as its generate() does. Reported per batch size:
  prefill tok/s  = B * prompt_len / prefill time
  decode tok/s   = B * (gen_len - 1) / time of the decode steps
and the ratio flexh2o / transformers. Both warm up off the clock: transformers with a
short forward of the model it keeps for every batch, flexh2o (a process per batch) with
generate --warm-up (the batch run to 2 tokens first). transformers' side is skipped, with a
note, when torch or transformers is not installed. Prints a Markdown table.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from benchlib import FLEXH2O, ROOT, prompt_ids, write_prompts


def run_flexh2o(binary, model, B, plen, glen, tmp, device):
    prompts = os.path.join(tmp, f"p{B}.jsonl")
    out = os.path.join(tmp, f"o{B}.jsonl")
    write_prompts(prompts, B, plen)
    if os.path.exists(out):
        os.remove(out)
    r = subprocess.run([binary, "generate", "--dummy", model, "--prompts", prompts, "--out", out,
                        "--batch-size", str(B), "--max-new-tokens", str(glen), "--ignore-eos",
                        "--device", device, "--warm-up"], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"flexh2o failed: {r.stderr.strip()}")
    m = re.search(r"prefill ([\d.]+) tok/s .*decode ([\d.]+) tok/s", r.stderr)
    return float(m.group(1)), float(m.group(2))


_hf_models = {}


def run_hf(model, B, plen, glen, device):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    if model not in _hf_models:
        cfg = json.load(open(os.path.join(ROOT, "configs", "models", model + ".json")))
        for k in ("_name_or_path", "architectures", "torch_dtype"):
            cfg.pop(k, None)
        torch.manual_seed(0)
        dtype = torch.float16 if device == "cuda" else torch.float32
        torch.set_default_dtype(dtype)
        with torch.device(device):
            # the family's own model class (OPT, Llama, Mistral, Qwen2, GPT-NeoX)
            _hf_models[model] = AutoModelForCausalLM.from_config(
                AutoConfig.for_model(cfg.pop("model_type"), **cfg)).eval()
        torch.set_default_dtype(torch.float32)
    import inspect
    from transformers import DynamicCache
    m = _hf_models[model]
    # the cache keyword: `cache` from transformers 5.2x, `past_key_values` before
    ck = "cache" if "cache" in inspect.signature(m.forward).parameters else "past_key_values"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    ids = torch.tensor([prompt_ids(i, plen)
                        for i in range(B)], device=device)
    # the peer at its best, as generate() runs it: the prefill computes the
    # logits of the last position only (logits_to_keep=1; all B x plen rows
    # of the LM head would cost it ~1.7x at batch 8), and the cache is the
    # current API's DynamicCache, filled in place
    with torch.inference_mode():
        m(ids[:, :8], use_cache=True, logits_to_keep=1, **{ck: DynamicCache()})  # warm-up
        sync()
        t0 = time.perf_counter()
        past = DynamicCache()
        out = m(ids, use_cache=True, logits_to_keep=1, **{ck: past})
        sync()
        t_prefill = time.perf_counter() - t0
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        t0 = time.perf_counter()
        for _ in range(glen - 1):
            out = m(tok, use_cache=True, logits_to_keep=1, **{ck: past})
            tok = out.logits[:, -1].argmax(-1, keepdim=True)
        sync()
        t_decode = time.perf_counter() - t0
    return B * plen / t_prefill, B * (glen - 1) / t_decode


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--model", default="opt-125m")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=32)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--flexh2o", default=FLEXH2O)
    a = ap.parse_args()
    try:
        import torch
        import transformers
        hf = f"transformers {transformers.__version__}, torch {torch.__version__}, " \
             f"{torch.get_num_threads()} threads"
    except ImportError:
        hf = None
    where = f"CPU ({os.cpu_count()} cores), fp32" if a.device == "cpu" else "GPU, fp16"
    if hf and a.device == "cuda":
        hf += ", " + torch.cuda.get_device_name(0)
    print(f"# {a.model} dummy on {where}, prompt {a.prompt_len}, "
          f"gen {a.gen_len}; peer: {hf or 'transformers not installed (skipped)'}\n")
    print("| batch | flexh2o prefill tok/s | HF prefill tok/s | ratio | "
          "flexh2o decode tok/s | HF decode tok/s | ratio |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for B in [int(x) for x in a.batches.split(",")]:
            fp, fd = run_flexh2o(a.flexh2o, a.model, B, a.prompt_len, a.gen_len, tmp, a.device)
            if hf:
                hp, hd = run_hf(a.model, B, a.prompt_len, a.gen_len, a.device)
                print(f"| {B} | {fp:.1f} | {hp:.1f} | {fp / hp:.2f}x | {fd:.1f} | {hd:.1f} | "
                      f"{fd / hd:.2f}x |", flush=True)
            else:
                print(f"| {B} | {fp:.1f} | - | - | {fd:.1f} | - | - |", flush=True)


if __name__ == "__main__":
    main()
