"""
Exercise 4 -- The document mask of packed sequences (§3.2: "an attention mask that
prevents self-attention between different documents within the same sequence").

Fill in `positions_from_doc_ids` and `document_causal_mask`, then:
    pytest exercises/ -k document_mask
The check compares them with model.positions_from_doc_ids and model.document_causal_mask.
Statement and hint: exercises/README.md, exercise 4.
"""

import torch


def positions_from_doc_ids(doc_ids: torch.Tensor) -> torch.Tensor:
    """The position of every token inside its own document (RoPE restarts at 0 at each
    document start). doc_ids: (B, T) integer document index of each token of a packed
    row (equal neighbours = same document). Returns (B, T) long.

    Worked example: [[0, 0, 0, 1, 1, 2]] -> [[0, 1, 2, 0, 1, 0]]
                    [[7, 7, 7, 7]]       -> [[0, 1, 2, 3]]
    """
    raise NotImplementedError("exercise 4: implement positions_from_doc_ids in exercises/ex04_document_mask.py")


def document_causal_mask(doc_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T, T) bool: mask[b, i, j] is True iff token i may attend to token j,
    i.e. j <= i (causal) AND both are in the same document.

    Worked example: doc_ids [[0, 0, 1]] ->
        [[[True,  False, False],
          [True,  True,  False],
          [False, False, True ]]]
    """
    raise NotImplementedError("exercise 4: implement document_causal_mask in exercises/ex04_document_mask.py")
