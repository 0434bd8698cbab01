"""
Exercise 3 -- Grouped-query attention and what it saves in the KV cache
(§3.2: "grouped query attention (GQA) with 8 key-value heads" at every size).

Fill in `gqa_attention` and `kv_cache_bytes`, then:   pytest exercises/ -k gqa
The check compares them with model.Attention._attend (scaled_dot_product_attention
with enable_gqa) and with the bytes that model.KVCache allocates.
Statement and hint: exercises/README.md, exercise 3.
"""

import math

import torch


def gqa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention where n_heads query heads share n_kv_heads key/value heads.

    q: (B, n_heads, T, head_dim); k, v: (B, n_kv_heads, T, head_dim), n_heads a multiple
    of n_kv_heads. Query head h uses KV head h // (n_heads // n_kv_heads): heads 0..3
    share KV head 0 when there are 8 query heads and 2 KV heads.
    Returns (B, n_heads, T, head_dim) = softmax(q kᵀ / sqrt(head_dim) + causal mask) v.
    Do it by hand (repeat the KV heads, matmul, mask, softmax), not with
    F.scaled_dot_product_attention.

    Worked example of the head mapping: n_heads 4, n_kv_heads 2 -> query heads [0,1,2,3]
    read KV heads [0,0,1,1] (torch.repeat_interleave, not torch.repeat).
    """
    raise NotImplementedError("exercise 3: implement gqa_attention in exercises/ex03_gqa.py")


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, seq_len: int, batch_size: int,
                   bytes_per_value: int = 2) -> int:
    """Bytes of a KV cache holding seq_len tokens for batch_size sequences: keys AND
    values, every layer, every KV head. bytes_per_value 2 for bf16, 4 for fp32.

    Worked example: 2 layers, 1 KV head, head_dim 4, 10 tokens, batch 1, bf16
        -> 2 (k and v) · 2 · 1 · 4 · 10 · 1 · 2 = 320 bytes.
    Then compute llama3-70b at 8,192 tokens (80 layers, head_dim 128) with its 8 KV
    heads and with 64 (plain multi-head attention): GQA saves 8x.
    """
    raise NotImplementedError("exercise 3: implement kv_cache_bytes in exercises/ex03_gqa.py")
