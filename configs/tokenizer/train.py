#!/usr/bin/env python3
"""Train the byte-level BPE tokenizer of flexh2o's tiny test models.

Trains on corpus.txt (next to this script) with Hugging Face `tokenizers`
and writes, next to this script:
  vocab.json, merges.txt  GPT-2 format ("#version: 0.2" first line)
  tokenizer.json          the same tokenizer as one file

Layout of the 512 ids, as OPT has it for the specials:
  0..3     "<s>" "<pad>" "</s>" "<unk>"   (added special tokens)
  4..259   the 256 byte symbols of GPT-2's bytes_to_unicode
  260..511 the 252 merges, in rank order

The pipeline matches OPT/GPT-2: no normalizer, ByteLevel pre-tokenizer with
add_prefix_space=False (GPT-2 regex), BPE without unk/dropout/prefixes,
ByteLevel decoder. Training is deterministic: running this script again
rewrites identical files (checked by the assertions below).

Usage: python3 configs/tokenizer/train.py   (then run embed.py)
"""
import json
import os
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from tokenizers.trainers import BpeTrainer

VOCAB_SIZE = 512
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def bytes_to_unicode():
    """GPT-2's byte -> printable character table."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1))
          + list(range(0xAE, 0xFF + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    corpus = os.path.join(here, "corpus.txt")

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = BpeTrainer(vocab_size=VOCAB_SIZE, min_frequency=2,
                         special_tokens=SPECIALS, show_progress=False,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train([corpus], trainer)

    vocab = tok.get_vocab(with_added_tokens=True)
    assert len(vocab) == VOCAB_SIZE, len(vocab)
    assert sorted(vocab.values()) == list(range(VOCAB_SIZE))
    for i, s in enumerate(SPECIALS):
        assert vocab[s] == i, (s, vocab[s])
    b2u = bytes_to_unicode()
    byte_ids = sorted(vocab[b2u[b]] for b in range(256))
    assert byte_ids == list(range(4, 260)), "byte symbols are not ids 4..259"

    tok.save(os.path.join(here, "tokenizer.json"), pretty=True)
    tok.model.save(here)  # vocab.json + merges.txt

    with open(os.path.join(here, "merges.txt"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert lines[0] == "#version: 0.2", lines[0]
    assert len(lines) - 1 == VOCAB_SIZE - 260, len(lines)
    with open(os.path.join(here, "vocab.json"), encoding="utf-8") as f:
        assert json.load(f) == vocab
    print(f"wrote vocab.json, merges.txt, tokenizer.json to {here}: "
          f"{len(vocab)} ids, {len(lines) - 1} merges")
    return 0


if __name__ == "__main__":
    sys.exit(main())
