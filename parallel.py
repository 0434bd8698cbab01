"""
parallel.py -- everything distributed, in one place (§3.3 of "The Llama 3 Herd of Models").

Stage: pre-training infrastructure. Llama 3 405B was trained on up to 16K H100 GPUs with
"4D parallelism" (§3.3.2): tensor parallel (TP), context parallel (CP), pipeline
parallel (PP) and fully sharded data parallel (FSDP). This file implements the two
that matter at the scale of one node -- FSDP and TP, on a 2-D device mesh ("dp", "tp")
-- plus everything a long run needs around them, and a planner that does the
arithmetic for all four at the paper's scale:

  1. Dist / setup      -- process groups from torchrun's environment (gloo on CPU, NCCL
                          on CUDA) and the ("dp", "tp") device mesh.
  2. build_model       -- build on the meta device, parallelize (TP -> activation
                          checkpointing -> compile -> FSDP2, in that order, see
                          parallelize), then materialize and initialize: a 405B model
                          never exists whole on one rank.
  3. clip_grad_norm_   -- a global gradient norm that is correct for sharded (DTensor)
                          and plain gradients mixed.
  4. Checkpoints       -- torch.distributed.checkpoint (DCP): model, optimizer, step,
                          scheduler/data positions ("extra"), per-rank RNG states;
                          atomic (temp dir + rename), resumable on a different number
                          of ranks, the latest N kept; export to a single file.
  5. Planner           -- per-GPU memory and step time for a configuration, checked
                          against Table 4 (runs without GPUs).

Reads:  torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT);
        checkpoints written by save_checkpoint.
Writes: CKPT_ROOT/step_XXXXXXXX/ (DCP: .metadata, *.distcp, model_args.json,
        state.json, rng/rank_XXXXX.pt) and, via export_model, DIR/model.pt.
Run:    imported by pretrain.py / sft.py / reward.py / dpo.py, launched e.g. as
        torchrun --standalone --nproc_per_node 2 pretrain.py --tp 2   (CPU: gloo)
        and  python parallel.py plan --model llama3.1-405b --gpus 16384 --tp 8 --pp 16
Not here: pipeline and context parallelism (the planner accounts for them; running
        them needs a multi-node cluster this project does not assume).
Tests:  tests/test_parallel.py (2 CPU ranks: FSDP and TP loss parity with one
        process, meta init = direct init, 2-rank checkpoint resumed on 1 rank).
Next:   pretrain.py (the training loop that uses these pieces).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import uuid
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Iterable, Optional

import torch
import torch.distributed as torch_dist
import torch.nn as nn

import model as model_lib
from model import ModelArgs, Transformer, count_params, flops_per_token

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


def print0(*args, **kwargs):
    """print on rank 0 only (keeps `if rank == 0` out of the logic)."""
    rank = torch_dist.get_rank() if _distributed() else int(os.environ.get("RANK", "0"))
    if rank == 0:
        print(*args, **kwargs)


def barrier():
    if _distributed():
        torch_dist.barrier()


def _dtype(name) -> torch.dtype:
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16}
    if isinstance(name, torch.dtype):
        return name
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}; use 'fp32' or 'bf16'")
    return table[name]


def amp_context(dist: Dist, param_dtype="fp32"):
    """The autocast context a training step should run under. With FSDP, bf16 compute
    comes from its MixedPrecisionPolicy (parameters all-gathered in bf16, gradients
    reduced in fp32), so nothing is needed. Without FSDP (one process) bf16 compute
    over fp32 master weights is exactly what torch.autocast does."""
    if _dtype(param_dtype) == torch.bfloat16 and dist.mesh is None:
        return torch.autocast(dist.device.type, dtype=torch.bfloat16)
    return nullcontext()


# -----------------------------------------------------------------------------
# 2. Building a parallel model: meta device -> parallelize -> materialize -> init


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


def apply_tensor_parallel(model: Transformer, tp_mesh):
    """Megatron-style tensor parallel with sequence parallel norms, as torchtitan's
    llama plan. Shapes below are per TP rank (t = TP size, T = sequence length).

    Between blocks the residual stream h is split along the sequence: (B, T/t, dim).
    In each block:
      attention_norm   SequenceParallel: normalizes its T/t tokens (norm weights are
                       replicated) -> DTensor Shard(1)
      attention input  PrepareModuleInput: all-gather the sequence -> Replicate
                       (B, T, dim); RoPE then indexes the full-length freqs_cis
      wq, wk, wv       ColwiseParallel: each rank computes n_heads/t query heads and
                       n_kv_heads/t KV heads -> (B, T, (n_heads/t)·hd); Attention
                       reads the local head counts from this width
      wo               RowwiseParallel -> partial sums, reduce-scattered along the
                       sequence -> (B, T/t, dim)
      feed_forward     same pattern: ffn_norm SP, gather, w1/w3 colwise
                       (B, T, hidden/t), w2 rowwise -> (B, T/t, dim)
    Outside the blocks: the embedding is split over the vocabulary (RowwiseParallel)
    and leaves its output sequence-split; the final norm is SP; output is colwise
    over the vocabulary, gathered back to full logits (B, T, vocab) on every rank.

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
    tied = args.tie_embeddings
    if tied:  # untie for the plan, re-tie below (both end up sharded over the vocabulary)
        model.output.weight = nn.Parameter(torch.empty_like(model.output.weight))
    parallelize_module(model, tp_mesh, {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
        "norm": SequenceParallel(),
        "output": ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate()),
    })
    if tied:
        # Embedding rowwise and Linear colwise both shard the (vocab, dim) matrix on
        # dim 0, so one DTensor serves both.
        model.output.weight = model.tok_embeddings.weight
    for block in model.layers.values():
        parallelize_module(block, tp_mesh, {
            "attention_norm": SequenceParallel(),
            # Attention.forward(x, freqs_cis, mask, slots, doc_ids): only x is sharded.
            "attention": PrepareModuleInput(input_layouts=(Shard(1), None, None, None, None),
                                            desired_input_layouts=(Replicate(), None, None, None, None)),
            "attention.wq": ColwiseParallel(),
            "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
            "ffn_norm": SequenceParallel(),
            "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            "feed_forward.w1": ColwiseParallel(),
            "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
            "feed_forward.w3": ColwiseParallel(),
        })
    return model


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
    mp = MixedPrecisionPolicy(param_dtype=_dtype(param_dtype), reduce_dtype=torch.float32)
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


