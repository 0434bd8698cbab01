"""
sample.py -- generation from any Llama 3 checkpoint: text, chat, batches (§6, §4.2.2).

Stage of the paper: inference (§6; Meta's reference defaults: temperature 0.6, top-p
0.9) and the sampler that rejection sampling needs (§4.2.2: K samples per prompt with
the prompt's KV cache computed once and shared by the K samples).

What is notable here
- `generate(model, tokenizer, prompt_tokens, ...)` is the library function later stages
  call (reward.py's rejection sampling, evaluation). Prompts of different lengths are
  LEFT-padded into one batch, with explicit RoPE positions and an explicit attention
  mask over the static KV cache, so every row gives exactly what it would give alone.
- A static KV cache (gpt-fast style) sized once per call: one prefill of the prompts,
  then one token per step through a lean `decode_step` with fixed shapes, which
  torch.compile can capture (`--compile`).
- `num_samples=K` prefills the B prompts ONCE and then copies their cache rows K times
  (B -> B·K rows) before decoding: the compute sharing of §4.2.2 (the paper also shares
  the memory with PagedAttention; we copy it, which is simpler and costs only memory).
- Sampling = temperature, then top-k, then top-p (Meta's `sample_top_p`), driven by a
  seeded torch.Generator: same seed -> same tokens. Temperature 0 is greedy.
- Every run prints decoding tokens/s, and on GPU the memory bandwidth achieved (each
  decoding step must read every weight and the KV cache once: bytes/step x steps/s).
  `benchmark_decoding` / `benchmark_hf_decoding` measure it against Hugging Face
  transformers' generate on the same weights (bench.py calls them).
- What limits speed on a CPU (small-15m, 2 cores): per-call costs and the bytes of the
  weights, which every step streams once (50 MB in fp32, 25 MB in bf16). Eager decoding
  is ~1.1-1.25x transformers' generate: both spend a step in the same matmuls plus
  Python. Three things make it 2x and more, each measured side by side by `python
  bench.py --only decode`: `--compile` (the step becomes a few fused C++ loops around
  the matmuls, with the one-token attention fused in: model.one_query_attention);
  fuse_for_decoding (one wqkv and one w13 matmul per layer, fp32 matrices stored
  input-major for MKL, bf16 ones prepacked for oneDNN's AMX kernel; section 3b); and
  for the bytes, int8 weight-only quantization (`--quantize int8`, §6.2's row-wise
  idea). On a 2-core Xeon with AMX, compiled, two runs of bench.py: bf16 548-572
  tokens/s at batch 1 (2.34-2.37x transformers' bf16) and 3,587-3,764 at batch 8
  (2.20-2.21x); int8 1,072-1,099 (4.4-4.7x its bf16) and 3,350-3,404 (2.0-2.1x), logits
  within a few % of the unquantized ones; fp32 598-653 (1.88-2.00x transformers' fp32)
  and 2,840-3,303 (1.77-2.14x): the 50 MB of fp32 weights per step are the limit.
- On a GPU, eager decoding is bound by kernel launches, not bytes (llama3.2-1b on an
  H100: 46-75 tokens/s at batch 1); `--compile` records the step as a CUDA graph
  (torch.compile mode "reduce-overhead"): 437 tokens/s at batch 1 (8.3x transformers'
  generate), 3,654 at batch 8 (5.5x), the same greedy tokens as eager.
- `torchrun --nproc_per_node=N sample.py ...` splits every matrix over N ranks (tensor
  parallel without sequence parallel, so a single decoding token is never split).

Reads:  a checkpoint in any format checkpoint.load_model knows (this project's model.pt, a
        distributed checkpoint of parallel.py, Meta's consolidated.*.pth + params.json,
        a Hugging Face directory) and its tokenizer.model (or --tokenizer PATH).
Writes: stdout; with --prompts, a JSONL file of completions (--out, default
        out/sample/completions.jsonl); with --bench, bench.json in the same folder.

How to run
    python sample.py --ckpt out/pretrain/final --prompt "def fibonacci(n):"
    python sample.py --ckpt out/sft/final --chat --system "You are terse."
    python sample.py --ckpt out/pretrain/final --prompts prompts.txt --batch-size 8
    python sample.py --ckpt CKPT --bench                  # tokens/s vs transformers
    python sample.py --ckpt CKPT --prompt "..." --dtype bf16 --compile   # 2x transformers on CPU
    python sample.py --ckpt CKPT --prompt "..." --compile --quantize int8  # fewest bytes per step
    torchrun --nproc_per_node=2 sample.py --ckpt BIG --prompt "..."   # tensor parallel

Read next: reward.py (rejection sampling: generate(..., num_samples=K) + reward model),
then bench.py (the speed of every stage side by side).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from typing import Callable, Optional, Sequence

import torch

import checkpoint
import model as M
from common import UsageError, cli as _cli

# Meta's reference defaults (llama3 example_text_completion.py / example_chat_completion.py).
DEFAULT_TEMPERATURE = 0.6
DEFAULT_TOP_P = 0.9


# -----------------------------------------------------------------------------
# 1. Sampling: temperature, then top-k, then top-p (nucleus)


def sample_next(logits: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE,
                top_p: float = DEFAULT_TOP_P, top_k: Optional[int] = None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Pick the next token of every row. logits (N, vocab) -> token ids (N,).

    temperature 0 -> argmax (greedy). Otherwise logits / temperature; keep the top_k
    largest (renormalized, as Hugging Face does); then Meta's sample_top_p: sort the
    probabilities, keep the smallest prefix whose cumulative mass exceeds top_p (a
    token is dropped when the mass BEFORE it already exceeds p, so the first token is
    always kept), and draw from the kept ones.
    probs [0.5, 0.3, 0.15, 0.05], top_p 0.7 -> cumulative before each [0, .5, .8, .95]
    -> keep [0.5, 0.3] (0.5 < 0.7 so the second is still needed), draw from [5/8, 3/8].
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        logits, index = torch.topk(logits, top_k, dim=-1)  # (N, k), sorted descending
    elif top_p < 1.0:
        logits, index = torch.sort(logits, dim=-1, descending=True)  # (N, vocab)
    else:  # plain temperature sampling: no sort needed
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    probs = torch.softmax(logits, dim=-1)  # sorted descending, (N, k or vocab)
    if top_p < 1.0:
        mass_before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above
        probs = probs.masked_fill(mass_before > top_p, 0.0)
    choice = torch.multinomial(probs, 1, generator=generator)  # (N, 1); no need to renormalize
    return index.gather(-1, choice).squeeze(-1)


# -----------------------------------------------------------------------------
# 2. Batching prompts of different lengths: left padding, positions, masks
#
# Three prompts of lengths 2, 4, 3 padded on the left to P = 4 (· = pad):
#     slot:      0  1  2  3 | 4  5 ...   <- static KV cache slots, S in all
#     row 0:     ·  ·  a  b | x  x       positions 0 0 0 1 | 2 3 ...
#     row 1:     c  d  e  f | x  x       positions 0 1 2 3 | 4 5 ...
#     row 2:     ·  g  h  i | x  x       positions 0 0 1 2 | 3 4 ...
# All rows then decode in lockstep: step t writes slot P + t in every row. A token may
# attend to slots <= its own that are not padding. Padding tokens attend to themselves
# only: a query that sees nothing gives NaN (softmax of all -inf), and a NaN in a pad
# slot's values would leak into real tokens (0 weight x NaN = NaN).


def check_vocab(model: M.Transformer, tokenizer) -> None:
    """The tokenizer must produce exactly the ids the model was trained with."""
    if tokenizer is None:
        return
    n_words, vocab_size = int(tokenizer.n_words), int(model.args.vocab_size)
    if n_words != vocab_size:
        raise ValueError(
            f"tokenizer/model vocabulary mismatch: the tokenizer ({getattr(tokenizer, 'model_path', '?')}) "
            f"has {n_words} tokens but the model's vocab_size is {vocab_size}. "
            "Pass the tokenizer the model was trained with (--tokenizer PATH).")


def _check_prompts(prompt_tokens, vocab_size: int) -> list[list[int]]:
    if isinstance(prompt_tokens, torch.Tensor) or not isinstance(prompt_tokens, (list, tuple)):
        raise TypeError("prompt_tokens must be a list of token-id lists, e.g. [[128000, 9906]]")
    if not prompt_tokens:
        raise ValueError("prompt_tokens is empty: give at least one prompt")
    prompts = []
    for i, p in enumerate(prompt_tokens):
        if not isinstance(p, (list, tuple)) or (p and isinstance(p[0], (list, tuple))):
            raise TypeError(f"prompt {i} must be a list of ints, got {type(p).__name__}")
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: the model needs at least one token to "
                             "condition on (encode with bos=True)")
        p = [int(t) for t in p]
        bad = [t for t in p if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"prompt {i} has token id {bad[0]} outside the vocabulary [0, {vocab_size})")
        prompts.append(p)
    return prompts


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """[[5, 6], [7, 8, 9]] -> tokens [[pad, 5, 6], [7, 8, 9]], pad lengths [1, 0]."""
    P = max(len(p) for p in prompts)
    tokens = torch.tensor([[pad_id] * (P - len(p)) + p for p in prompts], dtype=torch.long, device=device)
    pads = torch.tensor([P - len(p) for p in prompts], dtype=torch.long, device=device)
    return tokens, pads  # (B, P), (B,)


def prefill_mask(pads: torch.Tensor, P: int, S: int) -> torch.Tensor:
    """(B,) pad lengths -> (B, P, S) bool: query slot q sees key slot k iff k <= q and
    (k is not padding, or k == q). Slots >= P are not written yet (k > q hides them)."""
    q = torch.arange(P, device=pads.device)[:, None]  # (P, 1)
    k = torch.arange(S, device=pads.device)[None, :]  # (1, S)
    not_pad = k[None] >= pads[:, None, None]  # (B, 1, S)
    return (k <= q)[None] & (not_pad | (k == q)[None])  # (B, P, S)


# -----------------------------------------------------------------------------
# 3. The static KV cache: one prefill, then one token per step


def setup_caches(model: M.Transformer, batch_size: int, cache_len: int):
    """model.setup_caches, plus a fix for tensor parallelism: each rank then holds only
    n_kv_heads / tp key-value heads, so size the cache from the local wk width."""
    model.setup_caches(batch_size, cache_len)
    for layer in model.layers.values():
        attention = layer.attention
        if attention.wk is None:  # fused for decoding (never sharded): model's sizes are right
            continue
        wk = attention.wk.weight
        local = wk.to_local() if hasattr(wk, "to_local") else wk
        local_kv_heads = local.shape[0] // attention.head_dim
        cache = attention.cache
        if cache.k_cache.shape[1] != local_kv_heads:
            shape = (batch_size, local_kv_heads, cache_len, attention.head_dim)
            cache.k_cache = torch.zeros(shape, dtype=cache.k_cache.dtype, device=cache.k_cache.device)
            cache.v_cache = torch.zeros_like(cache.k_cache)


def expand_caches(model: M.Transformer, k: int):
    """Rows [a, b] -> [a, a, a, b, b, b] (k=3) in every layer's cache: the K samples of a
    prompt start from its prefilled keys and values, computed once (§4.2.2)."""
    for layer in model.layers.values():
        cache = layer.attention.cache
        cache.k_cache = cache.k_cache.repeat_interleave(k, dim=0)  # (B·K, n_kv, S, hd)
        cache.v_cache = cache.v_cache.repeat_interleave(k, dim=0)


def decode_step(model: M.Transformer, tokens: torch.Tensor, positions: torch.Tensor,
                mask: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """One new token per row through the cached model -> next-token logits (N, vocab).

    tokens (N, 1); positions (N, 1) RoPE positions; mask (N, 1, S) bool over the cache;
    slot (1,) the cache slot written. This is Transformer.forward without its argument
    checks (each costs a host sync): fixed shapes and no Python branches on data, so
    torch.compile captures it whole. tests/test_sample.py holds it to the full forward.
    """
    h = model.tok_embeddings(tokens)  # (N, 1, dim)
    freqs_cis = model.freqs_cis[positions]  # (N, 1, hd/2, 2)
    mask = mask[:, None]  # (N, 1, 1, S): broadcast over heads
    for layer in model.layers.values():
        h = layer(h, freqs_cis, mask, slot)
    return model.output(model.norm(h[:, -1])).float()  # (N, vocab)


_compiled_steps: dict = {}


def _step_fn(compile: bool, device_type: str = "cpu") -> Callable:
    if not compile:
        return decode_step
    if device_type not in _compiled_steps:
        # Shapes are static within a call (cache sized once), so one graph per (N, S).
        # On GPU, "reduce-overhead" also records the step as a CUDA graph: one launch per
        # token instead of ~10 per layer (measured on an H100, llama3.2-1b batch 1: plain
        # compile 114 tokens/s, launch-bound; see README). Its inputs (tokens, positions,
        # mask, slot) are copied into the graph's buffers at each replay; the caches are
        # module buffers updated in place, as the graph expects.
        mode = "reduce-overhead" if device_type == "cuda" else None
        _compiled_steps[device_type] = torch.compile(decode_step, dynamic=False, fullgraph=True, mode=mode)
    return _compiled_steps[device_type]


# -----------------------------------------------------------------------------
# 3b. Decoding-ready matrices: fused, and stored the way the kernel is fastest
#
# A decoding step multiplies a few rows (the batch) by every matrix of the model, so
# on a CPU each matmul is a fixed library-call cost plus streaming the matrix from the
# cache hierarchy. Three changes that leave the arithmetic as it is (measured on 2
# cores of a Xeon with AMX, small-15m; `python bench.py --only decode`):
# - fuse: wq|wk|wv -> one wqkv, w1|w3 -> one w13 (gpt-fast, vLLM and llama.cpp do the
#   same): 7 matmuls per layer become 4.
# - fp32: MKL's sgemm with a few rows is up to 2x faster reading the matrix as
#   (in, out) than as nn.Linear's (out, in) (8 x 384 @ 384 x 8192: 0.31 vs 0.69 ms).
# - bf16: oneDNN's AMX kernel wants the matrix in its own blocked layout and, given an
#   nn.Linear weight, re-lays it out inside every call. Done once here instead
#   ("prepacking", what inductor's freezing and IPEX do): 384 -> 2048 at 8 rows
#   0.056 -> 0.025 ms, the 8,192-token output layer 0.24 -> 0.16 ms.
# With model.one_query_attention's fused form, a compiled decoding step went from
# 1.66 to 1.5 ms (fp32, batch 1) and from 2.98 to 2.1-2.2 ms (bf16, batch 8). What is
# left is mostly the matmuls streaming the weights from L3, ~20 calls of ~15 us fixed
# cost each, and ~0.1 ms of torch.compile's guard checks per step.

PLAIN, INPUT_MAJOR, ONEDNN = "out_in", "in_out", "onednn"  # DecodeLinear layouts


def decoding_layout(weight: torch.Tensor) -> str:
    """The fastest layout measured for this weight's device and dtype (see above)."""
    if weight.device.type != "cpu":
        return PLAIN  # cuBLAS reads either layout at full speed
    if weight.dtype == torch.float32:
        return INPUT_MAJOR
    if weight.dtype == torch.bfloat16 and torch.backends.mkldnn.is_available():
        return ONEDNN
    return PLAIN


