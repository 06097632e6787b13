#!/usr/bin/env python3
"""One offloaded Hugging Face generation, the peer rows of benchmarks/tables.py.

    python hf_offload.py --prepare --model opt-1.3b --ckpt DIR [--dtype float32]
    python hf_offload.py --model opt-1.3b --ckpt DIR --device cpu --batch 32 \
        --prompt-len 32 --gen-len 8 --max-memory cpu=4GiB --offload-dir DIR \
        [--engine accelerate|deepspeed] [--dtype float32]

--prepare writes a random checkpoint of configs/models/<model>.json in --dtype to
--ckpt (seed 0; untimed, tables.py runs it outside the memory cap). A run loads that
checkpoint with device_map="auto" under --max-memory (the rest to disk in
--offload-dir: HF Accelerate's placement), or with DeepSpeed ZeRO-Inference (ZeRO
stage 3, parameters offloaded to the CPU, or to NVMe in --offload-dir when
--max-memory's cpu share is smaller than the weights), then generates --gen-len
tokens greedily for --batch prompts of benchlib's synthetic set, EOS ignored.
Prints one JSON line: tok_s = batch * gen_len / wall of generate(), wall_s, load_s
(from_pretrained, which writes the offload folder: outside the clock),
lowest (gpu/cpu/disk) and the placement's bytes per tier.

--random-init instead of --ckpt (HF Accelerate only): no checkpoint at all, for a
model whose checkpoint the disk cannot hold (OPT-30B's 60 GB on a lent GPU machine's
64 GiB): the model is built from the config on the meta device, placed by
accelerate's infer_auto_device_map under --max-memory, each parameter drawn as
--prepare draws it (on the GPU where there is one) straight onto its device, and
dispatched with the CPU share kept in RAM (accelerate's CPU offload: moved to the GPU
layer by layer in each forward, as from_pretrained's device_map does). A map that
needs the disk is refused (raise --max-memory's cpu).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import ROOT, prompt_ids  # noqa: E402


def config(model):
    from transformers import AutoConfig
    cfg = json.load(open(os.path.join(ROOT, "configs", "models", model + ".json")))
    for k in ("_name_or_path", "architectures", "torch_dtype"):
        cfg.pop(k, None)
    return AutoConfig.for_model(cfg.pop("model_type"), **cfg)


def drawer(torch, dtype):
    """draw(name, shape): a parameter's random value, seed 0 in the order of the calls:
    matrices ~ N(0, 0.02), LayerNorm / RMSNorm weights 1, biases 0 (the shape of OPT's
    init); drawn on the GPU where there is one (torch's CPU normal_ over fp16 ran for
    over 150 s of OPT-6.7B on the H200 machine's host, which a lent GPU cannot spare;
    the values differ from a CPU draw's, each as random as the other)."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=dev).manual_seed(0)

    def draw(name, shape):
        if len(shape) >= 2:
            return torch.empty(shape, dtype=dtype, device=dev).normal_(0, 0.02, generator=g)
        if "norm" in name and name.endswith("weight"):
            return torch.ones(shape, dtype=dtype, device=dev)
        return torch.zeros(shape, dtype=dtype, device=dev)
    return draw


def prepare(a):
    """A random checkpoint in --dtype written shard by shard (2 GiB each), so that no more
    than a shard is in memory: a model built on the meta device names the tensors,
    drawer() draws them."""
    import torch
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM
    if os.path.exists(os.path.join(a.ckpt, "config.json")):
        return
    cfg = config(a.model)
    with init_empty_weights():
        m = AutoModelForCausalLM.from_config(cfg)
    dtype = getattr(torch, a.dtype)
    tied = set(getattr(m, "_tied_weights_keys", None) or []) \
        if cfg.tie_word_embeddings else set()
    os.makedirs(a.ckpt, exist_ok=True)
    draw = drawer(torch, dtype)
    shard, size, weight_map, total, n = {}, 0, {}, 0, 0

    def flush():
        nonlocal shard, size, n
        if shard:
            name = f"model-{n:05d}.safetensors"
            save_file(shard, os.path.join(a.ckpt, name), metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
            shard, size, n = {}, 0, n + 1

    for k, p in m.state_dict().items():
        if k in tied:
            continue
        t = draw(k, p.shape).cpu()
        shard[k] = t
        size += t.numel() * t.element_size()
        total += t.numel() * t.element_size()
        if size >= 2 << 30:
            flush()
    flush()
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map},
              open(os.path.join(a.ckpt, "model.safetensors.index.json"), "w"))
    cfg.save_pretrained(a.ckpt)