# -----------------------------------------------------------------------------
# 4. Distributed checkpoints (§3.3.4: fast, reliable restarts)

_STEP_DIR = re.compile(r"^step_(\d{8})$")


def _rng_state() -> dict:
    import numpy as np
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict):
    import numpy as np
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _state_dicts(model, optimizer):
    """{"model": ..., "optim": ...} keyed by parameter names (FQNs), values DTensors
    when sharded. DCP flattens these into "model.layers.0.attention.wq.weight", ...
    which is the prefix model.load_model expects."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict
    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optim": optim_sd}


def save_checkpoint(ckpt_root: str, step: int, model: nn.Module, optimizer=None, *, model_args: ModelArgs,
                    extra: Optional[dict] = None, keep: int = 3) -> str:
    """Save to ckpt_root/step_{step:08d}; every rank calls this. Returns the path.

    Each rank writes only its own shards (DCP), in parallel. Atomic: everything is
    written into step_XXXXXXXX.tmp-<id>; after a barrier (all ranks done) rank 0
    adds model_args.json and state.json and renames the folder. A process killed
    mid-save therefore leaves only a *.tmp-* folder, which latest_checkpoint ignores
    and the next save deletes. Keeps the latest `keep` checkpoints (keep <= 0: all).

    Folder: .metadata + __*_*.distcp (DCP: keys "model.<param name>" and
    "optim.state.<param name>.exp_avg", ...), model_args.json, state.json
    ({"step", "extra"}), rng/rank_XXXXX.pt (python, numpy, torch, cuda RNG)."""
    import torch.distributed.checkpoint as dcp
    rank = torch_dist.get_rank() if _distributed() else 0
    final = os.path.join(ckpt_root, f"step_{step:08d}")
    # Serialize the small JSON files first, on every rank: a value that is not
    # JSON-able fails here on all ranks alike, not on rank 0 alone (which would
    # leave the others waiting at a barrier).
    args_json = json.dumps(asdict(model_args), indent=1)
    state_json = json.dumps({"step": step, "extra": extra or {}}, indent=1, default=_json_scalar)
    # All ranks must write into the same temp folder: rank 0 names it.
    name = [f"step_{step:08d}.tmp-{uuid.uuid4().hex[:8]}"]
    if _distributed():
        torch_dist.broadcast_object_list(name, src=0)
    tmp = os.path.join(ckpt_root, name[0])
    if rank == 0:
        os.makedirs(tmp, exist_ok=True)
    barrier()
    state = _state_dicts(model, optimizer)
    with warnings.catch_warnings():  # DCP warns that one process means no_dist
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(state, checkpoint_id=tmp, no_dist=not _distributed())
    # RNG states are per rank (each rank drew different numbers): one small file each.
    os.makedirs(os.path.join(tmp, "rng"), exist_ok=True)
    torch.save(_rng_state(), os.path.join(tmp, "rng", f"rank_{rank:05d}.pt"))
    barrier()  # every shard is on disk
    if rank == 0:
        _write_text(os.path.join(tmp, "model_args.json"), args_json)
        _write_text(os.path.join(tmp, "state.json"), state_json)
        if os.path.exists(final):  # saving a step again (e.g. after a resume): move the
            shutil.rmtree(final + ".tmp-old", ignore_errors=True)  # old one aside,
            os.rename(final, final + ".tmp-old")  # _prune deletes it
        os.rename(tmp, final)  # the commit point: atomic on a POSIX filesystem
        _fsync_dir(ckpt_root)  # make the rename itself durable
        _prune(ckpt_root, keep)
    barrier()
    return final


def _json_scalar(value):
    """numpy / torch scalars (a data-loader position is often an np.int64) -> Python."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    raise TypeError(f"extra must be JSON-able; got {type(value).__name__}: {value!r}")


