"""
Exercise 9 -- Memory per GPU with FSDP (§3.3.2: 4D parallelism; FSDP shards the
optimizer state and gradients, and the paper keeps the parameters gathered after the
forward pass instead of resharding them).

Fill in `fsdp_memory_per_gpu`, then:   pytest exercises/ -k fsdp_memory
The check compares it with plan.plan (python plan.py --help) for several
layouts, among them Table 4's 405B runs. Statement and hint: exercises/README.md, exercise 9.
"""

import math


def fsdp_memory_per_gpu(params_per_gpu: int, dp: int) -> dict:
    """Bytes each GPU holds for the model state under BF16 mixed precision + FSDP over
    `dp` data-parallel ranks. params_per_gpu = the parameters of this GPU's tensor- and
    pipeline-parallel slice (what FSDP then shards dp ways). Let shard =
    ceil(params_per_gpu / dp). Return a dict with:
        "weights_bf16": 2 bytes per parameter of the WHOLE slice (gathered for the step,
                        kept after forward -- the paper's choice)
        "master_fp32":  4 bytes per parameter of the shard
        "grads_fp32":   4 bytes per parameter of the shard
        "optimizer":    8 bytes per parameter of the shard (Adam's m and v, fp32)
        "total":        the sum of the four
    Worked example: params_per_gpu 1,000, dp 3 -> shard 334 -> weights 2,000,
        master 1,336, grads 1,336, optimizer 2,672, total 7,344.
    Then ask plan.plan: how much is that for 405B on 16,384 GPUs (TP 8, PP 16)?
    """
    raise NotImplementedError("exercise 9: implement fsdp_memory_per_gpu in exercises/ex09_fsdp_memory.py")