def parse_mem(s):
    """"cpu=4GiB,0=14GiB" -> {"cpu": "4GiB", 0: "14GiB"}"""
    out = {}
    for part in s.split(","):
        k, v = part.split("=")
        out[int(k) if k.isdigit() else k] = v
    return out


def mem_bytes(s):
    """"4GiB" or "4096MiB" (max_memory's values as tables.py writes them) -> bytes."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if s.endswith(unit):
            return float(s[:-len(unit)]) * scale
    raise ValueError(f"--max-memory: {s!r} is not in GiB or MiB")


def tiers_of(model):
    by = {"gpu": 0, "cpu": 0, "disk": 0}
    dmap = getattr(model, "hf_device_map", None) or {"": "cpu"}
    for name, p in model.named_parameters():
        dev = next((d for k, d in sorted(dmap.items(), key=lambda kv: -len(kv[0]))
                    if name == k or name.startswith(k + ".") or k == ""), "cpu")
        tier = "disk" if dev == "disk" else "cpu" if dev in ("cpu", "meta") else "gpu"
        # a ZeRO-3 parameter is an empty placeholder; ds_numel is its real size
        by[tier] += getattr(p, "ds_numel", p.numel()) * p.element_size()
    return by


def load_accelerate(a, dtype):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(
        a.ckpt, dtype=dtype, device_map="auto", max_memory=parse_mem(a.max_memory),
        offload_folder=a.offload_dir, offload_state_dict=True).eval()


def load_random(a, dtype):
    """--random-init: no checkpoint; see the module's text."""
    import torch
    from accelerate import dispatch_model, infer_auto_device_map, init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from transformers import AutoModelForCausalLM
    with init_empty_weights():
        m = AutoModelForCausalLM.from_config(config(a.model), dtype=dtype)
    m.tie_weights()  # the map keeps tied parameters together
    mem = parse_mem(a.max_memory)
    dmap = infer_auto_device_map(m, max_memory=mem, dtype=dtype,
                                 no_split_module_classes=m._no_split_modules)
    if "disk" in dmap.values():
        sys.exit(f"hf_offload: --random-init keeps the CPU share in RAM, and --max-memory "
                 f"{a.max_memory} leaves part of {a.model} for the disk: raise its cpu share")
    draw = drawer(torch, dtype)
    # named_parameters names a tied parameter once; tie_weights ties it again below
    for name, p in list(m.named_parameters()):
        set_module_tensor_to_device(m, name, place(name, dmap), value=draw(name, p.shape))
    m.tie_weights()
    return dispatch_model(m, device_map=dmap).eval()


