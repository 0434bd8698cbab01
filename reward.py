"""
reward.py -- the reward model (§4.1.2), the first step of every post-training round.

Stage of the paper: §4.1's round is reward model -> rejection sampling (rejection.py) ->
SFT (sft.py) -> DPO (dpo.py). Written as a difference from pretrain.py: the optimizer,
schedule, training loop, logging and checkpoints are imported from there; this file
owns the reward model's data, its packed rows and its loss.

What is notable here
- The reward model is the Transformer trunk of a checkpoint with its next-token head
  left unused and a scalar `value_head` read at the LAST token of each response -- the
  <|eot_id|> that closes the assistant turn, i.e. after the model has read it all.
- The loss is Llama 2's Bradley-Terry objective without the margin term (§4.1.2):
  -log σ(r(x, y_chosen) - r(x, y_rejected)). Rows with three ranked responses
  (edited > chosen > rejected) contribute every ordered pair: 3 pairs instead of 1.
- The paper's packed row (§4.1.2: "we concatenate the prompt and multiple responses
  into a single row with responses randomly shuffled"): ONE forward pass reads the
  prompt once and all its responses; an attention mask lets each response see only
  the prompt and itself, and its RoPE positions continue from the prompt's end, so
  each response is scored exactly as in a row of its own (tests/test_reward.py holds
  the two to 1e-5). rejection.py scores K samples the same way.

Our choices where the paper is silent or a 15M model differs (docs/NOTES.md has the
measurements behind them):
- Initialization: the paper trains the RM on the pre-trained checkpoint. Our tiny
  pre-trained model has never seen a chat turn nor our tasks; the SFT model already
  solves part of them, so its trunk "knows" more of what a correct answer is.
  Default: --init out/sft/final when it exists, else out/pretrain/final.
- The value head is zero-initialized: every score starts at 0, so the first loss is
  exactly ln 2 and the trunk's first gradients are not noise from a random head.
- Half of the generated pairs are bare answers ("9" vs "6", no edited): the form the
  SFT policy answers in, i.e. what rejection sampling will ask the RM to judge.
- The wrong answers imitate the policy's own mistakes (tasks.py's corrupt()).
- `--add-data` adds the on-policy pairs of earlier rounds (rejection.py, labelled by
  the task checker: §4.2.1's "preference data from the latest models"); every pair
  passes the similar-response and clearly-better filters (filter_preferences).

Reads:  a checkpoint (--init), preference pairs (tasks.make_preference_pairs by
        default, or --data / --eval-data JSONL validated by tasks.read_preference_jsonl).
Writes: out/reward/{config.json, log.jsonl, loss.png, accuracy.png, report.json,
        checkpoints/, final/{model.pt, tokenizer.model, reward_head.pt}}.

How to run
    python reward.py                                  # train the RM, held-out accuracy
    python reward.py --max-steps 50 --tasks add,larger --init out/pretrain/final

Read next: rejection.py (the RM picks the best of K samples), then sft.py and dpo.py.
"""

from __future__ import annotations

import os
import random
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import checkpoint
import model as M
import parallel
import pretrain
import tasks
from common import arg, atomic_torch_save, cli, finished_run, parse_config, print0
from pretrain import TrainConfig

# -----------------------------------------------------------------------------
# 1. The loss (§4.1.2) and its metrics


