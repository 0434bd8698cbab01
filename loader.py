"""
loader.py -- the pre-training data loader: packed, shuffled, resumable windows over
data.py's token shards (§3.2 document masking needs to know where each document starts).

pretrain.py trains on what this file serves; sft.py reuses its micro-batch rule.

    meta = ensure_data("out/data", dist)               # data.py's meta.json (built if default)
    stream = TokenStream("out/data", meta, "train")    # the shards as one memory-mapped stream
    loader = PackedLoader(cfg, stream, meta["bos_id"], dist)
    batches = loader(step, total_steps)                # this rank's micro-batches of a step
    # each batch: {"inputs" (B, T), "targets" (B, T), "doc_ids" (B, T)}; see make_batch
    # (with context parallel, this rank's part of each row: parallel.context_parallel_batch)

A step's rows are a pure function of (seed, position), and the position is saved in
every checkpoint: a resumed run reads exactly the rows an uninterrupted one reads, on
any number of ranks.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

import parallel
from common import UsageError

DEFAULT_DATA = "out/data"  # the one data folder pretrain.py builds on demand


# -----------------------------------------------------------------------------
# 1. data.py's output: meta.json and the token stream of a split



def ensure_data(data_dir: str, dist) -> dict:
    """meta.json of data.py's output. Only the default folder is built on demand
    (rank 0 builds, the others wait); any other incomplete folder is a UsageError."""
    meta_path = os.path.join(data_dir, "meta.json")

    def read_meta() -> dict:
        try:
            with open(meta_path) as f:
                meta = json.load(f)
        except (OSError, ValueError) as e:
            raise UsageError(f"{meta_path}: unreadable ({e}); rebuild with `python data.py --out {data_dir}`")
        if not isinstance(meta, dict):
            raise UsageError(f"{meta_path}: not a data.py meta.json (a JSON object expected)")
        return meta

    def complete():
        if not os.path.exists(meta_path):
            return False
        tok = read_meta().get("tokenizer")
        return not tok or os.path.exists(tok)

    if not complete() and os.path.normpath(data_dir) != os.path.normpath(DEFAULT_DATA):
        # A folder the user named is theirs: never build over their shards.
        raise UsageError(f"--data {data_dir}: incomplete data folder ({meta_path} or its tokenizer "
                         f"is missing, e.g. an interrupted build); rebuild it with "
                         f"`python data.py --out {data_dir} ...` or omit --data")
    if not complete():
        if dist.is_main:
            print(f"{meta_path} or its tokenizer is missing: building the corpus, tokenizer and "
                  f"shards with data.py (once; later runs reuse them)", flush=True)
            import data  # data.py prints its own progress
            data.build(data_dir)
        if dist.world_size > 1:
            torch.distributed.barrier()
    return read_meta()


def split_record(meta: dict, split: str) -> dict | None:
    """meta.json's record of a split: "train" and "val" live under "splits", the
    optional "anneal" split (§3.1.3) at the top level."""
    return meta.get("splits", {}).get(split) or (meta.get(split) if split == "anneal" else None)


class TokenStream:
    """The shards of one split as one long read-only token stream (np.memmap, so only
    the windows we touch are read from disk). Shard files hold uint32 ids, each
    document as [bos] + tokens + [eos] (data.py)."""

    def __init__(self, data_dir: str, meta: dict, split: str):
        record = split_record(meta, split)
        if record is None:
            raise KeyError(f"{data_dir}/meta.json has no split {split!r}")
        files = record["files"]
        dtype = np.dtype(meta.get("dtype", "uint32"))
        self.shards = [np.memmap(os.path.join(data_dir, f), dtype=dtype, mode="r") for f in files]
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])  # shard offsets
        self.n_tokens = int(self.starts[-1])

    def read(self, start: int, end: int) -> np.ndarray:
        """Tokens [start, end) of the concatenated shards."""
        out, i = [], int(np.searchsorted(self.starts, start, side="right") - 1)
        while start < end:
            local = start - self.starts[i]
            take = min(end - start, len(self.shards[i]) - local)
            out.append(np.asarray(self.shards[i][local:local + take], dtype=np.int64))
            start, i = start + take, i + 1
        return np.concatenate(out)


# -----------------------------------------------------------------------------
# 2. A batch of packed rows, and the order of windows


def make_batch(rows: np.ndarray, bos_id: int, device) -> dict:
    """(B, T+1) windows of the stream -> the batch a model trains on.
    inputs  (B, T): tokens 0..T-1;  targets (B, T): tokens 1..T (next token).
    doc_ids (B, T): document index inside each row, +1 at every bos. The model uses
      it for the §3.2 document mask and to restart RoPE positions at each document.
      Row [x y eos bos a b] -> doc_ids [0 0 0 1 1 1]: the partial document the window
      starts in is document 0.
    Targets equal to bos are ignored (-100): that is the eos -> bos prediction across
    a document boundary. It is trivial (bos always follows eos), but it is the one
    target that belongs to another document than its input; masking it makes the
    loss a pure within-document loss. A document's first real token is still a target: it is
    predicted from bos alone, exactly as if the document were trained unpacked."""
    rows = torch.from_numpy(rows)
    inputs, targets = rows[:, :-1], rows[:, 1:].clone()
    doc_ids = torch.cumsum((inputs == bos_id).long(), dim=1)
    targets[targets == bos_id] = -100
    return {"inputs": inputs.to(device), "targets": targets.to(device), "doc_ids": doc_ids.to(device)}


def divisor_at_most(n: int, limit: int) -> int:
    """The largest divisor of n that is <= limit (micro-batch rows that split a rank's rows evenly)."""
    return max(d for d in range(1, max(1, min(n, limit)) + 1) if n % d == 0)


class ShuffledWindows:
    """The stream cut into non-overlapping windows of T+1 tokens (targets are the
    inputs shifted by one, so neighbouring windows share one token), visited in an
    order drawn from (seed, T, epoch): every window once per epoch. window(k, T) is
    the k-th window of that sequence -- a pure function of k, which is what makes the
    loader resumable from one number."""

    def __init__(self, stream: TokenStream, seed: int):
        self.stream, self.seed = stream, seed
        self._key, self._order = None, None

    def window(self, k: int, T: int) -> np.ndarray:
        n_windows = (self.stream.n_tokens - 1) // T
        if n_windows < 1:
            raise ValueError(f"a split of {self.stream.n_tokens} tokens is too short for seq_len {T}")
        epoch, i = divmod(k, n_windows)
        if self._key != (T, epoch):
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + T * 1_009 + epoch)
            self._key, self._order = (T, epoch), torch.randperm(n_windows, generator=gen).numpy()
        start = int(self._order[i]) * T
        return self.stream.read(start, start + T + 1)


