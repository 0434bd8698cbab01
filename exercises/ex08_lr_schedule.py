"""
Exercise 8 -- The learning-rate schedule (§3.4.1: 405B, peak 8e-5, linear warm-up over
8,000 steps, cosine decay to 8e-7 over 1,200,000 steps; §3.4.3: annealing to 0 at the end).

Fill in `lr_schedule`, then:   pytest exercises/ -k lr_schedule
The check compares it with pretrain.lr_at at every step of several schedules.
Statement and hint: exercises/README.md, exercise 8.
"""

import math


def lr_schedule(step: int, max_lr: float, warmup_steps: int, total_steps: int,
                min_lr_ratio: float = 0.01, anneal_steps: int = 0) -> float:
    """Learning rate of the optimizer step with 0-based index `step`.

    - warm-up: step < warmup_steps -> max_lr · (step + 1) / warmup_steps
      (+1: the very first step already uses a non-zero rate);
    - cosine: min_lr + (max_lr - min_lr) · ½(1 + cos(π · progress)),
      min_lr = min_lr_ratio · max_lr, progress = (step - warmup_steps) / max(1, total_steps -
      warmup_steps), clipped to at most 1 (after total_steps the rate stays at min_lr);
    - annealing (only if anneal_steps > 0): for step >= total_steps - anneal_steps the
      rate falls linearly from the schedule's value at step (total_steps - anneal_steps)
      to 0: value_at_start · max(0, (total_steps - step - 1) / anneal_steps).

    Worked example: max_lr 1, warmup 10, total 100 -> step 0: 0.1, step 9: 1.0,
        step 10: 1.0, step 55: 0.505, step 100: 0.01.
    """
    raise NotImplementedError("exercise 8: implement lr_schedule in exercises/ex08_lr_schedule.py")