@torch.library.custom_op("llama3::onednn_linear", mutates_args=())
def onednn_linear(x: torch.Tensor, packed: torch.Tensor, out_features: int) -> torch.Tensor:
    """x (..., in) @ a oneDNN-prepacked (out, in) matrix -> (..., out). A custom op so
    that torch.compile calls it as one opaque kernel (inductor cannot lower the packed
    tensor itself); out_features tells the compiler the output shape."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


@onednn_linear.register_fake
def _(x, packed, out_features):
    return x.new_empty(*x.shape[:-1], out_features)


class DecodeLinear(torch.nn.Module):
    """y = x · Wᵀ for W (out, in) -- nn.Linear's weight -- kept in `layout`:
    "out_in" as given (F.linear), "in_out" its contiguous transpose (x @ Wᵀ), or
    "onednn" prepacked for oneDNN (then W is held only in that opaque form: not a
    buffer, no state dict entry, no .to(); fuse after choosing device and dtype).
    `weight` is always the (out, in) matrix, so Int8Linear and code that reads
    .weight.shape see an nn.Linear."""

    def __init__(self, weight: torch.Tensor, layout: str):
        super().__init__()
        w = weight.detach()
        self.layout, self.in_features, self.out_features = layout, w.shape[1], w.shape[0]
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous()) if layout == ONEDNN else None
        stored = None if layout == ONEDNN else (w.t() if layout == INPUT_MAJOR else w).contiguous()
        self.register_buffer("stored", stored)

    @property
    def weight(self) -> torch.Tensor:  # (out, in)
        if self.layout == ONEDNN:
            return self.packed.to_dense()
        return self.stored.t() if self.layout == INPUT_MAJOR else self.stored

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if self.layout == ONEDNN:
            return onednn_linear(x, self.packed, self.out_features)
        if self.layout == INPUT_MAJOR:
            return x @ self.stored
        return torch.nn.functional.linear(x, self.stored)


def _refuse_sharded(model: M.Transformer, what: str, advice: str) -> None:
    """The inference-only rewrites below work on whole matrices, not DTensor shards."""
    if any(hasattr(p, "to_local") for p in model.parameters()):
        raise ValueError(f"{what}: the model is sharded (tensor parallel); {advice}")


@torch.no_grad()
def fuse_for_decoding(model: M.Transformer) -> M.Transformer:
    """Inference only, in place: every layer's wq, wk, wv become one `wqkv` and w1, w3
    one `w13` (model.Attention / model.FeedForward use them when present), and every
    matrix is stored in decoding_layout (above). The separate matrices are dropped, so
    memory stays the same; the state dict changes (save the unfused model), and the
    device and dtype are fixed from here on (move or cast the model before).
    The logits are those of the unfused model up to float rounding (tested). Call it
    before quantize_int8, which then quantizes the fused matrices. Returns the model."""
    _refuse_sharded(model, "fuse_for_decoding", "the fused matrices would mix shards -- decode it unfused")
    if any(layer.attention.wqkv is not None for layer in model.layers.values()):
        return model  # already fused
    if any(isinstance(m, Int8Linear) for m in model.modules()):
        raise ValueError("fuse_for_decoding: the model is already quantized; fuse first, then quantize_int8")
    layout = decoding_layout(model.tok_embeddings.weight)

    def decode_linear(*linears):  # rows of each matrix, stacked: (sum of outs, in)
        return DecodeLinear(torch.cat([lin.weight for lin in linears]), layout)

    for layer in model.layers.values():
        attention, ffn = layer.attention, layer.feed_forward
        attention.wqkv = decode_linear(attention.wq, attention.wk, attention.wv)
        attention.wo = decode_linear(attention.wo)
        ffn.w13 = decode_linear(ffn.w1, ffn.w3)  # (2·hidden, dim): gate rows, then up rows
        ffn.w2 = decode_linear(ffn.w2)
        attention.wq = attention.wk = attention.wv = ffn.w1 = ffn.w3 = None
    if model.output.weight is not model.tok_embeddings.weight:  # a tied output stays shared
        model.output = decode_linear(model.output)
    return model


# -----------------------------------------------------------------------------
# 3c. Int8 weight-only quantization: fewer bytes per step (§6.2)
#
# §6.2 serves the 405B model with FP8 row-wise quantization of the feed-forward
# weights, because decoding is bound by the bytes each step must read. This CPU has no
# FP8 matmuls, so we do the same thing with int8: every row of a weight matrix gets one
# scale (its absolute max / 127) and 8-bit integers. A step of small-15m then reads
# 12.5 MB instead of 50 MB (fp32). Activations stay in bf16 (PyTorch's CPU int8 kernel
# is fast for bf16 inputs, ~10x slower for fp32 ones, measured). The embedding table is
# not quantized: a step reads one row. Where the weights outgrow the CPU's last-level
# cache (a 32 MB L3 AMD EPYC) int8 was the fastest setting by far; on a Xeon with a
# 480 MB L3 it is the fastest at batch 1 and no faster than bf16 at batch 8.


class Int8Linear(torch.nn.Module):
    """y = x · (q · s)ᵀ: q (out, in) int8, s (out,) one scale per output row.

    The int8 matrix is registered as `weight` (same shape as the nn.Linear it
    replaces), so code that reads layer.wk.weight.shape keeps working."""

    def __init__(self, linear: torch.nn.Linear, act_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        w = linear.weight.detach().float().contiguous()  # (out, in) (a view of an input-major DecodeLinear)
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (out,): row-wise, as §6.2
        self.register_buffer("weight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(act_dtype))
        self.in_features, self.out_features = w.shape[1], w.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        shape = x.shape
        if x.device.type == "cpu":  # fused int8-weight matmul (gpt-fast's int8 path on CPU)
            y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, shape[-1]), self.weight, self.scale.to(x.dtype))
            return y.view(*shape[:-1], self.out_features)
        # elsewhere: dequantize on the fly (correct; saves memory, not time)
        return torch.nn.functional.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)


def quantize_int8(model: M.Transformer, ffn_only: bool = False,
                  act_dtype: torch.dtype = torch.bfloat16) -> M.Transformer:
    """Replace the model's matrices by Int8Linear, in place, for inference only.

    ffn_only=True is the paper's choice for the 405B model (§6.2): feed-forward weights
    of all but the first and last layers; attention and the output layer stay. The
    default quantizes every matrix but the embedding (the fastest here). The rest of
    the model is cast to act_dtype first. Returns the model."""
    _refuse_sharded(model, "quantize_int8", "quantize before sharding or decode without --quantize")
    model.to(act_dtype)
    n = model.args.n_layers
    targets = []  # (parent module, attribute name)
    for i, layer in enumerate(model.layers.values()):
        if ffn_only and i in (0, n - 1):
            continue  # §6.2: first and last Transformer layers are not quantized
        # the separate matrices, or the fused ones of fuse_for_decoding
        targets += [(layer.feed_forward, name) for name in ("w1", "w3", "w13", "w2")
                    if getattr(layer.feed_forward, name) is not None]
        if not ffn_only:
            targets += [(layer.attention, name) for name in ("wq", "wk", "wv", "wqkv", "wo")
                        if getattr(layer.attention, name) is not None]
    if not ffn_only and model.output.weight is not model.tok_embeddings.weight:
        targets.append((model, "output"))  # a tied output shares the embedding: keep it
    for parent, name in targets:
        setattr(parent, name, Int8Linear(getattr(parent, name), act_dtype))
    return model


# -----------------------------------------------------------------------------
# 4. generate(): the library function


@torch.inference_mode()
def generate(model: M.Transformer, tokenizer, prompt_tokens: Sequence[Sequence[int]],
             max_new_tokens: int = 256, temperature: float = DEFAULT_TEMPERATURE,
             top_p: float = DEFAULT_TOP_P, top_k: Optional[int] = None,
             stop_tokens: Optional[Sequence[int]] = None, seed: Optional[int] = None, *,
             num_samples: int = 1, include_stop: bool = False, compile: bool = False,
             on_token: Optional[Callable[[torch.Tensor], None]] = None,
             stats: Optional[dict] = None) -> list[list[int]]:
    """Continue every prompt; return the NEW tokens of each (never the prompt).

    prompt_tokens: list of B token-id lists (any lengths >= 1; include bos yourself).
    tokenizer:     a tokenizer.Tokenizer (its vocabulary is checked against the model's
                   and its stop_tokens are the default), or None (then stop_tokens
                   defaults to none).
    stop_tokens:   a row ends at the first of these; the returned list stops just
                   before it (Meta's convention), or includes it with include_stop=True
                   (then "ended with a stop token" is visible to the caller).
    max_new_tokens: at most this many new tokens, and never more than
                   model.args.max_seq_len - len(longest prompt) (a prompt that already
                   fills max_seq_len is an error).
    temperature 0 = greedy; else sampling with top_k (None = off) then top_p (1 = off).
    seed:          seeds a torch.Generator: the same seed, prompts and batch give the same
                   tokens (None = a random seed).
    num_samples K: K completions per prompt; the prompts are prefilled once and their
                   cache rows copied K times. Returns a flat list of B·K lists in
                   prompt-major order: result[i*K + j] is sample j of prompt i.
    on_token:      called with the (B·K,) tensor of sampled ids after every step
                   (streaming); stats: a dict filled with timings and token counts.
    """
    # ---- check the inputs
    check_vocab(model, tokenizer)
    args = model.args
    prompts = _check_prompts(prompt_tokens, args.vocab_size)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or None for no top-k), got {top_k}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    longest = max(len(p) for p in prompts)
    if longest >= args.max_seq_len:
        raise ValueError(f"prompt of {longest} tokens leaves no room to generate: the model's "
                         f"max_seq_len is {args.max_seq_len} (shorten the prompt)")
    if stop_tokens is None:
        stop_tokens = sorted(tokenizer.stop_tokens) if tokenizer is not None else []
    B, K = len(prompts), num_samples
    N = B * K  # rows while decoding
    new_tokens = min(max_new_tokens, args.max_seq_len - longest)  # sequence <= max_seq_len
    if new_tokens == 0:
        return [[] for _ in range(N)]

    device = model.tok_embeddings.weight.device
    pad_id = tokenizer.pad_id if tokenizer is not None and hasattr(tokenizer, "pad_id") else 0
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    stops = torch.tensor(sorted(set(int(t) for t in stop_tokens)), dtype=torch.long, device=device)

    # ---- the static cache: every prompt token and every new token but the last one
    # (which is sampled, never fed back) gets a slot. Sized once, for the B prompts.
    P = longest
    S = P + new_tokens - 1  # cache slots (new_tokens >= 1, so S >= P)
    tokens, pads = left_pad(prompts, pad_id, device)  # (B, P), (B,)
    positions = (torch.arange(P, device=device)[None] - pads[:, None]).clamp(min=0)  # (B, P)
    setup_caches(model, B, S)
    try:
        # ---- prefill: all prompt tokens of the B prompts at once (B rows, not B·K)
        t0 = time.perf_counter()
        hidden = model(tokens, positions=positions, attn_mask=prefill_mask(pads, P, S),
                       start_pos=0, return_hidden=True)  # (B, P, dim)
        logits = model.output(hidden[:, -1]).float()  # (B, vocab): only the last position
        if K > 1:
            expand_caches(model, K)  # (B, ...) -> (B·K, ...) rows, prompt-major
            logits = logits.repeat_interleave(K, dim=0)
            pads = pads.repeat_interleave(K, dim=0)
        out = torch.empty(N, new_tokens, dtype=torch.long, device=device)  # generated ids
        next_token = sample_next(logits, temperature, top_p, top_k, generator)  # (N,)
        out[:, 0] = next_token
        done = torch.isin(next_token, stops)  # (N,) row has produced a stop token
        if on_token is not None:
            on_token(next_token)
        _sync(device)
        t1 = time.perf_counter()

        # ---- decode: one token per row per step, every row in lockstep at slot P + i - 1.
        # The mask over the cache is kept incrementally: after prefill a row sees its own
        # prompt slots; each step adds the slot being written.
        key_slots = torch.arange(S, device=device)
        step_mask = ((key_slots[None] >= pads[:, None]) & (key_slots[None] < P))[:, None]  # (N, 1, S)
        position = (P - pads)[:, None].clone()  # (N, 1): RoPE position of the token fed
        slot = torch.tensor([P], device=device)  # (1,) cache slot written by this step
        step = _step_fn(compile, device.type)
        steps = 1
        for i in range(1, new_tokens):
            if bool(done.all()):  # the one host sync per step: every row has stopped
                break
            step_mask[:, 0, P + i - 1] = True
            logits = step(model, next_token[:, None], position, step_mask, slot)  # (N, vocab)
            next_token = sample_next(logits, temperature, top_p, top_k, generator)
            out[:, i] = next_token
            done |= torch.isin(next_token, stops)
            position += 1
            slot += 1
            steps += 1
            if on_token is not None:
                on_token(next_token)
        _sync(device)
        t2 = time.perf_counter()
    finally:
        model.clear_caches()

    # ---- cut every row at its first stop token
    result = []
    stop_set = set(stops.tolist())
    for row in out[:, :steps].tolist():
        for j, t in enumerate(row):
            if t in stop_set:
                row = row[: j + 1] if include_stop else row[:j]
                break
        result.append(row)
    if stats is not None:
        stats.update(rows=N, prompts=B, prefill_tokens=B * P, prefill_s=t1 - t0,
                     decode_steps=steps - 1, decode_s=t2 - t1, cache_len=S,
                     new_tokens=sum(len(r) for r in result))
    return result


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_bytes(model: M.Transformer) -> int:
    """Bytes of all weights (each read once per decoding step), int8 ones included;
    tied tensors counted once, the KV cache (not persistent) not at all."""
    seen, total = set(), 0
    for t in model.state_dict().values():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    # matrices prepacked for oneDNN live outside the state dict (DecodeLinear)
    return total + sum(m.packed.numel() * m.packed.element_size() for m in model.modules()
                       if isinstance(m, DecodeLinear) and m.packed is not None)


def decode_bandwidth(model: M.Transformer, stats: dict) -> float:
    """Memory bandwidth achieved while decoding, GB/s: every step reads all weights and
    the whole static KV cache (rows x layers x 2 x n_kv_heads x S x head_dim)."""
    a = model.args
    dtype_bytes = model.tok_embeddings.weight.element_size()
    cache_bytes = stats["rows"] * a.n_layers * 2 * a.n_kv_heads * stats["cache_len"] * a.head_dim * dtype_bytes
    if stats["decode_steps"] == 0 or stats["decode_s"] <= 0:
        return 0.0
    return (model_bytes(model) + cache_bytes) * stats["decode_steps"] / stats["decode_s"] / 1e9


# -----------------------------------------------------------------------------
# 5. Speed: our decoding vs Hugging Face transformers' generate, same weights


def _random_prompts(vocab_size: int, batch_size: int, prompt_len: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch_size, prompt_len), generator=g).tolist()


def benchmark_decoding(model: M.Transformer, tokenizer_or_vocab, batch_size: int = 1,
                       new_tokens: int = 128, prompt_len: int = 16, *, repeats: int = 3,
                       compile: bool = False, warmup: bool = True) -> dict:
    """Greedy decoding speed of `generate` on random prompts, with no stop tokens so
    every row makes exactly new_tokens tokens. tokenizer_or_vocab: a Tokenizer or the
    vocabulary size. Returns the median of `repeats` runs (after one warm-up run):
      tokens_per_s       decoded tokens/s summed over the batch, decoding steps only
      e2e_tokens_per_s   batch_size x new_tokens / (prefill + decoding) wall time
      ms_per_step, bandwidth_gb_s (weights + KV cache read per step), and the settings."""
    vocab = tokenizer_or_vocab if isinstance(tokenizer_or_vocab, int) else tokenizer_or_vocab.n_words
    tokenizer = None if isinstance(tokenizer_or_vocab, int) else tokenizer_or_vocab
    prompts = _random_prompts(vocab, batch_size, prompt_len)
    kw = dict(max_new_tokens=new_tokens, temperature=0.0, stop_tokens=[], compile=compile)
    quantized = any(isinstance(m, Int8Linear) for m in model.modules())
    if warmup:
        generate(model, tokenizer, prompts, **kw)  # warm-up (and compilation with --compile)
    runs = []
    for _ in range(repeats):
        stats: dict = {}
        generate(model, tokenizer, prompts, stats=stats, **kw)
        steps = stats["decode_steps"]
        runs.append(dict(
            impl="ours" + ("+int8" if quantized else "") + ("+compile" if compile else ""),
            batch_size=batch_size, new_tokens=new_tokens,
            prompt_len=prompt_len, device=str(model.tok_embeddings.weight.device),
            dtype=str(model.tok_embeddings.weight.dtype).removeprefix("torch."),
            tokens_per_s=batch_size * steps / stats["decode_s"],
            e2e_tokens_per_s=batch_size * new_tokens / (stats["prefill_s"] + stats["decode_s"]),
            ms_per_step=1000 * stats["decode_s"] / steps, bandwidth_gb_s=decode_bandwidth(model, stats),
            threads=torch.get_num_threads()))
    return _median_run(runs)


def _median_run(runs: list[dict]) -> dict:
    """The run with the median decoding speed (robust to a busy machine)."""
    return sorted(runs, key=lambda r: r["tokens_per_s"])[len(runs) // 2]


def hf_model_from(model: M.Transformer):
    """A transformers LlamaForCausalLM holding exactly our weights (checkpoint.to_hf_*)."""
    import transformers  # optional dependency, only for comparisons

    cfg = {k: v for k, v in checkpoint.to_hf_config(model.args).items() if k not in ("architectures", "model_type")}
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).eval()
    sd = checkpoint.to_hf_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()}, model.args)
    hf.load_state_dict(sd, strict=False)  # the rotary buffer is not in our state dict
    return hf.to(device=model.tok_embeddings.weight.device, dtype=model.tok_embeddings.weight.dtype)


@torch.inference_mode()
def hf_generate(hf, prompts: list[list[int]], new_tokens: int, pad_id: int = 0) -> list[list[int]]:
    """transformers' greedy generate (do_sample=False, use_cache=True) on left-padded
    prompts, never stopping early; returns the new tokens of each row."""
    device = next(hf.parameters()).device
    P = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (P - len(p)) + p for p in prompts], device=device)
    attention = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts], device=device)
    out = hf.generate(input_ids=ids, attention_mask=attention, do_sample=False, use_cache=True,
                      max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None,
                      pad_token_id=pad_id, temperature=None, top_p=None, top_k=None)
    return out[:, P:].tolist()


def benchmark_hf_decoding(model: M.Transformer, batch_size: int = 1, new_tokens: int = 128,
                          prompt_len: int = 16, *, repeats: int = 3, warmup: bool = True, hf=None) -> dict:
    """The same measurement for transformers' generate on the same weights. Its
    decoding time = generate(new_tokens) - generate(1 token) (prefill + first sample)."""
    hf = hf if hf is not None else hf_model_from(model)
    prompts = _random_prompts(model.args.vocab_size, batch_size, prompt_len)
    device = next(hf.parameters()).device
    if warmup:
        hf_generate(hf, prompts, new_tokens)

    def timed(n):
        t0 = time.perf_counter()
        hf_generate(hf, prompts, n)
        _sync(device)
        return time.perf_counter() - t0

    runs = []
    for _ in range(repeats):
        total_s, first_s = timed(new_tokens), timed(1)
        decode_s = max(total_s - first_s, 1e-9)
        runs.append(dict(impl="transformers", batch_size=batch_size, new_tokens=new_tokens,
                         prompt_len=prompt_len, device=str(device), dtype=str(next(hf.parameters()).dtype),
                         tokens_per_s=batch_size * (new_tokens - 1) / decode_s,
                         e2e_tokens_per_s=batch_size * new_tokens / total_s,
                         ms_per_step=1000 * decode_s / (new_tokens - 1), threads=torch.get_num_threads()))
    return _median_run(runs)


def compare_with_hf(model: M.Transformer, batch_sizes=(1, 8), new_tokens: int = 128, prompt_len: int = 16,
                    repeats: int = 5, compile: bool = False, reference: Optional[M.Transformer] = None) -> list[dict]:
    """Side by side in one process: ours vs transformers at each batch size. Runs are
    interleaved (ours, theirs, ours, theirs, ...) so that a change of machine load
    hits both alike; each side reports its median run. reference: the model whose
    weights transformers gets (default: `model`; pass the unquantized model when
    `model` went through quantize_int8)."""
    hf = hf_model_from(reference if reference is not None else model)
    rows = []
    for bs in batch_sizes:
        ours_runs, hf_runs = [], []
        for i in range(repeats):
            ours_runs.append(benchmark_decoding(model, model.args.vocab_size, bs, new_tokens, prompt_len,
                                                repeats=1, compile=compile, warmup=(i == 0)))
            hf_runs.append(benchmark_hf_decoding(model, bs, new_tokens, prompt_len, repeats=1,
                                                 warmup=(i == 0), hf=hf))
        ours, theirs = _median_run(ours_runs), _median_run(hf_runs)
        rows.append(dict(batch_size=bs, ours=ours, transformers=theirs,
                         speedup=ours["tokens_per_s"] / theirs["tokens_per_s"],
                         e2e_speedup=ours["e2e_tokens_per_s"] / theirs["e2e_tokens_per_s"]))
    return rows


# -----------------------------------------------------------------------------
# 6. Loading a checkpoint and its tokenizer


def load_tokenizer(path: str):
    from tokenizer import Tokenizer  # tokenizer.py: tiktoken-based, Meta's semantics

    return Tokenizer(path)


def load_for_inference(ckpt: str, tokenizer_path: Optional[str] = None, device=None, dtype=None):
    """Any checkpoint format -> (model in eval mode, tokenizer). The tokenizer is
    --tokenizer if given, else the one next to the checkpoint (checkpoint.find_tokenizer)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:  # bf16 on GPUs that have it; fp32 on CPU (exact; --dtype bf16 is ~1.4x faster here)
        dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    model, _ = checkpoint.load_model(ckpt, device=device, dtype=dtype)
    model.eval()
    tokenizer_path = tokenizer_path or checkpoint.find_tokenizer(ckpt)
    if tokenizer_path is None:
        raise UsageError(f"{ckpt}: no tokenizer.model next to the checkpoint; pass --tokenizer PATH")
    # Same vocabulary size is not the same tokenizer: ids would decode to other strings.
    checkpoint.check_tokenizer(ckpt, tokenizer_path)
    tokenizer = load_tokenizer(tokenizer_path)
    check_vocab(model, tokenizer)
    return model, tokenizer


# -----------------------------------------------------------------------------
# 7. Streaming text and chat


class TextStream:
    """Prints the text of tokens as they arrive. Decoding token by token would split
    multi-byte characters, so it decodes everything generated so far and prints the
    new part, holding back a trailing U+FFFD (half a UTF-8 character) until complete."""

    def __init__(self, tokenizer, out=None, stop_tokens=()):
        self.tokenizer, self.out, self.stops = tokenizer, out or sys.stdout, set(stop_tokens)
        self.ids: list[int] = []
        self.printed = 0  # characters already printed
        self.stopped = False

    def __call__(self, next_token: torch.Tensor):  # the on_token hook of generate (1 row)
        token = int(next_token[0])
        if self.stopped or token in self.stops:
            self.stopped = True
            return
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        stable = len(text.rstrip("\ufffd"))
        if stable > self.printed:
            self.out.write(text[self.printed:stable])
            self.out.flush()
            self.printed = stable

    def finish(self) -> str:
        text = self.tokenizer.decode(self.ids)
        self.out.write(text[self.printed:] + "\n")
        self.out.flush()
        return text


def chat(model: M.Transformer, tokenizer, *, system: Optional[str] = None, max_new_tokens: int = 512,
         temperature: float = DEFAULT_TEMPERATURE, top_p: float = DEFAULT_TOP_P, top_k: Optional[int] = None,
         seed: Optional[int] = None, compile: bool = False, input_fn: Callable[[str], str] = input,
         out=None) -> list[dict]:
    """Interactive chat in Llama 3's format (tokenizer.ChatFormat). Each turn encodes
    the whole dialog (bos, system, user/assistant turns, assistant header), streams the
    reply and stops at tokenizer.stop_tokens (<|eot_id|> ends a turn). Commands:
    /reset forgets the dialog (keeps the system prompt), /exit or end of input quits.
    input_fn and out let tests drive it without a terminal. Returns the dialog."""
    from tokenizer import ChatFormat

    out = out or sys.stdout
    formatter = ChatFormat(tokenizer)
    start = [{"role": "system", "content": system}] if system else []
    dialog = list(start)
    while True:
        try:
            line = input_fn("user> ")
        except EOFError:
            break
        command = line.strip()
        if command in ("/exit", "/quit"):
            break
        if command == "/reset":
            dialog = list(start)
            out.write("(dialog reset)\n")
            continue
        if not command:
            continue
        dialog.append({"role": "user", "content": line})
        prompt = formatter.encode_dialog_prompt(dialog)
        # Too long for the context: forget the oldest exchanges (the system prompt stays).
        while len(prompt) >= model.args.max_seq_len and len(dialog) > len(start) + 1:
            del dialog[len(start): len(start) + 2]
            prompt = formatter.encode_dialog_prompt(dialog)
        if len(prompt) >= model.args.max_seq_len:
            out.write(f"(message too long: {len(prompt)} tokens, max_seq_len {model.args.max_seq_len})\n")
            dialog.pop()
            continue
        out.write("assistant> ")
        stream = TextStream(tokenizer, out, tokenizer.stop_tokens)
        stats: dict = {}
        generate(model, tokenizer, [prompt], max_new_tokens, temperature, top_p, top_k,
                 stop_tokens=tokenizer.stop_tokens, seed=seed, compile=compile, on_token=stream, stats=stats)
        reply = stream.finish()
        dialog.append({"role": "assistant", "content": reply})
    return dialog


# -----------------------------------------------------------------------------
# 8. Tensor parallel under torchrun (parallel.py)


def shard_for_inference(model: M.Transformer):
    """With WORLD_SIZE > 1 (torchrun): tensor parallel over all ranks, for a model too
    large for one device. Returns (model, dist); dist from parallel.setup_distributed.
    Every rank ends with the same full logits, so with one seed every rank samples the
    same token; rank 0 prints. (§6.2 serves 405B with pipeline parallelism across
    nodes; tensor parallel within a node is the usual single-node choice.)"""
    import parallel  # imported only here: the single-process path never needs it

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    dist = parallel.setup_distributed(tp=world_size)
    model = model.to(dist.device)
    apply_tensor_parallel_inference(model, dist.mesh["tp"])
    return model, dist


def apply_tensor_parallel_inference(model: M.Transformer, tp_mesh):
    """Megatron-style tensor parallel WITHOUT sequence parallel (gpt-fast's tp.py):
    parallel.py's training plan splits the residual stream along the sequence, which
    cannot split the single token of a decoding step over t ranks. Here the residual
    stream stays whole (replicated) on every rank; per block:
      wq, wk, wv  colwise: n_heads/t query and n_kv_heads/t KV heads per rank (so the
                  KV cache is split too; sample.setup_caches sizes it)
      wo          rowwise: partial sums, all-reduced -> (N, T, dim) on every rank
      w1, w3 / w2 colwise / rowwise, likewise: one all-reduce after attention, one
                  after the feed-forward
    The embedding is split over the vocabulary (all-reduced), the output layer too
    (all-gathered to the full (N, vocab) logits). Norms are tiny and stay replicated."""
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    t, args = tp_mesh.size(), model.args
    for name, value in (("n_kv_heads", args.n_kv_heads), ("n_heads", args.n_heads),
                        ("ffn_hidden_dim", args.ffn_hidden_dim), ("vocab_size", args.vocab_size)):
        if value % t:
            raise ValueError(f"tensor parallel over {t} ranks needs {name} ({value}) divisible by {t}")
    tied = model.output.weight is model.tok_embeddings.weight
    if tied:  # shard each module once, then re-tie: both split the (vocab, dim) matrix on dim 0
        model.output.weight = torch.nn.Parameter(torch.empty_like(model.output.weight))
    parallelize_module(model, tp_mesh, {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate()),
        "output": ColwiseParallel(output_layouts=Replicate()),
    })
    if tied:
        model.output.weight = model.tok_embeddings.weight
    for block in model.layers.values():
        parallelize_module(block, tp_mesh, {
            "attention.wq": ColwiseParallel(), "attention.wk": ColwiseParallel(),
            "attention.wv": ColwiseParallel(), "attention.wo": RowwiseParallel(),
            "feed_forward.w1": ColwiseParallel(), "feed_forward.w3": ColwiseParallel(),
            "feed_forward.w2": RowwiseParallel(),
        })
    return model


