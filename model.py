"""
model.py -- the Llama 3 architecture (§3.2 of "The Llama 3 Herd of Models").

Stage: architecture. Every other file builds on this one: pretrain.py trains it,
sample.py decodes with it, sft.py / reward.py / dpo.py fine-tune it.

What is in here, top to bottom:
  1. ModelArgs        -- the hyper-parameters, named exactly like Meta's params.json,
                         plus the official configurations (Table 3) by name.
  2. RMSNorm, RoPE    -- pre-norm RMSNorm, rotary embeddings with θ = 500,000 and the
                         Llama 3.1 frequency scaling.
  3. Attention        -- grouped-query attention (8 KV heads at every official size),
                         a document mask so packed documents never see each other,
                         and a static KV cache for decoding.
  4. FeedForward      -- SwiGLU.
  5. Transformer      -- the stack, with a re-callable init_weights() so a model can be
                         built on the meta device and materialized after sharding.
  6. Counting         -- exact parameter counts and FLOPs per token (for MFU).

Checkpoints in every format (ours, Meta's, Hugging Face's, DCP): checkpoint.py (load_model, save_model).

Run:    python model.py [--name small-15m]  # the official configurations [and a smoke run]
Next:   tokenizer.py (the 128K vocabulary), then pretrain.py (training this model).
"""

from __future__ import annotations

import argparse
import math
import zlib
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

# -----------------------------------------------------------------------------
# 1. Hyper-parameters


