"""
eval.py -- evaluation (§5 of "The Llama 3 Herd of Models"): bits per byte, needle in a
haystack, and the benchmark files people already have.

Stage: evaluation, of any checkpoint sample.py loads (this project's, Meta's,
Hugging Face's, a distributed checkpoint of a running pre-training).

What is notable here
- Bits per byte (§5.1's pre-training comparisons are per token of one tokenizer; bits
  per byte are per byte of text, so models with different vocabularies compare): the
  summed next-token loss in bits divided by the UTF-8 bytes of the text it predicts.
- Needle in a haystack (§3.4.2, §5.2): a pass key hidden at a chosen depth in filler
  text of a chosen length; the model must say it at the end. Accuracy per (length,
  depth) is a heat map, as the paper's long-context figures show. The same generator
  writes the long-context stage's training documents (longcontext.py).
- Multiple choice by log-likelihood (HellaSwag, ARC, MMLU, PIQA, Winogrande rows from
  local JSONL files), summed and length-normalized, as lm-evaluation-harness scores
  them. The choices of one question share its prompt: the prompt is prefilled ONCE
  into the static KV cache, its cache rows are copied once per choice, and all the
  choices are scored in one more forward (sample.generate shares a prefill among K
  samples the same way, §4.2.2). `score_one` is the naive version the tests hold it to.
- Generative tasks with a checker: tasks.py's built-in tasks (the SFT model's), and
  GSM8K-style files (the final number of the answer after "####").
- Every task prints progress with items/s and an ETA; bad rows of a file are skipped
  and reported with file and line (common.read_jsonl).

Reads:  --ckpt (any format checkpoint.load_model knows) and its tokenizer; --data's
        held-out split (data.py's val shards) or --text FILE for bits per byte and
        the haystack; benchmark JSONL files named in --tasks.
Writes: OUT/eval.json (every number) and OUT/eval.png (the needle heat map, the
        benchmark accuracies).

How to run
    python eval.py --ckpt out/pretrain/final --out out/eval            # bpb + needle
    python eval.py --ckpt ~/models/Llama-3.2-1B --tasks bpb,hellaswag_val.jsonl,arc_easy.jsonl \\
        --data out/data --out out/eval/llama1b
    python eval.py --ckpt out/sft/final --tasks tasks,gsm8k_test.jsonl --n-eval 200
    python eval.py --ckpt out/longctx/final --tasks niah --niah-lengths 512,1024,2048 --max-seq-len 2048

Read next: longcontext.py (the long-context stage these needles measure), then sample.py.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

import model as M
from common import UsageError, arg, atomic_write_json, cli, parse_config, parse_dtype, print0, read_jsonl, set_threads
from loader import TokenStream, make_batch, split_record
from sample import expand_caches, generate, left_pad, load_for_inference, prefill_mask, setup_caches


# -----------------------------------------------------------------------------
# 1. Progress with an ETA


class Progress:
    """One line every `every_s` seconds and at the end:
    'hellaswag: 120/1,000 items, 3.2 items/s, ETA 4m35s'."""

    def __init__(self, name: str, total: int, every_s: float = 10.0):
        self.name, self.total, self.every_s = name, total, every_s
        self.done, self.t0 = 0, time.time()
        self.last = self.t0

    def update(self, n: int = 1):
        self.done += n
        now = time.time()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / max(rate, 1e-9)
            print0(f"  {self.name}: {self.done:,}/{self.total:,} items, {rate:.1f} items/s, "
                   f"ETA {int(eta) // 60}m{int(eta) % 60:02d}s")

    def stats(self) -> dict:
        seconds = time.time() - self.t0
        return {"seconds": round(seconds, 2), "items_per_s": round(self.done / max(seconds, 1e-9), 2)}


# -----------------------------------------------------------------------------
# 2. Bits per byte on held-out text


def read_texts(path: str) -> list[str]:
    """Documents of a text file: a .jsonl file's rows {"text": ...} (a bad row is
    skipped and reported as path:line), any other file as one document."""
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such file")
    if not path.endswith(".jsonl"):
        with open(path, encoding="utf-8", errors="replace") as f:
            return [f.read()]
    texts = []
    for line_no, row, error in read_jsonl(path):
        text = row.get("text") if isinstance(row, dict) else None
        if error is None and not isinstance(text, str):
            error = 'expected {"text": "..."}'
        if error:
            print0(f"  skipped {path}:{line_no}: {error}")
        elif text:
            texts.append(text)
    if not texts:
        raise UsageError(f"{path}: no text to evaluate on")
    return texts


def held_out_texts(data_dir: str, split: str = "val", max_tokens: int = 1 << 20) -> list[str]:
    """The documents of a data.py folder's held-out split (its first max_tokens), decoded
    to text with the data's own tokenizer (so a model with another vocabulary reads the
    same text)."""
    meta_path = os.path.join(data_dir, "meta.json")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"{meta_path}: unreadable ({e}); pass --data DIR of data.py, or --text FILE") from None
    if split_record(meta, split) is None:
        raise UsageError(f"{meta_path}: no {split!r} split")
    from tokenizer import Tokenizer
    tokenizer = Tokenizer(meta["tokenizer"])
    stream = TokenStream(data_dir, meta, split)
    ids = stream.read(0, min(stream.n_tokens, max_tokens))
    starts = np.flatnonzero(ids == meta["bos_id"]).tolist() + [len(ids)]  # every document is [bos] .. [eos]
    special = {meta["bos_id"], meta["eos_id"]}
    return [tokenizer.decode([t for t in ids[a:b].tolist() if t not in special]) for a, b in zip(starts, starts[1:])]


def token_bytes(tokenizer) -> torch.Tensor:
    """UTF-8 bytes of every token id (special tokens: 0, they are not text). (vocab,)"""
    n_base = tokenizer.n_base_tokens
    sizes = [len(tokenizer.decode_token_bytes(i)) for i in range(n_base)]
    return torch.tensor(sizes + [0] * (tokenizer.n_words - n_base), dtype=torch.long)


@torch.inference_mode()
def bits_per_byte(model, tokenizer, texts: list[str], seq_len: int = 256, max_tokens: int = 32768,
                  batch_size: int = 16) -> dict:
    """Held-out loss and bits per byte. Each text becomes [bos] + tokens + [eos]; they
    are packed into one stream, cut into windows of seq_len as pre-training's held-out
    loss is (documents masked from each other, loader.make_batch), first max_tokens only.
      loss          mean next-token loss in nats over every target (pretrain's val_loss)
      bits_per_byte sum of the loss over the text's tokens / ln 2 / the bytes they decode
                    to. bos/eos predictions are left out: they are not text, and a model
                    whose tokenizer marks documents differently must not gain by it."""
    stream = []
    for text in texts:
        stream += [tokenizer.bos_id] + tokenizer.encode(text) + [tokenizer.eos_id]
        if len(stream) > max_tokens:
            break
    stream = np.array(stream[: max_tokens + 1], dtype=np.int64)
    if len(stream) < 2:
        raise ValueError("no text to evaluate on")
    nbytes = token_bytes(tokenizer)
    device = model.tok_embeddings.weight.device
    starts = list(range(0, len(stream) - 1, seq_len))
    windows = [stream[s: s + seq_len + 1] for s in starts]
    total = {"nll": 0.0, "targets": 0, "text_nll": 0.0, "bytes": 0}
    progress = Progress("bits per byte", len(windows))
    for i in range(0, len(windows), batch_size):
        group = windows[i: i + batch_size]
        for rows in ([w for w in group if len(w) == seq_len + 1], [w for w in group if len(w) < seq_len + 1]):
            if not rows:  # (the last window may be shorter: its own batch)
                continue
            batch = make_batch(np.stack(rows), tokenizer.bos_id, device)
            logits = model(batch["inputs"], doc_ids=batch["doc_ids"])  # (B, T, vocab)
            targets = batch["targets"]  # (B, T), -100 where bos follows eos
            nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100,
                                  reduction="none")  # (B·T,) nats
            valid = targets.flatten() != -100
            text_bytes = nbytes.to(device)[targets.flatten().clamp(min=0)] * valid  # (B·T,)
            total["nll"] += float(nll[valid].sum())
            total["targets"] += int(valid.sum())
            total["text_nll"] += float(nll[text_bytes > 0].sum())
            total["bytes"] += int(text_bytes.sum())
        progress.update(len(group))
    return {"loss": total["nll"] / total["targets"],
            "bits_per_byte": total["text_nll"] / math.log(2) / max(1, total["bytes"]),
            "tokens": total["targets"], "bytes": total["bytes"], "seq_len": seq_len, **progress.stats()}


# -----------------------------------------------------------------------------
# 3. The log-likelihood of continuations, one prefill shared by a question's choices
#
# A question with 3 choices: the full sequences share a prefix (the prompt).
#     prefix  [bos Q u e s t i o n :]   prefilled once, 1 row   -> KV cache
#     rests   [ P a r i s]              the cache row copied 3x, then the 3 rests in one
#             [ L y o n]                forward of 3 rows at cache slots P, P+1, ...
#             [ N i c e]
# The score of a choice is the sum of log p(token) over its own tokens; the first of
# them is predicted by the prefix's last position.


@torch.inference_mode()
def score_one(model, context: list[int], continuation: list[int]) -> float:
    """The naive reference: sum of log p(continuation | context) from one full forward."""
    ids = torch.tensor([list(context) + list(continuation)], device=model.tok_embeddings.weight.device)
    logp = model(ids)[0, :-1].float().log_softmax(-1)  # (T-1, vocab): position t predicts t+1
    targets = ids[0, len(context):]
    return float(logp[len(context) - 1:].gather(-1, targets[:, None]).sum())


@torch.inference_mode()
def score_continuations(model, items: list[list[tuple[list[int], list[int]]]], pad_id: int = 0,
                        chunk: int = 256) -> list[list[float]]:
    """items: per question, its requests (context ids, continuation ids) -> per question,
    the summed log-probability of each continuation given its context (equal to
    score_one of each, tests/test_eval.py). Contexts may differ (Winogrande puts the
    option inside the context): what is shared is the longest common prefix of the
    full sequences, never past the shortest context, so the prefix's last position
    predicts the first scored token. Every context must start with the same token (bos)."""
    device = model.tok_embeddings.weight.device
    fulls, shared = [], []
    for requests in items:
        full = [list(c) + list(t) for c, t in requests]
        limit = min(len(c) for c, _ in requests)
        n = 0
        while n < limit and all(f[n] == full[0][n] for f in full):
            n += 1
        if n == 0 or any(not t for _, t in requests):
            raise ValueError("every context must start with bos and every continuation be non-empty")
        fulls.append(full)
        shared.append(n)
    counts = torch.tensor([len(f) for f in fulls], device=device)  # choices per question
    rests = [f[n:] for full, n in zip(fulls, shared) for f in full]  # N = sum(counts) rows
    scored_from = [len(c) - n for requests, n in zip(items, shared) for c, _ in requests]  # in rest coords
    prefix, pads = left_pad([full[0][:n] for full, n in zip(fulls, shared)], pad_id, device)  # (B, P), (B,)
    B, P = prefix.shape
    L = max(len(r) for r in rests)
    S = P + L  # cache slots
    if S > model.args.max_seq_len:  # the longest prefix + the longest rest: left padding wastes slots
        if len(items) > 1:  # every row fits alone: score the halves
            half = len(items) // 2
            return score_continuations(model, items[:half], pad_id, chunk) + \
                score_continuations(model, items[half:], pad_id, chunk)
        raise ValueError(f"{S} tokens > max_seq_len {model.args.max_seq_len}")
    setup_caches(model, B, S)
    try:
        # ---- prefill the B prefixes (left-padded, explicit positions as sample.generate)
        positions = (torch.arange(P, device=device)[None] - pads[:, None]).clamp(min=0)
        last = model(prefix, positions=positions, attn_mask=prefill_mask(pads, P, S), start_pos=0,
                     return_hidden=True)[:, -1]  # (B, dim): predicts every rest's first token
        # ---- copy each question's cache row once per choice, then all rests at once
        expand_caches(model, counts)  # (B, ...) -> (N, ...)
        pads = pads.repeat_interleave(counts)  # (N,)
        rest = torch.tensor([r + [pad_id] * (L - len(r)) for r in rests], device=device)  # (N, L)
        slots = torch.arange(S, device=device)
        query = P + torch.arange(L, device=device)  # the slot of each rest token
        sees_prefix = (slots[None, None] >= pads[:, None, None]) & (slots[None, None] < P)  # (N, 1, S)
        causal = (slots[None] >= P) & (slots[None] <= query[:, None])  # (L, S)
        hidden = model(rest, positions=(P - pads)[:, None] + torch.arange(L, device=device)[None],
                       attn_mask=sees_prefix | causal[None], start_pos=P, return_hidden=True)  # (N, L, dim)
    finally:
        model.clear_caches()
    # Rest token i is predicted by rest position i-1, or for i = 0 by the prefix's last.
    hidden = torch.cat([last.repeat_interleave(counts, dim=0)[:, None], hidden], dim=1)  # (N, L+1, dim)
    row_idx = [r for r, (rst, s) in enumerate(zip(rests, scored_from)) for _ in range(s, len(rst))]
    tok_idx = [i for rst, s in zip(rests, scored_from) for i in range(s, len(rst))]
    targets = rest[row_idx, tok_idx]  # (M,) every scored token of every row
    h = hidden[row_idx, tok_idx]  # (M, dim): the hidden state that predicts it
    logp = torch.cat([model.output(h[i: i + chunk]).float().log_softmax(-1).gather(-1, targets[i: i + chunk, None])
                      for i in range(0, len(targets), chunk)])[:, 0]  # (M,); chunks: M x vocab can be large
    sums = torch.zeros(len(rests), dtype=torch.float64, device=device).index_add_(
        0, torch.tensor(row_idx, device=device), logp.double())
    out, r = [], 0
    for full in fulls:
        out.append(sums[r: r + len(full)].tolist())
        r += len(full)
    return out


# -----------------------------------------------------------------------------
# 4. Benchmark files: multiple choice and GSM8K-style, in the formats people have
#
# Each row becomes {"requests": [(context, continuation), ...], "label": i} (scored) or
# {"prompt", "answer"} (generated). Prompts follow lm-evaluation-harness's zero-shot ones.

LETTERS = "ABCDEFGHIJ"


def _label(value, n: int, letters=None):
    """0/1/.. or "0"/"1" or "A"/"B" (or a given list of labels) -> an index < n, else None."""
    if isinstance(value, bool):
        return None
    if letters is not None and value in letters:
        return letters.index(value)
    if isinstance(value, str) and len(value) == 1 and value.upper() in LETTERS[:n] and not value.isdigit():
        return LETTERS.index(value.upper())
    try:
        i = int(value)
    except (TypeError, ValueError):
        return None
    return i if 0 <= i < n else None


def _choices_row(context: str, choices, label, letters=None):
    if not isinstance(context, str) or not isinstance(choices, list) or len(choices) < 2 \
            or not all(isinstance(c, str) and c.strip() for c in choices):
        return None, "needs a context string and a list of at least 2 non-empty choice strings"
    i = _label(label, len(choices), letters)
    if i is None:
        return None, f"label {label!r} is not one of the {len(choices)} choices"
    return {"requests": [(context, " " + c.strip()) for c in choices], "label": i}, None


def parse_row(row) -> tuple[dict | None, str]:
    """One JSONL row -> (item, format name) or (None, reason). Formats, by their fields:
      hellaswag   ctx (or ctx_a/ctx_b), endings, label      "activity: ctx" -> " ending"
      piqa        goal, sol1, sol2, label                    "Question: goal\\nAnswer:" -> " sol"
      winogrande  sentence with "_", option1, option2, answer  "before option" -> " after"
      arc         question (str or {stem, choices}), choices {text, label}, answerKey
      mmlu        question, choices [..], answer (index or letter): lettered, scores " A".." D"
      generic     context, choices [..], label               "context" -> " choice"
      gsm8k       question, answer with "#### N"            generated, final number checked"""
    if not isinstance(row, dict):
        return None, "a row must be a JSON object"
    if "endings" in row and ("ctx" in row or "ctx_a" in row):
        ctx = row.get("ctx") or (row.get("ctx_a", "") + " " + str(row.get("ctx_b", "")).capitalize()).strip()
        if isinstance(ctx, str) and row.get("activity_label"):
            ctx = f"{row['activity_label']}: {ctx}"
        item, why = _choices_row(ctx, row["endings"], row.get("label"))
        return (item, "hellaswag") if item else (None, why)
    if "goal" in row and "sol1" in row:
        item, why = _choices_row(f"Question: {row['goal']}\nAnswer:", [row.get("sol1"), row.get("sol2")],
                                 row.get("label"))
        return (item, "piqa") if item else (None, why)
    if "sentence" in row and "option1" in row:
        sentence, options = row["sentence"], [row.get("option1"), row.get("option2")]
        answer = _label(row.get("answer"), 3)
        if not isinstance(sentence, str) or sentence.count("_") != 1 or not all(isinstance(o, str) for o in options) \
                or answer not in (1, 2):
            return None, 'needs a sentence with one "_", option1, option2 and answer "1" or "2"'
        before, after = sentence.split("_")
        return {"requests": [(before + o, " " + after.strip()) for o in options], "label": answer - 1}, "winogrande"
    if "answerKey" in row and "question" in row:
        q = row["question"]
        choices = q.get("choices") if isinstance(q, dict) else row.get("choices")
        stem = q.get("stem") if isinstance(q, dict) else q
        if isinstance(choices, list):  # the original ARC jsonl: [{"text", "label"}, ...]
            choices = {"text": [c.get("text") for c in choices if isinstance(c, dict)],
                       "label": [c.get("label") for c in choices if isinstance(c, dict)]}
        if not isinstance(choices, dict) or not isinstance(choices.get("label"), list):
            return None, 'needs "choices": {"text": [...], "label": [...]}'
        item, why = _choices_row(f"Question: {stem}\nAnswer:", choices.get("text"), row["answerKey"], choices["label"])
        return (item, "arc") if item else (None, why)
    if "question" in row and isinstance(row.get("answer"), str) and "####" in row["answer"]:
        gold = _number(row["answer"].split("####")[-1])
        if not isinstance(row["question"], str) or gold is None:
            return None, 'needs a question and an answer ending "#### NUMBER"'
        return {"prompt": f"Question: {row['question']}\nAnswer:", "answer": gold}, "gsm8k"
    if "question" in row and isinstance(row.get("choices"), list) and "answer" in row:
        choices = row["choices"]
        if not isinstance(row["question"], str) or not (2 <= len(choices) <= len(LETTERS)) \
                or not all(isinstance(c, str) for c in choices):
            return None, "needs a question string and 2-10 choice strings"
        i = _label(row["answer"], len(choices))
        if i is None:
            return None, f"answer {row['answer']!r} is not one of the {len(choices)} choices"
        prompt = row["question"].strip() + "".join(f"\n{LETTERS[k]}. {c}" for k, c in enumerate(choices)) + "\nAnswer:"
        return {"requests": [(prompt, " " + LETTERS[k]) for k in range(len(choices))], "label": i}, "mmlu"
    if "choices" in row and any(k in row for k in ("context", "query", "prompt")):
        ctx = next(row[k] for k in ("context", "query", "prompt") if k in row)
        label = next((row[k] for k in ("label", "answer", "gold") if k in row), None)
        item, why = _choices_row(ctx, row["choices"], label)
        return (item, "generic") if item else (None, why)
    return None, ("unknown format: expected the fields of HellaSwag (ctx, endings, label), PIQA (goal, sol1, "
                  "sol2, label), Winogrande (sentence, option1, option2, answer), ARC (question, choices, "
                  "answerKey), MMLU (question, choices, answer), GSM8K (question, answer with ####) or "
                  "(context, choices, label)")


def read_benchmark(path: str) -> tuple[list[dict], list[str], str]:
    """A benchmark JSONL file -> (items, skipped "path:line: reason" strings, kind
    "choice" | "generate"). Rows of other kinds than the first good row are skipped."""
    if not os.path.isfile(path):
        raise UsageError(f"{path}: no such file")
    items, skipped, kind = [], [], None
    for line_no, row, error in read_jsonl(path):
        item, why = (None, error) if error else parse_row(row)
        if item is not None:
            this = "choice" if "requests" in item else "generate"
            kind = kind or this
            if this != kind:
                item, why = None, f"a {why} row in a file of {kind} rows"
        if item is None:
            skipped.append(f"{path}:{line_no}: {why}")
            continue
        items.append({**item, "line": line_no})
    if not items:
        raise UsageError(f"{path}: no usable rows" + (f" ({skipped[0]})" if skipped else ""))
    return items, skipped, kind


def _number(text: str):
    """'1,234' -> 1234.0; '$5.50' -> 5.5; no number -> None."""
    m = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text or "")
    if not m:
        return None
    try:
        return float(m[-1].replace(",", ""))
    except ValueError:
        return None


def final_answer(response: str):
    """The number a GSM8K response answers with: after its '####' if it wrote one, else
    its last number before any next 'Question:'. 'so 3 + 4 = 7.\\n#### 7' -> 7.0."""
    response = response.split("Question:")[0]
    return _number(response.split("####")[-1] if "####" in response else response)


def eval_choices(model, tokenizer, items: list[dict], name: str, batch_size: int = 16) -> dict:
    """Accuracy by the summed log-likelihood of the choices (acc) and by it divided by
    the choice's length in characters (acc_norm, lm-evaluation-harness's)."""
    encoded = []
    for item in items:
        encoded.append([(tokenizer.encode(c, bos=True), tokenizer.encode(t)) for c, t in item["requests"]])
    order = sorted(range(len(items)), key=lambda i: -max(len(c) + len(t) for c, t in encoded[i]))  # less padding
    right = right_norm = 0
    progress = Progress(name, len(items))
    for start in range(0, len(order), batch_size):
        batch = order[start: start + batch_size]
        scores = score_continuations(model, [encoded[i] for i in batch], pad_id=getattr(tokenizer, "pad_id", 0))
        for i, s in zip(batch, scores):
            lengths = [len(t) for _, t in items[i]["requests"]]
            right += int(np.argmax(s) == items[i]["label"])
            right_norm += int(np.argmax([x / n for x, n in zip(s, lengths)]) == items[i]["label"])
        progress.update(len(batch))
    return {"kind": "choice", "n": len(items), "acc": right / len(items), "acc_norm": right_norm / len(items),
            **progress.stats()}


def eval_generate(model, tokenizer, items: list[dict], name: str, batch_size: int = 16,
                  max_new_tokens: int = 256) -> dict:
    """GSM8K-style: greedy answers, right when final_answer() equals the gold number."""
    right, examples = 0, []
    progress = Progress(name, len(items))
    for start in range(0, len(items), batch_size):
        batch = items[start: start + batch_size]
        outs = generate(model, tokenizer, [tokenizer.encode(it["prompt"], bos=True) for it in batch],
                        max_new_tokens=max_new_tokens, temperature=0.0)
        for it, ids in zip(batch, outs):
            response = tokenizer.decode(ids)
            ok = final_answer(response) == it["answer"]
            right += int(ok)
            if len(examples) < 5:
                examples.append({"line": it["line"], "response": response[:300], "correct": ok})
        progress.update(len(batch))
    return {"kind": "generate", "n": len(items), "acc": right / len(items), "examples": examples, **progress.stats()}


def eval_builtin_tasks(model, tokenizer, n: int, seed: int = 0, batch_size: int = 64) -> dict:
    """tasks.py's held-out tasks in the chat format, checked by their checkers (what
    SFT reports, sft.task_accuracy)."""
    import sft
    import tasks as T
    examples = T.make_examples(n, seed, split="val")
    progress = Progress("tasks", len(examples))
    acc, _ = sft.task_accuracy(model, tokenizer, examples, batch_size=batch_size)
    progress.update(len(examples))
    return {"kind": "generate", "n": len(examples), "acc": acc["overall"], "per_task": acc, **progress.stats()}


# -----------------------------------------------------------------------------
# 5. Needle in a haystack (§3.4.2, §5.2)
#
# The pass-key test: [bos] filler ... NEEDLE ... filler QUESTION -> the model must
# continue with the key. depth 0 puts the needle first, 1 right before the question.

NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"
# The classic filler of the pass-key test, for models without a held-out text at hand.
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def needle_example(haystack: list[int], tokenizer, length: int, depth: float, key: str, offset: int = 0) -> dict:
    """A needle prompt of exactly `length` tokens with its answer: `length` counts the
    prompt AND the answer's tokens (so prompt + answer fit a context of `length`).
    haystack: filler token ids (read cyclically from `offset`). The needle goes in at
    the sentence boundary at or before `depth` of the filler (a token ending in '.'
    or a newline, at most 64 tokens back). Returns {"ids" (the prompt), "answer"
    (the key's ids), "key", "needle_at" (index of the needle's first token in ids),
    "needle_len", "depth" (where it actually went, 0..1)}."""
    needle = tokenizer.encode(" " + NEEDLE.format(key=key) + " ")
    question = tokenizer.encode("\n" + QUESTION)
    answer = tokenizer.encode(" " + key)
    n = length - 1 - len(needle) - len(question) - len(answer)  # filler tokens (1: bos)
    if n < 1:
        raise ValueError(f"length {length} is too short for the needle and the question")
    idx = (offset + np.arange(n)) % len(haystack)
    filler = [haystack[i] for i in idx.tolist()]
    at = round(depth * n)
    for back in range(min(64, at)):  # a sentence boundary just before, if there is one
        if tokenizer.decode_token_bytes(filler[at - 1 - back]).rstrip(b" ").endswith((b".", b"\n")):
            at -= back
            break
    ids = [tokenizer.bos_id] + filler[:at] + needle + filler[at:] + question
    return {"ids": ids, "answer": answer, "key": key, "needle_at": 1 + at, "needle_len": len(needle),
            "depth": at / n}


def random_key(rng: random.Random) -> str:
    return str(rng.randrange(10000, 100000))  # 5 digits, as the pass-key test


def decoy_for(answer: list[int], tokenizer, rng: random.Random) -> list[int]:
    """Another key's ids, as many tokens as the answer (so it fits where the answer does)."""
    for _ in range(1000):
        ids = tokenizer.encode(" " + random_key(rng))
        if len(ids) == len(answer):
            return ids
    raise ValueError("no decoy key tokenizes to the answer's length")


