"""
run_all.py -- the whole paper in one command, on a laptop CPU, with a report that judges.

Stages, in the paper's order (each is one of the project's scripts, run as a child
process with its output streamed and logged to OUT/logs/NAME.log):
  data       §3.1    data.py       curate the built-in corpus, train the BPE, write shards
  tokenizer  §3.2    tokenizer.py  characters per token, ours vs Meta's (if installed)
  pretrain   §3.4    pretrain.py   torchrun, 2 ranks (FSDP2), a few minutes
  longctx    §3.4.2  longcontext.py  context 512 -> 1024, needle in a haystack before/after
  sft        §4.1.3  sft.py        the first chat model: SFT on the built-in tasks
  tools      §4.3.5  tools.py      a branch off it: SFT on calculator calls, then held-out
                                   accuracy with the tool vs without it (nothing reads it)
  then --rounds N post-training rounds (§4.1.6; Figure 7 of the paper; N = 2 here, 6 there).
  Round r, in OUT/round_r/:
  reward     §4.1.2  reward.py     a reward model on the preference data so far: the
                                   generated pairs + the on-policy pairs of rounds < r
  rejection  §4.2.2  rejection.py  K samples per prompt from the latest policy, most
                                   prompts on the tasks it fails (§4.3.3); the task
                                   checker filters, the reward model picks -> SFT rows;
                                   correct vs wrong samples -> on-policy pairs; all
                                   wrong -> the reference answer as the edit (§4.2.1)
  sft        §4.1.3  sft.py        SFT from the PRE-TRAINED model on the SFT data + every
                                   round's rejection-sampled rows so far
  dpo        §4.1.4  dpo.py        DPO from this round's SFT model on every round's pairs so far
                                   -> the latest policy
  chat       §6      sample.py     a short scripted chat with the final model

"The latest policy" is the previous round's DPO model (round 1: the first SFT model).
The stage list is data (stages()): another stage is one more entry, and its numbers one
more row in the report (VERDICTS) and one more key in summary.json (summary()).

It stops at the first failing stage (with that stage's exit code and the tail of its
output) and resumes from a named stage: every stage reads only files that earlier stages
wrote under --out. At the end it writes
  OUT/summary.json  the key numbers as data: seed, minutes, pretrain loss, SFT accuracy,
                    per round the reward model's accuracy, the rejection-sampling picks
                    and the SFT and DPO accuracies, the final accuracy (fractions of the
                    same held-out task prompts);
  OUT/REPORT.md     a verdict per stage against what this setup is expected to give,
                    then each stage's few numbers that matter and its plots.

Reads: nothing but the built-in data. Writes: out/ (or --out).
Run:   python run_all.py                     # everything, 25-30 minutes on 2 quiet CPU cores
       python run_all.py --seed 1 --out out/seed1
       python run_all.py --annotated 20000 --out out/written   # every answer written
       python run_all.py --retrieval --out out/retrieval        # an induction head first, ~40 minutes
       python run_all.py --from round2/sft   # resume at a stage
       python run_all.py --only report       # just rewrite REPORT.md and summary.json
Next:  REPORT.md in the output folder; README.md for each stage's own options.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from typing import NamedTuple

PY = sys.executable
# Prompts in the format of tasks.py's default tasks (what SFT and DPO taught); /reset
# between them because the tasks were single-turn conversations.
CHAT_SCRIPT = ["Largest of: 3 9 2 5", "/reset", "Find the digit: k 7 b q", "/reset",
               "Last of: 4 8 1 6", "/reset", "Which is larger: 34 or 17?", "/exit"]


class Stage(NamedTuple):
    name: str        # "pretrain", "round2/sft", ...: --from / --only take these
    cmd: list        # the command line
    what: str        # one line for the log and the report


def round_dir(out: str, r: int, *parts: str) -> str:
    return os.path.join(out, f"round_{r}", *parts)


def base_model(out: str) -> str:
    """The pre-trained model post-training starts from: the long-context stage's, as the
    paper's post-training starts from the 128K-context model (§3.4.2, §4)."""
    return os.path.join(out, "longctx", "final")


def policy_after(out: str, r: int) -> str:
    """The latest policy after round r (r = 0: the first SFT model)."""
    return os.path.join(out, "sft", "final") if r == 0 else round_dir(out, r, "dpo", "final")