def _write_text(path: str, text: str):
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename commits the folder


def _fsync_dir(path: str):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on every platform / filesystem
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _prune(ckpt_root: str, keep: int):
    """Delete all but the latest `keep` complete checkpoints and any leftover temp
    folders of killed saves (only called by rank 0 after its own save completed)."""
    complete = sorted(d for d in os.listdir(ckpt_root) if _STEP_DIR.match(d))
    for d in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(ckpt_root, d), ignore_errors=True)
    for d in os.listdir(ckpt_root):
        if ".tmp-" in d and d.startswith("step_"):
            shutil.rmtree(os.path.join(ckpt_root, d), ignore_errors=True)


def latest_checkpoint(ckpt_root: str) -> Optional[str]:
    """The newest complete checkpoint folder, or None. Temp folders never count."""
    if not os.path.isdir(ckpt_root):
        return None
    steps = sorted(d for d in os.listdir(ckpt_root) if _STEP_DIR.match(d)
                   and os.path.exists(os.path.join(ckpt_root, d, "state.json")))
    return os.path.join(ckpt_root, steps[-1]) if steps else None


def load_checkpoint(path: str, model: nn.Module, optimizer=None) -> dict:
    """Load a checkpoint into an already-built (and already-sharded) model and
    optimizer, in place; every rank calls this. Returns dict(extra, step=step).

    The number of ranks and the layout may differ from the save: DCP stores every
    tensor with its global shape and each rank reads just the pieces it now owns
    (2-rank FSDP -> 1 process, FSDP -> TP, ...). The optimizer must be built (it
    may be empty: get_state_dict initializes its state before loading)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict
    state = _state_dicts(model, optimizer)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=path, no_dist=not _distributed())
    if optimizer is None:
        set_model_state_dict(model, state["model"])
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    if isinstance(model, Transformer):
        model.reset_rope()  # not in the checkpoint; make sure it is valid
    rank = torch_dist.get_rank() if _distributed() else 0
    rng_dir = os.path.join(path, "rng")
    saved = sorted(os.listdir(rng_dir)) if os.path.isdir(rng_dir) else []
    if saved:
        # Same rank if it existed; on a larger world, reuse rank (r mod saved ranks).
        file = f"rank_{rank:05d}.pt" if f"rank_{rank:05d}.pt" in saved else saved[rank % len(saved)]
        _set_rng_state(torch.load(os.path.join(rng_dir, file), weights_only=False))
    with open(os.path.join(path, "state.json")) as f:
        meta = json.load(f)
    return dict(meta.get("extra", {}), step=meta["step"])


def full_state_dict(model: nn.Module) -> dict:
    """A snapshot of the whole, unsharded state dict on CPU, on rank 0 (other ranks
    get {}). Every rank must call it (it all-gathers one tensor at a time)."""
    if not _distributed():
        sd = model.state_dict()
    else:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # On a CPU run a replicated (or unsharded) parameter comes back as the parameter
    # itself, not a copy; copy it so that later training does not change the snapshot.
    # (On GPU the move to CPU already copies; no second copy of a 405B state dict.)
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    return {k: v.detach().to("cpu", copy=on_cpu) for k, v in sd.items()}


def export_model(model: nn.Module, model_args: ModelArgs, out_dir: str, tokenizer_path: Optional[str] = None) -> str:
    """Gather the full weights and write this project's single-file format
    (DIR/model.pt via model.save_model), which model.load_model, sample.py and --
    through model.to_hf_state_dict -- Hugging Face read. Every rank calls this."""
    sd = full_state_dict(model)
    if not _distributed() or torch_dist.get_rank() == 0:
        if model_args.tie_embeddings and "output.weight" not in sd:
            sd["output.weight"] = sd["tok_embeddings.weight"]
        model_lib.save_model(None, model_args, out_dir, tokenizer_path=tokenizer_path, state_dict=sd)
    barrier()
    return out_dir


# -----------------------------------------------------------------------------
# 5. The planner: memory and time per GPU for a 4D-parallel configuration

GPU_PEAK_BF16 = {"h100": 989e12, "h200": 989e12, "a100": 312e12}  # dense bf16 FLOP/s (SXM)

# Table 4 (§3.3.2) of the paper, for the check printed by `plan`.
TABLE4 = [
    dict(gpus=8192, tp=8, cp=1, pp=16, dp=64, seq_len=8192, tflops=430, mfu=0.43),
    dict(gpus=16384, tp=8, cp=1, pp=16, dp=128, seq_len=8192, tflops=400, mfu=0.41),
    dict(gpus=16384, tp=8, cp=16, pp=16, dp=8, seq_len=131072, tflops=380, mfu=0.38),
]


def _stage_layout(args: ModelArgs, pp: int) -> list:
    """Layers per pipeline stage, as even as possible; the first stage also holds
    tok_embeddings, the last norm and output. (The paper moves one layer off the first
    and the last stage to balance that; we keep the plain split, the worst stage is
    then the one we report.)"""
    base, extra = divmod(args.n_layers, pp)
    return [base + (1 if s < extra else 0) for s in range(pp)]


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
         reshard_after_forward: bool = False, total_tokens: float = 15.6e12) -> dict:
    """The arithmetic behind "what fits where": per-GPU memory and step time.

    Assumptions (the paper's setup, §3.3.2, as we read it):
    - BF16 mixed precision with FSDP: each rank keeps its 1/dp shard of fp32 master
      weights (4 B/param), fp32 gradients (4 B) and Adam m and v (8 B); the bf16
      working copy (2 B/param) of the rank's TP/PP slice is held whole during the
      step (the paper does not reshard after forward; reshard_after_forward=True
      would keep ~2 blocks instead).
    - Pipeline 1F1B: the first stage holds activations of pp micro-batches in
      flight, i.e. of pp·(layers per stage) ≈ all layers, for one micro-batch each
      (the paper's interleaved schedule adds a little more; not counted).
    - Context parallel splits each sequence's tokens cp ways.
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
    sharded = math.ceil(p_gpu / dp)  # this rank's FSDP shard of it

    matrices, norms = _layer_params(args)
    block_params = matrices // tp + norms
    if reshard_after_forward:  # ZeRO-3: the block being computed + the one prefetched,
        # plus the root group (embeddings/output/norm), which is never resharded
        weights_bf16 = 2 * (2 * block_params + (p_gpu - layers_max * block_params))
    else:  # the paper: the whole stage slice stays gathered during the step
        weights_bf16 = 2 * p_gpu
    master_fp32 = 4 * sharded
    grads_fp32 = 4 * sharded
    optimizer = 8 * sharded  # Adam m and v in fp32

    tokens_micro = micro_batch * seq_len // cp  # tokens of one micro-batch on this rank
    in_flight_layers = layers_max * pp  # 1F1B: pp micro-batches on the first stage
    per_layer_full = activation_bytes_per_token_per_layer(args, tp, False) * tokens_micro
    per_layer_ckpt = activation_bytes_per_token_per_layer(args, tp, True) * tokens_micro
    act_full = per_layer_full * in_flight_layers
    # With checkpointing: the inputs of every layer in flight, plus one layer being
    # recomputed at full size.
    act_ckpt = per_layer_ckpt * in_flight_layers + per_layer_full
    logits = 4 * tokens_micro * args.vocab_size // tp  # fp32 logits on the last stage
    static = weights_bf16 + master_fp32 + grads_fp32 + optimizer

    seqs_per_step = global_batch_tokens // seq_len
    tokens_per_step = seqs_per_step * seq_len
    flops_token = flops_per_token(args, seq_len)
    step_flops = flops_token * tokens_per_step
    step_time = step_flops / (gpus * mfu * peak)
    return dict(
        model=model, gpus=gpus, tp=tp, pp=pp, cp=cp, dp=dp, seq_len=seq_len, micro_batch=micro_batch,
        params_total=n_total, params_per_stage=per_stage, params_per_gpu=p_gpu,
        params_per_gpu_sharded=sharded, layers_per_stage=layers_max,
        weights_bf16_bytes=weights_bf16, master_fp32_bytes=master_fp32, grads_fp32_bytes=grads_fp32,
        optimizer_bytes=optimizer, static_bytes=static,
        optimizer_bytes_total=8 * n_total, master_bytes_total=4 * n_total,
        activation_bytes_per_layer=per_layer_full, activation_bytes_per_layer_ckpt=per_layer_ckpt,
        activation_bytes=act_full, activation_bytes_ckpt=act_ckpt, logits_bytes=logits,
        total_bytes=static + act_full + logits, total_bytes_ckpt=static + act_ckpt + logits,
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

    kept = "resharded after forward" if p["weights_bf16_bytes"] < 2 * p["params_per_gpu"] else "kept after forward"
    lines = [
        f"{p['model']}: {p['params_total']:,} parameters on {p['gpus']:,} GPUs = "
        f"TP {p['tp']} x CP {p['cp']} x PP {p['pp']} x DP {p['dp']}",
        f"  fullest pipeline stage: {p['layers_per_stage']} layers, {p['params_per_gpu']:,} parameters "
        f"per GPU after TP, {p['params_per_gpu_sharded']:,} after FSDP over DP {p['dp']}",
        "",
        "  per-GPU memory",
        row(f"bf16 weights ({kept})", p["weights_bf16_bytes"]),
        row("fp32 master weights (FSDP-sharded)", p["master_fp32_bytes"]),
        row("fp32 gradients (FSDP-sharded)", p["grads_fp32_bytes"]),
        row("Adam m + v, fp32 (FSDP-sharded)", p["optimizer_bytes"]),
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
# Command line: python parallel.py plan --model llama3.1-405b --gpus 16384 --tp 8 --pp 16

def main(argv=None):
    parser = argparse.ArgumentParser(description="Distributed helpers for Llama 3; `plan` sizes a run.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="per-GPU memory and step time of a 4D-parallel configuration")
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
    cli = parser.parse_args(argv)
    if cli.command == "plan":
        result = plan(cli.model, gpus=cli.gpus, tp=cli.tp, pp=cli.pp, cp=cli.cp, seq_len=cli.seq_len,
                      global_batch_tokens=cli.global_batch_tokens, micro_batch=cli.micro_batch, mfu=cli.mfu,
                      gpu=cli.gpu, reshard_after_forward=cli.reshard_after_forward)
        print(format_plan(result))
        print()
        print(table4_check(cli.model, micro_batch=cli.micro_batch))
        if cli.json:
            print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
