"""
longcontext.py -- the long-context stage's training data (§3.4.2 of "The Llama 3 Herd of
Models"): real text as a haystack, with pass keys to find in it.

Stage: long-context pre-training. §3.4.2: Llama 3 is pre-trained at 8K tokens, then its
context grows to 128K in six stages (~800B tokens); "a stage ends when short-context
performance has recovered and needle-in-a-haystack is solved at that length". Ours: the
default model is pre-trained at 256 tokens (pretrain.py), then continues at 1,024.

What a small model needs to learn retrieval in minutes. Long documents alone would not
teach it: a 15M-parameter model pre-trained for a few minutes has never needed to look
back more than a few dozen tokens, and in real text little depends on what came 800
tokens earlier. So, like the synthetic long-context data of §4.3.4 (question answering
over long documents, there in post-training), every row of this stage is a stretch of the
real training text -- the haystack, so language modelling goes on -- into which we write
  - a pass key (eval.NEEDLE) at a random depth, and after it the question with its
    answer (eval.QUESTION + key) at `queries` random places, the last one at the very
    end: each answer is a look-up over a distance of up to the whole row, and a row
    carries several of them;
  - `spans` stretches of the row copied from earlier to later: copying text seen far
    back is the general skill (an "induction head") that the look-up is a case of.
The evaluation (eval.py) then asks once, at the end, in held-out text it never saw.

Reads:  a data.py folder (--data): its train split is the haystack, its tokenizer encodes the needles.
Writes: OUT/meta.json, OUT/train_000.bin (documents of exactly --seq-len tokens, so that
        pretrain.py's windows of --seq-len hold one each) and OUT/val_000.bin (a copy of
        the data's held-out split: the same short-context held-out loss before and after).

How to run (the stage, after `torchrun ... pretrain.py`; run_all.py does these)
    python eval.py --ckpt out/pretrain/final --out out/longctx/eval_before --niah-lengths 256,512,1024 --max-seq-len 1024
    python longcontext.py --data out/data --out out/longctx/data --seq-len 1024
    torchrun --standalone --nproc_per_node=2 pretrain.py --init out/pretrain/final --data out/longctx/data \\
        --out out/longctx --seq-len 1024 --max-steps 60 --time-budget-min 2.5 --warmup-steps 5 --anneal-steps 0
    python eval.py --ckpt out/longctx/final --out out/longctx/eval_after --niah-lengths 256,512,1024

Read next: eval.py (how the needle is scored), then pretrain.py's --init and --rope-* flags.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys

import numpy as np

import eval as E
from common import UsageError, atomic_write_json, cli
from loader import TokenStream, split_record


def haystack(stream: TokenStream, start: int, n: int, bos_id: int, eos_id: int, newline: list[int]) -> list[int]:
    """n tokens of running text from `start` of the stream: documents joined by a newline
    instead of [eos][bos] (a bos inside a row would start a new document, and the
    document mask would hide the needle from the question)."""
    ids = stream.read(start, min(stream.n_tokens, start + 2 * n)).tolist()
    out = []
    for t in ids:
        if t == eos_id:
            out += newline
        elif t != bos_id:
            out.append(t)
        if len(out) >= n:
            break
    return out[:n]


def training_document(filler: list[int], tokenizer, length: int, rng: random.Random, queries: int = 3,
                      spans: int = 4) -> list[int]:
    """One row of the stage, exactly `length` tokens: [bos] text .. NEEDLE .. text, the
    question and answer at `queries - 1` random places after the needle and once at the
    end, then [eos]. `filler` must hold at least `length` tokens of text; `spans` pieces
    of 16-64 tokens are first copied from earlier to later in it."""
    filler = list(filler)
    for _ in range(spans):
        size = rng.randrange(16, 65)
        src = rng.randrange(0, length // 2)
        dst = rng.randrange(src + size, length - size)
        filler[dst: dst + size] = filler[src: src + size]
    key = E.random_key(rng)
    qa = tokenizer.encode("\n" + E.QUESTION + " " + key + ".\n")
    extra = (queries - 1) * len(qa)
    ex = E.needle_example(filler, tokenizer, length - 1 - extra, rng.random(), key)  # -1: the eos
    ids, after_needle = ex["ids"], ex["needle_at"] + ex["needle_len"]
    question_at = len(ids) - len(tokenizer.encode("\n" + E.QUESTION))
    for at in sorted((rng.randrange(after_needle, question_at) for _ in range(queries - 1)), reverse=True):
        ids[at:at] = qa  # from the back, so earlier places stay where they were
    return ids + ex["answer"] + [tokenizer.eos_id]


def write_long_context_data(data_dir: str, out: str, seq_len: int = 1024, n_docs: int = 1500, seed: int = 0,
                            queries: int = 3, spans: int = 4) -> dict:
    """The stage's data folder (see the module docstring) -> its meta.json record."""
    from tokenizer import Tokenizer
    try:
        with open(os.path.join(data_dir, "meta.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"{data_dir}/meta.json: unreadable ({e}); build it with `python data.py --out {data_dir}`")
    tokenizer = Tokenizer(meta["tokenizer"])
    stream = TokenStream(data_dir, meta, "train")
    if stream.n_tokens < 4 * seq_len:
        raise UsageError(f"{data_dir}: {stream.n_tokens} train tokens are too few for rows of {seq_len}")
    rng = random.Random(f"longcontext/{seed}")
    newline = tokenizer.encode("\n")
    docs = np.empty((n_docs, seq_len), dtype=np.uint32)
    for i in range(n_docs):
        start = rng.randrange(0, stream.n_tokens - 2 * seq_len)
        filler = haystack(stream, start, seq_len, meta["bos_id"], meta["eos_id"], newline)
        docs[i] = training_document(filler, tokenizer, seq_len, rng, queries, spans)
    os.makedirs(out, exist_ok=True)
    docs.tofile(os.path.join(out, "train_000.bin"))
    val = split_record(meta, "val")
    for name in val["files"]:  # the same held-out text as pre-training
        shutil.copyfile(os.path.join(data_dir, name), os.path.join(out, name))
    record = {k: meta[k] for k in ("tokenizer", "vocab_size", "bos_id", "eos_id")}
    record.update(dtype="uint32", format=f"every document is exactly {seq_len} tokens: [bos] .. [eos]",
                  splits={"train": {"files": ["train_000.bin"], "tokens": n_docs * seq_len, "documents": n_docs},
                          "val": {"files": list(val["files"]), "tokens": val.get("tokens")}},
                  long_context={"source": data_dir, "seq_len": seq_len, "seed": seed, "queries": queries,
                                "spans": spans, "needle": E.NEEDLE, "question": E.QUESTION})
    atomic_write_json(os.path.join(out, "meta.json"), record)
    return record


@cli
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Write the long-context stage's data (§3.4.2): haystacks of real "
                                            "text with pass keys, in data.py's format for pretrain.py --data.")
    p.add_argument("--data", default="out/data", help="data.py folder: the haystack text and the tokenizer")
    p.add_argument("--out", default="out/longctx/data", help="the folder to write")
    p.add_argument("--seq-len", type=int, default=1024, help="tokens per document = the stage's --seq-len")
    p.add_argument("--n-docs", type=int, default=1500, help="documents (the stage reads each once at most)")
    p.add_argument("--queries", type=int, default=3, help="question + answer per document (the last at the end)")
    p.add_argument("--spans", type=int, default=4, help="spans copied from earlier to later per document")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.seq_len < 128 or a.n_docs < 1 or a.queries < 1 or a.spans < 0:
        raise UsageError("need --seq-len >= 128, --n-docs >= 1, --queries >= 1, --spans >= 0")
    record = write_long_context_data(a.data, a.out, a.seq_len, a.n_docs, a.seed, a.queries, a.spans)
    print(f"wrote {a.out}: {a.n_docs:,} documents of {a.seq_len} tokens, {a.queries} look-ups and {a.spans} "
          f"copied spans each; held-out split from {a.data}")
    return 0 if record else 1


if __name__ == "__main__":
    sys.exit(main())
