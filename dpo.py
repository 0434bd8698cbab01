"""
dpo.py -- Direct Preference Optimization (§4.1.4), the last step of a post-training round.

Stage of the paper: §4.1 runs reward model -> rejection sampling -> SFT -> DPO, six
rounds. Llama 3 chose DPO over PPO ("less compute for large scale models and performs
better"). Written as a difference from pretrain.py: the optimizer, schedule, training
loop, logging, checkpoints and export are imported from there; this file owns the
preference data, the sequence log-probabilities and the loss.

What is notable here
- `dpo_loss` is the DPO paper's (Rafailov et al. 2023, eq. 7): with
  Δ = (log π(y_c|x) - log π_ref(y_c|x)) - (log π(y_r|x) - log π_ref(y_r|x)),
  loss = -log σ(β Δ), and the implicit rewards β(log π - log π_ref) for the log.
- §4.1.4's two changes to DPO, both switchable so their effect can be measured:
  * formatting tokens (header and termination tokens) are masked out of the chosen and
    rejected log-probabilities (--mask-format-tokens, default on): they are the same in
    both responses, and "the conflicting gradients on them" made the model repeat or
    stop early;
  * an NLL term with coefficient 0.2 on the chosen sequences (--nll-coef 0.2) keeps the
    log-probability of the chosen responses from falling (DPO alone can lower BOTH).
- The reference model's log-probabilities are computed ONCE, before training, for
  every training and held-out pair, and stored as two tensors: the reference model is
  the policy at step 0, so there is never a second model in memory.
- The log uses TRL's metric names (rewards/chosen, rewards/rejected,
  rewards/accuracies, rewards/margins, logps/chosen, logps/rejected; "eval_" in front
  on held-out pairs), so curves can be compared with a TRL DPOTrainer run.
- The measure that matters: held-out task accuracy under greedy decoding, before
  (the SFT model) and after DPO.

Our choices (the paper's are for 8B-405B models)
- Data: the ON-POLICY pairs that `python rejection.py` writes to
  out/rejection/pairs.jsonl (the default when that file exists): for each prompt, one
  of the SFT policy's own correct samples vs one of its wrong ones, as judged by the
  task checker (execution feedback, §4.3). Llama 3 collects its preference data from
  the latest models every round (§4.2.1) for the same reason: DPO moves probability
  between responses the policy actually gives. Without that file: tasks.py's offline
  pairs (chosen = the correct answer, "edited" -- the concise one -- when the row has
  it; rejected = a plausible wrong one).
- The NLL term is the per-token mean over the chosen responses' SFT targets (content
  and the closing <|eot_id|>, as in sft.py: the model must keep learning to stop),
  while the DPO log-probabilities are SUMS over the response tokens (the DPO paper).
- Learning rate 3e-4 (the paper: 1e-5 for 8B-405B), 4 passes over the pairs. One pass does
  not move a 1.2M model on the tasks it solves only some of the time; more passes gain
  more (10: +6 to +8 points over 4 in a round) but cost the pipeline's time (docs/NOTES.md).
- Task accuracy on 1,000 held-out prompts: with 200, its standard error (~3.5
  points) was as large as the effects we wanted to see. What DPO gave: docs/NOTES.md.

Reads:  a checkpoint (--init; default out/sft/final, else out/pretrain/final),
        preference pairs (generated, or --data / --eval-data JSONL validated by
        tasks.read_preference_jsonl: bad lines reported with line numbers, skipped).
Writes: out/dpo/{config.json, log.jsonl, loss.png, dpo.png, report.json,
        checkpoints/, final/{model.pt, tokenizer.model}}.

How to run
    python dpo.py                                    # SFT model -> DPO, report before/after
    python dpo.py --no-mask-format-tokens --nll-coef 0   # plain DPO, for comparison
    python dpo.py --data out/tasks/pref_train.jsonl  # offline pairs (python tasks.py --out out/tasks)
    torchrun --standalone --nproc_per_node=2 dpo.py  # FSDP over 2 ranks

Read next: sample.py --ckpt out/dpo/final --chat (talk to the result), then the
next round: reward.py on top of it.
"""