# -----------------------------------------------------------------------------
# 9. Command line


def _input_from_rank0(prompt: str) -> str:
    """input() on rank 0, broadcast to every rank (all ranks must decode the same dialog)."""
    import torch.distributed as torch_dist

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


def _read_prompts(path: str) -> list[str]:
    """One prompt per line, or JSONL rows {"prompt": ...}; blank lines are skipped."""
    prompts = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if line.lstrip().startswith("{"):
                try:
                    line = json.loads(line)["prompt"]
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise UsageError(f"{path}:{line_no}: expected {{\"prompt\": \"...\"}} ({e})") from None
                if not isinstance(line, str):
                    raise UsageError(f"{path}:{line_no}: \"prompt\" must be a string, got "
                                     f"{type(line).__name__}")
            prompts.append(line.replace("\\n", "\n"))
    if not prompts:
        raise UsageError(f"{path}: no prompts")
    return prompts


def _report_speed(model, stats: dict, print0=print):
    steps = stats["decode_steps"]
    if steps == 0:
        return
    tokens_per_s = stats["rows"] * steps / stats["decode_s"]
    line = (f"[{stats['new_tokens']} new tokens, prefill {stats['prefill_tokens']} tokens in "
            f"{stats['prefill_s']:.2f}s, decoding {tokens_per_s:.1f} tokens/s "
            f"({1000 * stats['decode_s'] / steps:.1f} ms/step, batch {stats['rows']})")
    if model.tok_embeddings.weight.device.type == "cuda":
        line += f", {decode_bandwidth(model, stats):.0f} GB/s"
    print0(line + "]")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Generate text or chat with a Llama 3 checkpoint.")
    p.add_argument("--ckpt", required=True, help="model.pt / project, Meta, Hugging Face or DCP checkpoint dir")
    p.add_argument("--tokenizer", default=None, help="tokenizer.model (default: the one next to --ckpt)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--prompt", default=None, help="text to continue")
    mode.add_argument("--prompts", default=None, help="file with one prompt per line (or JSONL {\"prompt\"})")
    mode.add_argument("--chat", action="store_true", help="interactive chat in Llama 3's chat format")
    mode.add_argument("--bench", action="store_true",
                      help="decoding tokens/s vs transformers at batch 1 and 8 (writes bench.json beside --out)")
    p.add_argument("--system", default=None, help="system prompt for --chat")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=DEFAULT_TOP_P)
    p.add_argument("--top-k", type=int, default=0, help="0 = no top-k")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=1, help="completions per prompt (shared prefill)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per batch with --prompts")
    p.add_argument("--out", default="out/sample/completions.jsonl", help="where --prompts writes")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"], help="default: bf16 on GPU")
    p.add_argument("--compile", action="store_true", help="torch.compile the decoding step")
    p.add_argument("--quantize", default=None, choices=["int8", "int8-ffn"],
                   help="int8 weight-only matrices, bf16 activations (§6.2); int8-ffn: the paper's "
                        "choice, feed-forward of all but the first and last layers")
    return p.parse_args(argv)


