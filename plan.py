"""
plan.py -- what fits where: per-GPU memory and step time of 4D parallelism (§3.3.2).

Stage: planning, before any GPU is rented. Llama 3 405B was trained on up to 16K H100
GPUs with tensor (TP), context (CP), pipeline (PP) and fully sharded data parallelism
(FSDP); Table 4 lists the layouts. This file does the arithmetic for any layout:

  plan()          -- bytes per GPU (bf16 weights, fp32 master weights, gradients, Adam
                     state, activations with and without checkpointing, logits) and
                     seconds per step at a given MFU, as a dict.
  format_plan()   -- that dict as a readable table.
  table4_check()  -- Table 4's rows and the step time / throughput they imply.
  stage_params(), activation_bytes_per_token_per_layer() -- the pieces, tested alone.

Reads / writes: nothing (pure arithmetic from model.ModelArgs).
Run:    python plan.py --model llama3.1-405b --gpus 16384 --tp 8 --pp 16
Tests:  tests/test_plan.py.
Next:   parallel.py (the four dimensions for real: the same --tp, --cp, --pp names).
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Optional

from common import GPU_PEAK_BF16, UsageError, cli
from model import CONFIGS, ModelArgs, count_params, flops_per_token
from parallel import pipeline_layers

# -----------------------------------------------------------------------------
# The planner: memory and time per GPU for a 4D-parallel configuration

# Table 4 (§3.3.2) of the paper, for the check printed by `plan`.
TABLE4 = [
    dict(gpus=8192, tp=8, cp=1, pp=16, dp=64, seq_len=8192, tflops=430, mfu=0.43),
    dict(gpus=16384, tp=8, cp=1, pp=16, dp=128, seq_len=8192, tflops=400, mfu=0.41),
    dict(gpus=16384, tp=8, cp=16, pp=16, dp=8, seq_len=131072, tflops=380, mfu=0.38),
]


def _stage_layout(args: ModelArgs, pp: int) -> list:
    """Layers per pipeline stage: parallel.py's split, which moves one layer off the
    first stage (it also holds tok_embeddings) and the last (norm, output and the
    loss), as §3.3.2 does: 405B on PP 16 -> [7, 8 x 14, 7]."""
    return pipeline_layers(args.n_layers, pp)


def _layer_params(args: ModelArgs) -> tuple:
    """(matrix parameters split by TP, norm parameters replicated) of one block."""
    d, hd = args.dim, args.head_dim
    attention = d * args.n_heads * hd * 2 + d * args.n_kv_heads * hd * 2  # wq wo, wk wv
    return attention + 3 * d * args.ffn_hidden_dim, 2 * d


def stage_params(args: ModelArgs, pp: int = 1, tp: int = 1) -> list:
    """Exact parameter count held by one TP rank of each pipeline stage (before FSDP).
    With tp=1 and untied embeddings sum(stage_params(args, pp)) == count_params(args).
    Tied embeddings with pp > 1: the first and last stage each hold a copy."""
    matrices, norms = _layer_params(args)
    embedding = args.vocab_size * args.dim
    out = []
    layout = _stage_layout(args, pp)
    for s, n_layers in enumerate(layout):
        n = n_layers * (matrices // tp + norms)
        if s == 0:
            n += embedding // tp
        if s == pp - 1:
            n += args.dim + (embedding // tp if (not args.tie_embeddings or pp > 1) else 0)
        out.append(n)
    return out


def activation_bytes_per_token_per_layer(args: ModelArgs, tp: int = 1, checkpointing: bool = False) -> float:
    """Bytes of activations one layer keeps for backward, per token, in bf16 -- the
    Korthikanti et al. (2022, "Reducing Activation Recomputation in Large Transformer
    Models") accounting, adapted by us to this block (their GPT layer is
    sbh·(34 + 5as/h) bytes; we have no dropout, GQA, SwiGLU and a fused
    (Flash) attention kernel that stores no (T x T) score matrix):
      attention half: norm input 2h, norm output 2h, q 2h, k 2·kv, v 2·kv, attention
                      output 2h                              = 8h + 4·kv
      FFN half:       norm input 2h, norm output 2h, w1 out 2f, silu 2f, w3 out 2f,
                      product (w2 input) 2f                  = 4h + 8f
    (h = dim, kv = n_kv_heads·head_dim, f = ffn_hidden_dim.) With tensor parallel and
    sequence parallel norms every one of these is split t ways, as in Megatron, which
    keeps the norm outputs sequence-split and all-gathers them again in backward
    (PyTorch's DTensor TP used in this file keeps the gathered ones instead: +4h·(1 -
    1/t) bytes). With full activation checkpointing only the block input (2h,
    sequence-split) is kept."""
    h, kv, f = args.dim, args.n_kv_heads * args.head_dim, args.ffn_hidden_dim
    if checkpointing:
        return 2 * h / tp
    return (12 * h + 4 * kv + 8 * f) / tp


def plan(model: str = "llama3.1-405b", gpus: int = 16384, tp: int = 8, pp: int = 16, cp: int = 1,
         seq_len: int = 8192, global_batch_tokens: int = 16 * 2**20, micro_batch: int = 1,
         mfu: Optional[float] = None, gpu: str = "h100", peak_flops: Optional[float] = None,
         reshard_after_forward: bool = False, total_tokens: float = 15.6e12, compute_bytes: int = 2) -> dict:
    """The arithmetic behind "what fits where": per-GPU memory and step time.

    Assumptions (the paper's setup, §3.3.2, as we read it):
    - BF16 mixed precision with FSDP: each rank keeps its 1/dp shard of fp32 master
      weights (4 B/param), fp32 gradients (4 B) and Adam m and v (8 B); the bf16
      working copy (2 B/param) of the rank's TP/PP slice is held whole during the
      step (the paper does not reshard after forward; reshard_after_forward=True
      would keep ~2 blocks instead). compute_bytes=4 counts an fp32 run instead
      (this project's CPU runs: the working copy and the activations in fp32).
    - The gradients of a step's micro-batches accumulate unsharded, in the compute
      dtype, and are reduce-scattered once per step (FSDP2 without gradient sync;
      the pipeline schedule does the same): one more copy of the stage slice when a
      step has several micro-batches (always with PP) and FSDP shards (dp·cp > 1).
    - Pipeline 1F1B: the first stage holds activations of pp micro-batches in
      flight, i.e. of pp·(layers per stage) ≈ all layers, for one micro-batch each
      (the paper's interleaved schedule adds a little more; not counted).
    - Context parallel splits each sequence's tokens cp ways; FSDP shards over dp·cp.
    - Step time = FLOPs per step / (gpus · MFU · peak); FLOPs per token from
      model.flops_per_token (6N + attention, PaLM appendix B).
    Everything in bytes; the dict is what tests and the table printer read."""
    args = ModelArgs.from_name(model)
    if gpus % (tp * pp * cp):
        raise ValueError(f"{gpus} GPUs are not divisible by tp·pp·cp = {tp * pp * cp}")
    dp = gpus // (tp * pp * cp)
    peak = peak_flops or GPU_PEAK_BF16[gpu]
    if mfu is None:  # Table 4's MFU for this layout when there is one, else 40%
        match = [r for r in TABLE4 if (r["gpus"], r["tp"], r["cp"], r["pp"]) == (gpus, tp, cp, pp)]
        mfu = match[0]["mfu"] if match else 0.40
    n_total = count_params(args)
    per_stage = stage_params(args, pp, tp)
    p_gpu = max(per_stage)  # the fullest stage: the one that must fit
    layers_max = max(_stage_layout(args, pp))
    # this rank's FSDP shard of it: CP ranks hold the same weights, so parallel.py
    # shards over dp x cp together (as torchtitan does)
    sharded = math.ceil(p_gpu / (dp * cp))

    matrices, norms = _layer_params(args)
    block_params = matrices // tp + norms
    if reshard_after_forward:  # ZeRO-3: the block being computed + the one prefetched,
        # plus the root group (embeddings/output/norm), which is never resharded
        weights_bf16 = compute_bytes * (2 * block_params + (p_gpu - layers_max * block_params))
    else:  # the paper: the whole stage slice stays gathered during the step
        weights_bf16 = compute_bytes * p_gpu
    master_fp32 = 4 * sharded
    grads_fp32 = 4 * sharded
    optimizer = 8 * sharded  # Adam m and v in fp32
    seqs_per_step = global_batch_tokens // seq_len
    accumulating = (pp > 1 or seqs_per_step / dp / micro_batch > 1) and dp * cp > 1
    grads_accumulated = compute_bytes * p_gpu if accumulating else 0

    tokens_micro = micro_batch * seq_len // cp  # tokens of one micro-batch on this rank
    in_flight_layers = layers_max * pp  # 1F1B: pp micro-batches on the first stage
    per_layer_full = activation_bytes_per_token_per_layer(args, tp, False) * tokens_micro * compute_bytes / 2
    per_layer_ckpt = activation_bytes_per_token_per_layer(args, tp, True) * tokens_micro * compute_bytes / 2
    act_full = per_layer_full * in_flight_layers
    # With checkpointing: the inputs of every layer in flight, plus one layer being
    # recomputed at full size.
    act_ckpt = per_layer_ckpt * in_flight_layers + per_layer_full
    logits = 4 * tokens_micro * args.vocab_size // tp  # fp32 logits on the last stage
    static = weights_bf16 + master_fp32 + grads_fp32 + optimizer  # (+ grads_accumulated while a step runs)

    tokens_per_step = seqs_per_step * seq_len
    flops_token = flops_per_token(args, seq_len)
    step_flops = flops_token * tokens_per_step
    step_time = step_flops / (gpus * mfu * peak)
    return dict(
        model=model, gpus=gpus, tp=tp, pp=pp, cp=cp, dp=dp, seq_len=seq_len, micro_batch=micro_batch,
        reshard_after_forward=reshard_after_forward,
        params_total=n_total, params_per_stage=per_stage, params_per_gpu=p_gpu,
        params_per_gpu_sharded=sharded, layers_per_stage=layers_max,
        weights_bf16_bytes=weights_bf16, master_fp32_bytes=master_fp32, grads_fp32_bytes=grads_fp32,
        optimizer_bytes=optimizer, grads_accumulated_bytes=grads_accumulated, static_bytes=static,
        optimizer_bytes_total=8 * n_total, master_bytes_total=4 * n_total,
        activation_bytes_per_layer=per_layer_full, activation_bytes_per_layer_ckpt=per_layer_ckpt,
        activation_bytes=act_full, activation_bytes_ckpt=act_ckpt, logits_bytes=logits,
        total_bytes=static + grads_accumulated + act_full + logits,
        total_bytes_ckpt=static + grads_accumulated + act_ckpt + logits,
        sequences_per_step=seqs_per_step, sequences_per_dp_rank=seqs_per_step / dp,
        microbatches_per_dp_rank=seqs_per_step / dp / micro_batch,
        tokens_per_step=tokens_per_step, flops_per_token=flops_token, step_flops=step_flops,
        mfu=mfu, peak_flops=peak, tflops_per_gpu=mfu * peak / 1e12, step_time_s=step_time,
        tokens_per_s=tokens_per_step / step_time,
        train_days=total_tokens / (tokens_per_step / step_time) / 86400, total_tokens=total_tokens,
        train_flops=flops_token * total_tokens,
    )


def format_plan(p: dict, gpu_memory_gib: float = 80.0) -> str:
    """A readable table of plan()'s numbers."""
    def row(label, n_bytes, note=""):
        return f"  {label:<48}{n_bytes / 2**30:9.2f} GiB{note}"

    kept = "resharded after forward" if p["reshard_after_forward"] else "kept after forward"
    lines = [
        f"{p['model']}: {p['params_total']:,} parameters on {p['gpus']:,} GPUs = "
        f"TP {p['tp']} x CP {p['cp']} x PP {p['pp']} x DP {p['dp']}",
        f"  fullest pipeline stage: {p['layers_per_stage']} layers, {p['params_per_gpu']:,} parameters "
        f"per GPU after TP, {p['params_per_gpu_sharded']:,} after FSDP over DP {p['dp']} x CP {p['cp']}",
        "",
        "  per-GPU memory",
        row(f"bf16 weights ({kept})", p["weights_bf16_bytes"]),
        row("fp32 master weights (FSDP-sharded)", p["master_fp32_bytes"]),
        row("fp32 gradients (FSDP-sharded)", p["grads_fp32_bytes"]),
        row("Adam m + v, fp32 (FSDP-sharded)", p["optimizer_bytes"]),
        row("gradients accumulated over micro-batches", p["grads_accumulated_bytes"]),
        row("activations, no checkpointing", p["activation_bytes"],
            f"  ({p['activation_bytes_per_layer'] / 2**30:.2f} GiB/layer x "
            f"{p['layers_per_stage'] * p['pp']} layer-micro-batches in flight)"),
        row("activations, full checkpointing", p["activation_bytes_ckpt"]),
        row("fp32 logits of one micro-batch (last stage)", p["logits_bytes"]),
        row("total, no checkpointing", p["total_bytes"], f"  (an H100 has {gpu_memory_gib:.0f} GiB)"),
        row("total, full checkpointing", p["total_bytes_ckpt"]),
        "  (not counted: communication buffers, allocator fragmentation, the CUDA context -- a few GiB)",
        "",
        f"  step: {p['tokens_per_step']:,} tokens = {p['sequences_per_step']:,} sequences of {p['seq_len']:,} "
        f"({p['sequences_per_dp_rank']:g} per DP rank, {p['microbatches_per_dp_rank']:g} micro-batches of {p['micro_batch']})",
        f"  {p['flops_per_token'] / 1e12:.3f} TFLOP per token (6N + attention) -> {p['step_flops']:.3e} FLOP per step",
        f"  at {p['mfu']:.0%} MFU of {p['peak_flops'] / 1e12:.0f} TFLOP/s = {p['tflops_per_gpu']:.0f} TFLOP/s per GPU: "
        f"{p['step_time_s']:.2f} s per step, {p['tokens_per_s'] / 1e6:.2f}M tokens/s",
        f"  {p['total_tokens'] / 1e12:.1f}T tokens -> {p['train_flops']:.2e} FLOP, {p['train_days']:.0f} days "
        f"of uninterrupted training at this rate (the paper's 3.8e25 is 6·N·D, no attention term)",
    ]
    return "\n".join(lines)


def table4_check(model: str = "llama3.1-405b", **kw) -> str:
    """Table 4's rows: the step time and throughput they imply."""
    rows = ["Table 4 (§3.3.2) check, 16M-token batches:",
            "   GPUs  TP  CP  PP   DP     seq  TFLOP/s  MFU(989)  s/step  seq/DP  mem(ckpt) GiB"]
    for r in TABLE4:
        p = plan(model, gpus=r["gpus"], tp=r["tp"], pp=r["pp"], cp=r["cp"], seq_len=r["seq_len"],
                 peak_flops=r["tflops"] * 1e12, mfu=1.0, **kw)
        rows.append(f"  {r['gpus']:>5} {r['tp']:>3} {r['cp']:>3} {r['pp']:>3} {p['dp']:>4} {r['seq_len']:>7} "
                    f"{r['tflops']:>8} {r['tflops'] * 1e12 / GPU_PEAK_BF16['h100']:>9.1%} "
                    f"{p['step_time_s']:>7.2f} {p['sequences_per_dp_rank']:>7g} {p['total_bytes_ckpt'] / 2**30:>10.1f}")
    rows.append("  (paper: 43%, 41%, 38% MFU; the percentages above use 989 TFLOP/s dense bf16 peak)")
    return "\n".join(rows)


# -----------------------------------------------------------------------------
# Command line: python plan.py --model llama3.1-405b --gpus 16384 --tp 8 --pp 16

@cli
def main(argv=None):
    p = argparse.ArgumentParser(description="Per-GPU memory and step time of a 4D-parallel Llama 3 "
                                "configuration, checked against Table 4 (runs without GPUs).")
    p.add_argument("--model", default="llama3.1-405b", help="a name from model.CONFIGS")
    p.add_argument("--gpus", type=int, default=16384)
    p.add_argument("--tp", type=int, default=8, help="tensor parallel (within a node)")
    p.add_argument("--pp", type=int, default=16, help="pipeline stages")
    p.add_argument("--cp", type=int, default=1, help="context parallel")
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--global-batch-tokens", type=int, default=16 * 2**20, help="tokens per step (16M, §3.4.1)")
    p.add_argument("--micro-batch", type=int, default=1, help="sequences per pipeline micro-batch")
    p.add_argument("--mfu", type=float, default=None, help="model FLOPs utilization (default: Table 4's, else 0.40)")
    p.add_argument("--gpu", default="h100", choices=sorted(GPU_PEAK_BF16))
    p.add_argument("--reshard-after-forward", action="store_true", help="ZeRO-3 instead of the paper's choice")
    p.add_argument("--json", action="store_true", help="print the raw numbers as JSON too")
    a = p.parse_args(argv)
    if a.model not in CONFIGS:
        raise UsageError(f"--model {a.model!r}: unknown; known: {', '.join(CONFIGS)}")
    for name in ("gpus", "tp", "pp", "cp", "seq_len", "global_batch_tokens", "micro_batch"):
        if getattr(a, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(a, name)}")
    try:
        result = plan(a.model, gpus=a.gpus, tp=a.tp, pp=a.pp, cp=a.cp, seq_len=a.seq_len,
                      global_batch_tokens=a.global_batch_tokens, micro_batch=a.micro_batch, mfu=a.mfu,
                      gpu=a.gpu, reshard_after_forward=a.reshard_after_forward)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(format_plan(result))
    print()
    print(table4_check(a.model, micro_batch=a.micro_batch))
    if a.json:
        print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
