"""
Exercise 5 -- The SwiGLU feed-forward, its width, and the parameter count
(§3.2 and Table 3: FFN dim 14,336 / 28,672 / 53,248 for 8B / 70B / 405B; official
counts 8,030,261,248 / 70,553,706,496 / 405,853,388,800).

Fill in `swiglu`, `ffn_hidden_dim` and `count_params`, then:   pytest exercises/ -k swiglu
The check compares them with model.FeedForward, ModelArgs.ffn_hidden_dim and
model.count_params (every configuration in model.CONFIGS plus random ones).
Statement and hint: exercises/README.md, exercise 5.
"""

import torch


def swiglu(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor) -> torch.Tensor:
    """SwiGLU: w2( silu(w1 x) ⊙ (w3 x) ). Weights in nn.Linear's layout (out, in):
    w1, w3: (hidden, dim) -- gate and up; w2: (dim, hidden) -- down. x: (..., dim).
    silu(z) = z · sigmoid(z). No biases anywhere in Llama.
    Worked example: dim 1, hidden 1, w1 = w2 = w3 = [[1.]], x = [2.]
        -> silu(2) · 2 = 1.7616 · 2 = 3.5232."""
    raise NotImplementedError("exercise 5: implement swiglu in exercises/ex05_swiglu.py")


def ffn_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
    """The FFN width Meta derives from params.json:
    hidden = int(2 · 4·dim / 3)  (a SwiGLU with 3 matrices of width 2/3·4d has the
    parameters of a 2-matrix 4d FFN), then int(ffn_dim_multiplier · hidden) if a
    multiplier is given, then rounded UP to a multiple of multiple_of.

    Worked example (8B): dim 4096 -> int(10922.67) = 10922 -> ×1.3 -> 14198
                         -> next multiple of 1024 -> 14,336.
    """
    raise NotImplementedError("exercise 5: implement ffn_hidden_dim in exercises/ex05_swiglu.py")


def count_params(args) -> int:
    """Exact parameter count of a model.ModelArgs configuration, without building it.
    Use args.dim, n_layers, n_heads, n_kv_heads, vocab_size, tie_embeddings, and the FFN
    width: args.hidden_dim if it is not None, else your ffn_hidden_dim(...).
    Per block: wq (dim x n_heads·hd), wk and wv (dim x n_kv_heads·hd), wo, w1 w2 w3,
    two RMSNorm weights; plus the embedding, the output layer (unless tied to the
    embedding: Llama 3.2 1B/3B) and the final norm. hd = dim / n_heads.

    Worked example: llama3-8b -> 8,030,261,248.
    """
    raise NotImplementedError("exercise 5: implement count_params in exercises/ex05_swiglu.py")