def _check_flags(cli) -> None:
    """UsageError for flag values that would otherwise fail deep inside generate()."""
    import math

    if cli.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {cli.max_new_tokens}")
    if not math.isfinite(cli.temperature) or cli.temperature < 0:
        raise UsageError(f"--temperature must be a finite number >= 0 (0 = greedy), got {cli.temperature}")
    if not math.isfinite(cli.top_p) or not 0 < cli.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {cli.top_p}")
    for flag, value in (("--top-k", cli.top_k), ("--num-samples", cli.num_samples - 1),
                        ("--batch-size", cli.batch_size - 1)):
        if value < 0:
            raise UsageError(f"{flag} must be >= {0 if flag == '--top-k' else 1}, got "
                             f"{value if flag == '--top-k' else value + 1}")


@_cli
def main(argv=None) -> int:
    cli = parse_args(argv)
    _check_flags(cli)
    dtype = {None: None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cli.dtype]
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and dtype is None and torch.cuda.is_available():
        dtype = torch.bfloat16  # load on CPU (then shard): pick the GPU's dtype up front
    try:
        model, tokenizer = load_for_inference(cli.ckpt, cli.tokenizer, "cpu" if distributed else cli.device, dtype)
    except (ValueError, FileNotFoundError, KeyError) as e:  # UsageError included
        raise UsageError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    reference = None  # the unfused, unquantized weights, for --bench's transformers side
    if cli.quantize and distributed:
        print("error: --quantize works on one process (not with tensor parallel)", file=sys.stderr)
        return 2
    if not distributed:
        if cli.bench:
            import copy
            reference = copy.deepcopy(model)
        fuse_for_decoding(model)  # fewer, faster matmuls per step (section 3b)
        if cli.quantize:
            quantize_int8(model, ffn_only=cli.quantize == "int8-ffn")
    is_main = True
    if distributed:
        model, dist = shard_for_inference(model)
        cli.seed = 0 if cli.seed is None else cli.seed  # every rank must draw the same tokens
        is_main = dist.is_main

    def print0(*a, **k):  # rank 0 prints
        if is_main:
            print(*a, **k)

    top_k = cli.top_k or None
    kw = dict(temperature=cli.temperature, top_p=cli.top_p, top_k=top_k, compile=cli.compile)
    a = model.args
    print0(f"model: {M.count_params(a):,} parameters (dim {a.dim}, {a.n_layers} layers), "
           f"vocab {a.vocab_size}, max_seq_len {a.max_seq_len}, {model.tok_embeddings.weight.dtype}, "
           f"{model.tok_embeddings.weight.device}; tokenizer {tokenizer.model_path}")
    try:
        if cli.chat:
            chat(model, tokenizer, system=cli.system, max_new_tokens=cli.max_new_tokens, seed=cli.seed,
                 input_fn=_input_from_rank0 if distributed else input,
                 out=sys.stdout if is_main else io.StringIO(), **kw)
        elif cli.bench:
            new = min(cli.max_new_tokens, model.args.max_seq_len - 16)
            rows = compare_with_hf(model, new_tokens=new, compile=cli.compile, reference=reference)
            for r in rows:
                print0(f"batch {r['batch_size']}: ours {r['ours']['tokens_per_s']:.1f} tokens/s "
                       f"({r['ours']['bandwidth_gb_s']:.1f} GB/s), transformers "
                       f"{r['transformers']['tokens_per_s']:.1f} tokens/s -> {r['speedup']:.2f}x")
            record = os.path.join(os.path.dirname(cli.out) or ".", "bench.json")
            os.makedirs(os.path.dirname(record) or ".", exist_ok=True)
            with open(record, "w") as f:
                json.dump({"ckpt": cli.ckpt, "rows": rows}, f, indent=1)
            print0(f"wrote {record}")
        elif cli.prompts:
            texts = _read_prompts(cli.prompts)
            if os.path.dirname(cli.out):
                os.makedirs(os.path.dirname(cli.out), exist_ok=True)
            with open(cli.out if is_main else os.devnull, "w", encoding="utf-8") as f:
                for start in range(0, len(texts), cli.batch_size):
                    batch = texts[start: start + cli.batch_size]
                    stats: dict = {}
                    outs = generate(model, tokenizer, [tokenizer.encode(t, bos=True) for t in batch],
                                    cli.max_new_tokens, seed=cli.seed, num_samples=cli.num_samples,
                                    stats=stats, **kw)
                    for i, ids in enumerate(outs):
                        prompt = batch[i // cli.num_samples]
                        completion = tokenizer.decode(ids)
                        f.write(json.dumps({"prompt": prompt, "sample": i % cli.num_samples,
                                            "completion": completion}) + "\n")
                        print0(f"--- {prompt!r}\n{prompt}{completion}")
                    _report_speed(model, stats, print0)
            print0(f"wrote {cli.out}")
        else:
            text = cli.prompt if cli.prompt is not None else ""
            prompt = tokenizer.encode(text, bos=True)  # bos alone continues "from nothing"
            for sample in range(cli.num_samples):
                print0(text, end="", flush=True)
                stream = TextStream(tokenizer, sys.stdout if is_main else io.StringIO(), tokenizer.stop_tokens)
                stats = {}
                seed = None if cli.seed is None else cli.seed + sample
                generate(model, tokenizer, [prompt], cli.max_new_tokens, seed=seed, on_token=stream,
                         stats=stats, **kw)
                stream.finish()
                _report_speed(model, stats, print0)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    finally:
        if distributed:
            # Leave together: a rank that exits while the other still talks to it
            # (gloo's threads alive) aborts with "terminate called without an
            # active exception".
            from parallel import barrier, teardown_distributed
            barrier()
            teardown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
