"""
parallel.py -- FSDP and tensor parallelism on one node (§3.3 of "The Llama 3 Herd of Models").

Stage: pre-training infrastructure. Llama 3 405B was trained on up to 16K H100 GPUs with
"4D parallelism" (§3.3.2): tensor parallel (TP), context parallel (CP), pipeline
parallel (PP) and fully sharded data parallel (FSDP). This file implements the two
that matter at the scale of one node -- FSDP and TP, on a 2-D device mesh ("dp", "tp"):

  1. Dist / setup      -- process groups from torchrun's environment (gloo on CPU, NCCL
                          on CUDA) and the ("dp", "tp") device mesh.
  2. build_model       -- build on the meta device, parallelize (TP -> activation
                          checkpointing -> compile -> FSDP2, in that order, see
                          parallelize), then materialize and initialize: a 405B model
                          never exists whole on one rank.
  3. clip_grad_norm_   -- a global gradient norm that is correct for sharded (DTensor)
                          and plain gradients mixed.

Checkpoints of sharded models (save_checkpoint, load_checkpoint, export_model) are in
checkpoint.py; the memory / step-time arithmetic for all four dimensions is plan.py.

Reads:  torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).
Writes: nothing.
Run:    imported by pretrain.py / sft.py / reward.py / dpo.py, launched e.g. as
        torchrun --standalone --nproc_per_node 2 pretrain.py --tp 2   (CPU: gloo)
Not here: pipeline and context parallelism (plan.py accounts for them; running
        them needs a multi-node cluster this project does not assume).
Tests:  tests/test_parallel.py (2 CPU ranks: FSDP and TP loss parity with one
        process, meta init = direct init, 2-rank checkpoint resumed on 1 rank).
Next:   checkpoint.py (saving and resuming these models), pretrain.py (the loop).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
import torch.distributed as torch_dist
import torch.nn as nn

from common import parse_dtype
from model import ModelArgs, Transformer

# -----------------------------------------------------------------------------
# 1. Process groups and the device mesh


@dataclass
class Dist:
    """Where this process stands. With world_size 1 there is no process group and
    mesh is None, and every function below falls back to plain single-process code."""
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: Optional[str]  # "gloo" | "nccl" | None (single process)
    dp_size: int  # data-parallel (FSDP) ranks: each sees a different slice of the batch
    tp_size: int  # tensor-parallel ranks: each holds a slice of every matrix
    mesh: object = None  # DeviceMesh of shape (dp_size, tp_size), names ("dp", "tp")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dp_rank(self) -> int:
        """Which slice of the global batch this rank reads (ranks of one TP group read
        the same data: they compute one model replica together)."""
        return self.rank // self.tp_size


def _distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def setup_distributed(tp: int = 1, device: Optional[str] = None) -> Dist:
    """Read torchrun's environment and set up the process group and the 2-D mesh.

    Rank r sits at mesh position (r // tp, r % tp): the TP ranks of one group are
    neighbours, so on a GPU cluster they share a node and its NVLink -- TP
    communicates in every layer, FSDP only once per block (§3.3.2 orders the
    dimensions [TP, CP, PP, DP] from innermost to outermost for the same reason).
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
    if world_size == 1:
        if tp != 1:
            raise ValueError(f"tensor parallel {tp} needs {tp} processes; run under torchrun")
        return Dist(0, 0, 1, device, None, 1, 1, None)
    if tp < 1 or world_size % tp:
        raise ValueError(f"world size {world_size} is not divisible by tensor-parallel size {tp}")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not _distributed():  # re-callable: a second call only builds a new mesh
        torch_dist.init_process_group(backend=backend)
    from torch.distributed.device_mesh import init_device_mesh
    mesh = init_device_mesh(device.type, (world_size // tp, tp), mesh_dim_names=("dp", "tp"))
    return Dist(rank, local_rank, world_size, device, backend, world_size // tp, tp, mesh)


def teardown_distributed():
    if _distributed():
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
                reshard_after_forward: bool = True) -> Transformer:
    """A Transformer ready to train on this rank: sharded if there is a mesh, plain
    otherwise. The three steps, and why in this order:

      1. Build on the meta device: shapes only, no memory. A 405B model in fp32 is
         1.6 TB; no rank could hold it, so it must never exist whole.
      2. parallelize(): TP turns parameters into DTensor slices, FSDP shards them
         further over "dp". Still on meta: only the layout is decided.
      3. to_empty(device) allocates just this rank's shards (garbage values); then
         init_weights(seed) fills them. model.init_weights draws each parameter from
         its own generator seeded by (seed, name) and keeps this rank's slice
         (distribute_tensor), so every layout gets the same weights as a
         single-process init; it also recomputes the RoPE buffer freqs_cis, which
         to_empty left as garbage (Transformer._apply recomputes it too).

    Build the optimizer AFTER this returns: it must hold the sharded parameters."""
    with torch.device("meta"):
        model = Transformer(args)  # its __init__ skips init_weights on meta tensors
    parallelize(model, dist, param_dtype=param_dtype, activation_checkpointing=activation_checkpointing,
                compile=compile, reshard_after_forward=reshard_after_forward)
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
                compile: bool = False, reshard_after_forward: bool = True) -> Transformer:
    """Apply, in place and in this order (torchtitan's order, each step explained):

      1. Tensor parallel (+ sequence parallel norms). First, because it replaces the
         parameters by DTensor slices on the "tp" mesh and FSDP must then shard those
         slices (not the other way round) -- FSDP2 sees TP DTensors and builds 2-D
         (dp, tp) parameters.
      2. Activation checkpointing per block: wraps the block's forward, so it must see
         the TP-ized block; the recomputation in backward re-runs TP's collectives.
      3. torch.compile per block: compiles the (checkpointed, TP) block's forward.
         Blocks are identical, so one compiled graph is reused N times; compiling the
         whole model would trace FSDP's hooks too.
      4. FSDP2 fully_shard per block, then at the root. Last, because its hooks must
         wrap everything above: all-gather a block's parameters before its forward
         (and before its backward, where checkpointing recomputes), reduce-scatter its
         gradients after. The root group holds tok_embeddings, norm and output -- with
         tied embeddings (Llama 3.2 1B/3B) the single shared matrix therefore lives in
         one group, as it must (a parameter can belong to only one FSDP group).

    Works on a meta-device model (build_model) and on a materialized one (post-training
    loads a checkpoint, then shards: FSDP and TP then slice the existing values).
    With dist.mesh None (one process) only steps 2 and 3 apply."""
    _retie_embeddings(model)  # a model loaded via to_empty may have lost its tie
    if dist.mesh is not None and dist.tp_size > 1:
        apply_tensor_parallel(model, dist.mesh["tp"])
    for block in model.layers.values():
        if activation_checkpointing:
            apply_activation_checkpointing(block)
        if compile:
            # Module.compile() compiles in place: parameter names do not change
            # (torch.compile(block) would add "_orig_mod." to every name).
            block.compile()
    if dist.mesh is not None:
        apply_fsdp(model, dist.mesh["dp"], param_dtype=param_dtype, reshard_after_forward=reshard_after_forward)
    return model


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
    parallelize_module(model, tp_mesh, plan)
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


def shard_for_inference(model: Transformer):
    """With WORLD_SIZE > 1 (torchrun): tensor parallel over all ranks without sequence
    parallel, for a model too large for one device (sample.py). Returns (model, dist).
    Every rank ends with the same full logits, so with one seed every rank samples the
    same token. (§6.2 serves 405B with pipeline parallelism across nodes; tensor
    parallel within a node is the usual single-node choice.)"""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    dist = setup_distributed(tp=world_size)
    model = model.to(dist.device)
    apply_tensor_parallel(model, dist.mesh["tp"], sequence_parallel=False)
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


def apply_fsdp(model: Transformer, dp_mesh, *, param_dtype="fp32", reshard_after_forward: bool = True):
    """FSDP2 (fully_shard): every parameter is a DTensor sharded on dim 0 over "dp";
    each rank keeps 1/dp of the weights, gradients and optimizer state (§3.3.2).

    MixedPrecisionPolicy: parameters all-gathered in param_dtype (bf16 for speed),
    gradients reduce-scattered in fp32 (summing 64+ bf16 gradients loses bits); the
    sharded master weights and Adam state stay fp32.

    reshard_after_forward: True frees each block's gathered weights after its forward
    and gathers again in backward (ZeRO-3, least memory). The paper (§3.3.2) keeps
    them ("we do not reshard after forward computation to avoid an extra all-gather")
    -- affordable there because with PP 16 and TP 8 a rank holds only 1/128 of the
    model; pass False to do the same. The root is never resharded: its parameters
    (embeddings, output) are needed again at once by the backward.

    With dp_size 1 (pure TP) this still runs, on a 1-rank mesh: nothing is sharded,
    but the mixed-precision policy and the DTensor bookkeeping stay the same."""
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
# 3. Gradient-norm clipping for sharded and plain gradients


@torch.no_grad()
def clip_grad_norm_(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
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
    parameters outside FSDP) are summed locally. (torch.nn.utils.clip_grad_norm_
    fails on a mix of DTensors on different meshes and plain tensors.)"""
    from torch.distributed.tensor import DTensor, Replicate
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
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
    total_norm = total_sq.sqrt()
    clip_coef = (max_norm / (total_norm + 1e-6)).clamp(max=1.0)
    for g in grads:  # in place on each rank's own elements
        (g.to_local() if isinstance(g, DTensor) else g).mul_(clip_coef)
    return total_norm