def reward_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry preference loss, mean over the N pairs of
        -log σ(r(x, y_chosen) - r(x, y_rejected))
    (Llama 2's objective minus its margin term, §4.1.2). (N,), (N,) -> 0-dim.
    logsigmoid is the stable form: a gap of ±50 gives a finite loss and gradient.
    Equal scores -> ln 2 = 0.6931; a gap of +5 -> 0.0067."""
    return -F.logsigmoid(chosen_scores - rejected_scores).mean()


def ranking_pairs(n_responses: int) -> list[tuple[int, int]]:
    """All ordered (better, worse) pairs of a ranking given best first (§4.1.2: "edited >
    chosen > rejected"). 2 -> [(0, 1)];  3 -> [(0, 1), (0, 2), (1, 2)]."""
    return [(i, j) for i in range(n_responses) for j in range(i + 1, n_responses)]


@torch.no_grad()
def pairwise_metrics(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> dict:
    """accuracy = share of pairs with r_chosen > r_rejected (a tie counts as wrong),
    margin = mean(r_chosen - r_rejected). [2, 0], [1, 1] -> accuracy 0.5, margin 0.0."""
    gap = (chosen_scores - rejected_scores).float()
    return {"accuracy": (gap > 0).float().mean().item(), "margin": gap.mean().item()}


# -----------------------------------------------------------------------------
# 2. The reward model: a Transformer trunk + a scalar head


class RewardModel(nn.Module):
    """trunk: model.Transformer (its `output` next-token head stays in the checkpoint
    but is unused); value_head: Linear(dim, 1), read at chosen positions."""

    def __init__(self, trunk: M.Transformer):
        super().__init__()
        self.trunk, self.args = trunk, trunk.args
        self.value_head = nn.Linear(trunk.args.dim, 1)
        nn.init.zeros_(self.value_head.weight)  # every score starts at 0: loss ln 2
        nn.init.zeros_(self.value_head.bias)  # (the bias cancels in r_c - r_r anyway)
        if trunk.output.weight is not trunk.tok_embeddings.weight:
            # The next-token head is unused: freeze it, so that the optimizer holds no
            # state for it. (AdamW never creates state for a parameter without a
            # gradient, and a resumed run's freshly initialized optimizer then expected
            # state the checkpoint did not have: resuming failed.)
            trunk.output.weight.requires_grad_(False)

    def forward(self, tokens, *, positions=None, attn_mask=None, score_index=None) -> torch.Tensor:
        """tokens (B, T) -> scores (B, R) at score_index (B, R), or (B, T) at every
        position when score_index is None. positions / attn_mask: see Transformer."""
        hidden = self.trunk(tokens, positions=positions, attn_mask=attn_mask, return_hidden=True)  # (B, T, dim)
        if score_index is not None:
            index = score_index[..., None].expand(-1, -1, hidden.shape[-1])  # (B, R, dim)
            hidden = hidden.gather(1, index)  # (B, R, dim): the last token of each response
        return self.value_head(hidden).squeeze(-1).float()  # (B, R) or (B, T)


HEAD_FILE = "reward_head.pt"  # beside model.pt: DIR stays loadable by checkpoint.load_model


def save_reward_model(reward_model: nn.Module, args: M.ModelArgs, out_dir: str, tokenizer_path=None):
    """DIR/model.pt (the trunk, this project's single-file format via checkpoint.save_model)
    + DIR/reward_head.pt ({"value_head": state_dict}) + DIR/tokenizer.model.
    Every rank calls this (FSDP gathers the full weights); rank 0 writes."""
    sd = checkpoint.full_state_dict(reward_model)  # "trunk.*" and "value_head.*" (rank 0)
    if not sd:
        parallel.barrier()
        return out_dir
    trunk = {k[len("trunk."):]: v for k, v in sd.items() if k.startswith("trunk.")}
    head = {k[len("value_head."):]: v for k, v in sd.items() if k.startswith("value_head.")}
    if args.tie_embeddings and "output.weight" not in trunk:
        trunk["output.weight"] = trunk["tok_embeddings.weight"]
    checkpoint.save_model(None, args, out_dir, tokenizer_path=tokenizer_path, state_dict=trunk)
    atomic_torch_save({"value_head": head}, os.path.join(out_dir, HEAD_FILE))
    checkpoint.record_file(out_dir, HEAD_FILE)  # verified with model.pt on load
    parallel.barrier()
    return out_dir


def load_reward_model(path: str, device="cpu", dtype=None) -> tuple[RewardModel, M.ModelArgs]:
    """DIR written by save_reward_model -> (RewardModel in eval mode, ModelArgs)."""
    head_path = os.path.join(path, HEAD_FILE)
    if not os.path.exists(head_path):
        raise FileNotFoundError(f"{path}: no {HEAD_FILE}; not a reward model (train one: python reward.py)")
    trunk, args = checkpoint.load_model(path, device=device, dtype=dtype)
    reward_model = RewardModel(trunk).to(device=device, dtype=dtype or torch.float32)
    reward_model.value_head.load_state_dict(torch.load(head_path, map_location=device, weights_only=True)["value_head"])
    return reward_model.eval(), args


# -----------------------------------------------------------------------------
# 3. Packed rows (§4.1.2): one prompt, several responses, one forward pass
#
#    tokens     [bos <user header> Add 2 and 3. <eot> <assistant header>][5 <eot>][4 <eot>]
#    segment    [-1  -1 ...                                         -1][ 0   0  ][ 1   1  ]
#    positions  [ 0   1 ...                                        P-1][ P  P+1 ][ P  P+1 ]
#    scored at                                                              ^         ^
#    Response i attends to the prompt (segment -1) and causally to itself only.


def chat_format(tokenizer_or_chat):
    """A tokenizer.Tokenizer or a ChatFormat -> ChatFormat."""
    from tokenizer import ChatFormat
    return tokenizer_or_chat if hasattr(tokenizer_or_chat, "encode_dialog") else ChatFormat(tokenizer_or_chat)


def encode_responses(chat, prompt: list[dict], responses: list[str]) -> tuple[list[int], list[list[int]]]:
    """-> (prompt tokens ending with the assistant header, [response tokens ending with
    <|eot_id|>]). Cut from encode_dialog(prompt + [assistant turn]) so that prompt +
    response is exactly the separate row the chat format gives."""
    prompt_tokens = chat.encode_dialog(prompt, add_generation_prompt=True).tokens
    P = len(prompt_tokens)
    out = []
    for response in responses:
        full = chat.encode_dialog(list(prompt) + [{"role": "assistant", "content": response}]).tokens
        assert full[:P] == prompt_tokens, "the generation prompt must be a prefix of the dialog"
        out.append(full[P:])  # content tokens + <|eot_id|>
    return prompt_tokens, out


def pack_row(prompt_tokens: list[int], response_tokens: list[list[int]]) -> dict:
    """-> {"tokens", "positions", "segment", "ends"} (lists): see the picture above.
    ends[i] is the index of response i's last token (its <|eot_id|>), where it is scored."""
    P = len(prompt_tokens)
    tokens, positions, segment, ends = list(prompt_tokens), list(range(P)), [-1] * P, []
    for i, ids in enumerate(response_tokens):
        tokens += ids
        positions += range(P, P + len(ids))  # as if it followed the prompt alone
        segment += [i] * len(ids)
        ends.append(len(tokens) - 1)
    return {"tokens": tokens, "positions": positions, "segment": segment, "ends": ends}


def packed_attention_mask(segment: torch.Tensor) -> torch.Tensor:
    """(B, T) segment ids (-1 prompt, i response i, -2 padding) -> (B, T, T) bool, True =
    may attend: causal, and a key is visible if it is in the prompt or in the query's own
    segment. Padding sees the prompt and earlier padding (never used; no empty rows).
    [[-1, -1, 0, 1]] -> rows: [1000], [1100], [1110], [1101]."""
    T = segment.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segment.device).tril()  # (T, T)
    same = segment[:, :, None] == segment[:, None, :]  # (B, T, T) query's segment == key's
    prompt_key = (segment == -1)[:, None, :]  # (B, 1, T)
    return causal[None] & (same | prompt_key)


def collate_packed(rows: list[dict], pad_id: int, device) -> dict:
    """Right-pad packed rows into a batch: inputs, positions, attn_mask (B, T, T),
    score_index (B, R) (padded with index 0) and score_valid (B, R)."""
    T = max(len(r["tokens"]) for r in rows)
    R = max(len(r["ends"]) for r in rows)
    tokens = torch.full((len(rows), T), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), T), dtype=torch.long)
    segment = torch.full((len(rows), T), -2, dtype=torch.long)
    score_index = torch.zeros((len(rows), R), dtype=torch.long)
    score_valid = torch.zeros((len(rows), R), dtype=torch.bool)
    for b, r in enumerate(rows):
        n = len(r["tokens"])
        tokens[b, :n] = torch.tensor(r["tokens"])
        positions[b, :n] = torch.tensor(r["positions"])
        segment[b, :n] = torch.tensor(r["segment"])
        score_index[b, :len(r["ends"])] = torch.tensor(r["ends"])
        score_valid[b, :len(r["ends"])] = True
    batch = {"inputs": tokens, "positions": positions, "attn_mask": packed_attention_mask(segment),
             "score_index": score_index, "score_valid": score_valid}
    return {k: v.to(device) for k, v in batch.items()} | {"n_tokens": sum(len(r["tokens"]) for r in rows)}


