"""
Exercise 11 -- The DPO loss and its gradient (§4.1.4: DPO with β = 0.1; Rafailov et
al. 2023).

Fill in `dpo_loss` and `dpo_loss_grad`, then:   pytest exercises/ -k dpo
The check compares your loss with a closed form, autograd's gradient of your loss with
your `dpo_loss_grad`, and -- once dpo.py exists -- everything with dpo.dpo_loss.
Statement and hint: exercises/README.md, exercise 11.
"""

import torch
import torch.nn.functional as F


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor,
             beta: float = 0.1):
    """Per-pair DPO losses and the implicit rewards. All inputs (N,): summed log-probs of
    the chosen / rejected response under the policy (being trained) and the frozen
    reference model. With Δ = (πc - rc) - (πr - rr):
        losses           = -log σ(β Δ)                       (N,)
        chosen_rewards   = β (πc - rc), detached             (N,)  (for logging)
        rejected_rewards = β (πr - rr), detached             (N,)
    Return the tuple (losses, chosen_rewards, rejected_rewards).
    Worked example: policy == reference -> Δ = 0 -> every loss is log 2 = 0.6931.
    """
    raise NotImplementedError("exercise 11: implement dpo_loss in exercises/ex11_dpo.py")


def dpo_loss_grad(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                  reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor,
                  beta: float = 0.1):
    """The gradient of losses.sum() with respect to policy_chosen_logps and to
    policy_rejected_logps, by hand (no autograd): derive d/dz [-log σ(z)] first.
    Returns (grad_chosen (N,), grad_rejected (N,)).
    Worked example: Δ = 0, β = 0.1 -> (-0.05, +0.05) for every pair.
    What does the size of the gradient say about pairs the policy already ranks right?
    """
    raise NotImplementedError("exercise 11: implement dpo_loss_grad in exercises/ex11_dpo.py")
