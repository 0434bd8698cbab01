"""
sft.py -- supervised fine-tuning (§4.1.3 of "The Llama 3 Herd of Models"), and model
averaging (§4.1.5).

Stage: post-training, the step after rejection sampling in each round (§4.1: reward
model -> rejection sampling -> SFT -> DPO). Written as a DIFFERENCE from pretrain.py:
the optimizer, the LR schedule, the training loop (logging, clipping, bf16 autocast,
checkpoints, resume, export) and FSDP come from pretrain.py and parallel.py by
import. What is new here is only the data and the loss:

- The data are conversations rendered in Llama 3's chat format (tokenizer.ChatFormat),
  by default the automatically checked tasks of tasks.py (§4.3's "execution feedback"
  idea), or your own JSONL ({"messages": [...]}, validated line by line).
- The loss is next-token cross-entropy on the ASSISTANT tokens only (§4.1.3: "the
  loss on prompt tokens is masked out"): the assistant's content and the <|eot_id|>
  closing its turn (so the model learns to stop); bos, headers and user/system turns
  carry no loss.
- Several conversations are packed into each row of seq_len tokens, with doc_ids so
  that attention never crosses conversations and RoPE restarts for each one -- the
  packed loss equals the loss of the conversations trained one by one (a test checks).
- Held-out task accuracy, measured with sample.generate (greedy) and the task
  checkers, before fine-tuning and after: the skill SFT taught, as one number.
- Model averaging (§4.1.5: Llama 3 averages models from runs with different data or
  hyper-parameters at each of the RM, SFT and DPO stages) is
  `python checkpoint.py average A B ... --out DIR`.

Paper numbers: the largest models fine-tune at learning rate 1e-5 for 8.5K-9K steps
(§4.1.3). Our default model is 1.2M parameters trained for 4.5 minutes; it must learn
a new format (its chat tokens were never seen in pre-training) in a few hundred steps,
so we use a much higher learning rate (2e-3, as pre-training's scale suggests).

Reads:  a pre-trained checkpoint (--init: this project's model.pt, a checkpoint.py
        distributed checkpoint, Meta's consolidated.*.pth or a Hugging Face folder)
        and its tokenizer.model; data from tasks.py or --data/--eval-data.
Writes: out/sft/{config.json, log.jsonl, loss.png, report.json, report.png,
        checkpoints/step_XXXXXXXX/, final/model.pt + tokenizer.model}.

How to run
    python sft.py                                         # default tasks, out/pretrain/final
    torchrun --standalone --nproc_per_node=2 sft.py       # 2 ranks, FSDP (gloo on CPU)
    python sft.py --data my_chats.jsonl --eval-data my_val.jsonl --init DIR
    python sft.py --tasks sort,reverse --max-steps 200
    python checkpoint.py average out/sft_a/final out/sft_b/final --out out/sft_avg

Read next: reward.py (the reward model and rejection sampling), then dpo.py.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import checkpoint
import model as M
import parallel
import loader
import pretrain
import tasks as T
from common import arg, cli, finished_run, parse_config, print0, UsageError
from pretrain import TrainConfig
from sample import generate
from tokenizer import ChatFormat, Tokenizer

# -----------------------------------------------------------------------------
# 1. Configuration: pretrain's TrainConfig plus the model and the data


@dataclass
class SFTConfig(TrainConfig):
    """Supervised fine-tuning (§4.1.3): every field is a --kebab-case flag."""
    out: str = arg("out/sft", "where checkpoints, logs, the report and the final model go")
    init: str = arg("out/pretrain/final", "the pre-trained checkpoint to start from (any format)")
    tokenizer: str = arg("", "tokenizer.model (default: the one next to --init)")
    # Data: the built-in checked tasks, or your own conversations.
    data: str = arg("", "SFT conversations {'messages': [...]} (default: tasks.py's tasks)")
    eval_data: str = arg("", "held-out conversations for accuracy (default: tasks.py's held-out split)")
    add_data: str = arg("", "comma-separated SFT JSONL files added to the training conversations: the "
                            "rejection-sampled data of the rounds so far (§4.1.3)")
    tasks: str = arg("", "comma-separated subset of tasks.py's tasks (default: all)")
    # §4.2.2: SFT data is "largely" rejection-sampled, with "small amounts of human-curated
    # data": 100 written answers here; the rounds write the rest (docs/NOTES.md).
    n_train: int = arg(100, "generated training conversations (the written answers)")
    n_eval: int = arg(1000, "generated held-out conversations (accuracy is measured on these; 1,000: a "
                            "standard error of ~1.5 points)")
    # 200 steps of 2,048 tokens (~75 conversations each), ~45 s on 2 cores; accuracy stays at
    # chance for ~50 steps, then the copy/extract tasks jump (tasks.DEFAULT_TASKS). A small
    # set is seen at most max_epochs times: a memorized one samples the same answer K times,
    # leaving rejection sampling nothing to pick (docs/NOTES.md). Steps, not a time budget
    # (time_budget_min stays 0): a budget measured in a busy moment once cut the run to 49 steps.
    max_steps: int = arg(200, "optimizer steps (cosine schedule over these)")
    max_epochs: float = arg(75.0, "at most this many passes over the training conversations (0 = no cap)")
    NON_NEGATIVE = TrainConfig.NON_NEGATIVE + ("max_epochs",)
    # For the default model (dial-4) 2e-3 beats 1e-3 at the same steps; 6e-3 is past the best.
    lr: float = arg(2e-3, "peak LR (§4.1.3: 1e-5 for the largest models; a 1.2M model needs more)")
    min_lr_ratio: float = arg(0.1, "cosine decays to this fraction of the peak")
    warmup_steps: int = arg(10, "linear warm-up steps")
    weight_decay: float = arg(0.0, "AdamW weight decay (none: a short fine-tune)")
    eval_every: int = arg(100, "measure held-out accuracy every N steps (and at the end; ~6 s of CPU per "
                               "1,000 prompts)")
    ckpt_every: int = arg(200, "checkpoint every N steps (and at the end)")
    seq_len: int = arg(256, "tokens per packed row (a conversation never spans two rows)")
    batch_size: int = arg(8, "rows per micro-batch per rank")
    tokens_per_step: int = arg(2048, "global tokens per optimizer step (rows = this / seq_len)")
    eval_max_new_tokens: int = arg(16, "greedy tokens generated per held-out prompt")
    eval_batch_size: int = arg(128, "prompts per generate() call")


# -----------------------------------------------------------------------------
# 2. Data: render, mask, pack


def render(chat: ChatFormat, messages: list[dict]) -> tuple[list[int], list[int]]:
    """One conversation -> (tokens, targets), both of length L.

    targets[i] is the token the model must predict after reading tokens[0..i], i.e.
    tokens[i+1] -- but only where tokens[i+1] is an assistant token (content or its
    closing <|eot_id|>, ChatFormat's assistant_mask); everywhere else -100 (ignored).
    §4.1.3 masks the prompt; we also mask the formatting (bos, headers, "\\n\\n"): they
    are fixed by the template, and the assistant header is given at inference anyway.

      tokens  <bos> <hdr>user<end>\\n\\n  What is 4 + 5 ?  <eot> <hdr>assistant<end>\\n\\n  9    <eot>
      targets  -100 ...                                    -100   ...        -100 "\\n\\n"->9  9-><eot>  -100
      (so the loss is on "9" and on <eot>: the answer and the decision to stop)"""
    dialog = chat.encode_dialog(messages)
    tokens, mask = dialog.tokens, dialog.assistant_mask
    targets = [tokens[i + 1] if mask[i + 1] else -100 for i in range(len(tokens) - 1)] + [-100]
    return tokens, targets


def pack_rows(conversations: list[tuple[list[int], list[int]]], seq_len: int, pad_id: int) -> dict:
    """Pack rendered conversations, in order, into rows of exactly seq_len tokens
    (a new row whenever the next one does not fit; the rest is padding).
    -> {"inputs" (R, T), "targets" (R, T), "doc_ids" (R, T), "n_tokens"}.
    doc_ids numbers the conversations within a row, 0, 1, 2, ...; padding gets its
    own id after the last one (it attends only to padding and carries no loss). The
    model's document mask (§3.2) then keeps every conversation to itself, and RoPE
    positions restart at 0 for each, exactly as if trained alone.
      [conv A (5) | conv B (3) | pad (2)] -> doc_ids [0 0 0 0 0 1 1 1 2 2]"""
    rows, row = [], []
    for conv in conversations:
        if len(conv[0]) > seq_len:
            raise ValueError(f"a conversation of {len(conv[0])} tokens does not fit in seq_len {seq_len}")
        if sum(len(c[0]) for c in row) + len(conv[0]) > seq_len:
            rows.append(row)
            row = []
        row.append(conv)
    if row:
        rows.append(row)
    R = len(rows)
    inputs = torch.full((R, seq_len), pad_id, dtype=torch.long)
    targets = torch.full((R, seq_len), -100, dtype=torch.long)
    doc_ids = torch.zeros((R, seq_len), dtype=torch.long)
    n_tokens = 0
    for r, convs in enumerate(rows):
        at = 0
        for d, (tokens, tgt) in enumerate(convs):
            L = len(tokens)
            inputs[r, at:at + L] = torch.tensor(tokens)
            targets[r, at:at + L] = torch.tensor(tgt)
            doc_ids[r, at:at + L] = d
            at += L
        doc_ids[r, at:] = len(convs)  # padding: a document of its own
        n_tokens += at
    return {"inputs": inputs, "targets": targets, "doc_ids": doc_ids, "n_tokens": n_tokens}


class ConversationLoader:
    """Training batches for pretrain.train(): deterministic and resumable.

    The conversations are visited in a seeded shuffled order, a new order each epoch;
    a step takes as many as fill rows_per_step rows of seq_len (greedy, in order).
    Every rank packs the whole step (cheap) and keeps its contiguous block of rows,
    split into micro-batches of batch_size rows. The position (conversations used)
    is the loader's whole state: it goes into every checkpoint."""

    def __init__(self, cfg: SFTConfig, rendered: list[tuple[list[int], list[int]]], pad_id: int, dist):
        self.cfg, self.rendered, self.pad_id, self.dist = cfg, rendered, pad_id, dist
        self.used = 0  # conversations consumed so far (over all epochs)
        self._epoch, self._order = None, None

    def state_dict(self) -> dict:
        return {"used": self.used}

    def load_state_dict(self, state: dict):
        self.used = int(state["used"])

    def _conversation(self, k: int):
        epoch, i = divmod(k, len(self.rendered))
        if epoch != self._epoch:
            self._order = list(range(len(self.rendered)))
            random.Random(self.cfg.seed * 1_000_003 + epoch).shuffle(self._order)
            self._epoch = epoch
        return self.rendered[self._order[i]]

    def __call__(self, step: int, total_steps: int) -> list[dict]:
        cfg, dist = self.cfg, self.dist
        dp, rank = dist.dp_size, dist.dp_rank
        rows_per_step = max(dp, cfg.tokens_per_step // cfg.seq_len // dp * dp)
        # Greedy packing, one conversation at a time, until the step's rows are full.
        step_convs, rows, fill = [], 1, 0
        while True:
            conv = self._conversation(self.used + len(step_convs))
            if fill + len(conv[0]) > cfg.seq_len:
                if rows == rows_per_step:
                    break
                rows, fill = rows + 1, 0
            step_convs.append(conv)
            fill += len(conv[0])
        self.used += len(step_convs)
        packed = pack_rows(step_convs, cfg.seq_len, self.pad_id)  # (rows_per_step, T) each
        per_rank = rows_per_step // dp
        mine = {k: v[rank * per_rank:(rank + 1) * per_rank] for k, v in packed.items() if k != "n_tokens"}
        micro = loader.divisor_at_most(per_rank, cfg.batch_size)
        batches = []
        for m in range(0, per_rank, micro):
            batch = {k: v[m:m + micro].to(dist.device) for k, v in mine.items()}
            batch["n_tokens"] = int((batch["inputs"] != self.pad_id).sum())
            batches.append(batch)
        return batches


# -----------------------------------------------------------------------------
# 3. The loss: cross-entropy on assistant tokens only


def sft_loss(model, batch: dict):
    """Masked next-token cross-entropy (§4.1.3): the mean over the targets that are
    not -100, i.e. over assistant tokens only. -> (loss, {"loss_tokens": count})."""
    logits = model(batch["inputs"], doc_ids=batch["doc_ids"])  # (B, T, vocab)
    targets = batch["targets"]  # (B, T), -100 on prompt, format and padding
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
    return loss, {"loss_tokens": float((targets != -100).sum())}


# -----------------------------------------------------------------------------
# 4. Evaluation: held-out task accuracy with greedy generation


def eval_prompt(chat: ChatFormat, example: dict) -> list[int]:
    """The conversation up to (not including) the last assistant turn, plus the
    assistant header the model completes: what the model sees at inference."""
    messages = example["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return chat.encode_dialog_prompt(messages[:last])


@torch.no_grad()
def task_accuracy(model, tokenizer, examples: list[dict], *, max_new_tokens: int = 16,
                  batch_size: int = 128) -> tuple[dict, list[str]]:
    """Greedy answers (sample.generate, temperature 0, stopping at the tokenizer's stop
    tokens) to the held-out prompts, scored by the task checkers (tasks.accuracy).
    -> ({"overall": .., "<task>": ..}, responses). An unsharded model (one process)."""
    chat = ChatFormat(tokenizer)
    prompts = [eval_prompt(chat, e) for e in examples]
    responses = []
    for i in range(0, len(prompts), batch_size):
        new = generate(model, tokenizer, prompts[i:i + batch_size], max_new_tokens=max_new_tokens,
                       temperature=0.0)
        responses.extend(tokenizer.decode(r) for r in new)
    return T.accuracy(examples, responses), responses


@torch.no_grad()
def masked_loss(model, rendered: list, seq_len: int, pad_id: int, batch_size: int) -> float:
    """The SFT loss on held-out conversations (token-weighted mean)."""
    total, count = 0.0, 0
    for i in range(0, len(rendered), batch_size * 4):
        batch = pack_rows(rendered[i:i + batch_size * 4], seq_len, pad_id)
        device = model.tok_embeddings.weight.device
        logits = model(batch["inputs"].to(device), doc_ids=batch["doc_ids"].to(device))
        targets = batch["targets"].to(device)
        total += F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100,
                                 reduction="sum").item()
        count += int((targets != -100).sum())
    return total / max(1, count)


def make_eval_fn(cfg: SFTConfig, dist, tokenizer, val_examples: list[dict], model_args: M.ModelArgs,
                 val_rendered: list):
    """eval_fn for pretrain.train(): {"val_loss", "accuracy", "acc_<task>", ...}.
    One process: evaluates the model in place. Several ranks (FSDP/TP): the full
    weights are gathered to rank 0 (every rank takes part), rank 0 evaluates an
    unsharded copy -- generation with a sharded model would need every rank in
    lockstep for a few prompts -- and broadcasts the numbers."""
    def evaluate(plain_model) -> dict:
        acc, responses = task_accuracy(plain_model, tokenizer, val_examples,
                                       max_new_tokens=cfg.eval_max_new_tokens, batch_size=cfg.eval_batch_size)
        with pretrain.autocast(cfg, dist):
            loss = masked_loss(plain_model, val_rendered, cfg.seq_len, tokenizer.pad_id, cfg.batch_size)
        result = {"val_loss": loss, "accuracy": acc["overall"]}
        result.update({f"acc_{k}": v for k, v in acc.items() if k != "overall"})
        evaluate.last_responses = responses
        return result

    def eval_fn(model) -> dict:
        if dist.world_size == 1:
            return evaluate(model)
        sd = checkpoint.full_state_dict(model)  # collective: every rank calls it
        result = [None]
        if dist.is_main:
            with torch.device("meta"):
                plain = M.Transformer(model_args)
            plain.to_empty(device=dist.device)
            plain.load_state_dict(sd, strict=False)  # tied output.weight may be absent
            plain.reset_rope()
            plain.eval()
            result = [evaluate(plain)]
        torch.distributed.broadcast_object_list(result, src=0)
        return result[0]

    evaluate.last_responses = []
    eval_fn.evaluate = evaluate
    return eval_fn


# -----------------------------------------------------------------------------
# 5. Report: JSON + PNG


def plot_report(report: dict, log_records: list[dict], path: str):
    """Left: held-out accuracy per task before and after SFT. Right: the loss."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    before, after = report["accuracy_before"], report["accuracy_after"]
    names = ["overall"] + [k for k in before if k != "overall"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    x = range(len(names))
    ax1.bar([i - 0.2 for i in x], [100 * before.get(n, 0) for n in names], width=0.4, label="pre-trained")
    ax1.bar([i + 0.2 for i in x], [100 * after.get(n, 0) for n in names], width=0.4, label="after SFT")
    ax1.set_xticks(list(x), names, rotation=20)
    ax1.set_ylabel("held-out accuracy (%)")
    ax1.set_ylim(0, 100)
    ax1.set_title("task accuracy (greedy, checked)")
    ax1.legend()
    for key in ("loss", "val_loss"):
        points = {r["step"]: r[key] for r in log_records if r.get(key) is not None}
        if points:
            ax2.plot(sorted(points), [points[s] for s in sorted(points)], label=key,
                     marker="o" if key == "val_loss" else None, markersize=3)
    ax2.set_xlabel("step")
    ax2.set_ylabel("loss on assistant tokens (nats)")
    ax2.set_title("SFT loss (§4.1.3: prompt masked)")
    ax2.grid(alpha=0.3)
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -----------------------------------------------------------------------------
# 6. The SFT run


def load_data(cfg: SFTConfig, tokenizer) -> tuple[list, list, dict]:
    """(train examples, held-out examples, {"skipped": ...}) from JSONL or tasks.py.
    Conversations longer than seq_len are reported and skipped (they fit no row)."""
    quiet = int(os.environ.get("RANK", "0")) != 0
    skipped = {}
    if cfg.data:
        train, skipped["train"] = T.read_sft_jsonl(cfg.data, cfg.seq_len, tokenizer, verbose=not quiet)
    else:
        train = T.make_examples(cfg.n_train, cfg.seed, tasks=cfg.tasks or None, split="train")
    for path in [p.strip() for p in cfg.add_data.split(",") if p.strip()]:
        rows, skipped[path] = T.read_sft_jsonl(path, cfg.seq_len, tokenizer, verbose=not quiet)
        train = train + rows
    if cfg.eval_data:
        val, skipped["val"] = T.read_sft_jsonl(cfg.eval_data, cfg.seq_len, tokenizer, verbose=not quiet)
    elif cfg.data:
        val = []  # your data, no held-out file: no accuracy
    else:
        val = T.make_examples(cfg.n_eval, cfg.seed, tasks=cfg.tasks or None, split="val")
    summary = {k: T.summarize_skipped(v) for k, v in skipped.items()}
    if not train:
        raise UsageError(f"{cfg.data or 'the generated tasks'}: no usable training conversations "
                         f"({(summary.get('train') or {}).get('skipped', 0)} rows skipped: "
                         f"{(summary.get('train') or {}).get('by_kind', {})})")
    return train, val, summary


@cli
def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    cfg = parse_config(SFTConfig, argv)
    started = pretrain.start_run(cfg)
    if started is None:  # a finished run: its record is kept
        return finished_run(cfg.out)
    dist, logger = started
    t_start = time.time()

    # ---- the pre-trained model and its tokenizer --------------------------------
    model, model_args = checkpoint.load_model(cfg.init, device=dist.device)  # fp32 master weights
    tokenizer_path = cfg.tokenizer or checkpoint.find_tokenizer(cfg.init)
    if not tokenizer_path:
        raise UsageError(f"{cfg.init}: no tokenizer.model next to the checkpoint; pass --tokenizer")
    checkpoint.check_tokenizer(cfg.init, tokenizer_path)  # same vocabulary size is not the same tokenizer
    tokenizer = Tokenizer(tokenizer_path)
    chat = ChatFormat(tokenizer)
    print0(f"init: {cfg.init} ({M.count_params(model_args):,} parameters), tokenizer {tokenizer_path}")

    # ---- data: render every conversation once ------------------------------------
    train_examples, val_examples, skipped = load_data(cfg, tokenizer)
    train_rendered = [render(chat, e["messages"]) for e in train_examples]
    val_rendered = [render(chat, e["messages"]) for e in val_examples]
    too_long = [i for i, (t, _) in enumerate(train_rendered) if len(t) > cfg.seq_len]
    if too_long:  # only generated data can get here (JSONL rows were checked on reading)
        raise ValueError(f"{len(too_long)} conversations longer than --seq-len {cfg.seq_len}")
    n_loss = sum(sum(t != -100 for t in tgt) for _, tgt in train_rendered)
    n_all = sum(len(t) for t, _ in train_rendered)
    print0(f"data: {len(train_examples):,} train conversations ({n_all:,} tokens, {n_loss:,} = "
           f"{n_loss / n_all:.0%} carry loss), {len(val_examples):,} held-out; skipped {skipped or 'none'}")
    if train_examples and "messages" in train_examples[0]:
        e = train_examples[0]["messages"]
        print0(f"example: {json.dumps(e)[:200]}")

    cap = math.ceil(cfg.max_epochs * n_all / cfg.tokens_per_step)  # a small set: fewer steps (see max_steps)
    if 0 < cap < cfg.max_steps:
        print0(f"{cfg.max_epochs:g} passes over {n_all:,} tokens: {cap} steps instead of {cfg.max_steps}")
        cfg.max_steps = cap

    # ---- the accuracy of the pre-trained model, then shard ----------------------
    eval_fn = make_eval_fn(cfg, dist, tokenizer, val_examples, model_args, val_rendered) if val_examples else None
    before = {}
    if eval_fn is not None:
        model.eval()
        before = eval_fn.evaluate(model) if dist.is_main else {}  # unsharded yet: rank 0 alone
        if dist.world_size > 1:
            box = [before]
            torch.distributed.broadcast_object_list(box, src=0)
            before = box[0]
        model.train()
        logger.log(0, **before)
        if dist.is_main and eval_fn.evaluate.last_responses:
            print0("pre-trained answers: " + "; ".join(
                f"{e['messages'][-2]['content']!r} -> {r!r}"
                for e, r in list(zip(val_examples, eval_fn.evaluate.last_responses))[:3]))
    model = parallel.parallelize(model, dist, activation_checkpointing=cfg.activation_checkpointing,
                                 compile=cfg.compile, reshard_after_forward=cfg.reshard_after_forward)
    model.train()
    optimizer = pretrain.build_optimizer(model, cfg.lr, cfg.weight_decay, betas=(cfg.beta1, cfg.beta2))

    loader = ConversationLoader(cfg, train_rendered, tokenizer.pad_id, dist)
    result = pretrain.train(cfg, dist, model, optimizer, loader, sft_loss, eval_fn=eval_fn,
                            model_args=model_args, logger=logger, tokenizer_path=tokenizer_path)
    after = result["last_eval"]
    if eval_fn is not None and not after:  # e.g. a run resumed after its last step
        model.eval()
        after = eval_fn(model)

    # ---- summary: report.json + report.png ---------------------------------------
    def accuracies(metrics):
        acc = {"overall": metrics.get("accuracy")}
        acc.update({k[4:]: v for k, v in metrics.items() if k.startswith("acc_")})
        return acc

    losses = result["losses"]
    report = {
        "status": "stopped" if result["final_dir"] is None else "done",
        "init": cfg.init, "parameters": M.count_params(model_args), "world_size": dist.world_size,
        "steps": result["step"], "total_steps": result["total_steps"], "lr": cfg.lr,
        "train_conversations": len(train_examples), "val_conversations": len(val_examples),
        "skipped": skipped,
        "accuracy_before": accuracies(before) if before else None,
        "accuracy_after": accuracies(after) if after else None,
        "val_loss_before": before.get("val_loss"), "val_loss_after": (after or {}).get("val_loss"),
        "first_loss": losses[min(losses)] if losses else None,
        "last_loss": losses[max(losses)] if losses else None,
        "tokens_seen_this_run": result.get("tokens_seen"), "train_seconds": result.get("seconds"),
        "wall_seconds": round(time.time() - t_start, 1), "final": result["final_dir"],
        "log": logger.path, "loss_png": os.path.join(cfg.out, "loss.png"),
    }
    if result.get("seconds"):
        report["tokens_per_s"] = round(result["tokens_seen"] / result["seconds"], 1)
    if before and after:
        report["accuracy_gain_points"] = round(100 * (after["accuracy"] - before["accuracy"]), 1)
        if dist.is_main:
            report["report_png"] = plot_report(report, logger.records(), os.path.join(cfg.out, "report.png"))
            responses = eval_fn.evaluate.last_responses
            report["examples_after"] = [{"prompt": e["messages"][-2]["content"], "response": r,
                                         "correct": T.check_response(e, r)}
                                        for e, r in list(zip(val_examples, responses))[:10]]
    logger.write_json("report.json", report)
    if report["accuracy_before"] and report["accuracy_after"]:
        print0("held-out accuracy before -> after SFT: " + ", ".join(
            f"{k} {100 * report['accuracy_before'][k]:.0f}% -> {100 * v:.0f}%"
            for k, v in report["accuracy_after"].items()))
    print0("summary: " + json.dumps({k: v for k, v in report.items() if k != "examples_after"}))
    parallel.teardown_distributed()
    return report


if __name__ == "__main__":
    rc = main()
    sys.exit(rc if isinstance(rc, int) else 0)  # 2: a usage error (common.cli)