def score_batch(reward_model, batch: dict) -> torch.Tensor:
    """Scores (B, R) of a collated batch of packed rows."""
    return reward_model(batch["inputs"], positions=batch["positions"], attn_mask=batch["attn_mask"],
                        score_index=batch["score_index"])


@torch.no_grad()
def score(reward_model, tokenizer, prompt: list[dict], responses: list[str]) -> list[float]:
    """r(x, y) for every response y of one prompt x (a list of messages ending with the
    user turn), in ONE packed forward pass (several if the row would exceed max_seq_len).
    score(rm, tok, [{"role": "user", "content": "Add 2 and 3."}], ["5", "6"]) -> [1.3, -0.8]"""
    chat = chat_format(tokenizer)
    device = next(reward_model.parameters()).device
    prompt_tokens, response_tokens = encode_responses(chat, prompt, responses)
    limit = reward_model.args.max_seq_len
    scores, chunk = [], []

    def flush():
        if chunk:
            row = pack_row(prompt_tokens, chunk)
            batch = collate_packed([row], chat.tokenizer.pad_id, device)
            scores.extend(score_batch(reward_model, batch)[0].tolist())
            chunk.clear()

    for ids in response_tokens:
        if len(prompt_tokens) + len(ids) > limit:
            raise ValueError(f"prompt + response of {len(prompt_tokens) + len(ids)} tokens > max_seq_len {limit}")
        if len(prompt_tokens) + sum(map(len, chunk)) + len(ids) > limit:
            flush()
        chunk.append(ids)
    flush()
    return scores