def says_key(response: str, key: str) -> bool:
    """Right when the response starts with the key (and no more digits): ' 48213.' yes, ' 482130' no."""
    m = re.match(r"\s*(\d+)", response)
    return bool(m) and m.group(1) == key


def needle_in_a_haystack(model, tokenizer, haystack: list[int], lengths: list[int], depths: list[float],
                         trials: int = 4, seed: int = 0, batch_size: int = 16) -> dict:
    """Accuracy of greedy pass-key retrieval per (depth, length), `trials` keys and
    filler offsets per cell; and the key's mean log-loss per token given the prompt
    (teacher-forced), beside that of a decoy key the haystack does not hold: learning
    that a number comes lowers both, retrieval only the key's (key < decoy before any
    key comes out whole). -> {"lengths", "depths", "accuracy" [depth][length],
    "by_length" {str(length): acc}, "key_nll_by_length", "decoy_nll_by_length",
    "overall", "examples"}."""
    rng, decoys = random.Random(f"niah/{seed}"), random.Random(f"niah-decoy/{seed}")
    cells = [(li, di, needle_example(haystack, tokenizer, L, d, random_key(rng), rng.randrange(len(haystack))))
             for li, L in enumerate(lengths) for di, d in enumerate(depths) for _ in range(trials)]
    right = np.zeros((len(depths), len(lengths)))
    nll, n_tokens = np.zeros((2, len(lengths))), np.zeros((2, len(lengths)))  # key, decoy
    examples = []
    progress = Progress("needle in a haystack", len(cells))
    for start in range(0, len(cells), batch_size):
        batch = cells[start: start + batch_size]
        outs = generate(model, tokenizer, [ex["ids"] for _, _, ex in batch],
                        max_new_tokens=max(len(ex["answer"]) for _, _, ex in batch) + 1, temperature=0.0)
        decoy = [decoy_for(ex["answer"], tokenizer, decoys) for _, _, ex in batch]
        scores = score_continuations(model, [[(ex["ids"], ex["answer"]), (ex["ids"], d)]
                                             for (_, _, ex), d in zip(batch, decoy)],
                                     pad_id=getattr(tokenizer, "pad_id", 0))
        for (li, di, ex), ids, d, score in zip(batch, outs, decoy, scores):
            response = tokenizer.decode(ids)
            right[di, li] += says_key(response, ex["key"])
            nll[:, li] -= score
            n_tokens[:, li] += [len(ex["answer"]), len(d)]
            if len(examples) < 2 * len(lengths) and di == len(depths) // 2:
                examples.append({"length": lengths[li], "key": ex["key"], "response": response})
        progress.update(len(batch))
    accuracy = right / trials
    return {"lengths": lengths, "depths": depths, "trials": trials, "accuracy": accuracy.round(4).tolist(),
            "by_length": {str(L): round(float(accuracy[:, li].mean()), 4) for li, L in enumerate(lengths)},
            "key_nll_by_length": {str(L): round(float(nll[0, li] / n_tokens[0, li]), 4)
                                  for li, L in enumerate(lengths)},
            "decoy_nll_by_length": {str(L): round(float(nll[1, li] / n_tokens[1, li]), 4)
                                    for li, L in enumerate(lengths)},
            "overall": round(float(accuracy.mean()), 4), "examples": examples, **progress.stats()}