from __future__ import annotations

import math
import os
import sys
import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import checkpoint
import model as M
import parallel
import pretrain
from common import arg, cli, finished_run, parse_config, print0
from pretrain import TrainConfig
# Preference rows come from the same place as the reward model's (one reader and
# validator, tasks.py): --data / --eval-data files, or generated pairs.
from reward import default_init, load_pairs

ON_POLICY_PAIRS = "out/rejection/pairs.jsonl"  # what `python rejection.py` writes

# -----------------------------------------------------------------------------
# 1. The loss (§4.1.4; Rafailov et al. 2023)


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             reference_chosen_logps: torch.Tensor, reference_rejected_logps: torch.Tensor,
             beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO losses and the implicit rewards. Inputs (N,): summed log-probs of the
    chosen / rejected responses under the policy and the (frozen) reference.
        Δ                = (πc - rc) - (πr - rr)
        losses           = -log σ(β Δ)             (N,)   (β = 0.1 in §4.1.4)
        chosen_rewards   = β (πc - rc), detached   (N,)   (for the log)
        rejected_rewards = β (πr - rr), detached   (N,)
    Policy == reference -> Δ = 0 -> every loss is ln 2 = 0.6931, and the gradient
    is -β/2 on πc, +β/2 on πr: raise the chosen, lower the rejected."""
    chosen_logratios = policy_chosen_logps - reference_chosen_logps  # (N,)
    rejected_logratios = policy_rejected_logps - reference_rejected_logps
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))  # stable for any Δ
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


# -----------------------------------------------------------------------------
# 2. Sequence log-probabilities with the masks of §4.1.4


def encode_pair_response(chat, prompt: list[dict], response: str, mask_format_tokens: bool = True) -> dict:
    """prompt + one response -> {"tokens", "logp_mask", "nll_mask"}, one bool per token:
    logp_mask: the response tokens whose log-probabilities the DPO loss sums -- the
               content and, only without masking, its closing <|eot_id|> (the header
               before it belongs to the prompt; §4.1.4 masks header and termination
               tokens);
    nll_mask:  the SFT targets of the response (content + <|eot_id|>), for the NLL term.
    [bos <user hdr> Add 2 and 3. <eot> <asst hdr> 5 <eot>]:
        logp_mask ... 0 0 1 0 (masked) or ... 0 0 1 1 (unmasked); nll_mask ... 0 0 1 1."""
    P = len(chat.encode_dialog(prompt, add_generation_prompt=True).tokens)
    dialog = chat.encode_dialog(list(prompt) + [{"role": "assistant", "content": response}])
    in_response = [i >= P for i in range(len(dialog.tokens))]
    logp_mask = [r and not (mask_format_tokens and f) for r, f in zip(in_response, dialog.format_mask)]
    nll_mask = [r and a for r, a in zip(in_response, dialog.assistant_mask)]
    return {"tokens": dialog.tokens, "logp_mask": logp_mask, "nll_mask": nll_mask}


def collate_sequences(sequences: list[dict], pad_id: int, device) -> dict:
    """Right-pad encoded sequences -> inputs (N, T-1), targets (N, T-1) and the masks
    shifted to the targets (position t predicts token t+1). Padding is after every real
    token, so under the causal mask it changes nothing before it."""
    T = max(len(s["tokens"]) for s in sequences)
    tokens = torch.full((len(sequences), T), pad_id, dtype=torch.long)
    logp_mask = torch.zeros((len(sequences), T), dtype=torch.bool)
    nll_mask = torch.zeros((len(sequences), T), dtype=torch.bool)
    for i, s in enumerate(sequences):
        n = len(s["tokens"])
        tokens[i, :n] = torch.tensor(s["tokens"])
        logp_mask[i, :n] = torch.tensor(s["logp_mask"])
        nll_mask[i, :n] = torch.tensor(s["nll_mask"])
    return {"inputs": tokens[:, :-1].to(device), "targets": tokens[:, 1:].to(device),
            "logp_mask": logp_mask[:, 1:].to(device), "nll_mask": nll_mask[:, 1:].to(device)}


def token_logps(model, batch: dict) -> torch.Tensor:
    """log π(target_t | tokens_<=t) for every position: (N, T-1), fp32."""
    logits = model(batch["inputs"])  # (N, T-1, vocab), fp32
    return torch.gather(logits.log_softmax(-1), 2, batch["targets"][..., None]).squeeze(-1)


def sequence_logps(token_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum of the masked token log-probs per sequence: (N, T), (N, T) -> (N,)."""
    return (token_logp * mask).sum(-1)


