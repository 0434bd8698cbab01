"""
Exercise 12 -- Temperature, top-k and top-p (nucleus) sampling (not in the paper: the
defaults, temperature 0.6 and top-p 0.9, are Meta's reference code's).

Fill in `sampling_distribution`, then:   pytest exercises/ -k sampling
The check compares it with the frequencies of sample.sample_next's draws (40,000 per
row, seeded) and with worked examples exactly (one where the order of top-k and top-p
matters). Statement and hint: exercises/README.md,
exercise 12.
"""

import torch
import torch.nn.functional as F


def sampling_distribution(logits: torch.Tensor, temperature: float = 0.6, top_p: float = 0.9,
                          top_k: int | None = None) -> torch.Tensor:
    """The distribution over the vocabulary that sample.sample_next draws from.
    logits: (N, vocab). Returns probabilities (N, vocab), each row summing to 1.

    - temperature 0: greedy -- all the mass on the argmax.
    - otherwise divide the logits by the temperature;
    - top_k (if not None and < vocab): keep only the k largest logits, renormalize;
    - then top_p (if < 1), on those renormalized probabilities: sort the probabilities in decreasing order and drop every token
      whose mass BEFORE it (the sum of the probabilities ranked above it) already
      exceeds top_p -- so the first token always stays; renormalize.

    Worked example: probabilities [0.5, 0.3, 0.15, 0.05], top_p 0.7: mass before each
        token = [0, 0.5, 0.8, 0.95] -> keep the first two -> [5/8, 3/8, 0, 0].
    """
    raise NotImplementedError("exercise 12: implement sampling_distribution in exercises/ex12_sampling.py")
