"""
Exercise 7 -- MinHash: near-duplicate detection for de-duplication
(§3.1.1: "we perform global MinHash de-duplication across the entire dataset").

Fill in `minhash_signature` and `estimate_jaccard`, then:   pytest exercises/ -k minhash
The check compares them with dedup.minhash_signatures (vectorized over many documents)
and dedup.jaccard (the exact similarity). Statement and hint: exercises/README.md, exercise 7.
"""

import numpy as np


def minhash_signature(shingles: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The MinHash signature of one document.

    shingles: (S,) uint64 -- 32-bit hashes of the document's 5-word shingles
              (dedup.shingle_hashes(text) gives them).
    a, b:     (K,) uint64 -- K hash functions h_k(x) = ((a_k·x + b_k) mod 2^64) >> 32
              (dedup.minhash_params(K, seed) gives them).
    Returns (K,) uint32: entry k is the minimum over all shingles of h_k(shingle).

    Note: numpy uint64 arithmetic wraps around mod 2^64 by itself. Taking the min of
    the 64-bit values and then the top 32 bits is the same as the min of the top 32 bits.
    Worked example: shingles [1, 2], a [2], b [0] -> min(2, 4) = 2 -> 2 >> 32 = 0.
    """
    raise NotImplementedError("exercise 7: implement minhash_signature in exercises/ex07_minhash.py")


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """The MinHash estimate of the Jaccard similarity |A ∩ B| / |A ∪ B| of two shingle
    sets: the fraction of signature entries that are equal. Why: for one random hash
    function, P(min over A == min over B) = |A ∩ B| / |A ∪ B|.
    Worked example: [1, 2, 3, 4] vs [1, 2, 0, 4] -> 0.75."""
    raise NotImplementedError("exercise 7: implement estimate_jaccard in exercises/ex07_minhash.py")
