#!/usr/bin/env python3
"""gen_corpus.py: the seed corpora of the fuzz harnesses (tests/fuzz/corpus/).

Seeds are small valid inputs of each parser: copies of files of the tree
(configs/, tests/fixtures/) framed as the harness reads its input
(fuzz_<target>.c says how), plus the binary ones made here: a micro
model's safetensors (flexh2o make-model of tests/fuzz/micro-opt.json) and
its weight stores (flexh2o convert), zstd files (the zstd tool).

  python3 tests/fuzz/gen_corpus.py build/src/flexh2o

Rewrites tests/fuzz/corpus/ whole; deterministic (make-model's seed is
fixed), so a rerun changes nothing.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(HERE, "corpus")
RS = b"\x1e"  # the harnesses' part separator


def read(*path):
    with open(os.path.join(ROOT, *path), "rb") as f:
        return f.read()


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def safetensors(tensors, meta=None):
    """A safetensors file of (name, dtype, shape, raw bytes)."""
    h, off, body = {}, 0, b""
    if meta is not None:
        h["__metadata__"] = meta
    for name, dt, shape, raw in tensors:
        h[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        body += raw
    js = json.dumps(h, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 8)
    return struct.pack("<Q", len(js)) + js + body


def zstd(data):
    return subprocess.run(["zstd", "-q", "-c", "-3"], input=data, check=True,
                          stdout=subprocess.PIPE).stdout


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: gen_corpus.py FLEXH2O_BINARY")
    exe = os.path.abspath(sys.argv[1])
    shutil.rmtree(OUT, ignore_errors=True)
    tmp = tempfile.mkdtemp()
    try:
        micro = os.path.join(tmp, "micro")
        subprocess.run([exe, "make-model", "--config", os.path.join(HERE, "micro-opt.json"),
                        "--out", micro, "--seed", "7"], check=True)
        for name, args in [("f32", ["--dtype", "f32"]), ("f16", []),
                           ("q4", ["--compress-weight"])]:
            store = os.path.join(tmp, "store-" + name)
            r = subprocess.run([exe, "convert", "--model", micro, "--out", store] + args)
            if r.returncode == 0:
                put("store", "micro-opt-%s.flxh2o" % name,
                    open(os.path.join(store, "model.flxh2o"), "rb").read())
        put("safetensors", "micro-opt.safetensors",
            open(os.path.join(micro, "model.safetensors"), "rb").read())
    finally:
        shutil.rmtree(tmp)
    put("safetensors", "f16-bf16-meta.safetensors", safetensors(
        [("a", "F16", [2, 2], struct.pack("<4e", 1, -2, 0.5, 65504)),
         ("b", "BF16", [3], b"\x80\x3f\x00\x40\x80\xbf"),
         ("c", "F32", [], struct.pack("<f", 3.25))], {"format": "pt"}))
    put("safetensors", "empty-shape.safetensors", safetensors([("z", "F32", [0, 4], b"")]))

    put("st_index", "both.json", json.dumps(
        {"metadata": {"total_size": 18}, "weight_map": {"x": "a.safetensors",
                                                        "y": "b.safetensors"}}).encode())
    put("st_index", "one.json", b'{"weight_map": {"x": "a.safetensors"}}')
    put("st_index", "repeated.json",
        b'{"weight_map": {"x": "a.safetensors", "y": "b.safetensors", "z": "a.safetensors"}}')

    for name in ["opt-125m", "llama-3.1-8b", "mistral-7b", "qwen2.5-7b", "pythia-12b",
                 "tiny-neox", "llama-3.2-1b"]:
        put("model_config", name + ".json", read("configs", "models", name + ".json"))
    put("model_config", "kjv-llama.json", read("configs", "kjv-llama", "config.json"))
    put("model_config", "micro-opt.json", read("tests", "fuzz", "micro-opt.json"))

    vocab, merges = read("configs", "tokenizer", "vocab.json"), read("configs", "tokenizer",
                                                                     "merges.txt")
    put("tok_bpe", "embedded-words", vocab + RS + merges + RS + b"In the beginning God created")
    put("tok_bpe", "embedded-unicode", vocab + RS + merges + RS +
        "caf\u00e9  \u4e2d\u6587 \U0001F600\n\t<|endoftext|>".encode())

    for fam in ["llama2", "llama3", "mistral", "neox", "qwen2"]:
        put("tok_json", fam + ".json", read("tests", "fixtures", "tok-" + fam, "tokenizer.json"))

    def opt(*path):
        p = os.path.join(ROOT, *path)
        return open(p, "rb").read() if os.path.exists(p) else b""

    for fam in ["llama2", "llama3", "qwen2"]:
        d = ("tests", "fixtures", "tok-" + fam)
        put("tok_config", fam, opt(*d, "tokenizer_config.json") + RS +
            opt(*d, "generation_config.json") + RS + opt(*d, "config.json") + RS)
    put("tok_config", "gemma", read("tests", "fixtures", "chat-gemma", "tokenizer_config.json") +
        RS + RS + RS)
    golden = json.loads(read("tests", "fixtures", "chat-golden.json"))
    tc = json.dumps({"bos_token": "<|endoftext|>", "eos_token": {"content": "<|endoftext|>"},
                     "add_bos_token": False}).encode()
    for name in ["llama3", "chatml", "mistral-v3", "zephyr"]:
        t = next(x for x in golden["templates"] if x["name"] == name)
        put("tok_config", "jinja-" + name, tc + RS + b'{"eos_token_id": [0, 1]}' + RS +
            b'{"bos_token_id": 0}' + RS + t["text"].encode())

    chatml = 2 << 2  # a chat template in the option byte (enum tok_chat_kind)
    prompts = read("configs", "examples", "prompts.jsonl")
    put("job_prompts", "examples", b"\x00" + prompts)
    put("job_prompts", "examples-zst", b"\x02" + prompts)
    put("job_prompts", "native-controls", bytes([chatml | 64]) + b"\n".join([
        b'{"id": 1, "prompt": "Hello", "max_new_tokens": 4, "temperature": 0.7, '
        b'"top_p": 0.9, "top_k": 5, "min_p": 0.1, "seed": 3, "n": 2, "stop": ["\\n", "."], '
        b'"stop_token_ids": [2], "logit_bias": {"5": -100}, "repetition_penalty": 1.1, '
        b'"frequency_penalty": 0.5, "presence_penalty": -0.5, "min_tokens": 1, '
        b'"ignore_eos": true, "top_logprobs": 3, "include_stop_str_in_output": true}',
        b'{"id": "chat", "messages": [{"role": "system", "content": "Be terse."}, '
        b'{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}',
        b'{"prompt_ids": [0, 1, 2], "metadata": {"k": "v"}}', b""]))
    put("job_prompts", "openai", bytes([chatml]) + b"\n".join([
        b'{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": '
        b'{"model": "m", "prompt": "Once upon", "max_tokens": 3, "logprobs": 2, "n": 2, '
        b'"best_of": 2, "stop": "x", "echo": false}}',
        b'{"custom_id": "b", "method": "POST", "url": "/v1/chat/completions", "body": '
        b'{"messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 3, '
        b'"logprobs": true, "top_logprobs": 2, "stream": false}}',
        b'{"custom_id": "c", "method": "POST", "url": "/v1/completions", "body": '
        b'{"prompt": [[1, 2, 3]], "tools": [1]}}', b""]))
    put("job_prompts", "strict-bad", b"\x01" + b'{"id": 1, "prompt": "ok"}\n{"id": 2, '
        b'"prompt": "a", "bogus": 1}\n')
    # repeated keys after bad lines (a bad field, the other format, 3 and 3.0): an id's
    # record stays at its first line, so the split output merges back (job_merge)
    put("job_prompts", "repeats", b"\x00" + b"\n".join([
        b'{"id": "x", "prompt": "a", "colour": 1}', b'{"id": "y", "prompt": "b"}',
        b'{"id": "x", "prompt": "c"}',
        b'{"custom_id": "w", "method": "POST", "url": "/v1/completions", "body": '
        b'{"prompt": "d"}}', b'{"prompt": "e"}', b"not json", b'{"id": "w", "prompt": "f"}',
        b'{"id": 3, "prompt": "g"}', b'{"id": 3.0, "prompt": "h"}',
        b'{"id": "y", "prompt": "i"}', b'{"id": "z", "prompt": "j"}', b""]))

    # score's requests: text and ids, every id kind, whitespace moved to the continuation
    put("score", "requests", b"\x00" + b"\n".join([
        b'{"id": "q1-a", "context": "The man broke his toe because", "continuation": '
        b'" he dropped a hammer on his foot."}',
        b'{"id": 7, "context": "one two ", "continuation": "three", "metadata": {"k": 1}}',
        b'{"context_ids": [2, 10, 20], "continuation_ids": [30, 40]}',
        b'{"id": 2.5, "context": "", "continuation": "x"}', b""]))
    put("score", "full-ids-no-tokenizer", bytes([1 | 2]) + b"\n".join([
        b'{"id": "a", "context_ids": [5], "continuation_ids": [6, 7]}',
        b'{"id": "b", "context_ids": [8, 9], "continuation_ids": [10]}', b""]))
    put("score", "bad-repeat", b"\x08" + b'{"id": 1, "context": "a", "continuation": "b"}\n'
        b'{"id": 1.0, "context": "c", "continuation": "d"}\n')

    # eval --resume's window records (the harness's four windows: 9, 9, 9 and 6 targets);
    # option bit 1 gives each line its window's fingerprint
    rec = ('{"id": %d, "fp": "0000000000000000", "logprob": %s, "targets": %d, "greedy": %d, '
           '"kl": %s, "agree": %d}')
    put("eval_resume", "records", b"\x02" + "\n".join([
        rec % (1, "-21.5", 9, 2, "0", 0), rec % (2, "-19.25", 9, 0, "0", 0),
        rec % (4, "-8.0000000000000018", 6, 6, "0", 0), ""]).encode())
    put("eval_resume", "compare-full-torn", b"\x03" + "\n".join([
        rec % (3, "-30.125", 9, 1, "0.34173957600000001", 7),
        rec % (1, "-1e-3", 9, 9, "1e-300", 9), '{"id": 2, "fp": "']).encode())
    put("eval_resume", "another-run", b"\x00" + (rec % (1, "-1", 9, 0, "0", 0)).encode())

    native = (b'{"id":"genesis","completion":" the","tokens":[262],"logprobs":[-1.5],'
              b'"finish_reason":"length"}\n'
              b'{"id":7,"choices":[{"index":0,"completion":"a","tokens":[64],"logprobs":[-0.1],'
              b'"finish_reason":"eos"}]}\n')
    openai = (b'{"id":"batch_req_1","custom_id":"a","response":{"status_code":200,'
              b'"request_id":"req_1","body":{"id":"cmpl-1","object":"text_completion",'
              b'"choices":[{"index":0,"text":"x","logprobs":null,"finish_reason":"length"}]}},'
              b'"error":null}\n')
    put("job_resume", "plain-torn", b"\x00" + native + b'{"id":"torn","compl')
    put("job_resume", "plain-openai", b"\x00" + openai)
    put("job_resume", "zst-one-frame", b"\x01" + zstd(native + openai))
    put("job_resume", "zst-frames-torn",
        bytes([2 | 3 << 2]) + native.replace(b"}\n{", b"}\n" + RS + b"{") + RS + openai)

    for f in sorted(os.listdir(os.path.join(ROOT, "configs", "policies"))):
        if f.endswith(".json"):
            put("policy", f, read("configs", "policies", f))
    hw = json.loads(read("configs", "hardware", "ci-2vcpu-epyc-cpu.json"))
    put("calib", "ci-2vcpu-epyc-cpu.json", read("configs", "hardware", "ci-2vcpu-epyc-cpu.json"))
    small = {k: hw[k] for k in ["device", "h2d_GBps", "d2h_GBps", "dram_GBps", "dev_mem_GBps",
                                "gemm_TFLOPs"]}
    put("calib", "no-disk.json", json.dumps(small).encode())
    cuda = dict(hw, device="cuda", h2d_GBps=24.1, d2h_GBps=25.3, dev_mem_GBps=2900.0,
                gemm_TFLOPs=600.0, gemm_rows=[1, 8, 64, 512], gemm_TFLOPs_at=[2.1, 16, 120, 590])
    put("calib", "cuda.json", json.dumps(cuda).encode())


if __name__ == "__main__":
    main()
