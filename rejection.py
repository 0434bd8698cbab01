"""
rejection.py -- rejection sampling (§4.2.2), the second step of every post-training round.

§4.2.2: "For each prompt collected during human annotation we sample K (typically between
10 and 30) outputs from the latest chat model policy ... and use our reward model to select
the best candidate". Here:
- K samples per prompt from the policy with sample.generate(num_samples=K): the prompt's
  KV cache is computed once and shared by the K rows that sample.
- The reward model (reward.py) scores the K samples of a prompt in ONE packed row (the
  prompt once, each response seeing only the prompt and itself).
- Two signals pick (pick()): the task checker (tasks.py, the "execution feedback" of
  §4.3) filters out incorrect samples, as Llama 3 does for code and math; the reward
  model picks among the samples that pass. The pick becomes SFT data (sft_rs.jsonl, for
  this round's sft.py). The report gives both picks' accuracy against a random sample
  and the best-of-K oracle: the RM's own pick, and the combined one.
- Which prompts (focus()): a quarter of them evenly over the tasks (the pilot), the rest
  to each task in proportion to how often the policy's samples fail it there -- §4.3.3
  sources prompts for the skills "where the model underperforms". A solved task adds
  little; a task the policy rarely gets right needs many prompts to yield a few rows.
- Where a prompt has both a correct and a wrong sample it gives an on-policy preference
  pair (chosen: the RM's favourite correct sample; rejected: the policy's most frequent
  wrong answer) for dpo.py and the next round's reward model (§4.2.1). Where all K
  samples fail, the task's reference answer plays the annotator's edit of §4.2.1
  ("edited > chosen > rejected") and is chosen against that wrong answer (--edit): a
  policy that guesses a favourite answer is right only where the guess happens to be,
  so without the edit its guess is never pushed down where it is wrong.

Reads:  a policy checkpoint (--init) and a reward model (--reward, out/reward/final);
        prompts from tasks.py (default) or an SFT JSONL (--data).
Writes: OUT/{sft_rs.jsonl (SFT JSONL: {"messages", "task", "meta"}), pairs.jsonl
        (preference JSONL for dpo.py --data), report.json}.
Run:    python rejection.py --init out/sft/final --reward out/reward/final --k 16
Next:   dpo.py (trains on OUT/pairs.jsonl), sft.py (the next round's SFT data).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

import torch

import quantize
import reward as R
import sample
import tasks
from common import OutputLock, atomic_write_json, cli, print0, set_threads


def pick(scores: list[float], correct: list[bool] | None) -> tuple[int, int | None]:
    """Which sample of a prompt becomes SFT data. -> (the reward model's own pick, the
    combined pick). The two signals and what each decides:
    - where the task has a checker (correct is a list), execution feedback decides
      WHETHER a prompt yields data: only samples that pass are candidates (§4.3.1,
      §4.3.3: incorrect code and math solutions are filtered out), and none pass ->
      no pick (None);
    - the reward model decides WHICH candidate: the highest-scored one (§4.2.2);
      without a checker it picks among all K.
    [0.1, 0.9, 0.5], [True, False, True] -> (1, 2);  [0.1, 0.9], None -> (1, 1)."""
    rm_pick = max(range(len(scores)), key=lambda j: scores[j])
    if correct is None:
        return rm_pick, rm_pick
    passing = [j for j in range(len(scores)) if correct[j]]
    return rm_pick, (max(passing, key=lambda j: scores[j]) if passing else None)


def focus(per_task: dict, n: int, floor: float = 0.05) -> dict:
    """How many of n more prompts each task gets: in proportion to how often a random
    sample of the policy FAILS the task, max(1 - random_correct, floor) -- §4.3.3 sources
    prompts for "the skills where the model underperforms" rather than evenly. The floor
    keeps solved tasks in the data. Counts sum to n (largest remainders get the rest).
    {"a": {"random_correct": 1.0}, "b": {"random_correct": 0.0}}, 105 -> {"a": 5, "b": 100}"""
    weight = {t: max(1.0 - r["random_correct"], floor) for t, r in sorted(per_task.items())}
    share = {t: n * w / sum(weight.values()) for t, w in weight.items()}
    counts = {t: int(x) for t, x in share.items()}
    for t in sorted(share, key=lambda t: counts[t] - share[t])[:n - sum(counts.values())]:
        counts[t] += 1
    return counts


def on_policy_pair(prompt, example: dict, texts: list[str], scores: list[float], correct: list[bool],
                   edit: bool = False):
    """A preference row from the policy's own K samples, or None: chosen = the
    reward model's favourite correct sample, rejected = the policy's most frequent
    WRONG answer (the mistake greedy decoding tends to make, the one DPO should push
    down; ties go to the score). The checker says right and wrong, not the RM.
    edit: where all K samples are wrong, the task's reference answer stands in for an
    annotator's edit (§4.2.1: "edited > chosen > rejected") as the chosen response, so
    the policy's mistake on a prompt it never solves is pushed down too; meta "edited".
    (Not the row's own "edited" response of tasks.py, a third one ranked above "chosen":
    here no sample is right, so the edit IS the chosen response.)"""
    right = [j for j, ok in enumerate(correct) if ok and texts[j].strip()]
    wrong = [j for j, ok in enumerate(correct) if not ok and texts[j].strip()]
    reference = example.get("messages", [{}])[-1]  # a task example's last message: the answer
    if not wrong or not (right or (edit and reference.get("role") == "assistant")):
        return None
    answer = {j: " ".join(texts[j].split()) for j in wrong}  # whitespace-normalized
    seen = collections.Counter(answer.values())
    r = max(wrong, key=lambda j: (seen[answer[j]], scores[j]))
    if right:
        chosen, meta = texts[max(right, key=lambda j: scores[j])], example.get("meta", {})
    else:  # the edit
        chosen, meta = reference["content"], {**example.get("meta", {}), "edited": True}
    return {"task": example.get("task"), "prompt": list(prompt), "chosen": chosen, "rejected": texts[r], "meta": meta}


@torch.no_grad()
def rejection_sample(policy, reward_model, tokenizer, examples: list[dict], k: int = 16,
                     temperature: float = 1.2, top_p: float = 1.0, max_new_tokens: int = 32,
                     batch_prompts: int = 16, seed: int = 0, log_every: int = 1,
                     then=None, edit: bool = False) -> tuple[list[dict], list[dict], dict]:
    """K samples per prompt from the policy; the reward model and the checker pick (pick()).

    examples: task examples ({"messages" (the last one, the reference answer, is
              dropped), "task", "meta"}) or prompts ({"prompt": [messages]}).
    then:     optional; called once when `examples` are done, with their per-task rates
              ({task: {"random_correct": ..}}), it returns more examples to sample (how
              main() spends most prompts on the tasks the policy fails, focus()). The
              report's "pilot" holds the rates of `examples` alone.
    -> (sft_rows, pairs, report):
       sft_rows: {"messages": prompt + [the pick], "task", "meta": {..., "reward",
                 "pass_rate"}} -- the SFT JSONL format (§4.2.2: the pick becomes
                 fine-tuning data); a checked prompt with no correct sample gives none;
       pairs:    on-policy preference rows (on_policy_pair; edit: also where every
                 sample fails, the reference answer chosen), filtered by
                 reward.filter_preferences (§4.1.2, §4.2.1);
       report:   on the checked prompts: rm_pick_correct (the RM's own pick passes
                 the checker), pick_correct (the combined pick; with a checker on every
                 prompt it is the oracle by construction), random_correct (a random
                 sample: the mean over samples), oracle_correct (any of the K),
                 rm_accuracy_on_samples (the RM ranks a correct sample above a wrong
                 one of the same prompt), per task, and timings."""
    chat = R.chat_format(tokenizer)
    prompt_of = lambda e: e["prompt"] if "prompt" in e else e["messages"][:-1]  # noqa: E731
    prompts = [prompt_of(e) for e in examples]
    sft_rows, pairs, sample_pairs = [], [], []
    counts = collections.defaultdict(lambda: collections.Counter())  # task -> sums of the rates below
    stats_total = {"prefill_s": 0.0, "decode_s": 0.0, "new_tokens": 0, "score_s": 0.0}
    t0, start, pilot = time.time(), 0, None
    rates = lambda c: {f"{key}_correct": c[key] / max(1, c["prompts"]) for _, key in RATES}  # noqa: E731

    def tally() -> dict:  # the rates so far: over all checked prompts and per task
        total = sum(counts.values(), collections.Counter())
        return {"prompts": len(prompts), "checked": total["prompts"], **rates(total),
                "per_task": {t: {"prompts": c["prompts"], **rates(c)} for t, c in sorted(counts.items())}}

    while start < len(prompts):
        batch = prompts[start:start + batch_prompts]
        stats = {}
        # §4.2.2: one prefill per prompt, its KV cache copied to the K rows that sample.
        samples = sample.generate(policy, chat.tokenizer, [chat.encode_dialog_prompt(p) for p in batch],
                                  max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  seed=seed + start, num_samples=k, stats=stats)
        for key in ("prefill_s", "decode_s", "new_tokens"):
            stats_total[key] += stats[key]
        t_score = time.time()
        texts_of = [[chat.tokenizer.decode(ids) for ids in samples[i * k:(i + 1) * k]] for i in range(len(batch))]
        if reward_model is None:  # no judge yet: every sample scores 0 (the first passing one is picked)
            scores_of = [[0.0] * k for _ in batch]
        else:
            scores_of = R.score_prompts(reward_model, chat, batch, texts_of)  # one packed row per prompt
        for i, prompt in enumerate(batch):
            example, texts, scores = examples[start + i], texts_of[i], scores_of[i]
            correct = [tasks.check_response(example, t) for t in texts] if example.get("meta") else None
            rm_pick, best = pick(scores, correct)
            if correct is not None:
                n = counts[example.get("task") or "other"]
                n.update(prompts=1, rm_pick=correct[rm_pick], pick=best is not None, random=sum(correct) / k,
                         oracle=any(correct))
                right = [j for j in range(k) if correct[j] and texts[j].strip()]
                wrong = [j for j in range(k) if not correct[j] and texts[j].strip()]
                sample_pairs += [scores[c] > scores[r] for c in right for r in wrong]  # what picking needs
                pair = on_policy_pair(prompt, example, texts, scores, correct, edit)
                pairs += [pair] if pair else []
            if best is not None:
                sft_rows.append({"messages": list(prompt) + [{"role": "assistant", "content": texts[best]}],
                                 "task": example.get("task"), "meta": {**example.get("meta", {}), "reward": scores[best],
                                 "k": k, "pass_rate": None if correct is None else sum(correct) / k}})
        stats_total["score_s"] += time.time() - t_score
        done = start + len(batch)
        if log_every and (start // batch_prompts) % log_every == 0:
            elapsed = time.time() - t0
            so_far = tally()
            msg = f"rejection sampling: {done}/{len(prompts)} prompts, {elapsed:.0f}s, eta {elapsed / done * (len(prompts) - done):.0f}s"
            if so_far["checked"]:
                msg += " | " + ", ".join(f"{name} {so_far[key + '_correct']:.1%}" for name, key in RATES)
            print0(msg, flush=True)
        start += len(batch)
        if start >= len(prompts) and then is not None:  # the pilot is done: draw the rest
            pilot = tally()
            more, then = then(pilot["per_task"]), None
            examples = list(examples) + list(more)
            prompts += [prompt_of(e) for e in more]
    report = {**tally(), "k": k, "temperature": temperature, "top_p": top_p,
              "sft_rows": len(sft_rows), "seconds": round(time.time() - t0, 1),
              "rm_accuracy_on_samples": sum(sample_pairs) / max(1, len(sample_pairs)),
              "rm_sample_pairs": len(sample_pairs),
              "generate_tokens_per_s": round(stats_total["new_tokens"]
                                             / max(1e-9, stats_total["prefill_s"] + stats_total["decode_s"]), 1),
              "score_seconds": round(stats_total["score_s"], 1), **({"pilot": pilot} if pilot else {})}
    pairs = R.filter_preferences(pairs, " (on-policy pairs)")
    report["pairs"] = len(pairs)
    report["edited_pairs"] = sum(bool(p["meta"].get("edited")) for p in pairs)
    return sft_rows, pairs, report


# The rates reported: (what the log line calls it, the key: report[key + "_correct"]).
RATES = (("RM pick", "rm_pick"), ("RM + checker pick", "pick"), ("random", "random"), ("oracle", "oracle"))


@cli
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="Rejection sampling (§4.2.2): K samples per prompt from the "
                                                 "policy, the reward model picks; writes SFT rows and DPO pairs.")
    parser.add_argument("--init", default="",
                        help="the policy checkpoint (default: out/sft/final, else out/pretrain/final)")
    parser.add_argument("--reward", default="out/reward/final", help="the reward model (python reward.py writes it)")
    parser.add_argument("--k", type=int, default=16, help="samples per prompt (§4.2.2: 10 to 30)")
    parser.add_argument("--data", default="",
                        help="SFT JSONL whose prompts to sample (default: generated task prompts)")
    parser.add_argument("--n-prompts", type=int, default=4096, help="generated task prompts (tasks.make_examples)")
    parser.add_argument("--split", default="train", help="tasks.py split of the generated prompts (train | val)")
    parser.add_argument("--pilot", type=float, default=0.25,
                        help="share of the generated prompts drawn evenly over the tasks first; the rest go to "
                             "the tasks the policy fails there (focus(), §4.3.3); 1 = all evenly")
    parser.add_argument("--tasks", default="", help="comma-separated subset of tasks.py's tasks")
    parser.add_argument("--edit", action=argparse.BooleanOptionalAction, default=True,
                        help="where all K samples fail, pair the task's reference answer (an annotator's edit, "
                             "§4.2.1) with the policy's most frequent wrong one (on_policy_pair)")
    parser.add_argument("--temperature", type=float, default=1.2,
                        help="sampling temperature (our choice, measured: diverse samples, docs/NOTES.md)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus; 1 = off")
    parser.add_argument("--max-new-tokens", type=int, default=24,
                        help="per sample (task answers are a few tokens)")
    parser.add_argument("--batch-prompts", type=int, default=16, help="prompts per generate call (x K rows)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0 = the cores / ranks rule)")
    parser.add_argument("--out", default="out/rejection", help="output folder")
    args = parser.parse_args(argv)
    for name in ("k", "n_prompts", "batch_prompts", "max_new_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.pilot <= 1:
        parser.error(f"--pilot must be in (0, 1], got {args.pilot}")
    print(json.dumps(vars(args)))
    set_threads(args.threads)
    OutputLock(args.out).acquire()
    policy_path = args.init or R.default_init()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    policy, tokenizer = sample.load_for_inference(policy_path, device=device)
    quantize.fuse_for_decoding(policy)  # inference only from here on: fewer matmuls per step
    reward_model, _ = R.load_reward_model(args.reward, device=next(policy.parameters()).device)
    then = None
    if args.data:
        examples, _ = tasks.read_sft_jsonl(args.data)
    else:
        n_tasks = len(tasks.task_names(args.tasks or None))  # the pilot has every task
        n_pilot = min(args.n_prompts, max(n_tasks, round(args.pilot * args.n_prompts)))
        examples = tasks.make_examples(n_pilot, args.seed, tasks=args.tasks or None, split=args.split)
        if n_pilot < args.n_prompts:  # the rest: per task, from another seed's stream (new prompts)
            def then(per_task):
                counts = focus(per_task, args.n_prompts - n_pilot)
                print0(f"pilot: {n_pilot} prompts; the other {args.n_prompts - n_pilot} by task: {counts}")
                return [e for t, n in counts.items() if n
                        for e in tasks.make_examples(n, args.seed + 10**6, tasks=[t], split=args.split)]
    if len(examples) < 100:
        print(f"note: {len(examples)} prompts are too few for the pick rates below to mean much")
    print(f"policy {policy_path}, reward model {args.reward}: {len(examples)} prompts x {args.k} samples")
    sft_rows, pairs, report = rejection_sample(policy, reward_model, tokenizer, examples, k=args.k,
                                               temperature=args.temperature, top_p=args.top_p,
                                               max_new_tokens=args.max_new_tokens,
                                               batch_prompts=args.batch_prompts, seed=args.seed, then=then,
                                               edit=args.edit)
    tasks.write_jsonl(sft_rows, os.path.join(args.out, "sft_rs.jsonl"))
    tasks.write_jsonl(pairs, os.path.join(args.out, "pairs.jsonl"))
    report = {"policy": policy_path, "reward": args.reward, **report,
              "files": {"sft": os.path.join(args.out, "sft_rs.jsonl"), "pairs": os.path.join(args.out, "pairs.jsonl")}}
    atomic_write_json(os.path.join(args.out, "report.json"), report)
    print(f"summary: the reward model's own pick is correct {report['rm_pick_correct']:.1%} of the time, with the "
          f"checker's filter {report['pick_correct']:.1%}; a random sample {report['random_correct']:.1%}; best-of-"
          f"{args.k} oracle {report['oracle_correct']:.1%}; the RM ranks "
          f"a correct sample above a wrong one in {report['rm_accuracy_on_samples']:.1%} of "
          f"{report['rm_sample_pairs']} such pairs. Wrote {len(sft_rows)} SFT rows and {len(pairs)} on-policy pairs "
          f"to {args.out}")
    return report


if __name__ == "__main__":
    rc = main()
    sys.exit(rc if isinstance(rc, int) else 0)  # 2: a usage error (common.cli)