def place(name, dmap):
    """The device accelerate's map gives a parameter: its longest module prefix's."""
    best = None
    for k, d in dmap.items():
        if (k == "" or name == k or name.startswith(k + ".")) and \
                (best is None or len(k) > len(best[0])):
            best = (k, d)
    return best[1] if best else "cpu"


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_deepspeed(a, dtype):
    """ZeRO-Inference: ZeRO stage 3 with the parameters offloaded (CPU or NVMe)."""
    import deepspeed
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig
    # one process: torch.distributed's environment for a world of one (without it
    # DeepSpeed looks for an MPI launcher through mpi4py)
    for k, v in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                 ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(free_port()))):
        os.environ.setdefault(k, v)
    from accelerate import init_empty_weights
    cfg = config(a.model)
    with init_empty_weights():  # sizes only: the parameters in the compute type
        numels = [p.numel() for p in AutoModelForCausalLM.from_config(cfg).parameters()]
    elem = torch.finfo(dtype).bits // 8
    n_bytes = sum(numels) * elem
    cap = mem_bytes(parse_mem(a.max_memory).get("cpu", "0GiB"))
    # NVMe when the weights do not fit the cap: every swap buffer holds the largest
    # parameter (the embedding), 5 of them as ZeRO-Inference's examples use, fewer
    # (down to 2) when 5 would take more than 40% of the cap (Llama-3.2-1B's
    # 128256-row embedding: 1 GiB in fp32 per buffer)
    buf_bytes = max(numels) * elem
    off = {"device": "cpu", "pin_memory": True} if n_bytes <= cap else \
        {"device": "nvme", "nvme_path": a.offload_dir, "pin_memory": True,
         "buffer_count": max(2, min(5, int(0.4 * cap // buf_bytes))),
         "buffer_size": max(numels)}
    ds = {"fp16": {"enabled": dtype == torch.float16},
          "bf16": {"enabled": dtype == torch.bfloat16},
          "zero_optimization": {"stage": 3, "offload_param": off,
                                "stage3_param_persistence_threshold": 0},
          "train_micro_batch_size_per_gpu": a.batch}
    # keeps the weights partitioned while from_pretrained loads; transformers holds it
    # by a weak reference, so it must live until the model is built
    hf_ds = HfDeepSpeedConfig(ds)
    m = AutoModelForCausalLM.from_pretrained(a.ckpt, dtype=dtype)
    engine = deepspeed.initialize(model=m, config_params=ds)[0]
    del hf_ds
    engine.module.eval()
    engine.module.flexh2o_lowest = off["device"].replace("nvme", "disk")
    return engine.module


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="opt-1.3b")
    ap.add_argument("--ckpt", help="random-init checkpoint (--prepare writes it)")
    ap.add_argument("--random-init", action="store_true",
                    help="no checkpoint: random weights made in memory (accelerate only)")
    ap.add_argument("--prepare", action="store_true")
    ap.add_argument("--engine", default="accelerate", choices=["accelerate", "deepspeed"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default=None, help="default float32 on cpu, float16 on cuda")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--gen-len", type=int, default=8)
    ap.add_argument("--max-memory", default="cpu=4GiB")
    ap.add_argument("--offload-dir", default="/tmp/flexh2o-tables-hf-offload")
    ap.add_argument("--warm-up", action="store_true",
                    help="first generate 2 tokens for the same batch, off the clock (as "
                    "flexh2o generate --warm-up)")
    a = ap.parse_args()
    a.dtype = a.dtype or ("float32" if a.device == "cpu" else "float16")
    if a.random_init and (a.prepare or a.engine != "accelerate"):
        ap.error("--random-init: HF Accelerate runs only (no --prepare, no deepspeed)")
    if not a.random_init and not a.ckpt:
        ap.error("--ckpt DIR (or --random-init)")
    if a.prepare:
        prepare(a)
        return
    import torch
    dtype = getattr(torch, a.dtype)
    os.makedirs(a.offload_dir, exist_ok=True)
    t_load = time.perf_counter()
    m = load_deepspeed(a, dtype) if a.engine == "deepspeed" else \
        load_random(a, dtype) if a.random_init else load_accelerate(a, dtype)
    load_s = time.perf_counter() - t_load
    print(f"[hf_offload] loaded in {load_s:.1f} s", file=sys.stderr, flush=True)
    first = "cuda" if a.device == "cuda" else "cpu"
    ids = torch.tensor([prompt_ids(i, a.prompt_len) for i in range(a.batch)], device=first)
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    with torch.inference_mode():
        if a.warm_up:
            m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2,
                       min_new_tokens=2, do_sample=False, num_beams=1, pad_token_id=1)
        sync()
        t0 = time.perf_counter()
        out = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.gen_len,
                         min_new_tokens=a.gen_len, do_sample=False, num_beams=1,
                         pad_token_id=1)
        sync()
        wall = time.perf_counter() - t0
    gen = out.shape[1] - a.prompt_len
    by = tiers_of(m)
    lowest = getattr(m, "flexh2o_lowest", None)
    if lowest:  # ZeRO-Inference keeps every parameter on its offload device
        by = {t: sum(by.values()) if t == lowest else 0 for t in by}
    else:
        lowest = "disk" if by["disk"] else "cpu" if (by["cpu"] and a.device == "cuda") or \
            a.device == "cpu" else "gpu"
    print(json.dumps(dict(tok_s=a.batch * gen / wall, wall_s=wall, load_s=load_s,
                          generated=a.batch * gen,
                          lowest=lowest, bytes=by, dtype=a.dtype, engine=a.engine)))


if __name__ == "__main__":
    main()
