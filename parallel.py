"""
parallel.py -- 4D parallelism: FSDP, tensor, context and pipeline parallel (§3.3.2 of
"The Llama 3 Herd of Models").

Stage: pre-training infrastructure. Llama 3 405B was trained on up to 16K H100 GPUs with
"4D parallelism" (§3.3.2, Figure 5): tensor parallel (TP), context parallel (CP),
pipeline parallel (PP) and fully sharded data parallel (FSDP), in that order from the
innermost mesh dimension (the fastest links) to the outermost:

  1. Dist / setup      -- process groups from torchrun's environment (gloo on CPU, NCCL
                          on CUDA) and the 4-D device mesh ("dp", "pp", "cp", "tp").
  2. build_model       -- build on the meta device, parallelize (TP -> CP -> activation
                          checkpointing -> compile -> FSDP2, see parallelize), then
                          materialize and initialize: a 405B model never exists whole
                          on one rank. With PP, one such model per pipeline stage.
  3. Tensor parallel   -- the Megatron plan with sequence-parallel norms; FSDP2.
  4. Context parallel  -- every row split over the CP ranks, load-balanced; keys and
                          values all-gathered, so the document mask still works.
  5. Pipeline parallel -- the layers split into stages (torch.distributed.pipelining:
                          1F1B, interleaved, ...), and the same split for decoding.
  6. clip_grad_norm_   -- one global gradient norm over sharded (DTensor) gradients,
                          plain ones, and the stages of a pipeline.

Checkpoints of sharded models (save_checkpoint, load_checkpoint, export_model) are in
checkpoint.py: parameter names are the same in every layout, so a run saved with one
layout resumes on another. The memory / step-time arithmetic of a layout is plan.py.

Reads:  torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT). Writes: nothing.
Run:    imported by pretrain.py (every dimension), sft.py / reward.py / dpo.py (FSDP and
        TP) and sample.py (TP and PP), launched e.g. as
        torchrun --standalone --nproc_per_node 8 pretrain.py --tp 2 --cp 2 --pp 2  (CPU: gloo)
Tests:  tests/test_parallel.py (CPU ranks on gloo: every layout's losses equal one
        process's, meta init = direct init, checkpoints resumed across layouts).
Next:   checkpoint.py (saving and resuming these models), pretrain.py (the loop).
"""

from __future__ import annotations

import functools
import os
import warnings
from dataclasses import dataclass, replace
from typing import Iterable, Optional

import torch
import torch.distributed as torch_dist
import torch.nn as nn
import torch.nn.functional as F

from common import parse_dtype
from model import ModelArgs, Transformer, positions_from_doc_ids

# -----------------------------------------------------------------------------
# 1. Process groups and the device mesh


@dataclass
class Dist:
    """Where this process stands. With world_size 1 there is no process group and
    mesh is None, and every function below falls back to plain single-process code.
    world_size = dp_size · pp_size · cp_size · tp_size."""
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: Optional[str]  # "gloo" | "nccl" | None (single process)
    dp_size: int  # data-parallel (FSDP) ranks: each sees a different slice of the batch
    tp_size: int  # tensor-parallel ranks: each holds a slice of every matrix
    mesh: object = None  # DeviceMesh of shape (dp, pp, cp, tp), names ("dp", "pp", "cp", "tp")
    cp_size: int = 1  # context-parallel ranks: each holds 1/cp of every sequence
    pp_size: int = 1  # pipeline stages (ranks): each holds a contiguous slice of the layers
    fsdp_mesh: object = None  # what FSDP shards over: "dp", or "dp" x "cp" flattened

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # Rank r sits at mesh position (dp, pp, cp, tp) with r = ((dp·PP + pp)·CP + cp)·TP + tp.
    @property
    def cp_rank(self) -> int:
        return self.rank // self.tp_size % self.cp_size

    @property
    def pp_rank(self) -> int:
        return self.rank // (self.tp_size * self.cp_size) % self.pp_size

    @property
    def dp_rank(self) -> int:
        """Which slice of the global batch this rank reads: the TP, CP and PP ranks of
        one model replica read the same rows (TP and PP compute them together, CP
        splits each row)."""
        return self.rank // (self.tp_size * self.cp_size * self.pp_size)

    def group(self, name: str):
        """The process group of one mesh dimension ("pp", "cp", ...), None without a mesh."""
        return None if self.mesh is None else self.mesh.get_group(name)


