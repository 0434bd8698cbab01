"""
Exercise 14 -- The scaling-law fit that sized Llama 3 405B (§3.2.1: IsoFLOPs curves between
6e18 and 1e22 FLOPs, each approximated by a second-degree polynomial; then a power law
N*(C) = A·C^α for the compute-optimal number of training tokens, (α, A) = (0.53, 0.29)).

Fill in `isoflops_minimum` and `fit_power_law`, then:   pytest exercises/ -k scaling_law
The check feeds them synthetic IsoFLOPs measurements made from a known (A, α), and noisy
ones, and compares with numpy's least-squares fits. Statement and hint:
exercises/README.md, exercise 14.
"""

import numpy as np


def isoflops_minimum(tokens: np.ndarray, losses: np.ndarray) -> tuple[float, float]:
    """One IsoFLOPs curve: models trained with the SAME compute on different numbers of
    training tokens (tokens (M,), M >= 3) reached the validation losses (M,). Fit
        loss ≈ a·x² + b·x + c   with x = log10(tokens)   (least squares)
    and return the vertex of the parabola: (the compute-optimal number of tokens
    10^(-b / 2a), the fitted loss there). Fit in log tokens: the curves are parabolas
    on the paper's logarithmic axis, not on a linear one.

    Worked example: tokens [1e9, 1e10, 1e11], losses [3.0, 2.0, 3.0] -> (1e10, 2.0).
    """
    raise NotImplementedError("exercise 14: implement isoflops_minimum in exercises/ex14_scaling_law.py")


def fit_power_law(compute: np.ndarray, optimal_tokens: np.ndarray) -> tuple[float, float]:
    """Fit N*(C) = A·C^α to the compute budgets C (K,) and their compute-optimal token
    counts (K,): a straight line in log-log, log N* = log A + α·log C (least squares on
    the logs). Return (A, α) -- A itself, not its logarithm.

    Worked example: compute [1e20, 1e22], tokens [2e10, 2e11] -> α = 0.5,
        A = 2e10 / (1e20)^0.5 = 2.0.
    """
    raise NotImplementedError("exercise 14: implement fit_power_law in exercises/ex14_scaling_law.py")