@torch.no_grad()
def score_prompts(reward_model, tokenizer, prompts: list[list[dict]], responses: list[list[str]]) -> list[list[float]]:
    """score() for many prompts at once: one packed row per prompt, all rows in one
    padded batch (falls back to score() for a prompt whose row exceeds max_seq_len)."""
    chat = chat_format(tokenizer)
    device = next(reward_model.parameters()).device
    rows, out = [], [None] * len(prompts)
    for i, (prompt, texts) in enumerate(zip(prompts, responses)):
        row = pack_row(*encode_responses(chat, prompt, texts))
        if len(row["tokens"]) <= reward_model.args.max_seq_len:
            rows.append((i, row))
        else:
            out[i] = score(reward_model, chat, prompt, texts)
    if rows:
        scores = score_batch(reward_model, collate_packed([r for _, r in rows], chat.tokenizer.pad_id, device))
        for (i, row), s in zip(rows, scores.tolist()):
            out[i] = s[:len(row["ends"])]
    return out


# -----------------------------------------------------------------------------
# 4. Data: preference rows -> ranked responses -> shuffled packed rows


def ranked_responses(row: dict) -> list[str]:
    """A preference row -> its responses best first: [edited, chosen, rejected] when
    the row has "edited" (§4.1.2), else [chosen, rejected]."""
    return ([row["edited"]] if row.get("edited") else []) + [row["chosen"], row["rejected"]]


def encode_rows(chat, rows: list[dict], max_seq_len: int) -> tuple[list[dict], int]:
    """Tokenize every preference row once: -> ([{"prompt", "responses" (best first),
    "task"}], number dropped because the packed row would exceed max_seq_len)."""
    out, dropped = [], 0
    for row in rows:
        prompt_tokens, responses = encode_responses(chat, row["prompt"], ranked_responses(row))
        if len(prompt_tokens) + sum(map(len, responses)) > max_seq_len:
            dropped += 1
            continue
        out.append({"prompt": prompt_tokens, "responses": responses, "task": row.get("task", "?")})
    return out, dropped


def make_packed(encoded: dict, rng: random.Random | None) -> tuple[dict, list[tuple[int, int]]]:
    """One encoded row -> (packed row with the responses in shuffled order (§4.1.2; no
    shuffle when rng is None), [(better, worse)] as positions in the packed row)."""
    order = list(range(len(encoded["responses"])))  # order[slot] = rank of the response there
    if rng is not None:
        rng.shuffle(order)
    packed = pack_row(encoded["prompt"], [encoded["responses"][rank] for rank in order])
    slot_of = {rank: slot for slot, rank in enumerate(order)}
    return packed, [(slot_of[a], slot_of[b]) for a, b in ranking_pairs(len(order))]