# -----------------------------------------------------------------------------
# 3. Data: pairs -> (chosen, rejected) sequences and their reference log-probs


def chosen_response(row: dict) -> str:
    """The best response of a preference row: "edited" when present (§4.1.2: edited >
    chosen > rejected), else "chosen"."""
    return row.get("edited") or row["chosen"]


def encode_pairs(chat, rows: list[dict], mask_format_tokens: bool, max_seq_len: int) -> tuple[list[dict], int]:
    """-> ([{"chosen": seq, "rejected": seq, "task"}], number dropped as too long)."""
    out, dropped = [], 0
    for row in rows:
        pair = {"chosen": encode_pair_response(chat, row["prompt"], chosen_response(row), mask_format_tokens),
                "rejected": encode_pair_response(chat, row["prompt"], row["rejected"], mask_format_tokens),
                "task": row.get("task", "?")}
        if max(len(pair["chosen"]["tokens"]), len(pair["rejected"]["tokens"])) > max_seq_len:
            dropped += 1
            continue
        out.append(pair)
    return out, dropped


def pair_batch(pairs: list[dict], ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, pad_id: int, device) -> dict:
    """n pairs -> one batch of 2n sequences (chosen first, then rejected: one forward pass
    for both) + the pairs' stored reference log-probs (n,) each."""
    batch = collate_sequences([p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], pad_id, device)
    batch["ref_chosen"], batch["ref_rejected"] = ref_chosen.to(device), ref_rejected.to(device)
    batch["n_tokens"] = sum(len(p["chosen"]["tokens"]) + len(p["rejected"]["tokens"]) for p in pairs)
    return batch


@torch.no_grad()
def reference_logps(model, pairs: list[dict], pad_id: int, device, batch_size: int = 32,
                    amp=None) -> tuple[torch.Tensor, torch.Tensor]:
    """log π_ref(y_c|x), log π_ref(y_r|x) for every pair, (n,) each, in fp32 on the CPU.
    Computed ONCE before training with the model that becomes the policy (the reference
    is the policy at step 0); `amp` is the training loop's autocast, so that at step 0
    the policy's log-probs equal these and the loss is ln 2."""
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        zeros = torch.zeros(len(chunk))
        batch = pair_batch(chunk, zeros, zeros, pad_id, device)
        with (amp() if amp else torch.autocast(device.type, enabled=False)):
            logps = sequence_logps(token_logps(model, batch), batch["logp_mask"]).float().cpu()  # (2n,)
        chosen.append(logps[:len(chunk)])
        rejected.append(logps[len(chunk):])
    model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def dpo_loss_fn(model, batch: dict, beta: float = 0.1, nll_coef: float = 0.2):
    """pretrain.train's loss_fn: mean DPO loss + nll_coef · NLL(chosen), and TRL's metrics.
    NLL: mean -log π over the chosen responses' SFT target tokens (per token)."""
    logp = token_logps(model, batch)  # (2n, T-1)
    n = logp.shape[0] // 2
    logps = sequence_logps(logp, batch["logp_mask"])  # (2n,)
    policy_chosen, policy_rejected = logps[:n], logps[n:]
    losses, chosen_rewards, rejected_rewards = dpo_loss(policy_chosen, policy_rejected, batch["ref_chosen"],
                                                        batch["ref_rejected"], beta)
    nll_mask = batch["nll_mask"][:n]
    nll = -(logp[:n] * nll_mask).sum() / nll_mask.sum().clamp(min=1)  # per-token mean (§4.1.4: coefficient 0.2)
    loss = losses.mean() + nll_coef * nll
    metrics = {  # TRL's names
        "rewards/chosen": chosen_rewards.mean().item(), "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "logps/chosen": policy_chosen.detach().mean().item(), "logps/rejected": policy_rejected.detach().mean().item(),
        "dpo_loss": losses.detach().mean().item(), "nll": nll.item(),
    }
    return loss, metrics