# -----------------------------------------------------------------------------
# 5b. In-context copying: the skill a needle look-up is a case of
#
# Text seen once is far easier to predict the second time -- for a model with an
# "induction head" (a head that finds the earlier occurrence of the current token and
# predicts what followed it; Olsson et al., 2022). [bos] x x with x a held-out span: the
# loss on the second x against the first says whether the model copies at all. A model
# that cannot copy a span 100 tokens back cannot retrieve a pass key 1,000 tokens back.


@torch.inference_mode()
def in_context_copying(model, tokenizer, texts: list[str], span: int = 100, n: int = 16) -> dict:
    """Loss (nats/token) on the first and on the repeated occurrence of n held-out spans
    of `span` tokens ([bos] x x, one row each), and how often the greedy next token on
    the repeat IS the copy. -> {"first", "repeat", "gap" (first - repeat), "accuracy",
    "spans", "span"}: a model that copies has repeat << first and accuracy near 1."""
    ids = [t for text in texts for t in tokenizer.encode(text)]
    n = min(n, len(ids) // span)  # fewer spans from a short text
    if n < 1:
        raise ValueError(f"in-context copying needs {span} held-out tokens, got {len(ids)}")
    stride = len(ids) // n
    x = torch.tensor([ids[k * stride: k * stride + span] for k in range(n)])  # (n, span)
    rows = torch.cat([torch.full((n, 1), tokenizer.bos_id), x, x], 1).to(model.tok_embeddings.weight.device)
    logits = model(rows[:, :-1]).float()  # (n, 2·span, vocab): position t predicts rows[:, t + 1]
    nll = F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten(), reduction="none").view(n, 2 * span)
    # Targets 0..span-1 are the first x; span is x's first token again (not yet a copy:
    # nothing says the text repeats), span+1.. are the copy.
    first, repeat = nll[:, :span].mean().item(), nll[:, span + 1:].mean().item()
    hit = (logits[:, span + 1:].argmax(-1) == rows[:, span + 2:]).float().mean().item()
    return {"first": first, "repeat": repeat, "gap": first - repeat, "accuracy": hit, "spans": n, "span": span}


