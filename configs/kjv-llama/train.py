#!/usr/bin/env python3
"""Train flexh2o's default model: a small Llama (grouped-query attention, RoPE,
RMSNorm, SwiGLU) on the King James Bible from Debian's bible-kjv-text package.

    apt-get install bible-kjv          # the text (bible-kjv-text) and its reader
    pip install torch transformers tokenizers safetensors
    python3 configs/kjv-llama/train.py [--steps 600] [--out configs/kjv-llama]

Writes, into --out: tokenizer.json (byte-level BPE, 4096 tokens, trained here
with Hugging Face tokenizers), tokenizer_config.json, config.json and
model.safetensors (fp16, Hugging Face layout: transformers and flexh2o load the
same files), heldout.txt (every 20th chapter, never trained on), loss.csv
(step, tokens, train loss, held-out loss) and train.log. Seeded: the same
command on the same torch gives the same weights up to the CPU's float
reductions. On a GPU it runs there (--device cuda), much faster.
"""
import argparse
import json
import math
import os
import random
import re
import subprocess
import time

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
EOT = "<|endoftext|>"


def chapters():
    """The whole text, one string per chapter, from the bible program."""
    raw = subprocess.run(["bible", "-f", "Ge1:1-Re22:21"], capture_output=True, text=True,
                         check=True).stdout
    out, cur, key = [], [], None
    for line in raw.splitlines():
        m = re.match(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$", line)
        if not m:
            if cur and line.strip():
                cur[-1] += " " + line.strip()
            continue
        k = (m.group(1), m.group(2))
        if k != key and cur:
            out.append(" ".join(cur))
            cur = []
        key = k
        cur.append(m.group(4).strip())
    if cur:
        out.append(" ".join(cur))
    return out


def train_tokenizer(texts, vocab):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tr = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOT], min_frequency=2,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, tr)
    return tok


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=1611)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args()
    random.seed(a.seed)
    torch.manual_seed(a.seed)
    os.makedirs(a.out, exist_ok=True)
    log = open(os.path.join(a.out, "train.log"), "w")

    def say(s):
        print(s, flush=True)
        log.write(s + "\n")
        log.flush()

    ch = chapters()
    held = [c for i, c in enumerate(ch) if i % 20 == 0]
    train = [c for i, c in enumerate(ch) if i % 20 != 0]
    with open(os.path.join(a.out, "heldout.txt"), "w") as f:
        f.write("\n\n".join(held) + "\n")
    tok = train_tokenizer(train, 4096)
    tok.save(os.path.join(a.out, "tokenizer.json"))
    eot = tok.token_to_id(EOT)
    with open(os.path.join(a.out, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": True, "bos_token": EOT, "eos_token": EOT,
                   "model_max_length": a.seq, "tokenizer_class": "PreTrainedTokenizerFast"},
                  f, indent=2)
        f.write("\n")

    def ids_of(texts):
        out = []
        for t in texts:
            out.append(eot)
            out.extend(tok.encode(t).ids)
        return torch.tensor(out, dtype=torch.long)

    tr_ids, he_ids = ids_of(train), ids_of(held)
    say(f"{len(ch)} chapters: {len(tr_ids)} training tokens, {len(he_ids)} held out")

    cfg = LlamaConfig(vocab_size=4096, hidden_size=384, intermediate_size=1024,
                      num_hidden_layers=6, num_attention_heads=6, num_key_value_heads=2,
                      head_dim=64, max_position_embeddings=a.seq, rms_norm_eps=1e-5,
                      rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=eot,
                      eos_token_id=eot, hidden_act="silu", attention_dropout=0.0)
    model = LlamaForCausalLM(cfg).to(a.device)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"model: {n_params / 1e6:.2f} M parameters, context {a.seq}, device {a.device}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warm = max(1, a.steps // 20)

    def lr_at(s):
        if s < warm:
            return a.lr * (s + 1) / warm
        return a.lr * 0.1 + 0.9 * a.lr * 0.5 * (1 + math.cos(math.pi * (s - warm) /
                                                             max(1, a.steps - warm)))

    gen = torch.Generator().manual_seed(a.seed)

    def batch(ids, n):
        at = torch.randint(0, len(ids) - a.seq - 1, (n,), generator=gen)
        x = torch.stack([ids[i:i + a.seq + 1] for i in at.tolist()])
        return x.to(a.device)

    @torch.no_grad()
    def held_loss():
        model.eval()
        tot, n = 0.0, 0
        for i in range(0, len(he_ids) - a.seq - 1, a.seq):
            x = he_ids[i:i + a.seq + 1].unsqueeze(0).to(a.device)
            out = model(x[:, :-1], labels=x[:, :-1], use_cache=False)
            tot += out.loss.item()
            n += 1
            if n == 16:
                break
        model.train()
        return tot / n

    csv = open(os.path.join(a.out, "loss.csv"), "w")
    csv.write("step,tokens,train_loss,heldout_loss\n")
    t0, seen = time.time(), 0
    model.train()
    for s in range(a.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(s)
        x = batch(tr_ids, a.batch)
        loss = model(x[:, :-1], labels=x[:, :-1], use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        seen += a.batch * a.seq
        if s % 25 == 0 or s == a.steps - 1:
            hl = held_loss() if s % 100 == 0 or s == a.steps - 1 else float("nan")
            csv.write(f"{s},{seen},{loss.item():.4f},{hl:.4f}\n")
            csv.flush()
            say(f"step {s}/{a.steps} tokens {seen} loss {loss.item():.3f} held-out {hl:.3f} "
                f"lr {lr_at(s):.2e} {time.time() - t0:.0f} s")
    model = model.to("cpu").half()
    model.config._name_or_path = "flexh2o-kjv-llama"
    model.save_pretrained(a.out, safe_serialization=True)
    for f in os.listdir(a.out):
        if f == "generation_config.json":
            os.remove(os.path.join(a.out, f))
    say(f"done in {time.time() - t0:.0f} s; final held-out loss {held_loss_f16(model, he_ids, a)}")


@torch.no_grad()
def held_loss_f16(model, he_ids, a):
    """The held-out loss of the saved (fp16) weights, computed in fp32."""
    m = model.float().eval()
    tot, n = 0.0, 0
    for i in range(0, len(he_ids) - a.seq - 1, a.seq):
        x = he_ids[i:i + a.seq + 1].unsqueeze(0)
        tot += m(x[:, :-1], labels=x[:, :-1], use_cache=False).loss.item()
        n += 1
    return f"{tot / n:.4f} (ppl {math.exp(tot / n):.2f}, {n} windows of {a.seq})"


if __name__ == "__main__":
    main()
