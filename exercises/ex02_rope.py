"""
Exercise 2 -- Rotary position embeddings with the Llama 3.1 frequency scaling
(§3.2: RoPE base θ = 500,000; the scaling is Meta's Llama 3.1 release, not the paper:
"use_scaled_rope" with factor 8, low_freq_factor 1, high_freq_factor 4, original
context 8192, for the long contexts of §3.4.2).

Fill in `rope_frequencies` and `apply_rope`, then:   pytest exercises/ -k rope
The check compares them with model.rope_frequencies, model.precompute_freqs_cis and
model.apply_rotary_emb. Statement and hint: exercises/README.md, exercise 2.
"""

import math

import torch


def rope_frequencies(head_dim: int, theta: float = 500000.0, use_scaled_rope: bool = True,
                     scale_factor: float = 8.0, low_freq_factor: float = 1.0, high_freq_factor: float = 4.0,
                     original_max_seq_len: int = 8192) -> torch.Tensor:
    """The rotation speed (radians per position) of each pair of head dimensions:
    freq[i] = θ^(-2i / head_dim) for i = 0 .. head_dim/2 - 1. Returns (head_dim/2,) float32.
    Compute in float64, return float32.

    With use_scaled_rope (Llama 3.1), look at each frequency's wavelength 2π/freq:
      - wavelength > original_max_seq_len / low_freq_factor  (slow, long-range):  freq / scale_factor
      - wavelength < original_max_seq_len / high_freq_factor (fast, local):       freq unchanged
      - in between: (1 - s)·freq/scale_factor + s·freq with
            s = (original_max_seq_len / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)

    Worked example (no scaling): head_dim 4, θ 10000 -> [1.0, 0.01].
    With head_dim 128, θ 500,000, Llama 3.1 settings: freq[0] = 1 is kept, freq[63]
    (wavelength ~2.6M positions) is divided by 8.
    """
    raise NotImplementedError("exercise 2: implement rope_frequencies in exercises/ex02_rope.py")


def apply_rope(x: torch.Tensor, freqs: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotate each INTERLEAVED pair (x[..., 2i], x[..., 2i+1]) of every head by the angle
    positions·freqs[i] (Meta's layout; Hugging Face rotates the two halves instead).

    x: (B, T, H, head_dim); freqs: (head_dim/2,); positions: (B, T) integer positions.
    Returns (B, T, H, head_dim) in x's dtype (compute in float32).

    A pair (a, b) rotated by angle φ becomes (a·cos φ − b·sin φ, a·sin φ + b·cos φ): it is
    the complex product (a + ib)·e^{iφ}.
    Worked example: x = [[[[1., 0., 1., 0.]]]], freqs = [π/2, 0], positions = [[1]]
        -> [[[[0., 1., 1., 0.]]]]  (the first pair turns 90°, the second not at all)
    """
    raise NotImplementedError("exercise 2: implement apply_rope in exercises/ex02_rope.py")