# -----------------------------------------------------------------------------
# 6. The report: eval.json and eval.png


def draw_niah(ax, niah: dict, title: str):
    """The needle heat map on a matplotlib axis: depth (rows) x length (columns), % retrieved."""
    acc = np.array(niah["accuracy"]) * 100
    ax.imshow(acc, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(niah["lengths"])), [str(x) for x in niah["lengths"]])
    ax.set_yticks(range(len(niah["depths"])), [f"{d:.0%}" for d in niah["depths"]])
    for (i, j), v in np.ndenumerate(acc):
        ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=9)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title, fontsize=10)


def plot(result: dict, path: str) -> str:
    """Left: the needle heat map (depth x length, % retrieved). Right: benchmark accuracies."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    niah, bench = result.get("niah"), {k: v for k, v in result.get("benchmarks", {}).items() if "acc" in v}
    panels = [p for p in ("niah", "bench") if (niah if p == "niah" else bench)]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(6 * max(1, len(panels)), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "niah":
            draw_niah(ax, niah, f"needle in a haystack: % retrieved ({niah['trials']} keys per cell)")
        else:
            names = list(bench)
            ax.barh(names, [100 * bench[n]["acc"] for n in names], label="acc")
            ax.barh(names, [100 * bench[n].get("acc_norm", float("nan")) for n in names], height=0.4, label="acc_norm")
            ax.set_xlim(0, 100)
            ax.set_xlabel("accuracy (%)")
            ax.legend()
    title = "/".join(os.path.normpath(result["ckpt"]).split(os.sep)[-2:])  # e.g. pretrain/final
    if "bpb" in result:
        title += f" -- held-out {result['bpb']['bits_per_byte']:.3f} bits/byte, loss {result['bpb']['loss']:.3f}"
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -----------------------------------------------------------------------------
# 7. Command line


@dataclass
class EvalConfig:
    """Evaluate a checkpoint (§5): every field is a --kebab-case flag."""
    ckpt: str = arg("", "the checkpoint (this project's, Meta's, Hugging Face's, a DCP step folder)")
    out: str = arg("out/eval", "where eval.json and eval.png go")
    tasks: str = arg("bpb,niah", "comma-separated: bpb, niah, copy, tasks (tasks.py's), and JSONL benchmark files")
    data: str = arg("out/data", "data.py folder: its held-out split is the text for bpb and the haystack")
    text: str = arg("", "a text or JSONL ({\"text\"}) file for bpb and the haystack instead of --data")
    tokenizer: str = arg("", "tokenizer.model (default: the one next to --ckpt)")
    n_eval: int = arg(500, "at most this many items per benchmark file and for 'tasks' (0 = all)")
    batch_size: int = arg(16, "questions (or prompts) per forward")
    seq_len: int = arg(256, "bpb: window length in tokens (pre-training's held-out windows)")
    bpb_tokens: int = arg(32768, "bpb: held-out tokens scored")
    niah_lengths: str = arg("", "needle: context lengths (default: 256, 512, ... up to the model's max_seq_len)")
    niah_depths: str = arg("0,0.25,0.5,0.75,1", "needle: depths, 0 = start of the filler, 1 = its end")
    niah_trials: int = arg(4, "needle: keys per (length, depth)")
    max_seq_len: int = arg(0, "run the model at this context instead of its own (test past the trained length)")
    max_new_tokens: int = arg(256, "generative benchmarks: longest answer")
    device: str = arg("", "cpu | cuda (default: cuda if available)")
    dtype: str = arg("", "fp32 | bf16 | fp16 (default: bf16 on GPU, fp32 on CPU)")
    threads: int = arg(0, "CPU threads (0 = all cores)")
    seed: int = arg(0, "needle keys and offsets, task draws")

    def validate(self):
        if not self.ckpt:
            raise UsageError("--ckpt is required")
        for name in ("batch_size", "seq_len", "bpb_tokens", "niah_trials", "max_new_tokens"):
            if getattr(self, name) <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be > 0 (got {getattr(self, name)!r})")
        if self.n_eval < 0 or self.max_seq_len < 0:
            raise UsageError("--n-eval and --max-seq-len must be >= 0")


def _numbers(text: str, kind, flag: str) -> list:
    try:
        return [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{flag}: expected comma-separated numbers, got {text!r}") from None


def run(cfg: EvalConfig) -> dict:
    """Evaluate cfg.ckpt on cfg.tasks -> the eval.json record (also written to cfg.out)."""
    set_threads(cfg.threads, cfg.device or "cpu")
    try:
        model, tokenizer = load_for_inference(cfg.ckpt, cfg.tokenizer or None, cfg.device or None,
                                              parse_dtype(cfg.dtype) if cfg.dtype else None)
    except (ValueError, FileNotFoundError, KeyError) as e:  # UsageError included
        raise UsageError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    if cfg.max_seq_len:  # RoPE is a function of position: the table just gets longer
        model.args.max_seq_len = cfg.max_seq_len
        model.reset_rope()
    a = model.args
    print0(f"model {cfg.ckpt}: {M.count_params(a):,} parameters, max_seq_len {a.max_seq_len}, RoPE θ "
           f"{a.rope_theta:,.0f}{' (3.1 scaling)' if a.use_scaled_rope else ''}, "
           f"{model.tok_embeddings.weight.dtype}, {model.tok_embeddings.weight.device}")
    names = [t.strip() for t in cfg.tasks.split(",") if t.strip()]
    result = {"ckpt": cfg.ckpt, "config": asdict(cfg), "parameters": M.count_params(a), "max_seq_len": a.max_seq_len,
              "rope_theta": a.rope_theta, "use_scaled_rope": a.use_scaled_rope}
    t0 = time.time()
    texts = None

    def held_out():
        nonlocal texts
        if texts is None:
            texts = read_texts(cfg.text) if cfg.text else held_out_texts(cfg.data)
        return texts

    for name in names:
        if name == "bpb":
            print0(f"bits per byte: {'--text ' + cfg.text if cfg.text else cfg.data + ' val split'}, "
                   f"windows of {cfg.seq_len}")
            result["bpb"] = {**bits_per_byte(model, tokenizer, held_out(), cfg.seq_len, cfg.bpb_tokens,
                                             cfg.batch_size), "source": cfg.text or f"{cfg.data} val"}
            print0(f"  loss {result['bpb']['loss']:.4f} nats/token, {result['bpb']['bits_per_byte']:.4f} bits/byte")
        elif name == "niah":
            lengths = _numbers(cfg.niah_lengths, int, "--niah-lengths") or \
                [256 * 2 ** k for k in range(8) if 256 * 2 ** k <= a.max_seq_len] or [a.max_seq_len]
            depths = _numbers(cfg.niah_depths, float, "--niah-depths")
            too_long = [n for n in lengths if n > a.max_seq_len]
            if too_long:
                raise UsageError(f"--niah-lengths {too_long[0]} > the model's max_seq_len {a.max_seq_len}; "
                                 f"add --max-seq-len {max(lengths)} to test past it")
            if cfg.text or os.path.exists(os.path.join(cfg.data, "meta.json")):
                haystack = tokenizer.encode("\n\n".join(held_out()))
            else:  # no held-out text at hand: the classic filler
                haystack = tokenizer.encode(FILLER * 2000)
            print0(f"needle in a haystack: lengths {lengths}, depths {depths}, {cfg.niah_trials} keys each")
            result["niah"] = needle_in_a_haystack(model, tokenizer, haystack, lengths, depths, cfg.niah_trials,
                                                  cfg.seed, cfg.batch_size)
            print0("  accuracy by length: " + ", ".join(f"{k}: {v:.0%}" for k, v in result["niah"]["by_length"].items())
                   + "; key vs decoy log-loss: " + ", ".join(
                       f"{k}: {v:.2f}/{result['niah']['decoy_nll_by_length'][k]:.2f}"
                       for k, v in result["niah"]["key_nll_by_length"].items()))
        elif name == "copy":
            result["copy"] = in_context_copying(model, tokenizer, held_out())
            print0("in-context copying: loss {first:.3f} on a held-out span, {repeat:.3f} on its repeat, next token "
                   "copied {accuracy:.0%}".format(**result["copy"]))
        elif name == "tasks":
            result.setdefault("benchmarks", {})["tasks"] = eval_builtin_tasks(model, tokenizer, cfg.n_eval or 500,
                                                                              cfg.seed)
        elif name.endswith(".jsonl") or os.path.sep in name:
            items, skipped, kind = read_benchmark(name)
            for s in skipped[:10]:
                print0(f"  skipped {s}")
            items = items[: cfg.n_eval] if cfg.n_eval else items
            key = os.path.splitext(os.path.basename(name))[0]
            print0(f"{key}: {len(items):,} {kind} items from {name} ({len(skipped)} rows skipped)")
            too_long = [it for it in items if kind == "choice" and max(
                len(tokenizer.encode(c)) + len(tokenizer.encode(t)) + 1 for c, t in it["requests"]) > a.max_seq_len]
            items = [it for it in items if it not in too_long]
            record = eval_choices(model, tokenizer, items, key, cfg.batch_size) if kind == "choice" else \
                eval_generate(model, tokenizer, items, key, cfg.batch_size, cfg.max_new_tokens)
            record.update(file=name, skipped=len(skipped) + len(too_long), skipped_rows=skipped[:20])
            result.setdefault("benchmarks", {})[key] = record
            print0(f"  {key}: acc {record['acc']:.1%}" + (f", acc_norm {record['acc_norm']:.1%}" if "acc_norm" in record
                                                          else "") + f" ({record['items_per_s']:.1f} items/s)")
        else:
            raise UsageError(f"--tasks: unknown task {name!r} (bpb, niah, copy, tasks, or a .jsonl file)")
    result["seconds"] = round(time.time() - t0, 1)
    os.makedirs(cfg.out, exist_ok=True)
    if "niah" in result or "benchmarks" in result:
        result["png"] = plot(result, os.path.join(cfg.out, "eval.png"))
    atomic_write_json(os.path.join(cfg.out, "eval.json"), result)
    print0(f"wrote {os.path.join(cfg.out, 'eval.json')} ({result['seconds']:.0f} s)")
    return result


@cli
def main(argv=None) -> int:
    run(parse_config(EvalConfig, argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
