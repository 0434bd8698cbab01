"""
Exercise 10 -- The reward model's loss (§4.1.2: "the same objective as Llama 2 except
that we remove the margin term in the loss").

Fill in `reward_loss`, then:   pytest exercises/ -k reward_loss
The check holds it to the closed form (written in exercises/checks.py) and, once
reward.py exists, to reward.reward_loss. Statement and hint: exercises/README.md, exercise 10.
"""

import torch
import torch.nn.functional as F


def reward_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry preference loss: mean over the N pairs of
        -log σ(r(x, y_chosen) - r(x, y_rejected)).
    chosen_scores, rejected_scores: (N,) scalar rewards. Returns a 0-dim tensor.
    Make it numerically stable: a score gap of ±50 must give a finite loss and gradient
    (hint: F.logsigmoid).
    Worked example: equal scores -> log 2 = 0.6931; a gap of +5 -> 0.0067.
    """
    raise NotImplementedError("exercise 10: implement reward_loss in exercises/ex10_reward_loss.py")