def preference_batch(encoded_rows: list[dict], pad_id: int, device, rng: random.Random | None) -> dict:
    """Collate packed rows and list their ranked pairs as (row, better slot, worse slot),
    plus each pair's kind: 1 = the pair involving only chosen and rejected (correctness),
    0 = a pair with the edited response (form)."""
    packed, pairs, kinds = [], [], []
    for b, encoded in enumerate(encoded_rows):
        row, row_pairs = make_packed(encoded, rng)
        packed.append(row)
        n = len(encoded["responses"])
        for (better, worse), ranks in zip(row_pairs, ranking_pairs(n)):  # same order
            pairs.append((b, better, worse))
            kinds.append(ranks == (n - 2, n - 1))  # (chosen, rejected) in rank terms
    batch = collate_packed(packed, pad_id, device)
    batch["pairs"] = torch.tensor(pairs, dtype=torch.long, device=device)  # (n_pairs, 3)
    batch["pair_is_chosen_rejected"] = torch.tensor(kinds, dtype=torch.bool, device=device)
    return batch


def pair_scores(reward_model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (better scores, worse scores), (n_pairs,) each."""
    scores = score_batch(reward_model, batch)  # (B, R)
    row, better, worse = batch["pairs"].unbind(1)
    return scores[row, better], scores[row, worse]


def rm_loss_fn(reward_model, batch: dict):
    """pretrain.train's loss_fn: mean -log σ(r_better - r_worse) over every ordered pair
    of the micro-batch, plus its accuracy and margin for the log."""
    better, worse = pair_scores(reward_model, batch)
    return reward_loss(better, worse), pairwise_metrics(better, worse)


class PreferenceBatches:
    """next_batch for pretrain.train: step s, rank r takes rows [(s·dp + r)·B, ... + B)
    of an endless sequence of epochs, each a fresh permutation; the responses of every
    row are shuffled (§4.1.2). Both depend only on (seed, position): no state to save,
    and a resumed run sees exactly the rows an uninterrupted run would."""

    def __init__(self, encoded: list[dict], batch_size: int, pad_id: int, dist, seed: int):
        self.encoded, self.batch_size, self.pad_id, self.dist, self.seed = encoded, batch_size, pad_id, dist, seed
        self._perms: dict[int, list[int]] = {}

    def _row(self, g: int) -> int:
        epoch, n = divmod(g, len(self.encoded))
        if epoch not in self._perms:
            self._perms = {epoch: random.Random(f"{self.seed}:{epoch}").sample(range(len(self.encoded)), len(self.encoded))}
        return self._perms[epoch][n]

    def __call__(self, step: int, total_steps: int) -> list[dict]:
        start = (step * self.dist.dp_size + self.dist.dp_rank) * self.batch_size
        rows = [self.encoded[self._row(g)] for g in range(start, start + self.batch_size)]
        rng = random.Random(f"{self.seed}:shuffle:{start}")
        return [preference_batch(rows, self.pad_id, self.dist.device, rng)]


def make_eval_fn(encoded: list[dict], batch_size: int, pad_id: int, dist):
    """Held-out pairwise accuracy and margin (§4.1.2 reports RM accuracy on held-out
    pairs), over all ordered pairs, and separately for chosen-vs-rejected pairs (here:
    correct vs wrong answer) -- the pairs rejection sampling depends on. Responses are
    not shuffled (a fixed order: the same evaluation every time)."""
    mine = encoded[dist.dp_rank::dist.dp_size]

    @torch.no_grad()
    def eval_fn(reward_model) -> dict:
        sums = torch.zeros(6, dtype=torch.float64, device=dist.device)  # loss, right, margin, pairs; c>r right, n
        for i in range(0, len(mine), batch_size):
            batch = preference_batch(mine[i:i + batch_size], pad_id, dist.device, None)
            better, worse = pair_scores(reward_model, batch)
            gap = (better - worse).double()
            is_cr = batch["pair_is_chosen_rejected"]
            sums += torch.stack([F.softplus(-gap).sum(), (gap > 0).double().sum(), gap.sum(),
                                 torch.tensor(float(len(gap)), dtype=torch.float64, device=gap.device),
                                 (gap[is_cr] > 0).double().sum(), is_cr.double().sum()])
        if dist.world_size > 1:
            torch.distributed.all_reduce(sums)
        n = max(1.0, sums[3].item())
        return {"val_loss": sums[0].item() / n, "val_accuracy": sums[1].item() / n,
                "val_margin": sums[2].item() / n, "val_accuracy_chosen_rejected": sums[4].item() / max(1.0, sums[5].item())}

    return eval_fn


# -----------------------------------------------------------------------------
# 5. Training the reward model


def default_init() -> str:
    """out/sft/final when SFT has run, else the pre-trained model (see the docstring)."""
    return "out/sft/final" if os.path.exists("out/sft/final/model.pt") else "out/pretrain/final"


@dataclass
class RewardConfig(TrainConfig):
    """Reward model training (§4.1.2): every field is a --kebab-case flag."""
    init: str = arg("", "checkpoint to start from (default: out/sft/final if it exists, else out/pretrain/final)")
    out: str = arg("out/reward", "checkpoints, logs, report and final/ go here")
    data: str = arg("", "preference JSONL (tasks.read_preference_jsonl format); default: generated pairs")
    eval_data: str = arg("", "held-out preference JSONL; default: generated 'val' pairs")
    tasks: str = arg("", "comma-separated tasks of tasks.py for the generated pairs (default: all)")
    n_train: int = arg(5000, "generated training pairs (300 steps x 16 rows: each seen about once)")
    n_eval: int = arg(400, "generated held-out pairs (tasks.py's 'val' split: problems never trained on)")
    add_data: str = arg("", "comma-separated preference JSONL files added to the training pairs: the on-policy "
                            "pairs of earlier rounds (rejection.py's pairs.jsonl; §4.2.1); every 20th held out")
    terse_fraction: float = arg(0.5, "fraction of generated pairs that are bare right vs bare wrong answers, "
                                     "the form the policy answers in (tasks.make_preference_pairs)")
    batch_size: int = arg(16, "prompts (packed rows) per optimizer step")
    max_steps: int = arg(300, "optimizer steps (600 cost twice the time for ~3 points of held-out accuracy)")
    time_budget_min: float = arg(0.0, "if > 0: shorten the run to end within this many minutes (timed on "
                                      "steps 2-3, which a busy machine makes look slow: off by default)")
    lr: float = arg(5e-4, "peak learning rate (the paper gives none for the RM; measured on a 15M model: "
                          "1e-4 learned the form pairs but left chosen-vs-rejected at chance after 150 steps)")
    warmup_steps: int = arg(20, "linear warm-up steps")
    weight_decay: float = arg(0.0, "AdamW weight decay (fine-tuning: none)")
    eval_every: int = arg(50, "held-out accuracy every N steps")
    ckpt_every: int = arg(100, "checkpoint every N steps")


RATINGS_KEPT = ("significantly better", "better")  # §4.2.1: of four ratings, the two used


def similar_responses(a: str, b: str, threshold: float = 0.9) -> bool:
    """§4.1.2's "similar responses": the same text up to case, spaces, commas and a
    final full stop (tasks.normalize), or at least `threshold` of their characters
    matching (difflib's ratio, for long responses that differ in a word or two).
    "7" vs "7." -> True; "The cat sat on the mat." vs "The cat sat on a mat." -> True;
    "34" vs "43" -> False."""
    import difflib
    a, b = tasks.normalize(a), tasks.normalize(b)
    return a == b or difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() >= threshold


def preference_verdict(row: dict) -> str:
    """Why a preference row is kept or dropped: "kept", "similar" or "unclear".
    A row whose task has a checker (meta from tasks.py) is clearly better only when
    the checker passes chosen and fails rejected (§4.3: execution feedback as the
    rating "significantly better"); one answer right and one wrong is never
    "similar", however alike the texts ("34" vs "43" is the whole point). Without a
    checker: a "rating" field, when the row has one, must be in RATINGS_KEPT
    (§4.2.1), and similar chosen/rejected texts are dropped (§4.1.2)."""
    meta = row.get("meta")
    if isinstance(meta, dict) and meta.get("task") in tasks.TASKS and "answer" in meta:
        ok = tasks.check_response(meta, row["chosen"]) and not tasks.check_response(meta, row["rejected"])
        return "kept" if ok else "unclear"
    if row.get("rating") is not None and str(row["rating"]).lower() not in RATINGS_KEPT:
        return "unclear"
    return "similar" if similar_responses(row["chosen"], row["rejected"]) else "kept"


def filter_preferences(rows: list[dict], what: str = "") -> list[dict]:
    """Rows -> the kept ones (preference_verdict); prints what was dropped and why."""
    verdicts = [preference_verdict(row) for row in rows]
    if verdicts.count("kept") < len(rows):
        print0(f"preference filter{what}: kept {verdicts.count('kept')}, dropped {verdicts.count('similar')} "
               f"with similar responses (§4.1.2), {verdicts.count('unclear')} not clearly better (§4.2.1)")
    return [row for row, v in zip(rows, verdicts) if v == "kept"]


def load_pairs(cfg, split: str, paths: str | None = None) -> tuple[list[dict], list[dict]]:
    """Filtered preference rows (filter_preferences) and the skipped lines: from
    comma-separated JSONL files (`paths`, else --data for 'train' / --eval-data for
    'val'; validated: bad lines are reported with their line number and skipped), or
    generated by tasks.py. cfg: a RewardConfig or a DPOConfig."""
    paths = paths if paths is not None else cfg.data if split == "train" else cfg.eval_data
    rows, skipped = [], []
    for path in [p.strip() for p in paths.split(",") if p.strip()]:
        r, s = tasks.read_preference_jsonl(path, verbose=int(os.environ.get("RANK", "0")) == 0)
        rows, skipped = rows + r, skipped + s
    if not paths:
        rows = tasks.make_preference_pairs(cfg.n_train if split == "train" else cfg.n_eval, cfg.seed, split=split,
                                           tasks=cfg.tasks or None, terse_fraction=getattr(cfg, "terse_fraction", 0))
    return filter_preferences(rows, f" ({paths or split})"), skipped


def train_reward_model(cfg: RewardConfig) -> dict:
    """The whole stage: load, pack, train with pretrain.train, evaluate, save. -> report."""
    started = pretrain.start_run(cfg)
    if started is None:  # a finished run: its record is kept
        return finished_run(cfg.out)
    dist, logger = started
    t_start = time.time()
    init = cfg.init or default_init()
    trunk, model_args = checkpoint.load_model(init, device=dist.device)
    tokenizer_path = checkpoint.find_tokenizer(init)
    from tokenizer import ChatFormat, Tokenizer
    chat = ChatFormat(Tokenizer(tokenizer_path))
    print0(f"reward model: trunk of {init} ({M.count_params(model_args):,} parameters) + value head")

    # ---- data ---------------------------------------------------------------------
    train_rows, skipped = load_pairs(cfg, "train")
    eval_rows, eval_skipped = load_pairs(cfg, "val")
    added, more_skipped = load_pairs(cfg, "train", cfg.add_data) if cfg.add_data else ([], [])  # §4.2.1
    added_eval, skipped = added[::20], skipped + more_skipped
    train_rows += [row for i, row in enumerate(added) if i % 20]
    train_encoded, dropped = encode_rows(chat, train_rows, model_args.max_seq_len)
    eval_encoded, eval_dropped = encode_rows(chat, eval_rows, model_args.max_seq_len)
    n_pairs = sum(len(ranking_pairs(len(e["responses"]))) for e in train_encoded)
    print0(f"data: {len(train_encoded)} training rows ({n_pairs} ordered pairs; "
           f"{sum(len(e['responses']) == 3 for e in train_encoded)} with edited > chosen > rejected), "
           f"{len(eval_encoded)} held-out rows; skipped {len(skipped) + len(eval_skipped)} bad lines, "
           f"dropped {dropped + eval_dropped} too long")
    if not train_encoded or not eval_encoded:
        raise SystemExit("no usable preference rows")

    # ---- model: trunk + head, sharded like pretrain's model when there are ranks ----
    reward_model = RewardModel(trunk).to(dist.device)
    if dist.world_size > 1:
        # FSDP per block and on the trunk (parallel.parallelize), then one more group at
        # the root for the value head, so its gradient is averaged over ranks too.
        from torch.distributed.fsdp import fully_shard
        parallel.parallelize(reward_model.trunk, dist, reshard_after_forward=cfg.reshard_after_forward)
        fully_shard(reward_model, mesh=dist.mesh["dp"])
    reward_model.train()
    optimizer = pretrain.build_optimizer(reward_model, cfg.lr, cfg.weight_decay, betas=(cfg.beta1, cfg.beta2))

    pad_id = chat.tokenizer.pad_id
    eval_fn = make_eval_fn(eval_encoded, cfg.batch_size, pad_id, dist)
    next_batch = PreferenceBatches(train_encoded, cfg.batch_size, pad_id, dist, cfg.seed)
    result = pretrain.train(cfg, dist, reward_model, optimizer, next_batch, rm_loss_fn, eval_fn=eval_fn,
                            model_args=model_args, logger=logger, export=False)
    if result.get("stopped"):  # --stop-at-step: the checkpoint is written; run again to resume
        parallel.teardown_distributed()
        return {"status": "stopped", "steps": result["step"], "total_steps": result["total_steps"]}
    final_dir = os.path.join(cfg.out, "final")
    save_reward_model(reward_model, model_args, final_dir, tokenizer_path=tokenizer_path)
    print0(f"saved {final_dir} (model.pt = trunk, {HEAD_FILE} = value head)")

    # ---- per-task held-out accuracy (what can the reward model judge?) ------------
    reward_model.eval()
    per_task = {}
    for task in sorted({e["task"] for e in eval_encoded}):
        per_task[task] = make_eval_fn([e for e in eval_encoded if e["task"] == task], cfg.batch_size, pad_id,
                                      dist)(reward_model)
    if added_eval:  # held-out pairs of an earlier policy's own samples
        encoded, _ = encode_rows(chat, added_eval, model_args.max_seq_len)
        per_task["on_policy"] = make_eval_fn(encoded, cfg.batch_size, pad_id, dist)(reward_model)
    report = {
        "status": "done", "init": init, "steps": result["step"], "total_steps": result["total_steps"],
        "added_pairs": len(added) - len(added_eval),
        "train_rows": len(train_encoded), "train_pairs": n_pairs, "eval_rows": len(eval_encoded),
        "skipped_lines": skipped[:50] + eval_skipped[:50], "after": result["last_eval"],
        "heldout_accuracy": result["last_eval"].get("val_accuracy"),
        "heldout_accuracy_chosen_rejected": result["last_eval"].get("val_accuracy_chosen_rejected"),
        "heldout_margin": result["last_eval"].get("val_margin"),
        "per_task": {t: {k.replace("val_", ""): round(v, 4) for k, v in m.items()} for t, m in per_task.items()},
        "first_loss": result["losses"][min(result["losses"])] if result["losses"] else None,
        "last_loss": result["losses"][max(result["losses"])] if result["losses"] else None,
        "train_seconds": round(result.get("seconds", 0.0), 1), "wall_seconds": round(time.time() - t_start, 1),
        "final": final_dir,
    }
    logger.write_json("report.json", report)
    if dist.is_main:
        logger.plot((("accuracy", "train batch"), ("val_accuracy", "held-out, all pairs"),
                     ("val_accuracy_chosen_rejected", "held-out, chosen vs rejected")),
                    path=os.path.join(cfg.out, "accuracy.png"), title="reward model (§4.1.2)", ylabel="pairwise accuracy")
        print0(f"held-out pairwise accuracy {result['last_eval']['val_accuracy']:.1%}"
               f" (chosen vs rejected {result['last_eval']['val_accuracy_chosen_rejected']:.1%}), "
               f"margin {result['last_eval']['val_margin']:.2f}")
        print0("per task: " + ", ".join(f"{t} {m['accuracy']:.1%} ({m['accuracy_chosen_rejected']:.1%})"
                                        for t, m in report["per_task"].items()))
    parallel.teardown_distributed()
    return report


# -----------------------------------------------------------------------------
# 7. Command line


@cli
def main(argv=None):
    return train_reward_model(parse_config(RewardConfig, argv))


if __name__ == "__main__":
    rc = main()
    sys.exit(rc if isinstance(rc, int) else 0)  # 2: a usage error (common.cli)