@dataclass
class ModelArgs:
    # --- the fields of Meta's params.json (so ModelArgs(**json.load(f)) just works)
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: Optional[int] = None  # None means n_heads (plain multi-head attention)
    vocab_size: int = 128256  # §3.2: 100K tiktoken + 28K non-English + 256 special
    multiple_of: int = 256  # FFN width is rounded up to a multiple of this
    ffn_dim_multiplier: Optional[float] = None
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0  # §3.2: raised from Llama 2's 10,000 for long context
    use_scaled_rope: bool = False  # Llama 3.1+: stretch low RoPE frequencies
    # --- what Llama 3.x needs beyond params.json (Meta's code hard-codes these)
    rope_scale_factor: float = 8.0  # 8 for Llama 3.1, 32 for Llama 3.2 1B/3B
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_seq_len: int = 8192  # the context the model was pre-trained at
    max_seq_len: int = 8192  # longest sequence (sizes the RoPE table and the KV cache)
    tie_embeddings: bool = False  # Llama 3.2 1B/3B share tok_embeddings and output
    hidden_dim: Optional[int] = None  # explicit FFN width (HF's intermediate_size); None: derived

    def __post_init__(self):
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        problems = [f"{name} must be positive, got {getattr(self, name)}" for name in (
            "dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len", "multiple_of")
            if getattr(self, name) <= 0]
        if problems:  # before the divisions below, which would divide by zero
            raise ValueError("invalid ModelArgs: " + "; ".join(problems))
        if self.dim % self.n_heads:
            problems.append(f"dim={self.dim} is not divisible by n_heads={self.n_heads}")
        elif (self.dim // self.n_heads) % 2:
            problems.append(f"head_dim={self.dim // self.n_heads} must be even for RoPE")
        if self.n_heads % self.n_kv_heads:
            problems.append(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.hidden_dim is not None and self.hidden_dim <= 0:
            problems.append(f"hidden_dim must be positive, got {self.hidden_dim}")
        if problems:
            raise ValueError("invalid ModelArgs: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def ffn_hidden_dim(self) -> int:
        """SwiGLU width: 2/3 of 4·dim (same parameter count as a 4·dim ReLU FFN, since
        SwiGLU has three matrices), times ffn_dim_multiplier, rounded up to multiple_of.
        8B: int(2·4·4096/3)=10922 → ×1.3 → 14198 → up to a multiple of 1024 → 14,336."""
        if self.hidden_dim is not None:
            return self.hidden_dim
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    @classmethod
    def from_name(cls, name: str, **overrides) -> "ModelArgs":
        """An official configuration (Table 3; Llama 3.1/3.2 model cards) or one of the
        small ones that train on a laptop CPU, with optional field overrides."""
        if name not in CONFIGS:
            raise ValueError(f"unknown model name {name!r}; known: {', '.join(CONFIGS)}")
        return cls(**{**CONFIGS[name], **overrides})


# The official configurations. Parameter counts (count_params) must equal Meta's
# exactly: 8,030,261,248 for 8B and so on; tests/test_model.py checks.
_LLAMA3_8B = dict(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=128256,
                  multiple_of=1024, ffn_dim_multiplier=1.3, norm_eps=1e-5, rope_theta=500000.0)
_LLAMA3_70B = dict(_LLAMA3_8B, dim=8192, n_layers=80, n_heads=64, multiple_of=4096)
_SCALED_31 = dict(use_scaled_rope=True, rope_scale_factor=8.0, max_seq_len=131072)
_SCALED_32 = dict(use_scaled_rope=True, rope_scale_factor=32.0, max_seq_len=131072,
                  tie_embeddings=True)
CONFIGS = {
    "llama3-8b": dict(_LLAMA3_8B, max_seq_len=8192),
    "llama3-70b": dict(_LLAMA3_70B, max_seq_len=8192),
    "llama3.1-8b": dict(_LLAMA3_8B, **_SCALED_31),
    "llama3.1-70b": dict(_LLAMA3_70B, **_SCALED_31),
    "llama3.1-405b": dict(_LLAMA3_8B, dim=16384, n_layers=126, n_heads=128, multiple_of=4096,
                          ffn_dim_multiplier=1.2, **_SCALED_31),
    "llama3.2-1b": dict(_LLAMA3_8B, dim=2048, n_layers=16, n_heads=32, multiple_of=256,
                        ffn_dim_multiplier=1.5, **_SCALED_32),
    "llama3.2-3b": dict(_LLAMA3_8B, dim=3072, n_layers=28, n_heads=24, multiple_of=256,
                        ffn_dim_multiplier=1.0, **_SCALED_32),
    # Small ones, our choice, that keep every Llama 3 feature (GQA, θ=500,000, SwiGLU, untied output)
    # and train on a laptop CPU, with tokenizer.py's 8,192-token BPE. dial-w, the scaling-law dial (§3.2.1,
    # scaling.py): 4 layers of width 16·w (tiny-1m is dial-4; dial-0.5, width 8, for the smallest budgets).
    "tiny-1m": dict(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=8192,
                    multiple_of=32, rope_theta=500000.0, max_seq_len=512),
    "small-7m": dict(dim=256, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=8192,
                     multiple_of=64, rope_theta=500000.0, max_seq_len=1024),
    "small-15m": dict(dim=384, n_layers=6, n_heads=6, n_kv_heads=2, vocab_size=8192,
                      multiple_of=128, rope_theta=500000.0, max_seq_len=1024),
}
CONFIGS.update({f"dial-{w:g}": dict(CONFIGS["tiny-1m"], dim=round(16 * w), max_seq_len=1024) for w in (0.5, *range(1, 17))})

# -----------------------------------------------------------------------------
# 2. RMSNorm and rotary position embeddings (RoPE)


class RMSNorm(nn.Module):
    """Pre-norm RMSNorm (§3.2, as Llama 2): x / sqrt(mean(x²) + eps) · weight.
    Computed in fp32 even under bf16, then cast back, as Meta's reference does."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight

    def reset_parameters(self):
        nn.init.ones_(self.weight)


def rope_frequencies(args: ModelArgs) -> torch.Tensor:
    """The rotation speed of each pair of head dimensions: θ^(-2i/head_dim), shape
    (head_dim/2,). With use_scaled_rope (Llama 3.1), long wavelengths (low
    frequencies) are divided by scale_factor, short ones kept, and the band in between
    interpolated smoothly -- so a model trained at 8K extends to 128K (§3.4.2)."""
    hd = args.head_dim
    freqs = 1.0 / (args.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float64)[: hd // 2] / hd))
    if not args.use_scaled_rope:
        return freqs.float()
    old_len = args.rope_original_max_seq_len
    low_freq_wavelen = old_len / args.rope_low_freq_factor  # longer than this: scale
    high_freq_wavelen = old_len / args.rope_high_freq_factor  # shorter than this: keep
    wavelen = 2 * math.pi / freqs
    smooth = (old_len / wavelen - args.rope_low_freq_factor) / (
        args.rope_high_freq_factor - args.rope_low_freq_factor)
    interpolated = (1 - smooth) * freqs / args.rope_scale_factor + smooth * freqs
    scaled = torch.where(wavelen > low_freq_wavelen, freqs / args.rope_scale_factor, interpolated)
    scaled = torch.where(wavelen < high_freq_wavelen, freqs, scaled)
    return scaled.float()


def precompute_freqs_cis(args: ModelArgs) -> torch.Tensor:
    """cos and sin of position·frequency for every position < max_seq_len: shape
    (max_seq_len, head_dim/2, 2). These are the real and imaginary parts of Meta's
    complex `freqs_cis`; we store them as reals because Module.to(bfloat16) would
    drop the imaginary part of a complex buffer, and real math compiles everywhere."""
    freqs = rope_frequencies(args)  # (hd/2,)
    t = torch.arange(args.max_seq_len, dtype=torch.float32)
    angles = torch.outer(t, freqs)  # (max_seq_len, hd/2)
    return torch.stack([angles.cos(), angles.sin()], dim=-1)


def apply_rotary_emb(x: torch.Tensor, freqs_cis: torch.Tensor) -> torch.Tensor:
    """Rotate each interleaved pair (x[2i], x[2i+1]) of every head by its angle, as
    Meta's reference does (Hugging Face rotates the two halves instead; see
    convert_hf_state_dict for how that is reconciled).
    x: (B, T, n_heads, head_dim); freqs_cis: (B or 1, T, head_dim/2, 2)."""
    x_pairs = x.float().reshape(*x.shape[:-1], -1, 2)  # (B, T, H, hd/2, 2)
    cos = freqs_cis[..., 0].unsqueeze(2)  # (B, T, 1, hd/2)
    sin = freqs_cis[..., 1].unsqueeze(2)
    x0, x1 = x_pairs[..., 0], x_pairs[..., 1]
    # (x0 + i·x1)·(cos + i·sin) = (x0·cos − x1·sin) + i·(x0·sin + x1·cos)
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).type_as(x)


# -----------------------------------------------------------------------------
# 3. Attention: grouped-query attention, document masking, KV cache


class KVCache(nn.Module):
    """A static cache (gpt-fast style): sized once for (batch, max_seq_len) so that
    every decoding step has the same shapes and torch.compile can capture it.
    GQA is what makes it small: 8 KV heads instead of n_heads (§3.2), e.g. 70B keeps
    8 instead of 64 heads per layer, an 8x smaller cache."""

    def __init__(self, batch_size, max_seq_len, n_kv_heads, head_dim, dtype, device):
        super().__init__()
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Write k, v (B, n_kv, T, hd) at cache slots (T,); return the full caches
        (B, n_kv, S, hd). Slots not yet written are hidden by the attention mask."""
        self.k_cache.index_copy_(2, slots, k.to(self.k_cache.dtype))
        self.v_cache.index_copy_(2, slots, v.to(self.v_cache.dtype))
        return self.k_cache, self.v_cache


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        # §3.2: grouped query attention -- n_heads query heads share n_kv_heads key and
        # value heads (8 at every official size). No biases anywhere.
        self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)
        self.wqkv: Optional[nn.Module] = None  # decoding: wq|wk|wv in one (quantize.py)
        self.cache: Optional[KVCache] = None
        # "sdpa" (plain, any device) or "flex" (FlexAttention block mask); see _attend.
        self.attn_impl = "sdpa"
        self.gather_kv = None  # context parallel (§3.3.2): all-gather K, V over the sequence (parallel.py)

    def forward(self, x, freqs_cis, mask=None, slots=None, doc_ids=None):
        """x: (B, T, dim); freqs_cis: (B|1, T, hd/2, 2); mask: None (causal), or bool
        (B, 1, T, S) True = may attend; slots: (T,) cache slots to write when decoding."""
        B, T, _ = x.shape
        # Tensor parallel (parallel.py): the projections hold a slice of the heads; count them by width.
        if self.wqkv is not None:  # fused (decoding, never sharded): (B, T, (n_heads + 2·n_kv_heads)·hd)
            q, k, v = self.wqkv(x).split([self.n_heads * self.head_dim] + [self.n_kv_heads * self.head_dim] * 2, -1)
        else:
            q, k, v = self.wq(x), self.wk(x), self.wv(x)
        # (B, T, n_heads, hd), (B, T, n_kv_heads, hd) twice
        q, k, v = (t.view(B, T, -1, self.head_dim) for t in (q, k, v))
        q, k = apply_rotary_emb(q, freqs_cis), apply_rotary_emb(k, freqs_cis)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, T, hd)
        if self.cache is not None:
            k, v = self.cache.update(slots, k, v)  # (B, n_kv, S, hd), S = cache length
        if self.gather_kv is not None:  # (B, n_kv, T/cp, hd) -> every CP rank's: (B, n_kv, T, hd)
            k, v = self.gather_kv(k, v)
        out = self._attend(q, k, v, mask, doc_ids)  # (B, n_heads, T, hd)
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))

    def _attend(self, q, k, v, mask, doc_ids):
        if self.attn_impl == "flex" and doc_ids is not None and self.cache is None:
            # mask is then the BlockMask that Transformer.forward built once for all layers
            block_mask = mask if mask is not None and not isinstance(mask, torch.Tensor) else None
            return flex_document_attention(q, k, v, doc_ids, block_mask=block_mask)
        if q.shape[2] == 1 and mask is not None and q.device.type == "cpu":
            return one_query_attention(q, k, v, mask)
        # scaled_dot_product_attention repeats the KV heads for GQA itself
        # (enable_gqa); with no mask it uses the fused causal kernels.
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        # With a mask, flash and memory-efficient SDPA refuse GQA; on CUDA the cuDNN
        # kernel takes it, so no KV-head repetition is needed.
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def one_query_attention(q, k, v, mask):
    """Attention of ONE new token per row over the KV cache (decoding), as two small
    matmuls. On CPU, SDPA's flash kernel pays a per-call setup that dominates a 1 x S
    problem; here the query heads that share a KV head are grouped so that GQA needs
    no repeated keys.
    q: (B, H, 1, hd); k, v: (B, KV, S, hd); mask: (B, 1, 1, S) bool -> (B, H, 1, hd)."""
    B, H, _, hd = q.shape
    KV = k.shape[1]
    qg = q.reshape(B, KV, H // KV, hd)  # (B, KV, G, hd): query head h uses KV head h // G
    if torch.compiler.is_compiling():
        # Under torch.compile (sample.py --compile) the same products written as
        # broadcast multiply + sum: inductor fuses them with the cache write, the mask
        # and the softmax into one C++ loop, where bmm would be two library calls per
        # layer. Eager mode keeps bmm: there the broadcast would materialize
        # (B, KV, G, S, hd).
        scores = (qg[:, :, :, None, :].float() * k[:, :, None].float()).sum(-1) * hd**-0.5  # (B, KV, G, S)
        probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        out = (probs[..., None] * v[:, :, None].float()).sum(-2)  # (B, KV, G, hd)
        return out.to(q.dtype).reshape(B, H, 1, hd)
    scores = (qg @ k.transpose(-1, -2)).float() * hd**-0.5  # (B, KV, G, S), fp32 softmax
    scores = scores.masked_fill(~mask, float("-inf"))  # mask (B, 1, 1, S) broadcasts
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    return (probs @ v).reshape(B, H, 1, hd)  # (B, KV, G, hd) -> (B, H, 1, hd)


_compiled_flex = None


def document_block_mask(doc_ids: torch.Tensor):
    """(B, T) doc_ids -> FlexAttention BlockMask of causal + same-document attention:
    one bit per 128x128 tile (plus the per-token rule for partial tiles), never a
    dense (T x T) mask. Built once per forward and shared by every layer."""
    from torch.nn.attention.flex_attention import create_block_mask

    def document_causal(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (doc_ids[b, q_idx] == doc_ids[b, kv_idx])

    B, T = doc_ids.shape
    return create_block_mask(document_causal, B, None, T, T, device=doc_ids.device)


def flex_document_attention(q, k, v, doc_ids, block_mask=None):
    """Causal + same-document attention with FlexAttention's block mask (torchtitan's
    approach). A dense (T x T) boolean mask per row costs O(T²) memory -- 4 GiB per row
    at 64K tokens -- while the block mask stores one bit per 128x128 tile and lets the
    kernel skip tiles that are entirely masked (§3.2: at very long sequences, document
    masking matters). q: (B, H, T, hd); doc_ids: (B, T); block_mask: the
    document_block_mask(doc_ids) if the caller already built it (built here otherwise)."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention
    if block_mask is None:
        block_mask = document_block_mask(doc_ids)
    if q.device.type == "cuda":  # fused kernel needs compile; eager is a slow reference
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention)
        return _compiled_flex(q, k, v, block_mask=block_mask, enable_gqa=True)
    return flex_attention(q, k, v, block_mask=block_mask, enable_gqa=True)


# -----------------------------------------------------------------------------
# 4. Feed-forward: SwiGLU


class FeedForward(nn.Module):
    """SwiGLU (Shazeer 2020), as Llama 2: w2( silu(w1 x) ⊙ w3 x )."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # up
        self.w13: Optional[nn.Module] = None  # decoding: w1|w3 in one (quantize.py)

    def forward(self, x):  # (B, T, dim) -> (B, T, dim)
        if self.w13 is not None:  # fused (decoding): (B, T, 2·hidden) -> gate, up
            gate, up = self.w13(x).chunk(2, dim=-1)
        else:
            gate, up = self.w1(x), self.w3(x)
        return self.w2(F.silu(gate) * up)


# -----------------------------------------------------------------------------
# 5. The Transformer


class TransformerBlock(nn.Module):
    def __init__(self, layer_id: int, args: ModelArgs):
        super().__init__()
        self.layer_id = layer_id
        self.attention = Attention(args)
        self.feed_forward = FeedForward(args.dim, args.ffn_hidden_dim)
        self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

    def forward(self, x, freqs_cis, mask=None, slots=None, doc_ids=None):
        # Pre-norm residual blocks: normalize the input of each sub-layer, never the residual stream.
        h = x + self.attention(self.attention_norm(x), freqs_cis, mask, slots, doc_ids)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.vocab_size, self.n_layers = args.vocab_size, args.n_layers
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        # Keyed "0", "1", ...: Meta's ModuleList names (layers.0.attention.wq.weight) that survive pipeline splits.
        self.layers = nn.ModuleDict({str(i): TransformerBlock(i, args) for i in range(args.n_layers)})
        self.norm = RMSNorm(args.dim, eps=args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:  # Llama 3.2 1B/3B: one matrix for input and output
            self.output.weight = self.tok_embeddings.weight
        # Not saved in checkpoints (persistent=False): it is a function of ModelArgs.
        self.register_buffer("freqs_cis", precompute_freqs_cis(args), persistent=False)
        self.init_weights()

    def reset_rope(self):
        """Recompute the RoPE table in fp32 on the model's device. Needed after
        to_empty() (the buffer then holds garbage) and after a dtype cast."""
        self.freqs_cis = precompute_freqs_cis(self.args).to(self.freqs_cis.device)

    def _apply(self, fn, recurse=True):
        # .to(bfloat16) casts floating buffers, to_empty() leaves garbage (and unties): recompute RoPE.
        super()._apply(fn, recurse)
        if self.args.tie_embeddings and self.output.weight is not self.tok_embeddings.weight:
            self.output.weight = self.tok_embeddings.weight
        if self.freqs_cis.device.type != "meta":
            self.reset_rope()
        return self

    @torch.no_grad()
    def init_weights(self, seed: Optional[int] = None):
        """(Re-)initialize every parameter. Callable after building on the meta device, sharding
        and to_empty(): so parallel.py makes a 405B model that never exists whole on one rank.

        Our choice (the paper does not say): N(0, 0.02) everywhere, the two matrices
        that write into the residual stream (wo, w2) scaled by 1/sqrt(2·n_layers)
        (GPT-2), norms at 1. With a seed, every parameter gets its own generator
        seeded by (seed, name): the result is the same whatever the sharding layout,
        so a 2-rank FSDP run starts from exactly the weights of a 1-process run."""
        from parallel import copy_full_into  # each rank keeps its slice of a sharded parameter
        self.reset_rope()
        for name, param in self.named_parameters():  # tied weights appear once
            if param.device.type == "meta":
                continue
            std = 0.02
            if name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
                std = 0.02 / math.sqrt(2 * self.n_layers)
            if name.endswith("norm.weight"):
                full = torch.ones(param.shape)
            else:
                gen = (torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
                       if seed is not None else None)
                full = torch.empty(param.shape).normal_(0.0, std, generator=gen)
                full.clamp_(-3 * std, 3 * std)  # truncated normal, no outliers
            copy_full_into(param, full)

    def setup_caches(self, batch_size: int, max_seq_len: Optional[int] = None, dtype=None, device=None):
        """Allocate a static KV cache of (batch_size, max_seq_len) in every layer."""
        max_seq_len = max_seq_len or self.args.max_seq_len
        if max_seq_len > self.args.max_seq_len:
            raise ValueError(f"cache length {max_seq_len} > max_seq_len {self.args.max_seq_len}")
        w = next(self.parameters())  # (a pipeline stage may have no tok_embeddings)
        for layer in self.layers.values():
            layer.attention.cache = KVCache(batch_size, max_seq_len, self.args.n_kv_heads,
                                            self.args.head_dim, dtype or w.dtype, device or w.device)

    def clear_caches(self):
        for layer in self.layers.values():
            layer.attention.cache = None

    @property
    def cache_len(self) -> Optional[int]:
        cache = next((layer.attention.cache for layer in self.layers.values()), None)
        return None if cache is None else cache.k_cache.shape[2]

    def set_attention(self, impl: str):
        """'sdpa' (dense boolean masks, every device) or 'flex' (FlexAttention block
        masks for packed documents: use on GPU at 8K+ tokens)."""
        assert impl in ("sdpa", "flex"), f"unknown attention implementation {impl!r}"
        for layer in self.layers.values():
            layer.attention.attn_impl = impl

    def forward(self, tokens: torch.Tensor, *, doc_ids=None, positions=None, attn_mask=None,
                start_pos=None, return_hidden: bool = False) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, vocab_size) in fp32, or with return_hidden the
        final normalized hidden states (B, T, dim) (the reward model's trunk).

        doc_ids (B, T): document index of each token of a packed row; attention never
          crosses documents (§3.2) and RoPE positions restart at each document.
        positions (B, T): explicit RoPE positions (e.g. left-padded batches).
        attn_mask (B, T, S) bool: explicit mask, True = may attend; S = T, or the
          cache length when decoding.
        start_pos (int or 0-dim tensor): decoding with the KV cache -- the tokens are
          written at cache slots [start_pos, start_pos + T).
        A pipeline stage (parallel.py) lacks tok_embeddings (not the first: `tokens` are
        then hidden states (B, T, dim)) or norm and output (not the last: returns h)."""
        first = self.tok_embeddings is not None
        B, T = self._check_tokens(tokens, start_pos) if first else tokens.shape[:2]
        decoding = self.cache_len is not None
        if decoding and start_pos is None:
            raise ValueError("a KV cache is set up: pass start_pos (or call clear_caches())")
        if not decoding and start_pos is not None:
            raise ValueError("start_pos given but no KV cache: call setup_caches() first")

        slots = torch.arange(T, device=tokens.device) + start_pos if decoding else None  # (T,)
        if positions is None:
            if doc_ids is not None:
                positions = positions_from_doc_ids(doc_ids)  # restart per document
            else:
                positions = (slots if decoding else torch.arange(T, device=tokens.device))[None]
        if positions.max() >= self.args.max_seq_len:
            raise ValueError(f"position {int(positions.max())} >= max_seq_len {self.args.max_seq_len}")
        freqs_cis = self.freqs_cis[positions]  # (B|1, T, hd/2, 2)

        mask = None  # None = plain causal (the fused kernels' fast path)
        if attn_mask is not None:
            mask = attn_mask[:, None]  # (B, 1, T, S): broadcast over heads
        elif decoding:
            # Slot s is visible to the token at slot p iff s <= p: causal over the cache,
            # and hides slots not written yet.
            key_slots = torch.arange(self.cache_len, device=tokens.device)
            mask = (key_slots[None, :] <= slots[:, None])[None, None]  # (1, 1, T, S)
        elif doc_ids is not None:
            if all(layer.attention.attn_impl == "flex" for layer in self.layers.values()):
                # FlexAttention: one block mask for all layers, and no dense (B, T, T)
                # mask at all (O(T²) memory is what the block mask is there to avoid),
                # and building it once, not once per layer, matters on a GPU.
                mask = document_block_mask(doc_ids)
            else:
                mask = document_causal_mask(doc_ids)[:, None]  # (B, 1, T, T)

        h = self.tok_embeddings(tokens) if first else tokens  # (B, T, dim)
        for layer in self.layers.values():
            h = layer(h, freqs_cis, mask, slots, doc_ids)
        if self.output is None:
            return h
        h = self.norm(h)
        return h if return_hidden else self.output(h).float()  # (B, T, vocab)

    def _check_tokens(self, tokens, start_pos):
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
            raise ValueError(f"tokens must be a (batch, seq) tensor, got {getattr(tokens, 'shape', type(tokens))}")
        if tokens.dtype not in (torch.long, torch.int32):
            raise TypeError(f"tokens must be int64 (or int32) token ids, got {tokens.dtype}")
        B, T = tokens.shape
        end = T + (int(start_pos) if start_pos is not None else 0)
        limit = self.cache_len or self.args.max_seq_len
        if end > limit:
            raise ValueError(f"sequence of {end} tokens is longer than max_seq_len={limit}")
        if tokens.numel() and not tokens.is_meta:
            lo, hi = int(tokens.min()), int(tokens.max())
            if lo < 0 or hi >= self.vocab_size:
                raise ValueError(f"token id out of range [0, {self.vocab_size}): min {lo}, max {hi}")
        return B, T


def positions_from_doc_ids(doc_ids: torch.Tensor) -> torch.Tensor:
    """Position of each token inside its own document. (B, T) -> (B, T).
    [[0,0,0,1,1]] -> [[0,1,2,0,1]]"""
    T = doc_ids.shape[1]
    idx = torch.arange(T, device=doc_ids.device).expand_as(doc_ids)
    is_start = torch.ones_like(doc_ids, dtype=torch.bool)
    is_start[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    start = torch.where(is_start, idx, torch.zeros_like(idx))
    start = torch.cummax(start, dim=1).values  # index of the current document's start
    return idx - start


def document_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T, T) bool: token i sees token j iff j <= i and both belong to
    the same document (§3.2)."""
    T = doc_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
    return causal[None] & same_doc


# -----------------------------------------------------------------------------
# 6. Counting parameters and FLOPs


def count_params(args: ModelArgs) -> int:
    """Exact parameter count, without building the model.
    llama3-8b: 8,030,261,248 (Meta's released checkpoint)."""
    d, hd, h = args.dim, args.head_dim, args.ffn_hidden_dim
    attention = d * args.n_heads * hd * 2 + d * args.n_kv_heads * hd * 2  # wq, wo, wk, wv
    block = attention + 3 * d * h + 2 * d  # + w1 w2 w3 + two norms
    embeddings = args.vocab_size * d * (1 if args.tie_embeddings else 2)
    return args.n_layers * block + embeddings + d  # + final norm


def flops_per_token(args: ModelArgs, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), PaLM appendix B:
    6·N for the matrix multiplies of N non-embedding-lookup parameters, plus
    12·n_layers·dim·seq_len for attention scores and values (causal masking is not
    discounted, by convention). The input embedding is a lookup, not a matmul."""
    n_matmul = count_params(args) - (0 if args.tie_embeddings else args.vocab_size * args.dim)
    return 6 * n_matmul + 12 * args.n_layers * args.dim * seq_len


# -----------------------------------------------------------------------------
# Smoke run: python model.py [--name small-15m]

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Show the Llama 3 configurations; smoke-run one.")
    parser.add_argument("--name", default=None, help="run a forward/backward of this configuration")
    cli = parser.parse_args()
    print(f"{'name':<14} {'params':>17} {'dim':>6} {'layers':>6} {'heads':>5} {'kv':>3} {'ffn':>6} {'GFLOP/token@8K':>15}")
    for name, a in ((n, ModelArgs.from_name(n)) for n in CONFIGS):
        print(f"{name:<14} {count_params(a):>17,} {a.dim:>6} {a.n_layers:>6} {a.n_heads:>5} {a.n_kv_heads:>3} "
              f"{a.ffn_hidden_dim:>6} {flops_per_token(a, 8192) / 1e9:>15.2f}")
    if cli.name:
        args = ModelArgs.from_name(cli.name)
        tokens = torch.randint(0, args.vocab_size, (2, 257))
        loss = F.cross_entropy(Transformer(args)(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        print(f"{cli.name}: loss {loss.item():.3f} at init (ln vocab = {math.log(args.vocab_size):.3f}); backward ran")
