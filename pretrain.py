"""
pretrain.py -- pre-training (§3.4 of "The Llama 3 Herd of Models").

Stage: pre-training. Takes the token shards of data.py and the Transformer of model.py
and trains it with next-token prediction. The post-training scripts (sft.py,
reward.py, dpo.py) import the pieces of this file and own only their data and loss.

What is notable here
- One config dataclass, overridable from the command line (`--key value`), printed
  and saved with every run (out/pretrain/config.json); no `exec` of config files.
- Packed sequences with document boundaries (§3.2): a training row is a window of the
  token stream that may hold several documents; `doc_ids` tells the model where each
  one starts, so attention never crosses documents and RoPE restarts per document.
- The schedule of §3.4.1 (AdamW, linear warm-up, cosine decay to 1% of peak), scaled
  down, plus the optional later stages: sequence-length / batch growth, a long-context
  stage (§3.4.2), annealing to LR 0 with Polyak averaging of checkpoints (§3.4.3).
- Fault tolerance (§3.3.4): checkpoints are atomic (parallel.py), a run resumes
  exactly where it stopped -- same losses, same weights as an uninterrupted run -- on
  any number of ranks, and a non-finite loss stops the run before anything bad is
  written.
- Speed is a number: every log line has tokens/s, MFU (PaLM appendix B FLOPs vs a
  measured CPU matmul peak or the GPU's datasheet bf16 peak) and an ETA.

Reads:  out/data/meta.json + shards (builds them with data.py if missing).
Writes: out/pretrain/{config.json, log.jsonl, loss.png, report.json,
        checkpoints/step_XXXXXXXX/ (DCP), final/model.pt + tokenizer.model}.

How to run
    python pretrain.py                                         # 1 process, CPU
    torchrun --standalone --nproc_per_node=2 pretrain.py       # 2 ranks (gloo on CPU)
    python pretrain.py --max-steps 50 --seq-len-schedule "0:128,20:256"
    torchrun --nnodes=2 --nproc_per_node=8 ... pretrain.py --model llama3-8b \\
        --tokens-per-step 4194304 --seq-len 8192 --lr 3e-4    # GPUs + NCCL (§3.4.1)
    torchrun --standalone --nproc_per_node=8 pretrain.py --model tiny-1m --tp 2 --cp 2 --pp 2
        # 4D: TP x CP x PP x DP (here DP 1), §3.3.2; see README "Scaling out"
    A run that finds checkpoints in OUT/checkpoints resumes from the latest one, in any layout.

Read next: sample.py (generate with the exported model), then sft.py (the first
post-training stage, written as a difference from this file).
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sys
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

import checkpoint
import common
import parallel
from model import ModelArgs, count_params, flops_per_token
from common import (Interrupts, RunLogger, UsageError, agreed_signal, arg, changed_settings, claim_output, cli,
                    eta_record, finished_run, fit_time_budget, flag, parse_config, print0, set_threads, timed_steps)
from loader import DEFAULT_DATA, PackedLoader, TokenStream, ensure_data, make_batch, split_record

# -----------------------------------------------------------------------------
# 1. Configuration: a dataclass, overridable with --key value


@dataclass
class TrainConfig:
    """The knobs of the training loop `train()`. Every training script (pretrain, sft,
    reward, dpo) has a config that extends this one with its own model/data fields."""
    out: str = arg("out/pretrain", "where checkpoints, logs and the final model go")
    max_steps: int = arg(300, "optimizer steps (the cosine schedule is laid over these)")
    time_budget_min: float = arg(0.0, "if > 0: fit the run (at most max_steps) into this many minutes, "
                                      "re-estimated from the measured step time every 10 steps")
    lr: float = arg(3e-3, "peak learning rate (§3.4.1: 8e-5 for 405B; small models take more)")
    min_lr_ratio: float = arg(0.01, "cosine decays to this fraction of the peak (§3.4.1: 1%)")
    warmup_steps: int = arg(20, "linear warm-up steps (§3.4.1: 8,000)")
    anneal_steps: int = arg(0, "last N steps: LR linearly to 0, Polyak-average checkpoints (§3.4.3)")
    anneal_ckpt_every: int = arg(0, "checkpoint (and average) every N annealing steps; 0 = anneal_steps//4")
    weight_decay: float = arg(0.1, "AdamW decoupled weight decay on matrices")
    beta1: float = arg(0.9, "AdamW beta1")
    beta2: float = arg(0.95, "AdamW beta2")
    grad_clip: float = arg(1.0, "clip the global gradient norm to this (0 = off)")
    dtype: str = arg("auto", "autocast dtype: bf16 | fp32 | auto (bf16 where the hardware has it)")
    seed: int = arg(0, "weights and data order")
    log_every: int = arg(1, "print/log every N steps")
    eval_every: int = arg(50, "evaluate held-out loss every N steps (0 = only at the end)")
    ckpt_every: int = arg(50, "checkpoint every N steps (and always at the end)")
    keep_checkpoints: int = arg(2, "keep the latest N checkpoints")
    resume: bool = arg(True, "resume from the latest checkpoint in OUT/checkpoints if any")
    stop_at_step: int = arg(0, "debug: stop after this step (with a checkpoint), as if "
                                "interrupted; resuming continues the same schedule")
    debug_nan_at_step: int = arg(0, "debug: make the loss NaN at this step (tests the stop)")
    # Where and how wide: the same flags in every training script (parallel.py).
    device: str = arg("", "cpu | cuda (default: cuda if available)")
    threads: int = arg(0, "CPU threads per rank (0 = cores / local ranks; 1 on a machine shared with other jobs)")
    tp: int = arg(1, "tensor-parallel degree (GPUs); the rest is FSDP data parallel")
    activation_checkpointing: bool = arg(False, "recompute blocks in backward (saves memory)")
    reshard_after_forward: bool = arg(False, "FSDP: free gathered weights after each block's forward and "
                                             "gather again in backward (ZeRO-3; the paper keeps them, §3.3.2)")
    compile: bool = arg(False, "torch.compile each block (GPU)")

    # Fields that must be > 0 and >= 0; a script's config adds its own to the tuples.
    POSITIVE = ("max_steps", "log_every", "ckpt_every", "keep_checkpoints")
    NON_NEGATIVE = ("warmup_steps", "anneal_steps", "anneal_ckpt_every", "eval_every",
                    "time_budget_min", "grad_clip", "stop_at_step", "debug_nan_at_step")

    def validate(self):
        """Reject values the loop cannot run with, naming the flag (UsageError)."""
        for name in self.POSITIVE:
            if not getattr(self, name) > 0:
                raise UsageError(f"{flag(name)} must be > 0 (got {getattr(self, name)!r})")
        for name in self.NON_NEGATIVE:
            if getattr(self, name) < 0:
                raise UsageError(f"{flag(name)} must be >= 0 (got {getattr(self, name)!r})")
        if not self.lr > 0:
            raise UsageError(f"--lr must be > 0 (got {self.lr!r})")
        if not 0 <= self.min_lr_ratio <= 1:
            raise UsageError(f"--min-lr-ratio must be in [0, 1] (got {self.min_lr_ratio!r})")
        if self.tp <= 0 or self.threads < 0:
            raise UsageError(f"--tp must be > 0 and --threads >= 0 (got {self.tp!r}, {self.threads!r})")


@dataclass
class PretrainConfig(TrainConfig):
    """Pre-training (§3.4): every field is a --kebab-case flag."""
    # The default run: 4.5 minutes on 2 ranks of a 2-core CPU, the built-in corpus, and
    # dial-4 (1.25M parameters), sized by the scaling laws (§3.2.1, scaling.py): at this
    # budget a 2-core CPU trains dial-1 to dial-4 at about the same tokens/s, and they reach
    # held-out losses within the seed spread, 0.9 nats below small-15m (15.7M parameters, 3x
    # fewer tokens); the fit's pick, dial-3, measured no better (docs/NOTES.md). Steps: by the budget.
    max_steps: int = arg(3000, "optimizer steps (the cosine schedule is laid over these)")
    time_budget_min: float = arg(4.5, "if > 0: fit the run (at most max_steps) into this many minutes, "
                                      "re-estimated from the measured step time every 10 steps")
    lr: float = arg(5e-3, "peak learning rate (§3.4.1: 8e-5 for 405B; small models take more)")
    # §3.4.1 warms up over 8,000 of 1,200,000 steps (0.7%); our runs of a few hundred
    # steps need relatively more.
    warmup_steps: int = arg(16, "linear warm-up steps (§3.4.1: 8,000)")
    # §3.4.3 anneals the last 40M tokens (of ~15.6T: a tiny fraction) and averages the
    # checkpoints saved meanwhile. Ours: the last 16 steps, 4 checkpoints.
    anneal_steps: int = arg(16, "last N steps: LR linearly to 0, Polyak-average checkpoints (§3.4.3)")
    eval_every: int = arg(100, "evaluate held-out loss every N steps (0 = only at the end)")
    ckpt_every: int = arg(100, "checkpoint every N steps (and always at the end)")
    # The model: a name from model.CONFIGS; the vocabulary comes from the data.
    model: str = arg("dial-4", "model.ModelArgs.from_name name (dial-4, small-15m, llama3-8b, ...)")
    data: str = arg(DEFAULT_DATA, f"data.py output folder (only {DEFAULT_DATA} is built if missing)")
    # The batch. §3.4.1: 4M tokens per step in sequences of 4,096 at first. Ours: 2K
    # tokens per step in sequences of 256, i.e. 8 rows, split over the ranks and into
    # gradient-accumulation micro-batches of batch_size rows (2 ranks: 4 rows each;
    # 1 process: 1 micro-batch of 8). scaling.py's batch for this budget.
    seq_len: int = arg(256, "training sequence length (tokens per row)")
    batch_size: int = arg(8, "rows per micro-batch per rank (at --seq-len)")
    tokens_per_step: int = arg(2048, "global tokens per optimizer step (grad accumulation)")
    # §3.4.1-3.4.2: the batch and the context grow during training.
    seq_len_schedule: str = arg("", "sequence-length growth, 'step:len,...' e.g. '0:128,200:256'")
    batch_schedule: str = arg("", "tokens-per-step growth, 'step:tokens,...' e.g. '0:8192,100:16384'")
    long_context_steps: int = arg(0, "last N steps train at --long-context-seq-len (§3.4.2)")
    long_context_seq_len: int = arg(1024, "sequence length of the long-context stage")
    anneal_data_fraction: float = arg(0.3, "share of annealing rows from data.py's 'anneal' split "
                                           "(§3.1.3: 30% new data, 70% default mix)")
    # A later stage starts from an earlier one's weights: §3.4.2's long-context stage
    # (longcontext.py) is `--init out/pretrain/final --seq-len 1024 --data <its data>`.
    init: str = arg("", "start from this checkpoint's weights (any format) instead of --model's random ones")
    rope_theta: float = arg(0.0, "RoPE θ (0 = the model's: 500,000 for Llama 3, §3.2; Llama 2 had 10,000)")
    ROPE_SCALING_FORMAT = r"|off|\d+(\.\d*)?:\d+"  # not a field (no annotation): rope_scaling's syntax
    rope_scaling: str = arg("", "Llama 3.1 RoPE frequency scaling 'FACTOR:ORIGINAL_LEN' (e.g. '4:256'), "
                                "'off', or '' = the model's")
    eval_tokens: int = arg(32768, "held-out tokens per evaluation (global)")
    # §3.3.2's other two dimensions (parallel.py). World = dp x pp x cp x tp.
    cp: int = arg(1, "context-parallel degree: each sequence split over this many ranks (seq len % 2cp == 0)")
    pp: int = arg(1, "pipeline-parallel degree: the layers split into stages over this many ranks")
    pp_schedule: str = arg("1F1B", "pipeline schedule: 1F1B | GPipe | Interleaved1F1B | InterleavedZeroBubble")
    pp_microbatches: int = arg(0, "pipeline micro-batches per --batch-size micro-batch (the paper's N; "
                                  "0 = the number of stages)")
    pp_stages_per_rank: int = arg(0, "stages per rank (v; 0 = 2 for interleaved schedules, else 1)")
    POSITIVE = TrainConfig.POSITIVE + ("seq_len", "batch_size", "tokens_per_step", "eval_tokens", "long_context_seq_len")
    NON_NEGATIVE = TrainConfig.NON_NEGATIVE + ("long_context_steps",)

    def validate(self):
        super().validate()
        if not 0 <= self.anneal_data_fraction <= 1:
            raise UsageError(f"--anneal-data-fraction must be in [0, 1] (got {self.anneal_data_fraction!r})")
        if self.cp <= 0 or self.pp <= 0:
            raise UsageError(f"--cp and --pp must be > 0 (got {self.cp!r}, {self.pp!r})")
        lens = [v for _, v in parse_schedule(self.seq_len_schedule, self.seq_len)]
        lens += [self.long_context_seq_len] if self.long_context_steps > 0 else []
        if self.cp > 1 and any(n % (2 * self.cp) for n in lens):
            raise UsageError(f"--cp {self.cp}: every sequence length must be divisible by 2·cp = {2 * self.cp} "
                             f"(got {sorted(set(lens))})")
        if self.pp_microbatches < 0 or self.pp_stages_per_rank < 0:
            raise UsageError("--pp-microbatches and --pp-stages-per-rank must be >= 0")
        if self.pp > 1:
            from torch.distributed.pipelining.schedules import get_schedule_class
            try:
                get_schedule_class(self.pp_schedule)
            except ValueError as e:
                raise UsageError(f"--pp-schedule: {e}") from None
        if self.rope_theta < 0 or not re.fullmatch(self.ROPE_SCALING_FORMAT, self.rope_scaling):
            raise UsageError(f"--rope-theta must be >= 0 and --rope-scaling FACTOR:ORIGINAL_LEN, 'off' or '' "
                             f"(got {self.rope_theta!r}, {self.rope_scaling!r})")


# -----------------------------------------------------------------------------
# 2. The learning-rate schedule and the stages of §3.4


def lr_at(step: int, *, max_lr: float, warmup_steps: int, total_steps: int,
          min_lr_ratio: float = 0.01, anneal_steps: int = 0) -> float:
    """Learning rate of the optimizer step with 0-based index `step` (§3.4.1):
    linear warm-up to max_lr over warmup_steps, cosine decay to min_lr_ratio·max_lr
    at total_steps; with anneal_steps, the last anneal_steps go linearly from the
    cosine value at their start down to 0 (§3.4.3).
    405B: warm-up 8,000 steps, cosine over 1,200,000 steps, 8e-5 -> 8e-7 (1%).
    lr_at(0, max_lr=1, warmup_steps=10, total_steps=100) = 0.1;
    lr_at(10, ...) = 1.0; lr_at(100, ...) = 0.01."""
    min_lr = max_lr * min_lr_ratio
    anneal_steps = max(0, min(anneal_steps, total_steps))  # longer than the run: anneal it all
    anneal_start = total_steps - anneal_steps
    if anneal_steps > 0 and step >= anneal_start:
        start_lr = lr_at(anneal_start, max_lr=max_lr, warmup_steps=warmup_steps,
                         total_steps=total_steps, min_lr_ratio=min_lr_ratio)
        return start_lr * max(0.0, (total_steps - step - 1) / anneal_steps)  # last step: 0
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps  # +1: the first step already moves
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def parse_schedule(text: str, default: int) -> list[tuple[int, int]]:
    """'0:128,200:256' -> [(0, 128), (200, 256)]: the value from each step on
    (before the first given step: `default`)."""
    points = {0: default}
    for part in filter(None, (p.strip() for p in text.split(","))):
        step, value = part.split(":")
        points[int(step)] = int(value)
    return sorted(points.items())


def value_at(schedule: list[tuple[int, int]], step: int) -> int:
    value = schedule[0][1]
    for start, v in schedule:
        if step >= start:
            value = v
    return value


def stage_at(cfg: PretrainConfig, step: int, total_steps: int) -> tuple[int, int]:
    """(seq_len, tokens_per_step) for a step. §3.4.1: 4M tokens at seq 4,096 -> 8M at
    8,192 after 252M tokens -> 16M after 2.87T tokens; scaled down, our schedules are
    given in steps. §3.4.2: the final stage trains on long sequences (8K -> 128K over
    six stages, ~800B tokens); ours is one stage over the last long_context_steps
    steps. The tokens per step stay the same there, so rows get fewer and longer."""
    seq_len = value_at(parse_schedule(cfg.seq_len_schedule, cfg.seq_len), step)
    tokens = value_at(parse_schedule(cfg.batch_schedule, cfg.tokens_per_step), step)
    if cfg.long_context_steps > 0 and step >= total_steps - cfg.long_context_steps:
        seq_len = cfg.long_context_seq_len
    return seq_len, tokens


def rope_overrides(cfg: PretrainConfig) -> dict:
    """--rope-theta / --rope-scaling as ModelArgs fields. '4:256' stretches the RoPE
    wavelengths longer than 256 tokens 4x (model.rope_frequencies), as Llama 3.1 does
    with 8:8192; with θ this is the ablation of longcontext.py."""
    fields = {"rope_theta": cfg.rope_theta} if cfg.rope_theta else {}
    if cfg.rope_scaling == "off":
        fields["use_scaled_rope"] = False
    elif cfg.rope_scaling:
        factor, original = cfg.rope_scaling.split(":")
        fields.update(use_scaled_rope=True, rope_scale_factor=float(factor), rope_original_max_seq_len=int(original))
    return fields


def longest_seq_len(cfg: PretrainConfig) -> int:
    lens = [v for _, v in parse_schedule(cfg.seq_len_schedule, cfg.seq_len)]
    if cfg.long_context_steps > 0:
        lens.append(cfg.long_context_seq_len)
    return max(lens)


# -----------------------------------------------------------------------------
# 3. The loss, and the held-out loss (the data loader is loader.py)


def lm_loss(model, batch: dict) -> torch.Tensor:
    """Next-token cross-entropy over the packed rows (mean over non-ignored targets).
    Context parallel (parallel.context_parallel_batch): this rank's tokens, with
    explicit RoPE positions and mask, and loss_scale = cp / (targets of the whole
    rows), so that the mean over the CP ranks is the whole rows' mean. Pipeline
    parallel: the forward runs through the stages (here: evaluation; train() runs
    the training step's schedule itself)."""
    if getattr(model, "pipeline", None) is not None:
        return model.pipeline.step(batch)
    logits = model(batch["inputs"], **parallel.model_inputs(batch))  # (B, T, vocab), fp32
    if "loss_scale" in batch:
        loss = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=-100, reduction="sum")
        return loss * batch["loss_scale"]
    return F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=-100)