# --retrieval: the long-context stage first grows an induction head (Olsson et al., 2022) on
# 4,000 steps of copy rows, then trains its needle stages at 256 and 512 tokens at a constant
# LR; with the head the tool stage needs a third of its steps. ~20 more minutes than the
# default (docs/NOTES.md): a model that copies and retrieves, and a stronger post-training.
RETRIEVAL = {"longctx": ["--copy-steps", "4000", "--copy-budget-min", "0", "--lengths", "256,512", "--steps", "600",
                         "--lr", "1e-3", "--min-lr-ratio", "1", "--time-budget-min", "0", "--niah-trials", "20"],
             "tools": ["--max-steps", "800"]}


def stages(out: str, rounds: int = 2, seed: int = 0, annotated: int = 0, retrieval: bool = False) -> list[Stage]:
    """The whole pipeline as data. Only paths and the seed are passed: every stage's
    tuning lives in its own defaults, so `python sft.py` alone does what run_all does.
    annotated > 0: every SFT gets only that many written answers (sft.py --n-train), the
    paper's setting, where the fine-tuning data is "largely" prompts with rejection-sampled
    responses and only "small amounts of human-curated data" (§4.2.2); 0 = sft.py's
    default, 100 written answers. retrieval: RETRIEVAL's flags added to its stages."""
    d = lambda *p: os.path.join(out, *p)  # noqa: E731
    s = ["--seed", str(seed)]
    n_train = ["--n-train", str(annotated)] if annotated > 0 else []
    torchrun = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    plan = [
        Stage("data", [PY, "data.py", "--out", d("data")] + s, "curation (§3.1) + tokenizer training + shards"),
        Stage("tokenizer", [PY, "tokenizer.py", "stats", "--tokenizer", d("data", "tokenizer.model"), "META",
                            "--out", d("tokenizer", "stats.json")], "characters per token (§3.2)"),
        Stage("pretrain", torchrun + ["pretrain.py", "--data", d("data"), "--out", d("pretrain")] + s,
              "FSDP2 pre-training on 2 ranks (§3.4)"),
        Stage("longctx", [PY, "longcontext.py", "--init", d("pretrain", "final"), "--data", d("data"),
                          "--out", d("longctx")] + s,
              "long-context stage: context grown in stages, needle in a haystack before/after (§3.4.2)"),
        Stage("sft", [PY, "sft.py", "--init", base_model(out), "--out", d("sft")] + n_train + s,
              "the first chat model: supervised fine-tuning on the task data (§4.1.3)"),
        Stage("tools", [PY, "tools.py", "learn", "--init", d("sft", "final"), "--out", d("tools")] + s,
              "tool use (§4.3.5): SFT on calculator calls, accuracy with vs without the tool"),
    ]
    if retrieval:
        plan = [st._replace(cmd=st.cmd + RETRIEVAL.get(st.name, [])) for st in plan]
    for r in range(1, rounds + 1):
        R = lambda *p: round_dir(out, r, *p)  # noqa: E731
        so_far = lambda name: [round_dir(out, q, "rejection", name) for q in range(1, r + 1)]  # noqa: E731 -- r's last
        pairs, rs_rows = so_far("pairs.jsonl"), ",".join(so_far("sft_rs.jsonl"))
        earlier_pairs, all_pairs = ",".join(pairs[:-1]), ",".join(pairs)
        latest = policy_after(out, r - 1)
        plan += [
            Stage(f"round{r}/reward", [PY, "reward.py", "--init", latest, "--out", R("reward")]
                  + (["--add-data", earlier_pairs] if earlier_pairs else []) + s,
                  "reward model on the generated pairs + earlier rounds' on-policy pairs (§4.1.2, §4.2.1)"),
            # A new set of prompts every round (seed), sampled from the latest policy.
            Stage(f"round{r}/rejection", [PY, "rejection.py", "--init", latest, "--reward", R("reward", "final"),
                                          "--out", R("rejection"), "--seed", str(1000 * seed + r)],
                  "best of K: the checker filters, the reward model picks (§4.2.2, §4.3.3)"),
            Stage(f"round{r}/sft", [PY, "sft.py", "--init", base_model(out), "--add-data", rs_rows,
                                    "--out", R("sft")] + n_train + s,
                  "SFT from the pre-trained model on the task data + all rejection-sampled rows (§4.1.3)"),
            # §4.1.4 trains "primarily" on the newest pairs; here the earlier rounds' stay in:
            # a later round's policy is right more often, so its own pairs are few, and
            # alone they hardly move it (docs/NOTES.md).
            Stage(f"round{r}/dpo", [PY, "dpo.py", "--init", R("sft", "final"),
                                    "--data", all_pairs, "--out", R("dpo")] + s,
                  "DPO on the on-policy pairs of this round and the earlier ones (§4.1.4)"),
        ]
    plan.append(Stage("chat", [PY, "sample.py", "--ckpt", policy_after(out, rounds), "--chat", "--temperature", "0"],
                      "a scripted chat with the final model (§6)"))
    return plan


