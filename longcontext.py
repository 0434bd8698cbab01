"""
longcontext.py -- the long-context stage (§3.4.2 of "The Llama 3 Herd of Models"): grow
the context in steps, on real text with pass keys to find in it, and measure it.

Stage: long-context pre-training. §3.4.2: Llama 3 is pre-trained at 8K tokens, then its
context grows to 128K in six stages (~800B tokens); "a stage ends when short-context
performance has recovered and needle-in-a-haystack is solved at that length". Ours: the
default model is pre-trained at 256 tokens (pretrain.py), then continues at 512, then
1,024, with eval.py before and after every stage: needle
accuracy per length, the short-context (256-token windows) held-out loss, and in-context
copying (eval.in_context_copying: is a span read 100 tokens ago copied?).

What a small model needs to learn retrieval in minutes. Long documents alone would not
teach it: a 1M-parameter model pre-trained for a few minutes has never needed to look
back more than a few dozen tokens, and in real text little depends on what came 800
tokens earlier. The look-up "What is the pass key? The pass key is" -> the key is a case
of copying: find where "The pass key is" came before and say what followed -- the work
of an "induction head" (Olsson et al., 2022), which our pre-training budget does not
grow (a repeated span is predicted no better than a new one). So, like the synthetic
data of §4.3.4 (there for long-context question answering in post-training), each row
of the growth stages is a stretch of the real training text -- the haystack, so
language modelling goes on -- into which we write a pass key (eval.NEEDLE) at a random
depth, and after it the question with its answer (eval.QUESTION + key) at `queries`
random places, the last one at the very end (each answer is a look-up over a distance of
up to the whole row, and a row carries several of them), and `spans` stretches of the
row copied from earlier to later (copying over long distances). --copy-steps N adds a
stage before them whose rows are [bos] w x y x z [eos] (real text, x repeated at random places):
copying alone. An induction head does grow in this model, but only after 5-8M tokens of
copy rows (--copy-len 256, 4,000 steps: 57-63% of a repeated span copied, 23% before;
~16 minutes here); needle rows then teach the look-up (600 steps at a constant LR,
--min-lr-ratio 1: ~55% at 256; without the head: 0%), less well at each longer length.
That is ~20 more minutes than run_all's default: `run_all.py --retrieval` (docs/NOTES.md).
The evaluation (eval.py) then asks once, at the end, in held-out text it never saw.
RoPE θ and the 3.1 frequency scaling can be changed for the stage (--rope-theta,
--rope-scaling): the ablation of docs/NOTES.md.

Reads:  --init (the pre-trained model), --data (data.py's folder: its train split is the
        haystack, its val split the held-out text, its tokenizer encodes the needles).
Writes: OUT/eval_before/, OUT/ctxLEN/{data,final,...} (OUT/copyLEN/) and OUT/eval_NAME/ per stage,
        OUT/final (-> the last stage's model), OUT/report.json (needle accuracy per length
        and held-out loss before, after each stage, after), OUT/niah.png (heat maps before/after).

How to run (run_all.py runs the first, after pre-training)
    python longcontext.py --init out/pretrain/final --data out/data --out out/longctx
    python longcontext.py --lengths 512 --eval-lengths 256,512,1024,2048 --rope-theta 10000 \
        --rope-scaling off --out out/longctx_theta10k           # the θ ablation, one of four
    python longcontext.py --copy-steps 4000 --copy-budget-min 0 --lengths 256,512 --steps 600 \
        --lr 1e-3 --min-lr-ratio 1 --time-budget-min 0 --niah-trials 20   # run_all --retrieval's stage
    python eval.py --ckpt out/longctx/final --tasks niah --niah-lengths 512,1024,2048 --max-seq-len 2048

Read next: eval.py (how the needle is scored), then pretrain.py's --init and --rope-* flags.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

import eval as E
from common import UsageError, arg, atomic_write_json, cli, flag, parse_config, print0
from pretrain import PretrainConfig
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
    for at in sorted((rng.randint(after_needle, question_at) for _ in range(queries - 1)), reverse=True):
        ids[at:at] = qa  # from the back, so earlier places stay where they were
    return ids + ex["answer"] + [tokenizer.eos_id]


def copy_document(filler: list[int], bos_id: int, eos_id: int, length: int, rng: random.Random) -> list[int]:
    """One row of the copying stage, exactly `length` tokens: [bos] w x y x z [eos], all
    of it running text of `filler` but for the second x, which repeats the first: x of
    24 .. length/2 tokens, w, y and z of random lengths. The tokens of the second x are
    predictable only by copying, and neither where x starts nor how far back it is
    repeats from row to row: with a fixed layout the model learns "copy from 127 back"
    or "copy from the row's start" (position rules, useless elsewhere) instead of finding
    the earlier occurrence by content (an induction head; docs/NOTES.md)."""
    n = length - 2
    m = rng.randrange(24, n // 2 + 1)  # x
    w = rng.randrange(0, n - 2 * m + 1)
    gap = rng.randrange(0, n - 2 * m - w + 1)  # y
    row = list(filler[:n - m])  # w x y z, running text
    row[w + m + gap: w + m + gap] = row[w: w + m]  # x once more, after y
    return [bos_id] + row + [eos_id]


def write_long_context_data(data_dir: str, out: str, seq_len: int = 1024, n_docs: int = 1500, seed: int = 0,
                            queries: int = 3, spans: int = 4, kind: str = "needle") -> dict:
    """The stage's data folder (see the module docstring) -> its meta.json record.
    kind "needle": training_document rows; "copy": copy_document rows."""
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
        docs[i] = training_document(filler, tokenizer, seq_len, rng, queries, spans) if kind == "needle" else \
            copy_document(filler, meta["bos_id"], meta["eos_id"], seq_len, rng)
    os.makedirs(out, exist_ok=True)
    docs.tofile(os.path.join(out, "train_000.bin"))
    val = split_record(meta, "val")
    for name in val["files"]:  # the same held-out text as pre-training
        shutil.copyfile(os.path.join(data_dir, name), os.path.join(out, name))
    record = {k: meta[k] for k in ("tokenizer", "vocab_size", "bos_id", "eos_id")}
    record.update(dtype="uint32", format=f"every document is exactly {seq_len} tokens: [bos] .. [eos]",
                  splits={"train": {"files": ["train_000.bin"], "tokens": n_docs * seq_len, "documents": n_docs},
                          "val": {"files": list(val["files"]), "tokens": val.get("tokens")}},
                  long_context={"source": data_dir, "kind": kind, "seq_len": seq_len, "seed": seed, "queries": queries,
                                "spans": spans, "needle": E.NEEDLE, "question": E.QUESTION})
    atomic_write_json(os.path.join(out, "meta.json"), record)
    return record


# -----------------------------------------------------------------------------
# The stage: measure, grow the context in steps, measure again


@dataclass
class LongContextConfig:
    """The long-context stage (§3.4.2): every field is a --kebab-case flag."""
    init: str = arg("out/pretrain/final", "the short-context pre-trained model")
    data: str = arg("out/data", "data.py folder: haystack text, tokenizer, held-out split")
    out: str = arg("out/longctx", "where the stage's data, runs, evaluations and report go")
    lengths: str = arg("512,1024", "the stages' context lengths, in order (§3.4.2: 8K to 128K in six)")
    steps: int = arg(40, "optimizer steps per stage (at most: --time-budget-min shortens them)")
    time_budget_min: float = arg(1.2, "minutes per stage (pretrain.py's --time-budget-min; 0 = no limit)")
    tokens_per_step: int = arg(4096, "tokens per optimizer step")
    # 1e-3 cost 0.24 nats of short-context held-out loss in two stages, 3e-4 cost 0.07
    # (docs/NOTES.md); §3.4.2 ends a stage only once short-context performance has recovered.
    lr: float = arg(3e-4, "peak learning rate of each stage (warm-up 3 steps, then cosine)")
    # 1 keeps the peak LR: after the copying stage, 600 needle steps at 256 at a constant
    # 1e-3 retrieved 56% of 100 keys, 300 steps decaying to 1% of it 6% (docs/NOTES.md).
    min_lr_ratio: float = arg(0.01, "each needle stage's final LR as a fraction of --lr (1 = constant)")
    # The copying stage (off by default): the induction head needs 2,500-4,000 steps of
    # 2,048 tokens (5-8M), ~16 minutes here, more than run_all's default holds (docs/NOTES.md).
    copy_steps: int = arg(0, "steps of a copying stage first ([bos] w x y x z rows at --copy-len; 0 = none)")
    copy_len: int = arg(256, "row length of the copying stage (pre-training's context)")
    copy_lr: float = arg(3e-3, "peak learning rate of the copying stage")
    copy_budget_min: float = arg(3.0, "minutes for the copying stage (0 = no limit)")
    copy_tokens_per_step: int = arg(2048, "tokens per optimizer step of the copying stage")
    rope_theta: float = arg(0.0, "RoPE θ for the stage (0 = the model's; ablation: 10000)")
    rope_scaling: str = arg("", "Llama 3.1 frequency scaling 'FACTOR:ORIGINAL_LEN', 'off', '' = the model's")
    eval_lengths: str = arg("256,512,1024", "needle lengths measured before and after (past the last stage "
                                            "measures length extrapolation)")
    niah_trials: int = arg(2, "needle: keys per (length, depth) cell")
    bpb_tokens: int = arg(16384, "held-out tokens for the short-context loss and bits per byte")
    docs_per_stage: int = arg(0, "documents written per stage (0 = enough for --steps)")
    queries: int = arg(3, "question + answer per document (the last at the end)")
    spans: int = arg(4, "spans copied from earlier to later per document")
    nproc: int = arg(2, "training processes (torchrun ranks)")
    threads: int = arg(0, "CPU threads of the evaluations (0 = all cores)")
    seed: int = arg(0, "the documents' draws and the needle keys")

    def validate(self):
        if not self.init:
            raise UsageError("--init is required")
        if self.copy_steps < 0 or self.copy_len < 128:
            raise UsageError(f"--copy-steps must be >= 0 and --copy-len >= 128 (got {self.copy_steps}, {self.copy_len})")
        for name in ("steps", "tokens_per_step", "niah_trials", "bpb_tokens", "nproc"):
            if getattr(self, name) <= 0:
                raise UsageError(f"{flag(name)} must be > 0 (got {getattr(self, name)!r})")
        for name, text in (("--lengths", self.lengths), ("--eval-lengths", self.eval_lengths)):
            if not re.fullmatch(r"\d+(,\d+)*", text) or min(int(x) for x in text.split(",")) < 128:
                raise UsageError(f"{name}: expected comma-separated lengths >= 128, got {text!r}")
        if not re.fullmatch(PretrainConfig.ROPE_SCALING_FORMAT, self.rope_scaling):
            raise UsageError(f"--rope-scaling: expected FACTOR:ORIGINAL_LEN (e.g. 4:256), 'off' or '', "
                             f"got {self.rope_scaling!r}")


def measure(cfg: LongContextConfig, ckpt: str, name: str) -> dict:
    """eval.py on ckpt: short-context held-out loss and bits per byte (windows of 256,
    pre-training's), the needle at every --eval-lengths, and in-context copying (does
    the model copy a held-out span it has just seen?) -> OUT/name/eval.json."""
    lengths = [int(x) for x in cfg.eval_lengths.split(",")]
    return E.run(E.EvalConfig(ckpt=ckpt, out=os.path.join(cfg.out, name), tasks="bpb,niah,copy", data=cfg.data,
                              bpb_tokens=cfg.bpb_tokens, niah_lengths=cfg.eval_lengths, niah_trials=cfg.niah_trials,
                              max_seq_len=max(lengths), threads=cfg.threads, seed=cfg.seed))


def summary(record: dict) -> dict:
    return {"niah": record["niah"]["by_length"], "key_nll": record["niah"]["key_nll_by_length"],
            "decoy_nll": record["niah"]["decoy_nll_by_length"],
            "short_loss": round(record["bpb"]["loss"], 4),
            "copy": {k: round(record["copy"][k], 4) for k in ("first", "repeat", "accuracy")},
            "bits_per_byte": round(record["bpb"]["bits_per_byte"], 4)}


def plot_before_after(before: dict, after: dict, path: str) -> str:
    """The needle heat maps before and after the stage, side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, (when, record) in zip(axes, (("before", before), ("after", after))):
        E.draw_niah(ax, record["niah"], f"{when}: held-out loss {record['bpb']['loss']:.3f}, "
                                        f"{record['bpb']['bits_per_byte']:.3f} bits/byte")
    fig.suptitle("needle in a haystack, % retrieved, before and after the long-context stage")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_stage(cfg: LongContextConfig) -> dict:
    """Evaluate cfg.init; for each length of --lengths write the stage's documents and
    continue pre-training at that length from the previous stage's weights (pretrain.py
    --init, under torchrun); evaluate after each. -> OUT/report.json, OUT/niah.png,
    OUT/final (the last stage's model)."""
    os.makedirs(cfg.out, exist_ok=True)
    t0 = time.time()
    before = measure(cfg, cfg.init, "eval_before")
    record = {"init": cfg.init, "config": asdict(cfg), "before": summary(before), "stages": []}
    ckpt, after = cfg.init, before
    # (kind, name, context, steps, tokens per step, lr, minutes): copying, then the context grows.
    stages = [("needle", f"ctx{n}", n, cfg.steps, cfg.tokens_per_step, cfg.lr, cfg.time_budget_min)
              for n in (int(x) for x in cfg.lengths.split(","))]
    if cfg.copy_steps:
        stages.insert(0, ("copy", f"copy{cfg.copy_len}", cfg.copy_len, cfg.copy_steps, cfg.copy_tokens_per_step,
                          cfg.copy_lr, cfg.copy_budget_min))
    for n, (kind, name, seq_len, steps, tokens, lr, minutes) in enumerate(stages):
        stage_dir = os.path.join(cfg.out, name)
        rows = max(1, tokens // seq_len)
        docs = cfg.docs_per_stage or steps * rows + rows
        write_long_context_data(cfg.data, os.path.join(stage_dir, "data"), seq_len, docs, cfg.seed + n,
                                cfg.queries, cfg.spans, kind)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={cfg.nproc}",
               os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrain.py"),
               "--init", ckpt, "--data", os.path.join(stage_dir, "data"), "--out", stage_dir,
               "--seq-len", str(seq_len), "--tokens-per-step", str(rows * seq_len),
               "--batch-size", str(max(1, rows // cfg.nproc)), "--max-steps", str(steps),
               "--time-budget-min", str(minutes), "--lr", str(lr), "--warmup-steps", "3",
               "--anneal-steps", "0", "--eval-every", "0", "--ckpt-every", str(steps),
               "--eval-tokens", str(4 * seq_len), "--seed", str(cfg.seed)]
        # The copying stage keeps its peak LR: the induction head comes after a plateau of
        # thousands of steps, so the stage is run (or resumed) for as long as that takes.
        cmd += ["--min-lr-ratio", "1" if kind == "copy" else str(cfg.min_lr_ratio)]
        cmd += ["--rope-theta", str(cfg.rope_theta)] if cfg.rope_theta else []
        cmd += ["--rope-scaling", cfg.rope_scaling] if cfg.rope_scaling else []
        print0(f"\n[long context] stage {n + 1}: {kind} rows of {seq_len}, from {ckpt}\n  " + " ".join(cmd), flush=True)
        t_stage = time.time()
        code = subprocess.call(cmd)
        if code != 0:
            raise SystemExit(code)
        ckpt = os.path.join(stage_dir, "final")
        after = measure(cfg, ckpt, f"eval_{name}")
        record["stages"].append({"kind": kind, "seq_len": seq_len, "steps": steps, "ckpt": ckpt,
                                 "seconds": round(time.time() - t_stage, 1), **summary(after)})
    final = os.path.join(cfg.out, "final")
    if os.path.islink(final):
        os.remove(final)
    if not os.path.exists(final):
        os.symlink(os.path.relpath(ckpt, cfg.out), final)
    record.update(after=summary(after), final=final, rope_theta=after["rope_theta"],
                  use_scaled_rope=after["use_scaled_rope"], seconds=round(time.time() - t0, 1),
                  png=plot_before_after(before, after, os.path.join(cfg.out, "niah.png")))
    atomic_write_json(os.path.join(cfg.out, "report.json"), record)
    for when in ("before", "after"):
        print0(f"{when:>6}: held-out loss {record[when]['short_loss']:.4f}, needle " +
               ", ".join(f"{k}: {v:.0%}" for k, v in record[when]["niah"].items()) +
               f"; a repeated span copied {record[when]['copy']['accuracy']:.0%}")
    return record


@cli
def main(argv=None) -> int:
    run_stage(parse_config(LongContextConfig, argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
