"""
Exercise 1 -- RMSNorm (§3.2: pre-norm RMSNorm, eps 1e-5, as in Llama 2).

Fill in `rmsnorm` below, then check it:   pytest exercises/ -k rmsnorm
The check compares it with model.RMSNorm on random inputs (exercises/checks.py).
Statement and hint: exercises/README.md, exercise 1.
"""

import torch


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Root-mean-square normalization over the last dimension, then a learned scale.

        y = x / sqrt(mean(x², over the last dim) + eps) * weight

    x: (..., dim) any float dtype; weight: (dim,). Returns (..., dim).
    Normalize in float32 (x.float()), cast the normalized values back to x's dtype,
    THEN multiply by the weight -- the order of Meta's reference (it matters for bf16).

    Worked example: x = [3., 4.], weight = [1., 2.], eps = 0
        mean(x²) = (9 + 16) / 2 = 12.5, sqrt = 3.5355
        y = [3/3.5355, 4/3.5355] * [1, 2] = [0.8485, 2.2627]
    (LayerNorm would also subtract the mean and add a bias; RMSNorm does neither.)
    """
    raise NotImplementedError("exercise 1: implement rmsnorm in exercises/ex01_rmsnorm.py")