def _resolve(cmd: list[str]) -> list[str]:
    """Fill in Meta's tokenizer path for the comparison, or drop the placeholder."""
    if "META" not in cmd:
        return cmd
    try:
        from tokenizer import meta_tokenizer_path
        meta = meta_tokenizer_path()
    except Exception:
        meta = None
    return [meta if c == "META" else c for c in cmd if c != "META" or meta]


def log_path(out: str, name: str) -> str:
    return os.path.join(out, "logs", name.replace("/", "_") + ".log")


def _children_cpu() -> float:
    import resource
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # finished children, all threads
    return usage.ru_utime + usage.ru_stime


def run_stage(stage: Stage, out: str) -> tuple[int, float, float]:
    """Run one stage, its output streamed and logged -> (exit code, wall seconds, CPU
    seconds). CPU seconds are what a busy machine does not inflate (much): on a machine
    shared with other jobs, wall time says more about the others than about us."""
    path = log_path(out, stage.name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    print(f"\n{'=' * 78}\n[{stage.name}] {' '.join(shlex.quote(c) for c in stage.cmd)}\n{'=' * 78}", flush=True)
    t0, cpu0 = time.time(), _children_cpu()
    chat = stage.name == "chat"
    with open(path, "w") as log:
        proc = subprocess.Popen(stage.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                stdin=subprocess.PIPE if chat else subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if chat:
            proc.stdin.write("\n".join(CHAT_SCRIPT) + "\n")
            proc.stdin.close()
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        code = proc.wait()
    return code, time.time() - t0, _children_cpu() - cpu0


# -----------------------------------------------------------------------------
# summary.json: the numbers, read from the records the stages wrote


def _load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _get(record, *keys):
    """record[k1][k2]... or None where anything is missing."""
    for k in keys:
        if not isinstance(record, dict) or k not in record:
            return None
        record = record[k]
    return record


def summary(out: str, rounds: int, seed: int, minutes: float | None) -> dict:
    """The key numbers of a run. Accuracies are fractions of the same held-out task
    prompts (tasks.py's 'val' split, the run's seed) under greedy decoding."""
    rec = lambda *p: _load(os.path.join(out, *p)) or {}  # noqa: E731
    pre, lc = rec("pretrain", "report.json"), rec("longctx", "report.json")
    result = {"seed": seed, "minutes": minutes,
              "pretrain": {"val_loss": pre.get("val_loss"),  # eval.py's bits per byte, before the long context
                           "bits_per_byte": pre.get("bits_per_byte", _get(lc, "before", "bits_per_byte"))},
              "niah": {"before": _get(lc, "before", "niah"), "after": _get(lc, "after", "niah")},
              "longctx": {"context": max((st["seq_len"] for st in lc.get("stages", []) if st.get("kind") != "copy"),
                                         default=None),  # the last stage's length
                          "short_loss_before": _get(lc, "before", "short_loss"),
                          "short_loss_after": _get(lc, "after", "short_loss"),
                          # eval.in_context_copying: how often the next token of a repeated span is copied
                          "copy_before": _get(lc, "before", "copy", "accuracy"),
                          "copy_after": _get(lc, "after", "copy", "accuracy")},
              "sft_accuracy": _get(rec("sft", "report.json"), "accuracy_after", "overall"), "rounds": []}
    for r in range(1, rounds + 1):
        rm, rs = rec(f"round_{r}", "reward", "report.json"), rec(f"round_{r}", "rejection", "report.json")
        sft, dpo = rec(f"round_{r}", "sft", "report.json"), rec(f"round_{r}", "dpo", "report.json")
        result["rounds"].append({
            "round": r, "rm_pairwise_accuracy": rm.get("heldout_accuracy"),
            "rm_accuracy_on_samples": rs.get("rm_accuracy_on_samples"),  # the policy's own (right, wrong) pairs
            "rm_pick_correct": rs.get("rm_pick_correct"),  # the reward model alone
            "rs_pick_correct": rs.get("pick_correct"),  # the checker's filter + the reward model
            "rs_random_correct": rs.get("random_correct"), "rs_oracle_correct": rs.get("oracle_correct"),
            # the same rates on the pilot alone: prompts drawn evenly over the tasks (rejection.focus)
            "rs_pilot_pick_correct": _get(rs, "pilot", "pick_correct"),
            "rs_pilot_random_correct": _get(rs, "pilot", "random_correct"),
            "rs_sft_rows": rs.get("sft_rows"), "pairs": rs.get("pairs"),
            "sft_accuracy": _get(sft, "accuracy_after", "overall"),
            "dpo_accuracy": _get(dpo, "task_accuracy_after", "accuracy")})
    last = result["rounds"][-1]["dpo_accuracy"] if result["rounds"] else result["sft_accuracy"]
    result["final_accuracy"] = last
    tools = rec("tools", "report.json")
    result["tools"] = {"with_tool": tools.get("with_tool"), "without_tool": tools.get("without_tool")}
    return result


# -----------------------------------------------------------------------------
# REPORT.md: verdicts first, then each stage


def _pct(x):
    return "-" if x is None else f"{100 * x:.1f}%"


def _pts(x):
    return "-" if x is None else f"{100 * x:+.1f} points"


# What this setup is expected to give (measured: docs/NOTES.md), one rule per row:
# (stage, key number as text, expectation as text, ok?, why when not). A missing
# number is "not run".
def verdicts(s: dict, out: str) -> list[tuple[str, str, str, bool | None, str]]:
    rows = []
    data = _get(_load(os.path.join(out, "data", "report.json")), "splits", "train", "tokens")
    rows.append(("data (§3.1)", f"{data:,} training tokens" if data else None, ">= 2M tokens",
                 data and data >= 2e6, "the corpus shrank: see the data section"))
    cpt = _get(_load(os.path.join(out, "tokenizer", "stats.json")), "results")
    cpt = cpt[0].get("chars_per_token") if cpt else None
    rows.append(("tokenizer (§3.2)", cpt and f"{cpt:.2f} characters per token", ">= 3.5 (8K-token BPE)",
                 cpt and cpt >= 3.5, "a weaker BPE than the measured 4.0"))
    loss = s["pretrain"]["val_loss"]
    rows.append(("pre-training (§3.4)", loss and f"held-out loss {loss:.2f}", "<= 6.5 nats/token",
                 loss and loss <= 6.5, "fewer steps than planned (a slow or busy machine?)"))
    before, after = _get(s, "niah", "before") or {}, _get(s, "niah", "after") or {}
    # the needle at the context the stage grew to (past it: extrapolation, in the section below)
    top, copied = str(_get(s, "longctx", "context")), _get(s, "longctx", "copy_after")
    top = top if top in after else max(after, key=int, default=None)
    rows.append(("long context (§3.4.2)", top and f"needle at {top} tokens {_pct(before.get(top))} -> "
                 f"{_pct(after[top])}", ">= 90% after", top and after[top] >= 0.9,
                 (f"it copies a repeated span ({_pct(copied)}) but rarely finds the key {top} tokens back"
                  if copied and copied >= 0.5 else "the model learns the answer's format, not the look-up: "
                  f"it does not copy by content yet (repeated span copied {_pct(copied)})") + "; docs/NOTES.md"))
    first = s["sft_accuracy"]
    rows.append(("SFT (§4.1.3)", first and f"task accuracy {_pct(first)}", ">= 30% (100 written answers)",
                 first and first >= 0.30, "the first chat model is weak; the rounds start lower"))
    prev = first
    for rd in s["rounds"]:
        r = rd["round"]
        acc, pick, rand, rm_pick = (rd["rm_pairwise_accuracy"], rd["rs_pick_correct"], rd["rs_random_correct"],
                                    rd["rm_pick_correct"])
        rows.append((f"round {r} reward model (§4.1.2)", acc and f"held-out pairwise accuracy {_pct(acc)}", ">= 80%",
                     acc and acc >= 0.8, "it cannot tell right from wrong answers"))
        gap = None if pick is None or rand is None else pick - rand
        rows.append((f"round {r} rejection sampling (§4.2.2)", gap is not None and
                     f"pick {_pct(pick)} vs random {_pct(rand)}", "checker + RM pick >= random + 5 points",
                     gap is not None and gap >= 0.05, "few prompts have a correct sample"))
        gap = None if rm_pick is None or rand is None else rm_pick - rand
        rows.append((f"round {r} reward model's own pick", gap is not None and
                     f"{_pct(rm_pick)} vs random {_pct(rand)}", "> random",
                     gap is not None and gap > 0, "the RM alone does not pick better than chance"))
        sft = rd["sft_accuracy"]
        rows.append((f"round {r} SFT (§4.1.3)", sft and f"task accuracy {_pct(sft)}", "no worse than the SFT "
                     "model before it (-2 points)", sft is not None and prev is not None and sft >= prev - 0.02,
                     "the rejection-sampled rows did not help"))
        dpo = rd["dpo_accuracy"]
        rows.append((f"round {r} DPO (§4.1.4)", dpo and f"task accuracy {_pct(dpo)} ({_pts(None if sft is None else dpo - sft)})",
                     "> its SFT model", dpo is not None and sft is not None and dpo > sft,
                     "the on-policy pairs did not move greedy answers"))
        prev = sft
    with_tool, without = _get(s, "tools", "with_tool"), _get(s, "tools", "without_tool")
    rows.append(("tool use (§4.3.5)", with_tool is not None and f"with the tool {_pct(with_tool)}, without "
                 f"{_pct(without)}", ">= 90% with, near 0% without", with_tool is not None and with_tool >= 0.9,
                 "the numbers are miscopied into the call or out of the result (docs/NOTES.md)"))
    base = s["rounds"][0]["sft_accuracy"] if s["rounds"] else None
    final = s["final_accuracy"]
    rows.append(("all rounds", final and base and f"final {_pct(final)} vs round-1 SFT {_pct(base)}",
                 ">= round-1 SFT + 10 points", final is not None and base is not None and final >= base + 0.10,
                 "the rounds gained less than 10 points"))
    return [(st, num or "not run", exp, None if not num else bool(ok), why) for st, num, exp, ok, why in rows]


def plot_rounds(s: dict, out: str) -> list[str]:
    """OUT/accuracy.png (task accuracy after each stage) and OUT/rejection.png (the
    picks of every round) -> the file names written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    names, values = ["SFT"], [s["sft_accuracy"]]
    for rd in s["rounds"]:
        names += [f"R{rd['round']} SFT", f"R{rd['round']} DPO"]
        values += [rd["sft_accuracy"], rd["dpo_accuracy"]]
    if any(v is not None for v in values):
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.plot(range(len(names)), [100 * v if v is not None else float("nan") for v in values], marker="o")
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel("held-out task accuracy (%)")
        ax.set_title("greedy accuracy after each post-training stage")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "accuracy.png"), dpi=110)
        plt.close(fig)
        written.append("accuracy.png")
    keys = [("rm_pick_correct", "reward model's pick"), ("rs_pick_correct", "checker + RM pick"),
            ("rs_random_correct", "random sample"), ("rs_oracle_correct", "best of K (oracle)")]
    rounds = [rd for rd in s["rounds"] if rd["rs_random_correct"] is not None]
    if rounds:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        width = 0.8 / len(keys)
        for i, (key, label) in enumerate(keys):
            ax.bar([j + (i - 1.5) * width for j in range(len(rounds))], [100 * (rd[key] or 0) for rd in rounds],
                   width=width, label=label)
        ax.set_xticks(range(len(rounds)), [f"round {rd['round']}" for rd in rounds])
        ax.set_ylabel("pick is correct (%)")
        ax.set_ylim(0, 100)
        ax.set_title("rejection sampling: which of K samples is picked")
        ax.legend(fontsize=8, loc="lower right")
        fig.tight_layout()
        fig.savefig(os.path.join(out, "rejection.png"), dpi=110)
        plt.close(fig)
        written.append("rejection.png")
    return written


def _per_task(acc: dict | None) -> str:
    if not acc:
        return ""
    return ", ".join(f"{k} {_pct(v)}" for k, v in acc.items() if k != "overall" and isinstance(v, (int, float)))


def _image(lines, out, rel, caption):
    if os.path.exists(os.path.join(out, rel)):
        lines += [f"![{caption}]({rel})", ""]


def chat_transcript(out: str) -> list[str]:
    """The chat log with what was typed put back: sample.py reads the script from a
    pipe, so its log shows each "user> " prompt but not the line typed after it."""
    try:
        with open(log_path(out, "chat")) as f:
            text = f.read()
    except OSError:
        return ["(not run)", ""]
    import tasks
    parts = text.split("user> ")
    lines, right, asked = ["```"], 0, 0
    for typed, said in zip(CHAT_SCRIPT, parts[1:]):
        lines.append(f"user> {typed}")
        said = said.strip()
        if said:
            lines.append(said)
        if said.startswith("assistant> ") and tasks.solve(typed):
            asked += 1
            right += tasks.check_response(typed, said[len("assistant> "):])
    lines += ["```", "", f"The final model answered {right} of the {asked} task prompts correctly (greedy).", ""]
    return lines


def write_report(out: str, s: dict, timings: dict):
    """OUT/REPORT.md: the verdicts, then each stage. Paths are relative to OUT."""
    rec = lambda *p: _load(os.path.join(out, *p)) or {}  # noqa: E731
    rows = verdicts(s, out)
    plots = plot_rounds(s, out)
    total = sum(t["seconds"] for t in timings.values())
    cpu = sum(t.get("cpu_seconds", 0.0) for t in timings.values())
    lines = ["# Llama 3 herd, end to end on this machine", "",
             f"Seed {s['seed']}, {len(s['rounds'])} post-training rounds, {total / 60:.1f} minutes of stages, "
             f"{cpu / 60:.1f} CPU-minutes ({os.cpu_count()} CPU cores; load average {os.getloadavg()[0]:.1f} when "
             "the report was written). "
             "Accuracies are greedy answers to the same held-out task prompts, checked by tasks.py.", "",
             "| stage | key number | expectation | verdict |", "|---|---|---|---|"]
    for stage, num, exp, ok, why in rows:
        verdict = "not run" if ok is None else "as expected" if ok else f"below expectation: {why}"
        lines.append(f"| {stage} | {num} | {exp} | {verdict} |")
    lines.append("")
    for p in plots:
        lines += [f"![{p}]({p})", ""]

    # ---- pre-training
    data, pre = rec("data", "report.json"), rec("pretrain", "report.json")
    lines += ["## Data and pre-training (§3.1, §3.4)", ""]
    if data:
        tr = _get(data, "splits", "train") or {}
        lines.append(f"- data: {tr.get('documents', 0):,} training documents, {tr.get('tokens', 0):,} tokens")
    if pre:
        lines.append(f"- pre-training: {pre.get('steps')} steps, loss {pre.get('first_loss', 0):.2f} -> "
                     f"{pre.get('last_loss', 0):.2f}, held-out {pre.get('val_loss', 0):.3f}, "
                     f"{pre.get('tokens_per_s', 0):,.0f} tokens/s")
    lines.append("")
    _image(lines, out, "pretrain/loss.png", "pre-training loss")

    # ---- long context
    lc = rec("longctx", "report.json")
    lines += ["## Long context (§3.4.2)", ""]
    if lc:
        lens = sorted(_get(lc, "after", "niah") or {}, key=int)
        copy = [st for st in lc.get("stages", []) if st.get("kind") == "copy"]  # run_all --retrieval
        head = (f"- an induction head first: {copy[0]['steps']:,} steps of copy rows of {copy[0]['seq_len']} "
                f"tokens in {copy[0].get('seconds', 0):.0f} s (a repeated span copied "
                f"{_pct(_get(copy[0], 'copy', 'accuracy'))} after them)\n") if copy else ""
        grown = ", ".join(str(st["seq_len"]) for st in lc.get("stages", []) if st not in copy)
        lines += [head + f"- context grown to {grown} tokens (RoPE θ {lc.get('rope_theta', 0):,.0f}); the whole "
                  f"stage {lc.get('seconds', 0):.0f} s; short-context held-out "
                  f"loss {_get(lc, 'before', 'short_loss')} -> {_get(lc, 'after', 'short_loss')}", "",
                  "| needle accuracy at | " + " | ".join(f"{n} tokens" for n in lens) + " |",
                  "|---|" + "---|" * len(lens),
                  "| before | " + " | ".join(_pct(_get(lc, "before", "niah", n)) for n in lens) + " |",
                  "| after | " + " | ".join(_pct(_get(lc, "after", "niah", n)) for n in lens) + " |", ""]
        if _get(lc, "after", "copy"):  # eval.in_context_copying: the skill the look-up needs
            lines += [f"- in-context copying (a held-out span of 100 tokens, then the same span again): loss on "
                      f"the repeat {_get(lc, 'before', 'copy', 'repeat')} -> {_get(lc, 'after', 'copy', 'repeat')} "
                      f"nats/token against {_get(lc, 'after', 'copy', 'first')} on its first reading; next token "
                      f"copied {_pct(_get(lc, 'before', 'copy', 'accuracy'))} -> "
                      f"{_pct(_get(lc, 'after', 'copy', 'accuracy'))}. A model that does not copy a span it read "
                      f"100 tokens ago cannot fetch a pass key 1,000 tokens back.", ""]
    _image(lines, out, "longctx/niah.png", "needle in a haystack before and after")

    # ---- the first SFT model
    sft = rec("sft", "report.json")
    lines += ["## SFT: the first chat model (§4.1.3)", ""]
    if sft:
        lines += [f"- {sft.get('steps')} steps from the pre-trained model: task accuracy "
                  f"{_pct(_get(sft, 'accuracy_before', 'overall'))} -> {_pct(_get(sft, 'accuracy_after', 'overall'))} "
                  f"({_per_task(sft.get('accuracy_after'))})", ""]
    _image(lines, out, "sft/report.png", "SFT")

    # ---- tool use, a branch off the first SFT model
    tl = rec("tools", "report.json")
    lines += ["## Tool use (§4.3.5)", ""]
    if tl.get("with_tool") is not None:
        lines += [f"Held-out 3-digit products ({tl.get('n_eval')}), greedy, after {tl.get('sft_steps')} steps of SFT "
                  f"on calculator dialogs ({tl.get('sft_seconds') or 0:.0f} s):", "",
                  "| | accuracy | called the tool |", "|---|---|---|",
                  f"| with the tool | {_pct(tl['with_tool'])} | {_pct(tl.get('with_tool_called_tool'))} |",
                  f"| without it | {_pct(tl['without_tool'])} | {_pct(tl.get('without_tool_called_tool'))} |", ""]
        for key in ("with_tool", "without_tool"):
            if tl.get(f"{key}_transcripts"):
                lines += [f"{key.replace('_', ' ')}:", "```", tl[f"{key}_transcripts"][0]["text"], "```", ""]

    # ---- the rounds
    for rd in s["rounds"]:
        r = rd["round"]
        rm, rs = rec(f"round_{r}", "reward", "report.json"), rec(f"round_{r}", "rejection", "report.json")
        sf, dp = rec(f"round_{r}", "sft", "report.json"), rec(f"round_{r}", "dpo", "report.json")
        lines += [f"## Round {r}", ""]
        if rm:
            lines.append(f"- reward model: trunk of the latest policy, {rm.get('train_rows', 0):,} training rows "
                         f"({rm.get('added_pairs', 0):,} on-policy pairs of earlier rounds); held-out pairwise "
                         f"accuracy {_pct(rm.get('heldout_accuracy'))}, right vs wrong answers "
                         f"{_pct(rm.get('heldout_accuracy_chosen_rejected'))}"
                         + (f", earlier rounds' held-out pairs {_pct(_get(rm, 'per_task', 'on_policy', 'accuracy'))}"
                            if _get(rm, "per_task", "on_policy") else ""))
        if rs:
            lines.append(f"- rejection sampling: {rs.get('prompts', 0):,} prompts x {rs.get('k')} samples of the "
                         f"latest policy in {rs.get('seconds', 0):.0f} s. The pick is correct: reward model alone "
                         f"{_pct(rs.get('rm_pick_correct'))}, checker + reward model {_pct(rs.get('pick_correct'))}, "
                         f"a random sample {_pct(rs.get('random_correct'))}, best of {rs.get('k')} "
                         f"{_pct(rs.get('oracle_correct'))}. On the policy's own (right, wrong) sample pairs the "
                         f"reward model prefers the right one {_pct(rs.get('rm_accuracy_on_samples'))} of the time. "
                         f"-> {rs.get('sft_rows', 0):,} SFT rows, {rs.get('pairs', 0):,} on-policy pairs"
                         + (f" ({rs['edited_pairs']:,} of them where every sample failed: the reference answer "
                            f"chosen, as an annotator's edit, §4.2.1)" if rs.get("edited_pairs") else ""))
            if rs.get("pilot"):
                per = ", ".join(f"{t} {v.get('prompts', 0):,}" for t, v in (rs.get("per_task") or {}).items())
                lines.append(f"  - prompts: the first {rs['pilot']['prompts']:,} evenly over the tasks (there the "
                             f"pick is correct {_pct(rs['pilot'].get('pick_correct'))}, a random sample "
                             f"{_pct(rs['pilot'].get('random_correct'))}), the rest to the tasks the policy fails "
                             f"(§4.3.3); in all: {per}")
        if sf:
            lines.append(f"- SFT: {sf.get('train_conversations', 0):,} conversations (task data + rejection-sampled "
                         f"rows), {sf.get('steps')} steps from the pre-trained model: task accuracy "
                         f"{_pct(_get(sf, 'accuracy_after', 'overall'))} ({_per_task(sf.get('accuracy_after'))})")
        if dp:
            per = {k: v["accuracy"] for k, v in (_get(dp, "task_accuracy_after", "per_task") or {}).items()}
            lines.append(f"- DPO: {dp.get('train_pairs', 0):,} pairs, {dp.get('steps')} steps, beta {dp.get('beta')}, "
                         f"lr {dp.get('lr')}: task accuracy {_pct(_get(dp, 'task_accuracy_before', 'accuracy'))} -> "
                         f"{_pct(_get(dp, 'task_accuracy_after', 'accuracy'))} ({_per_task(per)}); held-out "
                         f"log-prob of chosen {_get(dp, 'eval_before', 'eval_logps/chosen') or 0:.3f} -> "
                         f"{_get(dp, 'eval_after', 'eval_logps/chosen') or 0:.3f}")
        lines.append("")
        for rel, caption in (("reward/accuracy.png", "reward model"), ("sft/report.png", "SFT"),
                             ("dpo/dpo.png", "DPO")):
            _image(lines, out, f"round_{r}/{rel}", f"round {r} {caption}")

    # ---- chat, timings
    lines += ["## Chat with the final model (§6)", ""] + chat_transcript(out)
    if timings:
        lines += ["## Time per stage", "", "Wall seconds, CPU seconds of the stage's processes (all threads), and "
                  "the machine's 1-minute load average when the stage ended.", "",
                  "| stage | seconds | CPU seconds | load | status |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['seconds']:.0f} | {v.get('cpu_seconds', float('nan')):.0f} | "
                  f"{v.get('load', float('nan')):.1f} | {v['status']} |" for k, v in timings.items()]
        lines.append("")
    path = os.path.join(out, "REPORT.md")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)
    print(f"wrote {path}")


def finish(out: str, rounds: int, seed: int, timings: dict) -> dict:
    """summary.json + REPORT.md from whatever the stages wrote."""
    minutes = round(sum(t["seconds"] for t in timings.values()) / 60, 2) if timings else None
    s = summary(out, rounds, seed, minutes)
    s["cpu_minutes"] = round(sum(t.get("cpu_seconds", 0.0) for t in timings.values()) / 60, 2) if timings else None
    from common import atomic_write_json
    atomic_write_json(os.path.join(out, "summary.json"), s)
    write_report(out, s, timings)
    return s


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Every stage of the paper, in order, then REPORT.md and summary.json.")
    p.add_argument("--out", default="out", help="output folder of every stage")
    p.add_argument("--rounds", type=int, default=2, help="post-training rounds (§4.1.6: the paper ran six)")
    p.add_argument("--seed", type=int, default=0, help="seeds every stage (data, weights, prompts, samples)")
    p.add_argument("--annotated", type=int, default=0,
                   help="written SFT answers per SFT (0: sft.py's default, 100; the rounds write the rest)")
    p.add_argument("--retrieval", action="store_true",
                   help="grow an induction head before the long-context stage (RETRIEVAL; ~20 more minutes)")
    p.add_argument("--from", dest="start", default=None, help="resume at this stage (e.g. round2/sft)")
    p.add_argument("--only", nargs="*", default=None, help="run just these stages ('report': only the report)")
    cli = p.parse_args(argv)
    if cli.rounds < 0:
        p.error(f"--rounds must be >= 0, got {cli.rounds}")
    if cli.annotated < 0:
        p.error(f"--annotated must be >= 0, got {cli.annotated}")
    os.chdir(os.path.dirname(os.path.abspath(__file__)))
    plan = stages(cli.out, cli.rounds, cli.seed, cli.annotated, cli.retrieval)
    names = [s.name for s in plan]
    for name in ([cli.start] if cli.start else []) + [n for n in cli.only or [] if n != "report"]:
        if name not in names:
            p.error(f"unknown stage {name!r}; the stages are: {', '.join(names)}")
    if cli.start:
        plan = plan[names.index(cli.start):]
    if cli.only is not None:
        plan = [s for s in plan if s.name in cli.only]
    timings_path = os.path.join(cli.out, "logs", "timings.json")
    timings = _load(timings_path) or {}
    t_all = time.time()
    for stage in plan:
        code, seconds, cpu = run_stage(stage._replace(cmd=_resolve(stage.cmd)), cli.out)
        timings[stage.name] = {"seconds": seconds, "cpu_seconds": cpu, "load": os.getloadavg()[0],
                               "status": "ok" if code == 0 else f"failed ({code})", "what": stage.what}
        os.makedirs(os.path.dirname(timings_path), exist_ok=True)
        with open(timings_path, "w") as f:
            json.dump(timings, f, indent=1)
        if code != 0:
            print(f"\n[{stage.name}] FAILED with exit code {code} after {seconds:.0f}s; see "
                  f"{log_path(cli.out, stage.name)}.\nFix it, then resume with: python run_all.py --from {stage.name}",
                  file=sys.stderr)
            finish(cli.out, cli.rounds, cli.seed, timings)
            return code
        print(f"[{stage.name}] done in {seconds:.0f}s", flush=True)
    s = finish(cli.out, cli.rounds, cli.seed, timings)
    print(f"all stages done in {(time.time() - t_all) / 60:.1f} minutes; final task accuracy "
          f"{_pct(s['final_accuracy'])} (first SFT model {_pct(s['sft_accuracy'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
