"""
Exercise 6 -- Training a byte-level BPE, one merge at a time (§3.2: the 128K
vocabulary is tiktoken's byte-level BPE, 100K tokens, plus 28K more).

Fill in `merge_pair` and `learn_merges`, then:   pytest exercises/ -k bpe
The check compares them with tokenizer._merge_word and tokenizer.train_bpe (the
project's fast trainer: same result, incremental counts and a heap).
Statement and hint: exercises/README.md, exercise 6.
"""

from collections import Counter

from tokenizer import count_chunks  # Meta's pre-tokenization regex, chunks counted


def merge_pair(word: list[int], a: int, b: int, new_id: int) -> list[int]:
    """Replace every occurrence of the adjacent pair (a, b) in `word`, scanning left to
    right and never overlapping, by new_id.

    Worked examples: ([1, 2, 3, 1, 2], 1, 2, 9) -> [9, 3, 9]
                     ([5, 5, 5], 5, 5, 7)       -> [7, 5]
    """
    raise NotImplementedError("exercise 6: implement merge_pair in exercises/ex06_bpe.py")


def learn_merges(texts: list[str], n_merges: int) -> list[bytes]:
    """Learn n_merges new tokens from `texts`; return their bytes in the order learned.

    1. chunks = count_chunks(texts): {chunk string: how often it occurs}. Merges never
       cross chunk boundaries. Each chunk becomes its list of UTF-8 byte values
       (token ids 0..255 are the single bytes).
    2. Repeat: count every adjacent pair over all chunks, weighted by the chunk's
       frequency; take the most frequent pair -- ties broken by the smallest
       (bytes of a, bytes of b), compared as Python bytes; the merged token's bytes are
       bytes_a + bytes_b and its id is the next free id (256, 257, ...); merge it
       everywhere with merge_pair.
    3. Stop after n_merges new tokens, or earlier when no pair is left.
    No corner case hides here: bytes_a + bytes_b is never already a token. "ab"+"c" and
    later "a"+"bc" cannot both be merged, because merging a pair EVERYWHERE (left to
    right, as merge_pair does) segments equal byte spans alike -- try to prove it, or see
    docs/NOTES.md.

    Worked example: texts ["aaab aaab"] -> chunks {"aaab": 1, " aaab": 1};
        pairs (a,a): 4, (a,b): 2, ( ,a): 1 -> first merge b"aa" (id 256) ...
    """
    raise NotImplementedError("exercise 6: implement learn_merges in exercises/ex06_bpe.py")