def make_eval_fn(cfg: PretrainConfig, stream: TokenStream, bos_id: int, dist, loss_fn=lm_loss):
    """Held-out loss on the first eval_tokens of the val split, in fixed consecutive
    windows of seq_len (same windows at every evaluation, so the curve is comparable);
    each rank evaluates its share and the mean is all-reduced."""
    T = cfg.seq_len
    n_rows = max(dist.dp_size, min(cfg.eval_tokens, stream.n_tokens - 1) // T // dist.dp_size * dist.dp_size)
    mine = list(range(dist.dp_rank, n_rows, dist.dp_size))

    @torch.no_grad()
    def eval_fn(model) -> dict:
        total = torch.zeros(2, dtype=torch.float64, device=dist.device)  # loss sum, rows
        for i in range(0, len(mine), cfg.batch_size):
            rows = np.stack([stream.read(k * T, k * T + T + 1) for k in mine[i:i + cfg.batch_size]])
            batch = parallel.context_parallel_batch(make_batch(rows, bos_id, dist.device), dist)
            with autocast(cfg, dist):
                loss = loss_fn(model, batch)
            total += torch.tensor([loss.item() * len(rows), len(rows)], dtype=torch.float64, device=dist.device)
        if dist.world_size > 1:
            torch.distributed.all_reduce(total)
        return {"val_loss": (total[0] / total[1]).item()}

    return eval_fn


# -----------------------------------------------------------------------------
# 4. Optimizer, precision, and measuring speed


def build_optimizer(model, lr: float, weight_decay: float = 0.1, betas=(0.9, 0.95), eps: float = 1e-8):
    """AdamW (§3.4.1). Weight decay only on the matrices of the blocks and the output
    layer; none on norms (scales that should stay near 1) and none on the embedding
    table (nanoGPT/GPT-3 practice: rare tokens would just decay towards 0). The paper
    gives neither the decay value nor these groups: 0.1 and this split are our choice
    (Llama 2 used 0.1). `fused` on CUDA for speed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and "tok_embeddings" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    on_cuda = any(p.is_cuda for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, **({"fused": True} if on_cuda else {}))


def train_dtype(cfg: TrainConfig, dist) -> torch.dtype:
    """--dtype auto: bf16 autocast where the hardware has bf16 units (a GPU, or a CPU
    with avx512_bf16 / AMX, where bf16 matmuls run ~2x faster), fp32 elsewhere."""
    return common.auto_dtype(cfg.dtype, dist.device)


def autocast(cfg: TrainConfig, dist):
    """Matmuls in bf16, weights, optimizer state and reductions in fp32 (mixed
    precision; §3.3 trains in BF16)."""
    dtype = train_dtype(cfg, dist)
    return torch.autocast(dist.device.type, dtype=torch.bfloat16, enabled=(dtype == torch.bfloat16))


# -----------------------------------------------------------------------------
# 6. The training loop (shared by pretrain, sft, reward, dpo)


def _step_dir(ckpt_dir: str, step: int) -> str:
    return os.path.join(ckpt_dir, f"step_{step:08d}")  # checkpoint.save_checkpoint's naming


def start_run(cfg: TrainConfig):
    """What every training stage does first -> (dist, logger), or None when cfg.out
    holds a finished run (its record is kept; a new run needs a new --out). Then:
    processes and device mesh (parallel.py), OUT locked against a second run, CPU
    threads (N ranks on C cores: C/N each; more threads than cores slows every rank),
    and the config saved as OUT/config.json."""
    done = finished_run(cfg.out)
    if done is not None:
        if changed := changed_settings(cfg):  # e.g. run_all --annotated 30 on a default run's folder
            raise UsageError(f"{cfg.out} holds a finished run with other settings ({changed}); use a new --out")
        print0(f"{cfg.out} is a finished run ({done.get('steps')} steps, final model in "
               f"{done.get('final', os.path.join(cfg.out, 'final'))}); nothing to do -- use a new --out for a new run")
        return None
    # --cp and --pp are pre-training's alone (PretrainConfig): see parallel.py
    try:
        dist = parallel.setup_distributed(tp=cfg.tp, cp=getattr(cfg, "cp", 1), pp=getattr(cfg, "pp", 1),
                                          device=cfg.device or None)
    except ValueError as e:  # e.g. 3 ranks for --tp 2
        raise UsageError(str(e)) from None
    claim_output(cfg.out, dist)
    set_threads(cfg.threads, dist.device)
    logger = RunLogger(cfg.out, dist)
    logger.write_json("config.json", asdict(cfg))
    return dist, logger


def train(cfg: TrainConfig, dist, model, optimizer, next_batch, loss_fn, *, eval_fn=None,
          model_args: ModelArgs, logger: RunLogger | None = None, tokenizer_path: str | None = None,
          export: bool = True) -> dict:
    """The training loop. Contract (what sft.py / reward.py / dpo.py rely on):

    cfg          a TrainConfig (or a dataclass extending it): max_steps, lr, schedule,
                 clipping, dtype, logging/eval/checkpoint cadence, out_dir, debug knobs.
    model        the (possibly FSDP-sharded) model, on dist.device, in fp32; with
                 pipeline parallel (a .pipeline, parallel.build_pipeline) the schedule
                 runs each micro-batch's forward and backward (lm_loss only).
    optimizer    e.g. build_optimizer(model, cfg.lr, ...); its LR is set every step.
    next_batch   callable (step, total_steps) -> list of micro-batches (any objects
                 loss_fn understands) for optimizer step `step` (0-based); the list
                 length is the gradient-accumulation count. Every rank must return
                 the same count. If it has state_dict()/load_state_dict() (like
                 PackedLoader), its position is saved in every checkpoint and restored
                 from start_state["data"].
                 A micro-batch that is a dict with "inputs" (B, T) is counted as B·T
                 tokens for tokens/s and MFU (or give "n_tokens").
    loss_fn      (model, micro_batch) -> scalar loss (the mean over that micro-batch),
                 or (loss, {name: float}) to log extra metrics (averaged over the
                 step's micro-batches, as seen by rank 0). Called under autocast; the step's gradient is
                 that of the mean of the micro-batch losses over micro-batches and
                 ranks (FSDP averages over data-parallel ranks).
    eval_fn      optional (model) -> {name: float}, called on every rank (collectives
                 allowed) every cfg.eval_every steps and at the end, under no_grad.
    model_args   saved with checkpoints and the export.
    Checkpoints go to OUT/checkpoints/step_XXXXXXXX (checkpoint.save_checkpoint) every
    cfg.ckpt_every steps and at the end, with the data position, the total step count
    and the config; with cfg.resume the latest intact one is loaded first (weights,
    optimizer, RNG, data position), so a stopped run continues exactly.
    Returns {"step", "losses" {step: loss}, "last_eval", "final_dir", "total_steps"}.
    A non-finite loss or gradient norm stops the run before the optimizer step (one
    line, OUT/report.json says so, exit code 3): nothing is updated and no checkpoint
    is written, so the last checkpoint on disk is good.
    At the end, if export: with cfg.anneal_steps, the checkpoints saved during
    annealing are averaged (Polyak, §3.4.3) into the model; then the model is exported
    to OUT/final (model.pt + tokenizer.model) via checkpoint.export_model."""
    cfg.validate()  # configs built in code get the same checks as the command line
    logger = logger or RunLogger(cfg.out, dist)
    ckpt_dir = os.path.join(cfg.out, "checkpoints")
    latest = checkpoint.latest_checkpoint(ckpt_dir) if cfg.resume else None
    start_state = checkpoint.load_checkpoint(latest, model, optimizer) if latest else {}
    if latest:
        print0(f"resuming from {latest} (step {start_state['step']})")
    step = int(start_state.get("step", 0))  # optimizer steps already done
    total_steps = int(start_state.get("total_steps", cfg.max_steps))
    if start_state.get("total_steps") and total_steps != cfg.max_steps:
        print0(f"resuming a schedule of {total_steps} steps (from the checkpoint; --max-steps "
               f"{cfg.max_steps} is ignored -- use a new --out for a new run)")
    if start_state.get("data") is not None and hasattr(next_batch, "load_state_dict"):
        next_batch.load_state_dict(start_state["data"])
    dtype = train_dtype(cfg, dist)
    peak, peak_how = common.peak_flops(dist.device, dtype)  # for MFU
    print0(f"training: steps {step} -> {total_steps}, {str(dtype).replace('torch.', '')} autocast, "
           f"{dist.world_size} rank(s); MFU peak per rank {peak / 1e9:,.0f} GFLOP/s ({peak_how})")
    if cfg.anneal_steps > total_steps:  # lr_at clips it the same way: the LR never goes negative
        print0(f"{flag('anneal_steps')} {cfg.anneal_steps} is longer than the run: annealing all "
               f"{total_steps} steps")

    anneal_every = cfg.anneal_ckpt_every or max(1, cfg.anneal_steps // 4)

    def is_anneal_ckpt(s):  # s = number of steps done
        start = total_steps - cfg.anneal_steps
        return cfg.anneal_steps > 0 and s > start and ((s - start) % anneal_every == 0 or s == total_steps)

    keep = max(cfg.keep_checkpoints, (cfg.anneal_steps // anneal_every + 2) if cfg.anneal_steps else 0)

    def extra():
        state = next_batch.state_dict() if hasattr(next_batch, "state_dict") else None
        return {"data": state, "total_steps": total_steps, "config": asdict(cfg)}

    pipeline = getattr(model, "pipeline", None)  # pipeline parallel: parallel.build_pipeline
    if pipeline is not None and loss_fn is not lm_loss:
        raise UsageError("pipeline parallel (--pp) trains the next-token loss of pre-training only")
    losses, last_eval, step_times = {}, {}, []
    tokens_seen, t_run = 0, time.time()
    # §3.3.4: a cluster scheduler stops jobs with SIGTERM, a user with Ctrl-C (SIGINT);
    # either one finishes the step in progress, saves it, and exits (see below).
    with Interrupts() as interrupts:
        while step < total_steps:
            t0 = time.time()
            lr = lr_at(step, max_lr=cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=total_steps,
                       min_lr_ratio=cfg.min_lr_ratio, anneal_steps=cfg.anneal_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            micro_batches = next_batch(step, total_steps)
            n_micro = len(micro_batches)
            loss_sum = torch.zeros((), device=dist.device)
            extra_metrics, n_tokens, seq_len = {}, 0, 0
            for i, batch in enumerate(micro_batches):
                # With FSDP, reduce-scatter gradients only after the last micro-batch.
                if hasattr(model, "set_requires_gradient_sync"):
                    model.set_requires_gradient_sync(i == n_micro - 1)
                with autocast(cfg, dist):
                    if pipeline is not None:  # the schedule runs forward and backward through the stages
                        loss, metrics = pipeline.step(batch, grad_scale=1 / n_micro), {}
                    else:
                        out = loss_fn(model, batch)
                        loss, metrics = out if isinstance(out, tuple) else (out, {})
                if cfg.debug_nan_at_step and step + 1 == cfg.debug_nan_at_step:
                    loss = loss * float("nan")  # debug: poison the loss
                if pipeline is None:
                    (loss / n_micro).backward()
                loss_sum += loss.detach()
                for k, v in metrics.items():
                    extra_metrics[k] = extra_metrics.get(k, 0.0) + float(v) / n_micro
                if isinstance(batch, dict):
                    n_tokens += int(batch.get("n_tokens", batch["inputs"].numel() if "inputs" in batch else 0))
                    seq_len = batch.get("seq_len", batch["inputs"].shape[1] if "inputs" in batch else seq_len)
            # The step's loss, averaged over micro-batches and data-parallel ranks.
            loss_t = loss_sum / n_micro
            if dist.world_size > 1:
                torch.distributed.all_reduce(loss_t, op=torch.distributed.ReduceOp.AVG)
            grad_norm = parallel.clip_grad_norm_([p for p in model.parameters() if p.grad is not None],
                                                 cfg.grad_clip if cfg.grad_clip > 0 else float("inf"),
                                                 pp_group=dist.group("pp") if pipeline is not None else None)
            loss_v, norm_v = loss_t.item(), float(grad_norm)
            if not (math.isfinite(loss_v) and math.isfinite(norm_v)):
                # §3.3.4: a bad step must not reach the weights nor a checkpoint. We stop
                # before optimizer.step(); the latest checkpoint on disk is the last good one.
                optimizer.zero_grad(set_to_none=True)
                latest = checkpoint.latest_checkpoint(ckpt_dir)
                message = (f"non-finite {'loss' if not math.isfinite(loss_v) else 'gradient norm'} at step "
                           f"{step + 1} (loss {loss_v}, grad norm {norm_v}); stopped without updating or "
                           f"saving. Last good checkpoint: {latest or 'none'}. Lower --lr, check the data, "
                           f"or resume from it with a different --seed.")
                print0(f"STOPPED: {message}")
                logger.write_json("report.json", {"status": "non-finite loss", "message": message})
                parallel.teardown_distributed()
                raise SystemExit(3)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses[step] = loss_v

            # ---- speed: tokens/s, MFU, ETA -----------------------------------------------
            dt = time.time() - t0
            step_times.append(dt)
            global_tokens = n_tokens * dist.dp_size * dist.cp_size  # CP ranks hold 1/cp of each row
            tokens_seen += global_tokens
            tok_s = global_tokens / dt
            mfu = float("nan")
            if seq_len:
                # 6N + attention FLOPs per token (PaLM appendix B) over the peak of all ranks.
                mfu = flops_per_token(model_args, seq_len) * tok_s / (peak * dist.world_size)
            # The first steps pay for warm-up (with --compile: for compilation); the ETA and
            # the time budget use the steps after them, re-estimated every 10 steps until
            # annealing starts (a busy machine that calms down gets its steps back).
            timed = timed_steps(step_times, cfg.compile)
            per_step = sum(timed) / len(timed) if timed else step_times[-1]
            overhead = max(0.0, time.time() - t_run - sum(step_times)) / len(step_times)  # eval, checkpoints
            if (cfg.time_budget_min > 0 and timed and (len(timed) == 1 or step % 10 == 0)
                    and not start_state.get("total_steps") and step < total_steps - cfg.anneal_steps):
                total_steps = fit_time_budget(cfg, step, total_steps, per_step, overhead, time.time() - t_run, dist)
            eta_field = eta_record(timed, total_steps - step, overhead, cfg.compile)
            if step % cfg.log_every == 0 or step == total_steps:
                logger.log(step, loss=loss_v, lr=lr, grad_norm=norm_v, tok_s=tok_s, mfu=mfu,
                           **eta_field, **extra_metrics)

            # ---- evaluation and checkpoints ---------------------------------------------
            if eval_fn is not None and ((cfg.eval_every and step % cfg.eval_every == 0) or step == total_steps):
                model.eval()
                last_eval = eval_fn(model)
                model.train()
                logger.log(step, **last_eval)
            stopping = cfg.stop_at_step and step == cfg.stop_at_step
            signum = agreed_signal(interrupts, dist)
            if step % cfg.ckpt_every == 0 or step == total_steps or stopping or signum or is_anneal_ckpt(step):
                path = checkpoint.save_checkpoint(ckpt_dir, step, model, optimizer, model_args=model_args,
                                                  extra=extra(), keep=keep)
                print0(f"checkpoint: {path}")
            if signum:  # every rank saved its shards at this step; each says so and exits
                code = 128 + signum
                print(f"[rank {dist.rank}] {signal.Signals(signum).name}: interrupted at step {step}, "
                      f"checkpoint saved to {path}, resume with the same command (exit {code})",
                      file=sys.stderr, flush=True)
                logger.plot()
                parallel.teardown_distributed()
                raise SystemExit(code)
            if stopping:
                print0(f"--stop-at-step {step}: stopping here (resume continues the same schedule)")
                logger.plot()
                return {"step": step, "losses": losses, "last_eval": last_eval, "final_dir": None,
                        "total_steps": total_steps, "stopped": True}

    final_dir = None
    if export:
        if cfg.anneal_steps > 0:
            paths = [_step_dir(ckpt_dir, s) for s in range(total_steps - cfg.anneal_steps + 1, total_steps + 1)
                     if is_anneal_ckpt(s) and os.path.isdir(_step_dir(ckpt_dir, s))]
            if len(paths) > 1:
                checkpoint.average_checkpoints(paths, model=model)
                print0(f"§3.4.3 Polyak average of {len(paths)} annealing checkpoints: "
                       + ", ".join(os.path.basename(p) for p in paths))
                if eval_fn is not None:
                    model.eval()
                    averaged = {k + "_avg": v for k, v in eval_fn(model).items()}
                    model.train()
                    logger.log(step, **averaged)
                    last_eval = {**last_eval, **averaged}
        final_dir = os.path.join(cfg.out, "final")
        checkpoint.export_model(model, model_args, final_dir, tokenizer_path=tokenizer_path)
        print0(f"exported {final_dir}")
        if dist.is_main and keep > cfg.keep_checkpoints:  # the annealing checkpoints are averaged
            checkpoint.prune(ckpt_dir, cfg.keep_checkpoints)  # in; keep --keep-checkpoints of them
        parallel.barrier()
    logger.plot()
    return {"step": step, "losses": losses, "last_eval": last_eval, "final_dir": final_dir,
            "total_steps": total_steps, "tokens_seen": tokens_seen, "seconds": time.time() - t_run}


# -----------------------------------------------------------------------------
# 7. The pre-training run


@cli
def main(argv=None) -> int:
    """Pre-train (§3.4); returns the exit code (0 done, 2 usage error, 3 non-finite loss)."""
    cfg = parse_config(PretrainConfig, argv)
    started = start_run(cfg)
    if started is None:
        return 0
    dist, logger = started
    t_start = time.time()

    # ---- data: build if missing, then the train and held-out streams -------------
    meta = ensure_data(cfg.data, dist)
    train_stream = TokenStream(cfg.data, meta, "train")
    val_stream = TokenStream(cfg.data, meta, "val")
    anneal_stream = None  # the high-quality split for §3.4.3, if data.py wrote one
    if cfg.anneal_steps > 0 and (split_record(meta, "anneal") or {}).get("files"):
        anneal_stream = TokenStream(cfg.data, meta, "anneal")
        if anneal_stream.n_tokens <= longest_seq_len(cfg) + 1:
            anneal_stream = None
        else:
            print0(f"annealing: last {cfg.anneal_steps} steps, {cfg.anneal_data_fraction:.0%} of rows "
                   f"from the anneal split ({anneal_stream.n_tokens:,} tokens of code/math)")
    print0(f"data: {train_stream.n_tokens:,} train tokens, {val_stream.n_tokens:,} held-out "
           f"tokens, vocabulary {meta['vocab_size']:,} ({cfg.data})")

    # ---- model: the vocabulary comes from the tokenizer the data was built with ---
    # Mixed precision: train() runs every forward under bf16 autocast (fp32 master
    # weights). On GPUs FSDP2 also all-gathers the weights in bf16 (half the traffic,
    # torchtitan's setting); on CPU (gloo) we keep fp32 communication -- it is cheap there.
    bf16_gpu = dist.device.type == "cuda" and train_dtype(cfg, dist) == torch.bfloat16
    parallel_kw = dict(param_dtype="bf16" if bf16_gpu else "fp32", activation_checkpointing=cfg.activation_checkpointing,
                       compile=cfg.compile, reshard_after_forward=cfg.reshard_after_forward)
    try:
        if cfg.init:  # an earlier stage's weights; RoPE (not a weight) may change with the context
            if cfg.pp > 1:
                raise ValueError("--init with --pp: not supported (start from the checkpoint with --resume instead)")
            checkpoint.check_tokenizer(cfg.init, meta.get("tokenizer"))
            model, init_args = checkpoint.load_model(cfg.init, device=dist.device)
            if init_args.vocab_size != meta["vocab_size"]:
                raise UsageError(f"--init {cfg.init}: vocabulary {init_args.vocab_size} != the data's {meta['vocab_size']}")
            model.args = model_args = replace(init_args, max_seq_len=max(longest_seq_len(cfg), init_args.max_seq_len),
                                              **rope_overrides(cfg))
            model.reset_rope()
            model = parallel.parallelize(model, dist, **parallel_kw)
        else:
            longest = max(longest_seq_len(cfg), ModelArgs.from_name(cfg.model).max_seq_len)
            model_args = ModelArgs.from_name(cfg.model, vocab_size=meta["vocab_size"], max_seq_len=longest,
                                             **rope_overrides(cfg))
            model = parallel.build_model(model_args, dist, seed=cfg.seed, pp_schedule=cfg.pp_schedule,
                                         pp_microbatches=cfg.pp_microbatches,
                                         pp_stages_per_rank=cfg.pp_stages_per_rank, **parallel_kw)
    except ValueError as e:  # a layout this model cannot take (tied embeddings with --pp, heads % tp, ...)
        raise UsageError(str(e)) from None
    model.train()
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, betas=(cfg.beta1, cfg.beta2))
    print0(f"model {cfg.init or cfg.model}: {count_params(model_args):,} parameters, RoPE θ "
           f"{model_args.rope_theta:,.0f}{' scaled' if model_args.use_scaled_rope else ''}, "
           f"{flops_per_token(model_args, cfg.seq_len) / 1e6:.1f} MFLOPs/token at seq {cfg.seq_len}")
    rows = cfg.tokens_per_step // cfg.seq_len
    print0(f"batch: {cfg.tokens_per_step:,} tokens/step = {rows} rows of {cfg.seq_len}, "
           f"{dist.dp_size} data-parallel rank(s) x {cfg.batch_size}-row micro-batches "
           f"x {max(1, rows // dist.dp_size // max(1, cfg.batch_size))} accumulation steps; layout "
           f"TP {dist.tp_size} x CP {dist.cp_size} x PP {dist.pp_size} x DP {dist.dp_size}"
           + (f" ({cfg.pp_schedule})" if dist.pp_size > 1 else ""))

    loader = PackedLoader(cfg, train_stream, meta["bos_id"], dist, anneal_stream,
                          stage=lambda step, total: stage_at(cfg, step, total))
    eval_fn = make_eval_fn(cfg, val_stream, meta["bos_id"], dist)
    result = train(cfg, dist, model, optimizer, loader, lm_loss, eval_fn=eval_fn, model_args=model_args,
                   logger=logger, tokenizer_path=meta.get("tokenizer"))

    # ---- summary ------------------------------------------------------------------
    losses = result["losses"]
    report = {
        "status": "stopped" if result["final_dir"] is None else "done",
        "model": cfg.model, "init": cfg.init or None, "parameters": count_params(model_args),
        "world_size": dist.world_size,
        "steps": result["step"], "total_steps": result["total_steps"],
        "first_loss": losses[min(losses)] if losses else None,
        "last_loss": losses[max(losses)] if losses else None, **result["last_eval"],
        "tokens_seen_this_run": result.get("tokens_seen"), "train_seconds": result.get("seconds"),
        "wall_seconds": round(time.time() - t_start, 1), "final": result["final_dir"],
    }
    if result.get("seconds"):
        report["tokens_per_s"] = round(result["tokens_seen"] / result["seconds"], 1)
    logger.write_json("report.json", report)
    print0("summary: " + json.dumps(report))
    parallel.teardown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