# -----------------------------------------------------------------------------
# 3. The loader


class PackedLoader:
    """Training batches: deterministic, resumable, each rank reads only its slice.

    A step takes the next `rows_per_step = tokens_per_step / seq_len` windows of the
    shuffled sequence (ShuffledWindows); rank r takes the r-th contiguous block of
    them and splits it into micro-batches (gradient accumulation). The position is
    the count of windows consumed (at the current seq_len), saved in every checkpoint:
    a resumed run reads exactly the windows the uninterrupted run would have read,
    whatever the number of ranks (with fewer ranks, each accumulates more
    micro-batches of the same rows, so the step's gradient is the same).

    Annealing (§3.4.3 "upsample data sources of very high quality"; §3.1.3 anneals on
    a 30% new / 70% default mix): during the last anneal_steps, a fraction
    anneal_data_fraction of each step's rows comes from data.py's "anneal" split (the
    top-quality code and math documents), spread evenly over the step's rows.

    cfg: seed, seq_len, batch_size, tokens_per_step, anneal_steps, anneal_data_fraction
    (a pretrain.PretrainConfig). Called as loader(step, total_steps) -> list of
    micro-batch dicts for that step."""

    def __init__(self, cfg, stream: TokenStream, bos_id: int, dist,
                 anneal_stream: TokenStream | None = None, stage=None):
        self.cfg, self.bos_id, self.dist = cfg, bos_id, dist
        # stage(step, total_steps) -> (seq_len, tokens_per_step): pretrain.stage_at's
        # growth schedule (§3.4.1-3.4.2); without it, cfg.seq_len and cfg.tokens_per_step.
        self.stage = stage or (lambda step, total: (cfg.seq_len, cfg.tokens_per_step))
        self.main = ShuffledWindows(stream, cfg.seed)
        self.anneal = ShuffledWindows(anneal_stream, cfg.seed + 1) if anneal_stream is not None else None
        self.seq_len, self.rows_done, self.anneal_rows_done = None, 0, 0

    def state_dict(self) -> dict:
        return {"seq_len": self.seq_len, "rows_done": self.rows_done, "anneal_rows_done": self.anneal_rows_done}

    def load_state_dict(self, state: dict):
        self.seq_len, self.rows_done = state["seq_len"], state["rows_done"]
        self.anneal_rows_done = state.get("anneal_rows_done", 0)

    def __call__(self, step: int, total_steps: int) -> list[dict]:
        cfg = self.cfg
        T, tokens_per_step = self.stage(step, total_steps)
        if T != self.seq_len:  # a new stage: a fresh order of windows of the new length
            self.seq_len, self.rows_done, self.anneal_rows_done = T, 0, 0
        dp, rank = self.dist.dp_size, self.dist.dp_rank  # TP, CP and PP ranks of a replica read the same rows
        rows_per_step = max(dp, tokens_per_step // T // dp * dp)
        rows_per_rank = rows_per_step // dp
        # Where each of the step's rows comes from: (source, index in that source).
        frac = cfg.anneal_data_fraction if (self.anneal is not None and cfg.anneal_steps > 0
                                            and step >= total_steps - cfg.anneal_steps) else 0.0
        sources, n_main, n_anneal = [], 0, 0
        for j in range(rows_per_step):
            if int((j + 1) * frac) > int(j * frac):  # evenly spread, e.g. 3 rows in 10
                sources.append((self.anneal, self.anneal_rows_done + n_anneal))
                n_anneal += 1
            else:
                sources.append((self.main, self.rows_done + n_main))
                n_main += 1
        mine = sources[rank * rows_per_rank:(rank + 1) * rows_per_rank]  # this rank's block
        # micro-batch rows: --batch-size at --seq-len, fewer when sequences are longer,
        # and a divisor of rows_per_rank so that all micro-batches are the same size.
        micro = divisor_at_most(rows_per_rank, max(1, cfg.batch_size * cfg.seq_len // T))
        batches = []
        for m in range(0, rows_per_rank, micro):
            rows = np.stack([src.window(k, T) for src, k in mine[m:m + micro]])  # (micro, T+1)
            # context parallel: this rank keeps its share of every row (parallel.py)
            batches.append(parallel.context_parallel_batch(make_batch(rows, self.bos_id, self.dist.device), self.dist))
        self.rows_done += n_main
        self.anneal_rows_done += n_anneal
        return batches