def _distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def setup_distributed(tp: int = 1, device: Optional[str] = None, *, cp: int = 1, pp: int = 1) -> Dist:
    """Read torchrun's environment and set up the process group and the 4-D mesh.

    The mesh is (dp, pp, cp, tp) with tp innermost: §3.3.2 orders the dimensions
    [TP, CP, PP, DP] from innermost to outermost because TP communicates in every
    layer (it needs NVLink: one node), CP all-gathers keys and values in every layer,
    PP sends one activation per micro-batch between stages, and FSDP gathers weights
    once per block and can overlap that with compute -- so the chattiest dimension
    gets the neighbouring ranks. dp = world_size / (tp·cp·pp).
    Without torchrun (no WORLD_SIZE, or 1) this returns a 1-process Dist."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    layout = tp * cp * pp
    if min(tp, cp, pp) < 1:
        raise ValueError(f"parallel degrees must be >= 1 (tp {tp}, cp {cp}, pp {pp})")
    if world_size == 1:
        if layout != 1:
            raise ValueError(f"tp {tp} x cp {cp} x pp {pp} needs {layout} processes; run under torchrun")
        return Dist(0, 0, 1, device, None, 1, 1, None)
    if world_size % layout:
        raise ValueError(f"world size {world_size} is not divisible by tp {tp} x cp {cp} x pp {pp} = {layout}")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not _distributed():  # re-callable: a second call only builds a new mesh
        torch_dist.init_process_group(backend=backend)
    from torch.distributed.device_mesh import init_device_mesh
    dp = world_size // layout
    mesh = init_device_mesh(device.type, (dp, pp, cp, tp), mesh_dim_names=("dp", "pp", "cp", "tp"))
    # CP ranks hold the same weights (different tokens): for the weights they are data
    # parallel, so FSDP shards over dp x cp together and averages their gradients.
    fsdp_mesh = mesh["dp"] if cp == 1 else mesh["dp", "cp"]._flatten("dp_cp")
    return Dist(rank, local_rank, world_size, device, backend, dp, tp, mesh, cp, pp, fsdp_mesh)


def teardown_distributed():
    if _distributed():  # leave together: a rank that exits while another still talks to
        torch_dist.barrier()  # it (gloo threads alive) aborts, "terminate called without ..."
        torch_dist.destroy_process_group()


def barrier():
    if _distributed():
        torch_dist.barrier()


# -----------------------------------------------------------------------------
# 2. Building a parallel model: meta device -> parallelize -> materialize -> init


def copy_full_into(param: torch.Tensor, full: torch.Tensor):
    """Copy a full (unsharded) tensor into a parameter that may be a DTensor shard
    (FSDP / tensor parallel): each rank keeps only its own slice. model.py's
    init_weights calls it, so a model initializes the same way in every layout."""
    from torch.distributed.tensor import DTensor, distribute_tensor
    if isinstance(param, DTensor):
        local = distribute_tensor(full.to(param.device), param.device_mesh, param.placements)
        param.to_local().copy_(local.to_local())
    else:
        param.copy_(full.to(param.dtype))


def build_model(args: ModelArgs, dist: Dist, *, seed: int = 0, param_dtype="fp32",
                activation_checkpointing: bool = False, compile: bool = False,
                reshard_after_forward: bool = False, pp_schedule: str = "1F1B",
                pp_microbatches: int = 0, pp_stages_per_rank: int = 0) -> Transformer:
    """A Transformer ready to train on this rank: sharded if there is a mesh, plain
    otherwise. The three steps, and why in this order:

      1. Build on the meta device: shapes only, no memory. A 405B model in fp32 is
         1.6 TB; no rank could hold it, so it must never exist whole.
      2. parallelize(): TP turns parameters into DTensor slices, FSDP shards them
         further over "dp" (x "cp"). Still on meta: only the layout is decided.
      3. to_empty(device) allocates just this rank's shards (garbage values); then
         init_weights(seed) fills them. model.init_weights draws each parameter from
         its own generator seeded by (seed, name) and keeps this rank's slice
         (distribute_tensor), so every layout gets the same weights as a
         single-process init; it also recomputes the RoPE buffer freqs_cis, which
         to_empty left as garbage (Transformer._apply recomputes it too).

    With dist.pp_size > 1 each of this rank's pipeline stages is built that way
    (build_pipeline). Build the optimizer AFTER this returns: it must hold the shards."""
    kw = dict(param_dtype=param_dtype, activation_checkpointing=activation_checkpointing, compile=compile,
              reshard_after_forward=reshard_after_forward)
    if dist.pp_size > 1:
        return build_pipeline(args, dist, seed=seed, schedule=pp_schedule, n_microbatches=pp_microbatches,
                              stages_per_rank=pp_stages_per_rank, **kw)
    with torch.device("meta"):
        model = Transformer(args)  # its __init__ skips init_weights on meta tensors
    return _materialize(parallelize(model, dist, **kw), dist, seed)


def _materialize(model: Transformer, dist: Dist, seed: int) -> Transformer:
    model.to_empty(device=dist.device)
    _retie_embeddings(model)
    model.init_weights(seed)
    return model


def _retie_embeddings(model: Transformer):
    """Tied embeddings (Llama 3.2 1B/3B) share one Parameter between tok_embeddings
    and output. Module.to_empty() (meta -> a real device) makes a new Parameter per
    module and silently unties them; tie them again. (FSDP and TP keep the tie: they
    replace the shared parameter once.)"""
    if model.args.tie_embeddings and model.output.weight is not model.tok_embeddings.weight:
        model.output.weight = model.tok_embeddings.weight


def parallelize(model: Transformer, dist: Dist, *, param_dtype="fp32", activation_checkpointing: bool = False,
                compile: bool = False, reshard_after_forward: bool = False) -> Transformer:
    """Apply, in place and in this order (torchtitan's order, each step explained):

      1. Tensor parallel (+ sequence parallel norms). First, because it replaces the
         parameters by DTensor slices on the "tp" mesh and FSDP must then shard those
         slices (not the other way round) -- FSDP2 sees TP DTensors and builds 2-D
         (dp, tp) parameters.
      2. Context parallel: each attention all-gathers keys and values over "cp"
         (no parameters change; the batch is split by context_parallel_batch).
      3. Activation checkpointing per block: wraps the block's forward, so it must see
         the TP-ized block; the recomputation in backward re-runs TP's and CP's
         collectives.
      4. torch.compile per block: compiles the (checkpointed, TP) block's forward.
         Blocks are identical, so one compiled graph is reused N times; compiling the
         whole model would trace FSDP's hooks too.
      5. FSDP2 fully_shard per block, then at the root. Last, because its hooks must
         wrap everything above: all-gather a block's parameters before its forward
         (and before its backward, where checkpointing recomputes), reduce-scatter its
         gradients after. The root group holds tok_embeddings, norm and output -- with
         tied embeddings (Llama 3.2 1B/3B) the single shared matrix therefore lives in
         one group, as it must (a parameter can belong to only one FSDP group).

    Works on a meta-device model (build_model) and on a materialized one (post-training
    loads a checkpoint, then shards: FSDP and TP then slice the existing values).
    With dist.mesh None (one process) only steps 3 and 4 apply."""
    _retie_embeddings(model)  # a model loaded via to_empty may have lost its tie
    if dist.mesh is not None and dist.tp_size > 1:
        apply_tensor_parallel(model, dist.mesh["tp"])
    if dist.mesh is not None and dist.cp_size > 1:
        apply_context_parallel(model, dist.group("cp"))
    for block in model.layers.values():
        if activation_checkpointing:
            apply_activation_checkpointing(block)
        if compile:
            # Module.compile() compiles in place: parameter names do not change
            # (torch.compile(block) would add "_orig_mod." to every name).
            block.compile()
    if dist.mesh is not None:
        apply_fsdp(model, dist.fsdp_mesh, param_dtype=param_dtype, reshard_after_forward=reshard_after_forward)
    return model


# -----------------------------------------------------------------------------
# 3. Tensor parallel, activation checkpointing, FSDP2


def apply_tensor_parallel(model: Transformer, tp_mesh, *, sequence_parallel: bool = True):
    """Megatron-style tensor parallel, with sequence parallel norms (training, as
    torchtitan's llama plan) or without (inference, gpt-fast's tp.py). Shapes below
    are per TP rank (t = TP size, T = sequence length).

    Between blocks the residual stream h is split along the sequence: (B, T/t, dim).
    In each block:
      attention_norm   SequenceParallel: normalizes its T/t tokens (norm weights are
                       replicated) -> DTensor Shard(1)
      attention input  PrepareModuleInput: all-gather the sequence -> Replicate
                       (B, T, dim); RoPE then indexes the full-length freqs_cis
      wq, wk, wv       ColwiseParallel: each rank computes n_heads/t query heads and
                       n_kv_heads/t KV heads -> (B, T, (n_heads/t)·hd); Attention
                       reads the local head counts from this width (and so does
                       sample.setup_caches: the KV cache is split the same way)
      wo               RowwiseParallel -> partial sums, reduce-scattered along the
                       sequence -> (B, T/t, dim)
      feed_forward     same pattern: ffn_norm SP, gather, w1/w3 colwise
                       (B, T, hidden/t), w2 rowwise -> (B, T/t, dim)
    Outside the blocks: the embedding is split over the vocabulary (RowwiseParallel)
    and leaves its output sequence-split; the final norm is SP; output is colwise
    over the vocabulary, gathered back to full logits (B, T, vocab) on every rank.
    (A pipeline stage has only the parts it holds; the others are None.)

    sequence_parallel=False (decoding: one new token cannot be split over t ranks):
    the residual stream stays whole (replicated) on every rank, norms are replicated,
    and wo / w2 all-reduce their partial sums instead of reduce-scattering them.

    GQA limit: the KV heads are split too, so n_kv_heads (8 in every Llama 3) must be
    divisible by t -- which is why the paper's TP is 8, one node of 8 GPUs."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput, RowwiseParallel,
                                                   SequenceParallel, parallelize_module)
    t = tp_mesh.size()
    args = model.args
    if args.n_kv_heads % t or args.n_heads % t:
        raise ValueError(f"tensor parallel {t} needs n_heads ({args.n_heads}) and n_kv_heads "
                         f"({args.n_kv_heads}) divisible by it")
    if args.ffn_hidden_dim % t or args.vocab_size % t:
        raise ValueError(f"tensor parallel {t} needs ffn_hidden_dim ({args.ffn_hidden_dim}) and "
                         f"vocab_size ({args.vocab_size}) divisible by it")
    stream = Shard(1) if sequence_parallel else Replicate()  # the residual stream between blocks
    tied = args.tie_embeddings
    if tied:  # untie for the plan, re-tie below (both end up sharded over the vocabulary)
        model.output.weight = nn.Parameter(torch.empty_like(model.output.weight))
    plan = {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=stream),
        "output": ColwiseParallel(input_layouts=stream, output_layouts=Replicate()),
    }
    if sequence_parallel:
        plan["norm"] = SequenceParallel()
    parallelize_module(model, tp_mesh, {k: v for k, v in plan.items() if getattr(model, k) is not None})
    if tied:
        # Embedding rowwise and Linear colwise both shard the (vocab, dim) matrix on
        # dim 0, so one DTensor serves both.
        model.output.weight = model.tok_embeddings.weight
    for block in model.layers.values():  # a fresh plan per block: styles are not shared
        block_plan = {
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=stream),
            "feed_forward.w1": ColwiseParallel(),
            "feed_forward.w2": RowwiseParallel(output_layouts=stream),
            "feed_forward.w3": ColwiseParallel(),
        }
        if sequence_parallel:
            block_plan.update({
                "attention_norm": SequenceParallel(),
                # Attention.forward(x, freqs_cis, mask, slots, doc_ids): only x is sharded.
                "attention": PrepareModuleInput(input_layouts=(Shard(1), None, None, None, None),
                                                desired_input_layouts=(Replicate(), None, None, None, None)),
                "ffn_norm": SequenceParallel(),
                "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            })
        parallelize_module(block, tp_mesh, block_plan)
    return model


def shard_for_inference(model: Transformer, pp: int = 1):
    """With WORLD_SIZE > 1 (torchrun), for a model too large for one device (sample.py):
    pp pipeline stages (§6.1 serves 405B pipelined across two nodes), each tensor
    parallel over the other WORLD_SIZE / pp ranks, without sequence parallel. Returns
    (model, dist). Every rank ends with the same full logits: with one seed, every rank
    samples the same token."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if pp < 1 or world_size % pp:
        raise ValueError(f"--pp {pp} needs a multiple of {pp} processes (torchrun), got {world_size}")
    dist = setup_distributed(tp=world_size // pp, pp=pp)
    if pp > 1:
        model = pipeline_for_inference(model, dist)
    model = model.to(dist.device)
    if dist.tp_size > 1:
        apply_tensor_parallel(model, dist.mesh["tp"], sequence_parallel=False)
    if pp > 1:
        _connect_stages(model, dist)
    return model, dist


def input_from_rank0(prompt: str) -> str:
    """input() on rank 0, broadcast to every rank: under tensor parallelism all ranks
    must decode the same dialog (sample.py --chat under torchrun). EOFError on every
    rank when rank 0's input ends."""
    line = [None]
    if torch_dist.get_rank() == 0:
        try:
            line[0] = input(prompt)
        except EOFError:
            pass  # None tells every rank that the input has ended
    torch_dist.broadcast_object_list(line, src=0)
    if line[0] is None:
        raise EOFError
    return line[0]


def apply_activation_checkpointing(block: nn.Module):
    """Full activation checkpointing of one block: keep only its input, recompute the
    rest in backward (~1/3 more compute, activations from ~38·dim to 2·dim bytes per
    token per layer; see plan()). We wrap the forward method instead of the module
    (checkpoint_wrapper would insert "_checkpoint_wrapped_module." into every
    parameter name, which changes checkpoints and model.init_weights' per-name seeds)."""
    from torch.utils.checkpoint import checkpoint
    forward = block.forward

    def forward_with_recompute(*args, **kwargs):
        # No dropout or other randomness in a block: no RNG state to preserve.
        return checkpoint(forward, *args, use_reentrant=False, preserve_rng_state=False, **kwargs)

    block.forward = forward_with_recompute
    return block


def apply_fsdp(model: Transformer, dp_mesh, *, param_dtype="fp32", reshard_after_forward: bool = False):
    """FSDP2 (fully_shard): every parameter is a DTensor sharded on dim 0 over the
    data-parallel ranks (dist.fsdp_mesh: "dp", or "dp" x "cp" with context parallel);
    each rank keeps 1/dp of the weights, gradients and optimizer state (§3.3.2).

    MixedPrecisionPolicy: parameters all-gathered in param_dtype (bf16 for speed),
    gradients reduce-scattered in fp32 (summing 64+ bf16 gradients loses bits); the
    sharded master weights and Adam state stay fp32.

    reshard_after_forward (--reshard-after-forward): False keeps each block's gathered
    weights from its forward to its backward, as the paper does (§3.3.2: "we do not
    reshard after forward computation to avoid an extra all-gather") -- affordable
    there, where with PP 16 and TP 8 a rank holds 1/128 of the model, and with pipeline
    micro-batches True would gather every block again for every micro-batch. True
    frees them after the forward and gathers again in backward (ZeRO-3): the least
    memory, for a model that does not fit otherwise. The root is never resharded: its
    parameters (embeddings, output) are needed again at once by the backward.

    With dp_size 1 (pure TP or PP) this still runs, on a 1-rank mesh: nothing is
    sharded, but the mixed-precision policy and the DTensor bookkeeping stay the same."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    # FSDP2 warns that the root returns a view (Transformer.forward's `.float()` of
    # fp32 logits is the logits themselves). Harmless unless a caller modifies the
    # logits in place, which no training loss here does.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    mp = MixedPrecisionPolicy(param_dtype=parse_dtype(param_dtype), reduce_dtype=torch.float32)
    for block in model.layers.values():
        fully_shard(block, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=dp_mesh, mp_policy=mp, reshard_after_forward=False)
    return model


# -----------------------------------------------------------------------------
# 4. Context parallel (§3.3.2): each rank holds part of every sequence


def context_parallel_indices(seq_len: int, cp: int, cp_rank: int) -> torch.Tensor:
    """The positions of a row that CP rank i holds: the row is cut into 2·cp chunks
    and rank i takes chunks i and 2·cp-1-i (§3.3.2). Under a causal mask a query
    attends to more keys the later it sits; pairing an early chunk with a late one
    gives every rank the same amount of attention work.
    seq_len 8, cp 2: rank 0 -> [0 1 6 7], rank 1 -> [2 3 4 5]."""
    c = seq_len // (2 * cp)
    first, second = cp_rank * c, (2 * cp - 1 - cp_rank) * c
    return torch.cat([torch.arange(first, first + c), torch.arange(second, second + c)])


def context_parallel_batch(batch: dict, dist) -> dict:
    """This rank's share of a packed batch (loader.make_batch: inputs, targets,
    doc_ids (B, T)) under context parallelism; the batch itself when cp_size is 1.
    Every rank reads the whole rows (token ids: small) and keeps its T/cp positions;
    what the model needs comes from the whole row, so only keys and values travel:
      inputs, targets (B, T/cp)  this rank's tokens
      positions (B, T/cp)        RoPE positions from the WHOLE row's doc_ids: they
                                 restart at every document (§3.2), wherever it began
      attn_mask (B, T/cp, T)     causal + same-document, local queries against all T
                                 keys in the all-gather's order (rank 0's chunks,
                                 rank 1's, ...): key j is visible to query i iff its
                                 global position is <= i's and it is in i's document.
                                 Why the paper all-gathers K and V instead of passing
                                 them round a ring: any mask works.
      loss_scale                 cp / (targets of the whole rows): lm_loss sums the
                                 local token losses times this, so the mean over the
                                 CP ranks (FSDP averages gradients over dp x cp) is
                                 the whole rows' mean, however the ignored targets fall.
      seq_len                    T, for the MFU's attention FLOPs.
    The dense mask is O(T²/cp) memory: fine at 8K tokens; the 128K stage wants
    FlexAttention's block mask here, which this file does not build yet."""
    cp = getattr(dist, "cp_size", 1)
    if cp == 1:
        return batch
    inputs, targets, doc_ids = batch["inputs"], batch["targets"], batch["doc_ids"]
    T = inputs.shape[1]
    if T % (2 * cp):
        raise ValueError(f"context parallel {cp} needs a sequence length divisible by 2·cp = {2 * cp}, got {T}")
    mine = context_parallel_indices(T, cp, dist.cp_rank).to(inputs.device)  # (T/cp,)
    keys = torch.cat([context_parallel_indices(T, cp, r) for r in range(cp)]).to(inputs.device)  # (T,)
    same_doc = doc_ids[:, mine, None] == doc_ids[:, None, keys]  # (B, T/cp, T)
    causal = keys[None, :] <= mine[:, None]  # (T/cp, T)
    return {"inputs": inputs[:, mine], "targets": targets[:, mine],
            "positions": positions_from_doc_ids(doc_ids)[:, mine], "attn_mask": same_doc & causal[None],
            "loss_scale": cp / (targets != -100).sum(), "seq_len": T}


class _AllGatherSequence(torch.autograd.Function):
    """(B, H, T/cp, hd) on each CP rank -> (B, H, T, hd): every rank's chunk, in rank
    order, along the sequence (dim 2). Backward: the gradient of the gathered tensor
    on rank r holds what r's queries contributed to EVERY rank's keys; each rank's
    key gradient is the sum of those over all ranks (a reduce-scatter)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        parts = [torch.empty_like(x) for _ in range(torch_dist.get_world_size(group))]
        torch_dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=2)

    @staticmethod
    def backward(ctx, grad):
        n, r = torch_dist.get_world_size(ctx.group), torch_dist.get_rank(ctx.group)
        chunks = torch.stack(grad.chunk(n, dim=2))  # (cp, B, H, T/cp, hd): per rank's keys
        if torch_dist.get_backend(ctx.group) == "nccl":
            out = torch.empty_like(chunks[0])
            torch_dist.reduce_scatter_tensor(out, chunks, group=ctx.group)
            return out, None
        torch_dist.all_reduce(chunks, group=ctx.group)  # gloo has no reduce-scatter
        return chunks[r], None


def _gather_kv(k: torch.Tensor, v: torch.Tensor, group):
    """Attention.gather_kv under CP: k, v (B, n_kv, T/cp, hd) -> (B, n_kv, T, hd), one
    all-gather for both. With GQA only n_kv_heads (8) heads travel, not n_heads."""
    kv = _AllGatherSequence.apply(torch.cat([k, v], dim=1), group)
    return kv.chunk(2, dim=1)


def apply_context_parallel(model: Transformer, cp_group):
    """Make every attention all-gather its keys and values over the CP ranks; each
    rank then computes attention for its own queries only. Called by parallelize."""
    for block in model.layers.values():
        block.attention.gather_kv = functools.partial(_gather_kv, group=cp_group)
    return model


# -----------------------------------------------------------------------------
# 5. Pipeline parallel (§3.3.2): the layers split into stages


def pipeline_layers(n_layers: int, n_stages: int, balance: bool = True) -> list:
    """Layers per pipeline stage, in order. balance=True is §3.3.2's balancing: the
    first stage also runs the embedding and the last the output projection and the
    loss, so each counts one layer's worth of work there -- "we reduce one
    Transformer layer each from the first and the last stages". 405B, 126 layers on
    16 stages: [7, 8 x 14, 7]; with many stages the first and last may hold no layer
    at all, only the embedding or the output (the paper's interleaved layout).
    balance=False: an even split (decoding: no loss, one token's output matmul)."""
    if n_stages == 1:
        return [n_layers]
    extra_slots = 2 if balance else 0
    base, extra = divmod(n_layers + extra_slots, n_stages)
    counts = [base + (1 if (0 < s <= extra if balance else s < extra) else 0) for s in range(n_stages)]
    if balance:
        counts[0], counts[-1] = counts[0] - 1, counts[-1] - 1
    if min(counts[1:-1] or [1]) < 1 or min(counts) < (0 if balance else 1):
        raise ValueError(f"{n_layers} layers cannot fill {n_stages} pipeline stages")
    return counts


def _keep_stage(model: Transformer, layers: range, first: bool, last: bool) -> Transformer:
    """Delete what a stage does not hold. The ModuleDict keeps the layers' names
    ("layers.5...."), so parameter names -- and checkpoints -- are the whole model's."""
    model.layers = nn.ModuleDict({str(i): model.layers[str(i)] for i in layers})
    if not first:
        model.tok_embeddings = None
    if not last:
        model.norm = model.output = None
    return model


def build_pipeline(args: ModelArgs, dist: Dist, *, seed: int, schedule: str = "1F1B", n_microbatches: int = 0,
                   stages_per_rank: int = 0, **parallel_kw) -> Transformer:
    """This rank's part of a pipeline-parallel model (build_model with dist.pp_size > 1).
    The layers are split into pp_size·v stages (pipeline_layers); rank p of the "pp"
    group holds stages p, p + pp, p + 2·pp, ... (v > 1: the interleaved schedule,
    Narayanan et al. 2021, which the paper uses and tunes). Each stage is a
    Transformer that keeps only its layers (the first also tok_embeddings, the last
    norm and output), built on the meta device and parallelized over "tp", "cp" and
    "dp" x "cp" like a whole model, then initialized with the same per-name seeds.
    Returned: one Transformer holding this rank's stages' modules under the whole
    model's names -- what the optimizer, clip_grad_norm_, checkpoints and the export
    see -- with .pipeline, the Pipeline that runs the stages (pretrain.train calls
    pipeline.step instead of the forward and backward).
    Tied embeddings (Llama 3.2 1B/3B) are refused: the one matrix would live on the
    first and the last stage, and their gradients would have to be summed across
    stages every step (Megatron does this; we do not)."""
    from torch.distributed.pipelining.schedules import PipelineScheduleMulti, get_schedule_class
    if args.tie_embeddings:
        raise ValueError("pipeline parallel training needs untied embeddings (tied ones would live on the "
                         "first and the last stage); use another model or --pp 1")
    schedule_cls = get_schedule_class(schedule)
    multi = issubclass(schedule_cls, PipelineScheduleMulti)  # several stages per rank
    v = stages_per_rank or (2 if multi else 1)
    if v > 1 and not multi:
        raise ValueError(f"pipeline schedule {schedule} runs one stage per rank; {v} stages per rank "
                         f"need an interleaved one (Interleaved1F1B, InterleavedZeroBubble)")
    n_stages = dist.pp_size * v
    counts = pipeline_layers(args.n_layers, n_stages)
    starts = [sum(counts[:s]) for s in range(n_stages)]
    stage_ids = [dist.pp_rank + k * dist.pp_size for k in range(v)]
    stages = []
    for s in stage_ids:
        with torch.device("meta"):
            stage = _keep_stage(Transformer(args), range(starts[s], starts[s] + counts[s]),
                                first=s == 0, last=s == n_stages - 1)
        stages.append(_materialize(parallelize(stage, dist, **parallel_kw), dist, seed))
        if not stage.layers and stage.output is None and dist.tp_size > 1:
            # An embedding-only stage would send TP's reduce-scatter still in flight (an
            # async tensor nothing waits on): complete it first (clone waits).
            stage.register_forward_hook(lambda module, args, out: out.clone())
    with torch.device("meta"):
        part = Transformer(args)  # a shell: every module below is one of the stages'
    part.layers = nn.ModuleDict({k: layer for stage in stages for k, layer in stage.layers.items()})
    part.tok_embeddings, part.norm, part.output = stages[0].tok_embeddings, stages[-1].norm, stages[-1].output
    part.freqs_cis = stages[0].freqs_cis
    part.pipeline = Pipeline(stages, stage_ids, n_stages, dist, schedule_cls, n_microbatches or n_stages)
    return part


def model_inputs(batch: dict) -> dict:
    """The entries of a batch (make_batch's, context_parallel_batch's) that Transformer.forward takes."""
    return {k: batch[k] for k in ("doc_ids", "positions", "attn_mask") if k in batch}


class Pipeline:
    """Runs this rank's stages with a torch.distributed.pipelining schedule.
    step(batch, grad_scale) pushes one batch through all stages as n_microbatches
    micro-batches (the paper's N, --pp-microbatches): the first stage embeds them and
    sends activations on, the last computes the loss and starts the backward, and
    the schedule decides the order -- GPipe (all forwards, then all backwards), 1F1B
    (one forward, one backward: at most pp micro-batches' activations alive), or
    interleaved 1F1B (v stages per rank: a v times smaller bubble for v times more
    sends). The loss is summed per micro-batch and scaled here (scale_grads=False),
    so the gradients are exactly those of one process's mean loss over the batch.
    Returns that loss on every rank of the "pp" group (broadcast from the last stage).
    A schedule, with its stages, is built per batch shape (its first step infers the
    shapes of the activations sent between stages)."""

    def __init__(self, stages: list, stage_ids: list, n_stages: int, dist: Dist, schedule_cls, n_microbatches: int):
        self.stages, self.stage_ids, self.n_stages = stages, stage_ids, n_stages
        self.device, self.group = dist.device, dist.group("pp")
        self.schedule_cls, self.n_microbatches = schedule_cls, n_microbatches
        self.is_first, self.is_last = 0 in stage_ids, n_stages - 1 in stage_ids
        self.last_rank = torch_dist.get_global_rank(self.group, (n_stages - 1) % dist.pp_size)
        self._schedules: dict = {}
        self._scale = 1.0

    def _schedule(self, rows: int, seq_len: int, train: bool):
        from torch.distributed.pipelining import PipelineStage
        from torch.distributed.pipelining.schedules import PipelineScheduleMulti, ScheduleGPipe
        n = self.n_microbatches
        if rows % n:
            if train:
                raise ValueError(f"--pp-microbatches {n} must divide the rows of a micro-batch ({rows}; --batch-size)")
            n = 1  # an evaluation's last, shorter batch
        key = (rows, seq_len, train, n)
        if key not in self._schedules:
            multi = issubclass(self.schedule_cls, PipelineScheduleMulti)
            stages = [PipelineStage(m, s, self.n_stages, self.device, group=self.group)
                      for m, s in zip(self.stages, self.stage_ids)]
            cls = self.schedule_cls if train or multi else ScheduleGPipe  # 1F1B wants n >= stages
            self._schedules[key] = cls(stages if multi else stages[0], n, loss_fn=self._loss, scale_grads=False)
        return self._schedules[key]

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")
        return loss * self._scale

    def step(self, batch: dict, grad_scale: Optional[float] = None) -> torch.Tensor:
        """Forward and backward of one batch (loader.make_batch's, or
        context_parallel_batch's), the gradients scaled by grad_scale (train() passes
        1 / micro-batches per step); grad_scale None: forward only (evaluation).
        Returns the batch's mean next-token loss, on every rank."""
        inputs, targets = batch["inputs"], batch["targets"]
        train = grad_scale is not None
        schedule = self._schedule(inputs.shape[0], inputs.shape[1], train)
        scale = batch.get("loss_scale")
        self._scale = (1 / (targets != -100).sum() if scale is None else scale) * (grad_scale or 1.0)
        losses = [] if self.is_last else None
        args = (inputs,) if self.is_first else ()
        target = targets if self.is_last else None
        if train:
            schedule.step(*args, target=target, losses=losses, return_outputs=False, **model_inputs(batch))
        else:
            schedule.eval(*args, target=target, losses=losses, **model_inputs(batch))
        loss = (torch.stack(losses).sum().detach().float() / (grad_scale or 1.0) if self.is_last
                else torch.zeros((), device=self.device))
        torch_dist.broadcast(loss, src=self.last_rank, group=self.group)
        return loss


# Decoding through pipeline stages (sample.py --pp): §6.1 serves 405B in BF16 on two
# 8-GPU nodes, tensor parallel inside a node and pipeline parallel across the two. One
# batch needs no schedule: each stage waits for the previous one's hidden states. The
# stage boundaries are modules standing in for the parts a stage lacks, so
# sample.generate runs a stage unchanged: tok_embeddings receives, norm sends, output
# receives the last stage's logits (which every rank then samples from).


def pipeline_for_inference(model: Transformer, dist: Dist) -> Transformer:
    """Keep this rank's stage of a loaded model (an even split of the layers). A tied
    matrix (Llama 3.2 1B/3B) is simply kept by the first and the last stage."""
    counts = pipeline_layers(model.args.n_layers, dist.pp_size, balance=False)
    s, start = dist.pp_rank, sum(counts[:dist.pp_rank])
    model.args = replace(model.args, tie_embeddings=False)  # nothing trains: two copies are fine
    return _keep_stage(model, range(start, start + counts[s]), first=s == 0, last=s == dist.pp_size - 1)


class _ReceiveActivations(nn.Module):
    """In place of tok_embeddings on a later stage: token ids (B, T) -> the previous
    stage's hidden states for them (B, T, dim)."""

    def __init__(self, src: int, dim: int, dtype):
        super().__init__()
        self.src, self.dim, self.dtype = src, dim, dtype

    def forward(self, tokens):
        h = torch.empty(*tokens.shape, self.dim, dtype=self.dtype, device=tokens.device)
        torch_dist.recv(h, src=self.src)
        return h


class _SendActivations(nn.Module):
    """In place of norm on an earlier stage: send the hidden states on (decoding
    sends only the last position's, (N, dim), into the next stage's (N, 1, dim))."""

    def __init__(self, dst: int):
        super().__init__()
        self.dst = dst

    def forward(self, h):
        torch_dist.send(h.contiguous(), dst=self.dst)
        return h


class _BroadcastLogits(nn.Module):
    """output on every rank: the last stage computes the logits and broadcasts them
    over "pp"; the others (output None) receive them. (..., dim) -> (..., vocab)."""

    def __init__(self, output: Optional[nn.Module], src: int, group, vocab_size: int, dtype):
        super().__init__()
        self.output, self.src, self.group, self.vocab_size, self.dtype = output, src, group, vocab_size, dtype

    def forward(self, h):
        if self.output is not None:
            logits = self.output(h).contiguous()
        else:
            logits = torch.empty(*h.shape[:-1], self.vocab_size, dtype=self.dtype, device=h.device)
        torch_dist.broadcast(logits, src=self.src, group=self.group)
        return logits


def _connect_stages(model: Transformer, dist: Dist):
    group, s, n = dist.group("pp"), dist.pp_rank, dist.pp_size
    dtype = next(model.parameters()).dtype
    if s > 0:
        model.tok_embeddings = _ReceiveActivations(torch_dist.get_global_rank(group, s - 1), model.args.dim, dtype)
    if s < n - 1:
        model.norm = _SendActivations(torch_dist.get_global_rank(group, s + 1))
    model.output = _BroadcastLogits(model.output, torch_dist.get_global_rank(group, n - 1), group,
                                    model.args.vocab_size, dtype)


# -----------------------------------------------------------------------------
# 6. Gradient-norm clipping for sharded and plain gradients


@torch.no_grad()
def clip_grad_norm_(parameters: Iterable[torch.Tensor], max_norm: float, pp_group=None) -> torch.Tensor:
    """Scale all gradients so that their global L2 norm is at most max_norm; return
    the norm before clipping (a plain 0-dim fp32 tensor, the same on every rank).

    The global norm is sqrt(Σ g²) over every element of the full (unsharded) model.
    A DTensor gradient lives on a mesh; along each mesh dimension it is either
    Shard (each rank has different elements: the squares must be summed over that
    dimension), Replicate (every rank has the same elements: count them once, no
    sum) or Partial (each rank has a partial sum of the values: first reduce the
    values, then square). So: make Partial dims Replicate, sum local squares, and
    all-reduce over the Shard dims only -- grouped by (mesh, sharded dims) so that it
    is one all-reduce per group, not per parameter. Plain tensors (one process, or
    parameters outside FSDP) are summed locally. With pipeline parallelism each
    rank holds other layers: the sums are added up over pp_group too (a rank of
    another stage must not clip with the norm of its own layers alone).
    (torch.nn.utils.clip_grad_norm_ fails on a mix of DTensors on different meshes
    and plain tensors.)"""
    from torch.distributed.tensor import DTensor, Replicate
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:  # (every pipeline stage has parameters, so no rank skips the pp all-reduce)
        return torch.zeros(())
    device = grads[0].to_local().device if isinstance(grads[0], DTensor) else grads[0].device
    plain_sq = torch.zeros((), dtype=torch.float32, device=device)
    groups: dict = {}  # (mesh, sharded mesh dims) -> [mesh, dims, local Σg²]
    for g in grads:
        if not isinstance(g, DTensor):
            plain_sq += g.detach().float().pow(2).sum()
            continue
        if any(p.is_partial() for p in g.placements):
            g = g.redistribute(g.device_mesh, [Replicate() if p.is_partial() else p for p in g.placements])
        sharded_dims = tuple(i for i, p in enumerate(g.placements) if not p.is_replicate())
        key = (id(g.device_mesh), sharded_dims)
        entry = groups.setdefault(key, [g.device_mesh, sharded_dims, torch.zeros((), device=device)])
        entry[2] += g.to_local().float().pow(2).sum()
    total_sq = plain_sq
    for mesh, dims, local_sq in groups.values():
        for d in dims:  # sum over each sharded mesh dimension
            torch_dist.all_reduce(local_sq, group=mesh.get_group(d))
        total_sq = total_sq + local_sq
    if pp_group is not None:  # the stages' layers are disjoint: add their sums
        torch_dist.all_reduce(total_sq, group=pp_group)
    total_norm = total_sq.sqrt()
    clip_coef = (max_norm / (total_norm + 1e-6)).clamp(max=1.0)
    for g in grads:  # in place on each rank's own elements
        (g.to_local() if isinstance(g, DTensor) else g).mul_(clip_coef)
    return total_norm