class PairBatches:
    """next_batch for pretrain.train: epochs of seeded permutations, rank r of dp takes
    its slice; stateless (depends only on seed and step), so a resume is exact."""

    def __init__(self, pairs, ref_chosen, ref_rejected, batch_size, pad_id, dist, seed):
        self.pairs, self.ref_chosen, self.ref_rejected = pairs, ref_chosen, ref_rejected
        self.batch_size, self.pad_id, self.dist, self.seed = batch_size, pad_id, dist, seed
        self._perm_epoch, self._perm = None, None

    def _index(self, g: int) -> int:
        epoch, i = divmod(g, len(self.pairs))
        if epoch != self._perm_epoch:
            self._perm_epoch = epoch
            self._perm = random.Random(f"{self.seed}:{epoch}").sample(range(len(self.pairs)), len(self.pairs))
        return self._perm[i]

    def __call__(self, step: int, total_steps: int) -> list[dict]:
        start = (step * self.dist.dp_size + self.dist.dp_rank) * self.batch_size
        idx = [self._index(g) for g in range(start, start + self.batch_size)]
        return [pair_batch([self.pairs[i] for i in idx], self.ref_chosen[idx], self.ref_rejected[idx],
                           self.pad_id, self.dist.device)]


def make_eval_fn(pairs, ref_chosen, ref_rejected, batch_size, pad_id, dist, beta, nll_coef):
    """TRL's metrics on the held-out pairs, prefixed "eval_" (averaged over pairs)."""
    idx = list(range(dist.dp_rank, len(pairs), dist.dp_size))

    @torch.no_grad()
    def eval_fn(model) -> dict:
        keys = ["loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                "logps/chosen", "logps/rejected", "nll"]
        sums = torch.zeros(len(keys) + 1, dtype=torch.float64, device=dist.device)
        for i in range(0, len(idx), batch_size):
            chunk = idx[i:i + batch_size]
            batch = pair_batch([pairs[j] for j in chunk], ref_chosen[chunk], ref_rejected[chunk], pad_id, dist.device)
            loss, m = dpo_loss_fn(model, batch, beta, nll_coef)
            values = [loss.item()] + [m[k] for k in keys[1:]] + [1.0]
            sums += torch.tensor(values, dtype=torch.float64, device=dist.device) * len(chunk)
        if dist.world_size > 1:
            torch.distributed.all_reduce(sums)
        n = max(1.0, sums[-1].item())
        return {f"eval_{k}": sums[i].item() / n for i, k in enumerate(keys)}

    return eval_fn


# -----------------------------------------------------------------------------
# 4. Held-out task accuracy under greedy decoding (the measure of every stage)


@torch.no_grad()
def task_accuracy(model, tokenizer, examples: list[dict], max_new_tokens: int = 32, batch_size: int = 64) -> dict:
    """Greedy answers to the held-out prompts, checked by tasks.py (sft.task_accuracy,
    the same measure as the SFT stage's), with the count per task and a few examples.
    Runs on one unsharded model (rank 0)."""
    import sft
    import tasks
    was_training = model.training
    model.eval()
    _, responses = sft.task_accuracy(model, tokenizer, examples, max_new_tokens=max_new_tokens,
                                     batch_size=batch_size)
    model.train(was_training)
    correct = [tasks.check_response(e, r) for e, r in zip(examples, responses)]
    result = {"accuracy": sum(correct) / max(1, len(correct)), "correct": sum(correct), "n": len(correct),
              "per_task": {}}
    for e, ok in zip(examples, correct):  # counts per task (tasks.accuracy gives fractions only)
        task = result["per_task"].setdefault(e.get("task", "?"), {"accuracy": 0.0, "correct": 0, "n": 0})
        task["correct"], task["n"] = task["correct"] + ok, task["n"] + 1
        task["accuracy"] = task["correct"] / task["n"]
    result["examples"] = [{"prompt": e["messages"][-2]["content"], "response": r, "correct": ok}
                          for e, r, ok in list(zip(examples, responses, correct))[:6]]
    return result


# -----------------------------------------------------------------------------
# 5. The DPO run


@dataclass
class DPOConfig(TrainConfig):
    """DPO (§4.1.4): every field is a --kebab-case flag."""
    init: str = arg("", "policy = reference at start (default: out/sft/final if it exists, else out/pretrain/final)")
    out: str = arg("out/dpo", "checkpoints, logs, report and final/ go here")
    data: str = arg("", "preference JSONL (tasks.read_preference_jsonl format); default: the on-policy pairs "
                        f"of rejection sampling ({ON_POLICY_PAIRS}) if they exist, else generated pairs")
    eval_data: str = arg("", "held-out preference JSONL; default: every 20th row of --data if given, else "
                             "generated 'val' pairs")
    tasks: str = arg("", "comma-separated tasks of tasks.py (default: all)")
    n_train: int = arg(1600, "generated training pairs (the reference log-probs of each cost a forward pass)")
    n_eval: int = arg(200, "generated held-out pairs")
    n_eval_tasks: int = arg(1000, "held-out task prompts for greedy accuracy before/after (1,000: a standard "
                                  "error of ~1.6 points; 200 left ~3.5, as large as the effects measured)")
    max_new_tokens: int = arg(32, "greedy answer length for the task accuracy")
    beta: float = arg(0.1, "DPO β (§4.1.4: 0.1)")
    nll_coef: float = arg(0.2, "NLL term on the chosen sequences (§4.1.4: 0.2; 0 = plain DPO)")
    mask_format_tokens: bool = arg(True, "mask header and termination tokens out of the log-probs (§4.1.4)")
    batch_size: int = arg(16, "pairs per optimizer step")
    max_steps: int = arg(0, "optimizer steps (0 = --epochs passes over the training pairs)")
    epochs: float = arg(4.0, "passes over the training pairs when --max-steps is 0")
    time_budget_min: float = arg(0.0, "if > 0: shorten the run to end within this many minutes")
    lr: float = arg(3e-4, "peak learning rate (§4.1.4: 1e-5; a 1.2M model needs more: SFT's is 2e-3)")
    warmup_steps: int = arg(10, "linear warm-up steps")
    weight_decay: float = arg(0.0, "AdamW weight decay (fine-tuning: none)")
    eval_every: int = arg(25, "held-out DPO metrics every N steps")
    ckpt_every: int = arg(100, "checkpoint every N steps")
    POSITIVE = TrainConfig.POSITIVE + ("epochs",)

    def validate(self):
        """TrainConfig's checks, with --max-steps 0 allowed (--epochs passes, set by run_dpo)."""
        steps, self.max_steps = self.max_steps, self.max_steps or 1
        try:
            super().validate()
        finally:
            self.max_steps = steps


def run_dpo(cfg: DPOConfig) -> dict:
    import tasks
    from tokenizer import ChatFormat, Tokenizer
    started = pretrain.start_run(cfg)
    if started is None:  # a finished run: its record is kept
        return finished_run(cfg.out)
    dist, logger = started
    t_start = time.time()
    init = cfg.init or default_init()
    if not cfg.data and os.path.exists(ON_POLICY_PAIRS):
        cfg.data = ON_POLICY_PAIRS  # rejection.py ran: the round's own pairs (§4.2.1)
    model, model_args = checkpoint.load_model(init, device=dist.device)
    tokenizer_path = checkpoint.find_tokenizer(init)
    tokenizer = Tokenizer(tokenizer_path)
    chat = ChatFormat(tokenizer)
    print0(f"policy = reference = {init} ({M.count_params(model_args):,} parameters); β {cfg.beta}, "
           f"NLL coefficient {cfg.nll_coef}, format tokens {'masked' if cfg.mask_format_tokens else 'counted'}")

    # ---- data ---------------------------------------------------------------------
    train_rows, skipped = load_pairs(cfg, "train")
    if cfg.data and not cfg.eval_data:
        # Held-out pairs of the same kind as the training ones: every 20th row of --data.
        # (Generated offline pairs would measure a style the on-policy pairs never show.)
        eval_rows, eval_skipped = train_rows[::20], []
        train_rows = [row for i, row in enumerate(train_rows) if i % 20]
    else:
        eval_rows, eval_skipped = load_pairs(cfg, "val")
    train_pairs, dropped = encode_pairs(chat, train_rows, cfg.mask_format_tokens, model_args.max_seq_len)
    eval_pairs, eval_dropped = encode_pairs(chat, eval_rows, cfg.mask_format_tokens, model_args.max_seq_len)
    print0(f"data: {len(train_pairs)} training pairs ({cfg.data or 'generated by tasks.py'}), "
           f"{len(eval_pairs)} held-out pairs; skipped "
           f"{len(skipped) + len(eval_skipped)} bad lines, dropped {dropped + eval_dropped} too long")
    if not train_pairs or not eval_pairs:
        raise SystemExit("no usable preference pairs")
    if cfg.max_steps <= 0:
        cfg.max_steps = math.ceil(cfg.epochs * len(train_pairs) / cfg.batch_size)
    eval_examples = tasks.make_examples(cfg.n_eval_tasks, cfg.seed, tasks=cfg.tasks or None, split="val")

    # ---- before training: task accuracy, and the reference log-probs (ONCE) --------
    accuracy_before = None
    if dist.is_main and cfg.n_eval_tasks:
        accuracy_before = task_accuracy(model, tokenizer, eval_examples, cfg.max_new_tokens)
        print0(f"held-out task accuracy before DPO: {accuracy_before['accuracy']:.1%} "
               f"({accuracy_before['correct']}/{accuracy_before['n']})")
    amp = lambda: pretrain.autocast(cfg, dist)  # noqa: E731 -- the same precision as training
    t0 = time.time()
    ref_chosen, ref_rejected = reference_logps(model, train_pairs, tokenizer.pad_id, dist.device, amp=amp)
    eval_ref_chosen, eval_ref_rejected = reference_logps(model, eval_pairs, tokenizer.pad_id, dist.device, amp=amp)
    print0(f"reference log-probs of {len(train_pairs) + len(eval_pairs)} pairs in {time.time() - t0:.1f}s "
           f"(mean chosen {ref_chosen.mean():.3f}, rejected {ref_rejected.mean():.3f}); no reference model "
           f"is kept: the policy starts as it")

    # ---- the policy: the same model, sharded when there are ranks ------------------
    if dist.world_size > 1:
        parallel.parallelize(model, dist, reshard_after_forward=cfg.reshard_after_forward)
    model.train()
    optimizer = pretrain.build_optimizer(model, cfg.lr, cfg.weight_decay, betas=(cfg.beta1, cfg.beta2))

    loss_fn = lambda m, b: dpo_loss_fn(m, b, cfg.beta, cfg.nll_coef)  # noqa: E731
    next_batch = PairBatches(train_pairs, ref_chosen, ref_rejected, cfg.batch_size, tokenizer.pad_id, dist, cfg.seed)
    eval_fn = make_eval_fn(eval_pairs, eval_ref_chosen, eval_ref_rejected, cfg.batch_size, tokenizer.pad_id, dist,
                           cfg.beta, cfg.nll_coef)
    model.eval()
    eval_before = eval_fn(model)  # the policy == the reference: eval_rewards/* = 0, DPO loss ln 2
    model.train()
    result = pretrain.train(cfg, dist, model, optimizer, next_batch, loss_fn, eval_fn=eval_fn,
                            model_args=model_args, logger=logger, tokenizer_path=tokenizer_path)

    if result.get("stopped"):  # --stop-at-step: the checkpoint is written; run again to resume
        parallel.teardown_distributed()
        return {"status": "stopped", "steps": result["step"], "total_steps": result["total_steps"]}

    # ---- after: task accuracy of the exported model (unsharded, rank 0) ------------
    accuracy_after = None
    if dist.is_main and cfg.n_eval_tasks:
        final_model, _ = checkpoint.load_model(result["final_dir"], device=dist.device)
        accuracy_after = task_accuracy(final_model, tokenizer, eval_examples, cfg.max_new_tokens)
        del final_model
        print0(f"held-out task accuracy after DPO: {accuracy_after['accuracy']:.1%} "
               f"({accuracy_after['correct']}/{accuracy_after['n']})")
    records = logger.records()
    trajectory = [{"step": r["step"], "logps/chosen": r["logps/chosen"], "logps/rejected": r["logps/rejected"]}
                  for r in records if "logps/chosen" in r]
    report = {
        "status": "done", "init": init, "beta": cfg.beta, "nll_coef": cfg.nll_coef, "mask_format_tokens": cfg.mask_format_tokens,
        "data": cfg.data or "generated", "lr": cfg.lr, "steps": result["step"], "total_steps": result["total_steps"],
        "train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs), "skipped_lines": (skipped + eval_skipped)[:100],
        "task_accuracy_before": accuracy_before, "task_accuracy_after": accuracy_after,
        "eval_before": eval_before, "eval_after": result["last_eval"],
        "reference_logps": {"chosen": ref_chosen.mean().item(), "rejected": ref_rejected.mean().item()},
        "logps_chosen_trajectory": trajectory[:: max(1, len(trajectory) // 20)] + trajectory[-1:],
        "train_seconds": round(result.get("seconds", 0.0), 1), "wall_seconds": round(time.time() - t_start, 1),
        "final": result["final_dir"],
    }
    logger.write_json("report.json", report)
    if dist.is_main:
        plot_dpo(records, os.path.join(cfg.out, "dpo.png"), accuracy_before, accuracy_after)
        a0 = accuracy_before["accuracy"] if accuracy_before else float("nan")
        a1 = accuracy_after["accuracy"] if accuracy_after else float("nan")
        print0(f"summary: task accuracy {a0:.1%} -> {a1:.1%}; held-out eval_rewards/accuracies "
               f"{result['last_eval'].get('eval_rewards/accuracies', float('nan')):.1%}, eval_logps/chosen "
               f"{eval_before['eval_logps/chosen']:.3f} -> "
               f"{result['last_eval'].get('eval_logps/chosen', float('nan')):.3f}")
    parallel.teardown_distributed()
    return report


def plot_dpo(records: list[dict], path: str, before=None, after=None):
    """dpo.png: the losses, TRL's reward margins/accuracies, and the chosen / rejected
    log-probabilities (the NLL term's purpose: the chosen one must not collapse)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key):
        points = {r["step"]: r[key] for r in records if r.get(key) is not None}
        steps = sorted(points)
        return steps, [points[s] for s in steps]

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key in ("dpo_loss", "nll", "eval_loss"):
        axes[0].plot(*series(key), label=key)
    axes[0].axhline(math.log(2), color="gray", lw=0.8, ls=":", label="ln 2")
    axes[0].set_title("losses")
    for key in ("rewards/accuracies", "rewards/margins", "eval_rewards/accuracies", "eval_rewards/margins"):
        axes[1].plot(*series(key), label=key)
    axes[1].set_title("implicit rewards (TRL names)")
    for key in ("logps/chosen", "logps/rejected", "eval_logps/chosen", "eval_logps/rejected"):
        axes[2].plot(*series(key), label=key)
    title = "sequence log-probs"
    if before and after:
        title += f" | task accuracy {before['accuracy']:.0%} -> {after['accuracy']:.0%}"
    axes[2].set_title(title)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@cli
def main(argv=None):
    return run_dpo(parse_config(DPOConfig, argv))


if __name__ == "__main__":
    rc = main()
    sys.exit(rc if isinstance(rc, int) else 0)  # 2: a usage error (common.cli)
