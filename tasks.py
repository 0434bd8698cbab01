"""
tasks.py -- post-training data: small automatically checked tasks, and the JSONL
formats people bring (§4.2, §4.3 of "The Llama 3 Herd of Models").

Stage: post-training data. No chat data set can be downloaded here, and the paper's
own recipe leans on data whose answers a program can check (§4.3: "execution
feedback" for code, verified solutions for math). So the built-in data set is a
generator of tiny tasks, each with a checker for any answer:

    digit    "Find the digit: k 7 b q"                 -> "7"        (default)
    max      "Largest of: 2 6 3 5 8"                   -> "8"        (default)
    last     "Last of: 8 6 5 7 3"                      -> "3"        (default)
    count    "How many times does b appear in: a b c b?" -> "2"      (default)
    larger   "Which is larger: 34 or 17?"              -> "34"       (default)
    first    "First of: 8 6 5 7 3"                     -> "8"
    repeat   "Repeat: 4 8 6 5"                         -> "4 8 6 5"
    add      "What is 4 + 5?"                          -> "9"
    sort     "Sort: 5 1 8 3"                           -> "1 3 5 8"
    reverse  "Reverse: c a t"                          -> "t a c"
    multiply "What is 347 * 582?"                      -> "201954"   (in its head)
    calculator  the same, with the code interpreter (§4.3.5): system "Environment:
             ipython", a call "<|python_tag|>347 * 582<|eom_id|>", the tool's result
             as an ipython message, then the answer "201954" (tools.py runs the calls)

What is notable here
- Answers are short and canonical, and their format follows the tokenizer: the
  regex of tokenizer.py splits numbers apart from letters and from spaces, and a
  letter word merges into one BPE token ("cat" -> one id), so list items are written
  with spaces ("c a t" -> ["c", " a", " t"]; "5 1 8" -> ["5", " ", "1", " ", "8"]).
  Digits are the same token in the prompt and the answer, so answering is copying.
  The default mixture (DEFAULT_TASKS) is what the default 15M-parameter model learns
  in a few minutes of CPU fine-tuning; the others are harder (see the measurements
  above DEFAULT_TASKS).
- One knob, `Difficulty(digits, min_len, max_len)`, for bigger models; the defaults
  are what the default tiny model learns. A checker also takes a bare prompt string
  (`solve` reads the answer back out of the prompt), for prompts without their meta.
- Deterministic for a seed, and train/held-out DISJOINT by construction: an example's
  split is a hash of its prompt (10% of all prompts are held out), so no held-out
  prompt is ever trained on, whatever the seeds and sizes.
- Preference pairs for reward.py and dpo.py with three ranked responses (§4.1.2:
  edited > chosen > rejected), see make_preference_pairs.
- One reader and validator for the formats people already use, for sft.py,
  reward.py and dpo.py: `{"messages": [...]}` for SFT and
  `{"prompt" | "messages", "chosen", "rejected", "edited"?}` for preferences.
  A malformed row is reported with file and line number and skipped; a good row is
  never dropped.

Reads:  nothing (or your JSONL files through read_sft_jsonl / read_preference_jsonl).
Writes: with the CLI, OUT/{sft_train, sft_val, pref_train, pref_val}.jsonl and
        OUT/report.json.

How to run
    python tasks.py                                            # out/tasks, 20,000 + 500
    python tasks.py --out out/tasks --n-train 20000 --n-eval 500 --seed 0 --tasks sort,reverse
    python tasks.py --digits 2 --max-len 8                   # harder problems (Difficulty)
    python sft.py --data out/tasks/sft_train.jsonl --eval-data out/tasks/sft_val.jsonl

Read next: sft.py (trains on these conversations), then reward.py and dpo.py (the
preference pairs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

from common import UsageError, atomic_write_json, atomic_write_text, cli, read_jsonl

# -----------------------------------------------------------------------------
# 1. Checking an answer

ALLOWED_ROLES = ("system", "user", "assistant", "ipython", "tool")  # Llama 3.1 roles; "tool" is
# the newer name of "ipython" (tool output), accepted so others' data loads as written


def normalize(text: str) -> str:
    """The form answers are compared in: lower case, commas as spaces, single spaces,
    no trailing full stop.  " 1, 3,5. " -> "1 3 5";  "T a C" -> "t a c"."""
    text = text.lower().replace(",", " ")
    text = " ".join(text.split())
    return text.rstrip(".!").strip()


def answer_candidates(response: str) -> list[str]:
    """What a response may be claiming as its answer: its first non-empty line, or what
    follows the line's last ':', ' is ' or '=' (so "The answer is 9.", "Sure: t a c" and
    "4 + 5 = 9" count as answers "9", "t a c" and "9", but "x t a c" is not "t a c").
    Only the first line counts: "9\n\nAnything else?" has answered "9" (a tiny model
    that answers and then rambles has still answered; the ramble is not graded).
    "The answer is 9." -> ["the answer is 9", "9"]."""
    if not isinstance(response, str):
        return []  # e.g. None from a failed generation: never right, never a crash
    first_line = next((line for line in response.splitlines() if line.strip()), "")
    text = normalize(first_line)
    candidates = [text]
    for sep in (":", " is ", "="):
        if sep in text:
            candidates.append(text.rsplit(sep, 1)[1].strip())
    return candidates


def check_answer(meta_or_prompt, response: str) -> bool:
    """The checker every built-in task uses: is the canonical answer (meta["answer"])
    what the response says? Exact after normalize(), so "9" and "The answer is 9."
    pass, "19", "9 9" and "t c a" (for "t a c") fail. Given the prompt text instead of
    the meta, the answer is worked out from the prompt (solve): rejection sampling
    (§4.2.2) can then check completions of prompts that come without their meta."""
    meta = solve(meta_or_prompt) if isinstance(meta_or_prompt, str) else meta_or_prompt
    if meta is None:
        raise ValueError(f"not a prompt of a built-in task: {meta_or_prompt!r:.80}")
    return normalize(meta["answer"]) in answer_candidates(response)


# -----------------------------------------------------------------------------
# 2. The tasks: a generator, a checker and a corrupter each


@dataclass(frozen=True)
class Difficulty:
    """The one knob for harder problems. The defaults are sized for the default tiny
    model (small-15m, a few minutes of CPU SFT): prompts under ~20 tokens, answers of
    1-5 tokens. Harder settings are for bigger models (python tasks.py --digits 3).
      digits:            add's operands have at most `digits` digits, larger's one more,
                         sort's values are below 10**digits
      min_len, max_len:  list length of sort and reverse (count: one letter more)"""
    digits: int = 1
    min_len: int = 3
    max_len: int = 5

    def __post_init__(self):
        if not (self.digits >= 1 and 2 <= self.min_len <= self.max_len <= 26):
            raise ValueError(f"need digits >= 1 and 2 <= min_len <= max_len <= 26, got {self}")


DEFAULT_DIFFICULTY = Difficulty()


@dataclass(frozen=True)
class Task:
    """generate(rng, difficulty=DEFAULT_DIFFICULTY) -> (prompt, answer, meta);
    check(meta_or_prompt, response) -> bool;
    corrupt(rng, prompt, answer, meta) -> a plausible WRONG answer (for the rejected
    response of a preference pair; check() is always False on it);
    conversation(prompt, answer, meta) -> the SFT messages (None: one user turn and the
    answer; the calculator's has a system prompt, a tool call and its result too)."""
    name: str
    description: str
    generate: Callable[[random.Random], tuple]
    check: Callable[[dict, str], bool]
    corrupt: Callable[[random.Random, str, str, dict], str]
    conversation: Optional[Callable[[str, str, dict], list]] = None


LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _spaced(items) -> str:
    return " ".join(str(x) for x in items)  # [1, 3, 5] -> "1 3 5"


def _wrong_number(rng: random.Random, right: int, lo: int = 0, spread=(1, 2, 3)) -> int:
    """A number near `right` but not equal to it (>= lo): off by a visible step."""
    options = [right + d for d in spread] + [right - d for d in spread if right - d >= lo]
    return rng.choice(options)


# ---- add: 1-digit + 1-digit by default (a sum is one or two digit tokens; 100 prompts)

def _gen_add(rng, d: Difficulty = DEFAULT_DIFFICULTY):
    a, b = rng.randrange(10 ** d.digits), rng.randrange(10 ** d.digits)
    return f"What is {a} + {b}?", str(a + b), {"a": a, "b": b}


def _corrupt_add(rng, prompt, answer, meta):
    # Wrong by 2-5: a reward model must add to see it, but no off-by-one hair-splitting.
    return str(_wrong_number(rng, int(answer), spread=(2, 3, 4, 5)))


# ---- larger: the larger of two distinct numbers below 100 by default (a copy + a comparison)

def _gen_larger(rng, d: Difficulty = DEFAULT_DIFFICULTY):
    x, y = rng.sample(range(10 ** (d.digits + 1)), 2)
    return f"Which is larger: {x} or {y}?", str(max(x, y)), {"x": x, "y": y}


def _corrupt_larger(rng, prompt, answer, meta):
    # Half the time the classic mistake (the smaller one); half the time a number that is
    # in neither place -- what a small SFT model actually answers when it has not learned
    # to copy ("Which is larger: 31 or 99?" -> "76"), so a reward model sees that failure.
    if rng.random() < 0.5:
        return str(min(meta["x"], meta["y"]))
    top = max(10, 10 ** len(answer))
    return str(rng.choice([v for v in range(top) if v not in (meta["x"], meta["y"])]))


# ---- sort: 3-5 distinct digits in ascending order (by default)

def _gen_sort(rng, d: Difficulty = DEFAULT_DIFFICULTY):
    items = rng.sample(range(max(10 ** d.digits, d.max_len)), rng.randint(d.min_len, d.max_len))
    return f"Sort: {_spaced(items)}", _spaced(sorted(items)), {"items": items}


def _corrupt_list(rng, answer: str, original: list) -> str:
    """A wrong order of the right items: the input order as given (when that differs),
    the answer reversed, or the answer with two neighbours swapped."""
    right = answer.split()
    options = []
    if [str(x) for x in original] != right:
        options.append([str(x) for x in original])
    options.append(right[::-1])
    i = rng.randrange(len(right) - 1)
    options.append(right[:i] + [right[i + 1], right[i]] + right[i + 2:])
    options = [o for o in options if o != right]
    return _spaced(rng.choice(options))


def _corrupt_sort(rng, prompt, answer, meta):
    return _corrupt_list(rng, answer, meta["items"])


# ---- reverse: 3-5 distinct letters (by default), written with spaces (one token per letter)

def _gen_reverse(rng, d: Difficulty = DEFAULT_DIFFICULTY):
    letters = rng.sample(LETTERS, rng.randint(d.min_len, d.max_len))  # distinct: never a palindrome
    return f"Reverse: {_spaced(letters)}", _spaced(letters[::-1]), {"letters": letters}


def _corrupt_reverse(rng, prompt, answer, meta):
    return _corrupt_list(rng, answer, meta["letters"])


# ---- repeat, first, last, max: copying a digit (the same token in prompt and answer:
# digits never merge with the spaces around them), the easiest skills to learn

def _digits(rng, d: Difficulty, extra: int = 0) -> list[int]:
    return rng.sample(range(10), min(10, rng.randint(d.min_len, d.max_len + extra)))


def _gen_repeat(rng, d: Difficulty = DEFAULT_DIFFICULTY):
    items = _digits(rng, d)
    return f"Repeat: {_spaced(items)}", _spaced(items), {"items": items}


def _corrupt_repeat(rng, prompt, answer, meta):
    right = answer.split()
    i = rng.randrange(len(right) - 1)  # two neighbours swapped (distinct letters: always wrong)
    return _spaced(right[:i] + [right[i + 1], right[i]] + right[i + 2:])


def _gen_first(rng, d: Difficulty = DEFAULT_DIFFICULTY):
    items = _digits(rng, d, extra=1)
    return f"First of: {_spaced(items)}", str(items[0]), {"items": items}


def _gen_last(rng, d: Difficulty = DEFAULT_DIFFICULTY):
    items = _digits(rng, d, extra=1)
    return f"Last of: {_spaced(items)}", str(items[-1]), {"items": items}


def _gen_max(rng, d: Difficulty = DEFAULT_DIFFICULTY):
    # The largest value uniform over what is possible (not mostly 9, as for random
    # digits): guessing "9" must not look like a skill.
    n = min(10, rng.randint(d.min_len, d.max_len + 1))
    top = rng.randint(n - 1, 9)
    items = rng.sample(range(top), n - 1) + [top]
    rng.shuffle(items)
    return f"Largest of: {_spaced(items)}", str(max(items)), {"items": items}


def _gen_digit(rng, d: Difficulty = DEFAULT_DIFFICULTY):
    # The one digit among letters: the easiest extraction there is (the model only has
    # to notice which token of the prompt is a digit and say it).
    items = rng.sample(LETTERS, rng.randint(d.min_len, d.max_len))
    digit = rng.randrange(10)
    items.insert(rng.randrange(len(items) + 1), str(digit))
    return f"Find the digit: {_spaced(items)}", str(digit), {"items": items}


def _corrupt_digit(rng, prompt, answer, meta):
    return str((int(answer) + rng.randint(1, 9)) % 10)


def _corrupt_pick(rng, prompt, answer, meta):
    # Another item of the list, or (half the time) a digit that is not in it: the two
    # ways the SFT policy's own answers go wrong (seen in its rejection samples).
    absent = [d for d in range(10) if d not in meta["items"]]
    if absent and rng.random() < 0.5:
        return str(rng.choice(absent))
    return str(rng.choice([x for x in meta["items"] if str(x) != answer]))


# ---- count: how often a letter occurs (1-3 times) in 4-6 letters (by default) from a-f

def _gen_count(rng, d: Difficulty = DEFAULT_DIFFICULTY):
    n, letter = rng.randint(d.min_len + 1, d.max_len + 1), rng.choice(LETTERS[:6])
    k = rng.randint(1, min(3, n))
    others = [c for c in LETTERS[:6] if c != letter]
    word = [letter] * k + [rng.choice(others) for _ in range(n - k)]
    rng.shuffle(word)
    return f"How many times does {letter} appear in: {_spaced(word)}?", str(k), \
        {"letter": letter, "word": word}


def _corrupt_count(rng, prompt, answer, meta):
    return str(_wrong_number(rng, int(answer), spread=(1, 2)))


# ---- multiply / calculator: the product of two 3-digit numbers. A 1-15M model cannot
# multiply those in its head (multiply: it answers directly, near 0% right); with the code
# interpreter (calculator, §4.3.5) it only has to copy: the expression into the call, the
# tool's result into the answer. Difficulty does not apply: always 3 digits.

def _gen_multiply(rng, d: Difficulty = DEFAULT_DIFFICULTY):
    a, b = rng.randrange(100, 1000), rng.randrange(100, 1000)
    return f"What is {a} * {b}?", str(a * b), {"a": a, "b": b}


def _corrupt_multiply(rng, prompt, answer, meta):
    # Off by one of the factors or by a power of ten: a slip in one partial product.
    return str(int(answer) + rng.choice([-1, 1]) * rng.choice([10, 100, 1000, meta["a"], meta["b"]]))


def _calculator_conversation(prompt: str, answer: str, meta: dict) -> list[dict]:
    """§4.3.5's single-step trajectory: system prompt, user prompt, tool call, tool output,
    final answer. The call is really executed (tools.calculate), as the paper's are."""
    from tokenizer import system_prompt
    from tools import calculate
    code = f"{meta['a']} * {meta['b']}"
    return [{"role": "system", "content": system_prompt(["code_interpreter"])},  # "Environment: ipython"
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": "", "stop_reason": "end_of_message",
             "tool_calls": [{"tool_name": "code_interpreter", "arguments": {"code": code}}]},
            {"role": "ipython", "content": calculate(code)},
            {"role": "assistant", "content": answer}]


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("add", "sum of two one-digit numbers", _gen_add, check_answer, _corrupt_add),
    Task("larger", "the larger of two numbers below 100", _gen_larger, check_answer, _corrupt_larger),
    Task("sort", "3-5 distinct digits in ascending order", _gen_sort, check_answer, _corrupt_sort),
    Task("reverse", "3-5 letters in reverse order", _gen_reverse, check_answer, _corrupt_reverse),
    Task("count", "occurrences of a letter in 4-6 letters", _gen_count, check_answer, _corrupt_count),
    Task("repeat", "repeat 3-5 digits", _gen_repeat, check_answer, _corrupt_repeat),
    Task("first", "the first of 3-6 digits", _gen_first, check_answer, _corrupt_pick),
    Task("last", "the last of 3-6 digits", _gen_last, check_answer, _corrupt_pick),
    Task("max", "the largest of 3-6 digits", _gen_max, check_answer, _corrupt_pick),
    Task("digit", "the one digit among 3-5 letters", _gen_digit, check_answer, _corrupt_digit),
    Task("multiply", "product of two 3-digit numbers, answered directly", _gen_multiply, check_answer,
         _corrupt_multiply),
    Task("calculator", "product of two 3-digit numbers with the code interpreter (§4.3.5)", _gen_multiply,
         check_answer, _corrupt_multiply, _calculator_conversation),
]}
# The default mixture: the tasks a small model learns in minutes of CPU SFT -- the
# copy/extract tasks, which need attention to one prompt token; sort, reverse, repeat
# and add need position arithmetic or memorised facts a small model lacks (numbers in
# docs/NOTES.md). All tasks remain available with --tasks.
DEFAULT_TASKS = ["digit", "max", "last", "count", "larger"]

# Each task's prompt template, read backwards: the answer from the prompt text alone.
_SOLVERS = [
    ("add", re.compile(r"What is (\d+) \+ (\d+)\?"), lambda g: str(int(g[0]) + int(g[1]))),
    ("larger", re.compile(r"Which is larger: (\d+) or (\d+)\?"), lambda g: str(max(int(g[0]), int(g[1])))),
    ("sort", re.compile(r"Sort: ([\d ]+)"), lambda g: _spaced(sorted(int(x) for x in g[0].split()))),
    ("reverse", re.compile(r"Reverse: ([a-z ]+)"), lambda g: _spaced(g[0].split()[::-1])),
    ("count", re.compile(r"How many times does ([a-z]) appear in: ([a-z ]+)\?"),
     lambda g: str(g[1].split().count(g[0]))),
    ("repeat", re.compile(r"Repeat: ([\d ]+)"), lambda g: _spaced(g[0].split())),
    ("first", re.compile(r"First of: ([\d ]+)"), lambda g: g[0].split()[0]),
    ("last", re.compile(r"Last of: ([\d ]+)"), lambda g: g[0].split()[-1]),
    ("digit", re.compile(r"Find the digit: ([a-z\d ]+)"), lambda g: next(x for x in g[0].split() if x.isdigit())),
    ("max", re.compile(r"Largest of: ([\d ]+)"), lambda g: str(max(int(x) for x in g[0].split()))),
    ("multiply", re.compile(r"What is (\d+) \* (\d+)\?"), lambda g: str(int(g[0]) * int(g[1]))),
]


def solve(prompt: str) -> Optional[dict]:
    """A built-in task's prompt -> its meta, from the text alone; None for any other.
    "What is 4 + 5?" -> {"task": "add", "answer": "9"}."""
    for name, pattern, answer in _SOLVERS:
        match = pattern.fullmatch(prompt.strip()) if isinstance(prompt, str) else None
        if match:
            return {"task": name, "answer": answer(match.groups())}
    return None


def task_names(tasks) -> list[str]:
    """None -> every task; "sort,reverse" or ["sort", "reverse"] -> those (checked)."""
    if tasks is None:
        return list(DEFAULT_TASKS)
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise ValueError(f"unknown task(s) {unknown}; known: {', '.join(TASKS)}")
    return names


# -----------------------------------------------------------------------------
# 3. Splits and examples

HELD_OUT_PERCENT = 10  # share of all possible prompts that only ever appear held out


def split_of(prompt: str) -> str:
    """'val' or 'train', a pure function of the prompt text (md5, not Python's salted
    hash()): the held-out set is the same on every machine and for every seed, and no
    prompt can be in both. "What is 4 + 5?" -> always the same split."""
    h = int.from_bytes(hashlib.md5(prompt.encode()).digest()[:8], "big")
    return "val" if h % 100 < HELD_OUT_PERCENT else "train"


def _split_name(split: str) -> str:
    if split in ("val", "valid", "validation", "held-out", "heldout", "test"):
        return "val"
    if split == "train":
        return "train"
    raise ValueError(f"split must be 'train' or 'val', got {split!r}")


def _draw(rng: random.Random, name: str, split: str, difficulty: Difficulty = DEFAULT_DIFFICULTY) -> tuple:
    """Draw from a task until the prompt falls in the wanted split (~1.1 draws for
    train, ~10 for val). The answer's task and canonical answer go into meta."""
    for _ in range(100_000):
        prompt, answer, meta = TASKS[name].generate(rng, difficulty)
        if split_of(prompt) == split:
            return prompt, answer, {"task": name, "answer": answer, **meta}
    raise RuntimeError(f"task {name!r} produced no {split} prompt in 100,000 draws")


def make_examples(n: int, seed: int = 0, tasks=None, split: str = "train",
                  difficulty: Optional[Difficulty] = None) -> list[dict]:
    """n SFT examples, the tasks taking turns (example i is of task i % len(tasks)).
    Deterministic for (n, seed, tasks, split); train and val prompts never overlap
    (split_of). Small tasks repeat prompts (add has only 100 of them: ~90 train, ~10
    val), larger ones rarely do. `difficulty` (a Difficulty) makes them harder.
    Each: {"task": "add", "messages": [{"role": "user", "content": "What is 4 + 5?"},
           {"role": "assistant", "content": "9"}], "meta": {"task": "add", "answer": "9",
           "a": 4, "b": 5}}."""
    names, split = task_names(tasks), _split_name(split)
    rng = random.Random(f"tasks/{seed}/{split}")  # str seeds are hashed with sha512: stable
    out = []
    for i in range(n):
        name = names[i % len(names)]
        prompt, answer, meta = _draw(rng, name, split, difficulty or DEFAULT_DIFFICULTY)
        conversation = TASKS[name].conversation
        messages = conversation(prompt, answer, meta) if conversation else \
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        out.append({"task": name, "messages": messages, "meta": meta})
    return out


# -----------------------------------------------------------------------------
# 4. Preference pairs (§4.1.2, for reward.py and dpo.py)

# The "worse form" of a correct answer: a chatty wrapper around it. check() accepts
# these (the answer follows "is" or ":"), so a chosen response is still correct.
CHATTY_TEMPLATES = [
    "The answer is {}.",
    "Let me think about it. The result is {}.",
    "Sure! Here it is: {}",
    "Good question. I believe the answer is {}.",
]


def make_preference_pairs(n: int, seed: int = 0, split: str = "train", tasks=None,
                          edited_fraction: float = 1.0, difficulty: Optional[Difficulty] = None,
                          terse_fraction: float = 0.0) -> list[dict]:
    """n ranked response sets for the reward model and DPO (§4.1.2: "edited >
    chosen > rejected"; the paper's editors improve the chosen response).

    Our choice, and why:
      edited   = the canonical correct answer ("9"): correct AND concise.
      chosen   = the same correct answer in a chatty template ("The answer is 9.").
      rejected = the SAME template around a wrong answer ("The answer is 6."), from
                 the task's corrupt(): a wrong order of the right items, the smaller
                 number, another item of the list, a number that is not in the prompt
                 at all (the SFT policy's commonest mistake), a sum off by 2-5, a
                 count off by 1-2.
    So chosen vs rejected differ only in correctness (a reward model cannot win by
    liking or disliking chatter: it must check the answer), and edited vs chosen only
    in form. A fraction `edited_fraction` of the rows carry "edited" (deterministic);
    the rest are plain pairs.
      terse_fraction: this fraction of the rows are instead the bare right answer vs
                 the bare wrong one ("9" vs "6"), no edited: the form the SFT policy
                 itself answers in, so a reward model trained on them has seen the
                 kind of responses rejection sampling asks it to judge.
    Row: {"prompt": [{"role": "user", "content": ...}], "chosen": str, "rejected": str,
          "edited"?: str, "task": name, "meta": {...}}."""
    split = _split_name(split)
    rng = random.Random(f"pairs/{seed}/{split}")
    rows = []
    for example in make_examples(n, seed, tasks=tasks, split=split, difficulty=difficulty):
        # The prompt is the conversation before the answer (a tool call and its result too).
        prompt_messages, answer = example["messages"][:-1], example["messages"][-1]["content"]
        meta = example["meta"]
        task = TASKS[example["task"]]
        question = next(m["content"] for m in prompt_messages if m["role"] == "user")
        wrong = task.corrupt(rng, question, answer, meta)
        assert not task.check(meta, wrong), (example, wrong)  # corrupt() must be wrong
        template = rng.choice(CHATTY_TEMPLATES)
        row = {"prompt": prompt_messages, "chosen": template.format(answer),
               "rejected": template.format(wrong)}
        if terse_fraction > 0 and rng.random() < terse_fraction:  # no draw at 0: same rows as before
            row = {"prompt": prompt_messages, "chosen": answer, "rejected": wrong}
        elif rng.random() < edited_fraction:
            row["edited"] = answer
        row.update(task=example["task"], meta=meta)
        rows.append(row)
    return rows


# -----------------------------------------------------------------------------
# 5. Scoring responses


def check_response(example_or_meta: dict, response: str) -> bool:
    """Is `response` right? Takes an example (with "meta") or a meta dict. A built-in
    task uses its checker; a row of your own data without a known task is right when
    it matches its reference (last assistant message) after normalize(). A prompt
    string of a built-in task works too: check_response("What is 4 + 5?", "9")."""
    if isinstance(example_or_meta, str):
        return check_answer(example_or_meta, response)  # ValueError if no task's prompt
    meta = example_or_meta.get("meta", example_or_meta)
    if isinstance(meta, dict) and meta.get("task") in TASKS and "answer" in meta:
        return TASKS[meta["task"]].check(meta, response)
    messages = example_or_meta.get("messages") or []
    reference = [m["content"] for m in messages if m.get("role") == "assistant"]
    if not reference:
        raise ValueError("cannot check a response: no built-in task in meta and no reference answer")
    return normalize(reference[-1]) == normalize(response)


def accuracy(examples: Sequence[dict], responses: Sequence[str]) -> dict:
    """{"overall": fraction right, "<task>": fraction right, ...} (tasks sorted by
    name; rows without a task count under "other")."""
    if len(examples) != len(responses):
        raise ValueError(f"{len(examples)} examples but {len(responses)} responses")
    right, total = {}, {}
    for example, response in zip(examples, responses):
        name = example.get("task") or (example.get("meta") or {}).get("task") or "other"
        total[name] = total.get(name, 0) + 1
        right[name] = right.get(name, 0) + int(check_response(example, response))
    result = {"overall": sum(right.values()) / max(1, sum(total.values()))}
    result.update({name: right[name] / total[name] for name in sorted(total)})
    return result


# -----------------------------------------------------------------------------
# 6. Reading and validating JSONL (SFT and preference formats)


def _skip(path, line_no, kind, reason) -> dict:
    return {"file": str(path), "line": line_no, "kind": kind, "reason": f"{path}:{line_no}: {reason}"}


def _check_messages(messages, what: str = "messages") -> Optional[tuple[str, str]]:
    """None if `messages` is a good list of messages, else (kind, reason). An assistant
    message may carry "tool_calls" (then its content may be empty) and "stop_reason";
    a user message "context" (tokenizer.ChatFormat's message kinds)."""
    if not isinstance(messages, list) or not messages:
        return "missing", f"'{what}' must be a non-empty list of messages"
    for i, m in enumerate(messages, 1):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return "missing", f"{what}[{i}] needs 'role' and 'content'"
        if m["role"] not in ALLOWED_ROLES:
            return "role", f"unknown role {m['role']!r} in {what}[{i}] (allowed: {', '.join(ALLOWED_ROLES)})"
        if not isinstance(m["content"], str):
            return "missing", f"{what}[{i}] content must be a string, got {type(m['content']).__name__}"
        if "tool_calls" in m or "stop_reason" in m or "context" in m:
            from tokenizer import ChatFormat
            try:
                ChatFormat.check_message(m)
            except ValueError as e:
                return "tool", f"{what}[{i}]: {e}"
        if not m["content"].strip() and not (m["role"] == "assistant" and m.get("tool_calls")):
            return "empty", f"empty content in {what}[{i}] (role {m['role']})"
    return None


def _read_jsonl_rows(path):
    """(line number, parsed object, None) or (line number, None, reason) for every
    non-blank line: a line that is not JSON, not UTF-8, nested too deep or holds a
    5,000-digit integer is reported, never raised (common.read_jsonl)."""
    try:
        yield from read_jsonl(str(path))
    except OSError as e:
        raise UsageError(f"{path}: cannot read ({e.strerror or e})") from None


def _dialog_length(tokenizer, messages) -> int:
    from tokenizer import ChatFormat  # only needed for the length check
    return len(ChatFormat(tokenizer).encode_dialog(messages).tokens)


def read_sft_jsonl(path, max_tokens: Optional[int] = None, tokenizer=None,
                   verbose: bool = False) -> tuple[list[dict], list[dict]]:
    """SFT rows {"messages": [{"role": ..., "content": ...}, ...], ...} -> (rows,
    skipped). Each skipped row: {"file", "line", "kind", "reason"}, kind one of
    json | missing | role | tool | empty | no_assistant | too_long. Roles: system, user,
    assistant, ipython. With tokenizer and max_tokens, a conversation whose rendered
    tokens (tokenizer.ChatFormat) exceed max_tokens is skipped (it would not fit in
    one training row). Other fields of a row (task, meta, ...) are kept."""
    rows, skipped = [], []
    for line_no, obj, err in _read_jsonl_rows(path):
        if err is not None:
            skipped.append(_skip(path, line_no, "json", err))
            continue
        if not isinstance(obj, dict) or "messages" not in obj:
            skipped.append(_skip(path, line_no, "missing", "missing field 'messages'"))
            continue
        problem = _check_messages(obj["messages"])
        if problem is None and not any(m["role"] == "assistant" for m in obj["messages"]):
            problem = ("no_assistant", "no assistant message: nothing to train on")
        if problem is None and tokenizer is not None and max_tokens:
            n = _dialog_length(tokenizer, obj["messages"])
            if n > max_tokens:
                problem = ("too_long", f"too long: {n} tokens > {max_tokens} (the context)")
        if problem:
            skipped.append(_skip(path, line_no, *problem))
        else:
            rows.append(obj)
    if verbose:
        print_skipped(path, rows, skipped)
    return rows, skipped


def _response_text(value, what: str):
    """A response given as a string, or as messages (Hugging Face's conversational
    format: the last message is the assistant's). -> (text or None, prompt messages
    before it or None, problem or None)."""
    if isinstance(value, str):
        return (value, None, None) if value.strip() else (None, None, ("empty", f"empty response '{what}'"))
    if isinstance(value, list):
        problem = _check_messages(value, what)
        if problem:
            return None, None, problem
        if value[-1]["role"] != "assistant":
            return None, None, ("missing", f"'{what}' as messages must end with an assistant message")
        return value[-1]["content"], value[:-1], None
    return None, None, ("missing", f"missing field '{what}' (a string or a list of messages)")


def read_preference_jsonl(path, max_tokens: Optional[int] = None, tokenizer=None,
                          verbose: bool = False) -> tuple[list[dict], list[dict]]:
    """Preference rows -> (rows, skipped), rows normalized to
    {"prompt": [messages], "chosen": str, "rejected": str, "edited"?: str, ...others}.
    Accepted: "prompt" as a string (one user turn) or a list of messages, or
    "messages" (the conversation up to the response); "chosen"/"rejected"/"edited"
    as strings or as message lists ending with the assistant's turn (then the turns
    before it are the prompt if none was given). Ranked edited > chosen > rejected
    (§4.1.2). Skipped (kind): json, missing, role, empty, same (chosen == rejected,
    or edited == chosen: no preference to learn), too_long (prompt + the longest
    response over max_tokens, with a tokenizer)."""
    rows, skipped = [], []
    for line_no, obj, err in _read_jsonl_rows(path):
        if err is not None:
            skipped.append(_skip(path, line_no, "json", err))
            continue
        if not isinstance(obj, dict):
            skipped.append(_skip(path, line_no, "missing", "a row must be a JSON object"))
            continue
        problem, responses, implied_prompt = None, {}, None
        for key in ("chosen", "rejected", "edited"):
            if key == "edited" and obj.get(key) is None:
                continue  # the third response is optional
            text, before, problem = _response_text(obj.get(key), key)
            if problem:
                break
            responses[key] = text
            implied_prompt = implied_prompt or before
        prompt = obj.get("prompt", obj.get("messages", implied_prompt))
        if problem is None:
            if isinstance(prompt, str):
                prompt = [{"role": "user", "content": prompt}] if prompt.strip() else prompt
                problem = None if isinstance(prompt, list) else ("empty", "empty prompt")
            elif prompt is None:
                problem = ("missing", "missing field 'prompt' (or 'messages')")
            else:
                problem = _check_messages(prompt, "prompt")
        if problem is None and responses["chosen"].strip() == responses["rejected"].strip():
            problem = ("same", "chosen == rejected: no preference to learn")
        if problem is None and "edited" in responses and responses["edited"].strip() == responses["chosen"].strip():
            problem = ("same", "edited == chosen: no preference to learn")
        if problem is None and tokenizer is not None and max_tokens:
            n = max(_dialog_length(tokenizer, prompt + [{"role": "assistant", "content": r}])
                    for r in responses.values())
            if n > max_tokens:
                problem = ("too_long", f"too long: {n} tokens > {max_tokens} (the context)")
        if problem:
            skipped.append(_skip(path, line_no, *problem))
            continue
        row = {k: v for k, v in obj.items() if k not in ("messages", "prompt", "chosen", "rejected", "edited")}
        rows.append({"prompt": prompt, **responses, **row})
    if verbose:
        print_skipped(path, rows, skipped)
    return rows, skipped


def summarize_skipped(skipped: Sequence[dict]) -> dict:
    """{"skipped": n, "by_kind": {"role": 2, ...}} for a run's summary."""
    by_kind = {}
    for s in skipped:
        by_kind[s["kind"]] = by_kind.get(s["kind"], 0) + 1
    return {"skipped": len(skipped), "by_kind": dict(sorted(by_kind.items()))}


def print_skipped(path, rows, skipped, limit: int = 20):
    """Print every skipped line (the first `limit`) and the count, e.g.
    "data.jsonl:7: unknown role 'bot' in messages[2] ..." then "data.jsonl: 120 rows
    read, 3 skipped (empty 1, role 2)"."""
    for s in skipped[:limit]:
        print(f"  skipped {s['reason']}")
    if len(skipped) > limit:
        print(f"  ... and {len(skipped) - limit} more skipped lines")
    kinds = ", ".join(f"{k} {v}" for k, v in summarize_skipped(skipped)["by_kind"].items())
    print(f"{path}: {len(rows):,} rows read, {len(skipped)} skipped" + (f" ({kinds})" if kinds else ""))


def write_jsonl(rows: Sequence[dict], path) -> str:
    """One JSON object per line, written atomically (common.atomic_write_text): a
    killed process never leaves a half-written file behind."""
    return atomic_write_text(str(path), "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


# -----------------------------------------------------------------------------
# 7. Command line: write the default data sets as JSONL


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the built-in post-training tasks as JSONL "
                                                 "(SFT conversations and preference pairs).")
    parser.add_argument("--out", default="out/tasks", help="output folder (default: out/tasks)")
    parser.add_argument("--n-train", type=int, default=20000, help="training rows per file (default: 20000)")
    parser.add_argument("--n-eval", type=int, default=500, help="held-out rows per file, sft_val/pref_val.jsonl (default: 500)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    parser.add_argument("--tasks", default=None, help=f"comma-separated subset of {','.join(TASKS)} (default: all)")
    parser.add_argument("--digits", type=int, default=DEFAULT_DIFFICULTY.digits, help="Difficulty.digits (default: 1)")
    parser.add_argument("--min-len", type=int, default=DEFAULT_DIFFICULTY.min_len, help="shortest list (default: 3)")
    parser.add_argument("--max-len", type=int, default=DEFAULT_DIFFICULTY.max_len, help="longest list (default: 5)")
    args = parser.parse_args(argv)
    difficulty = Difficulty(args.digits, args.min_len, args.max_len)

    files = {
        "sft_train.jsonl": make_examples(args.n_train, args.seed, args.tasks, "train", difficulty),
        "sft_val.jsonl": make_examples(args.n_eval, args.seed, args.tasks, "val", difficulty),
        "pref_train.jsonl": make_preference_pairs(args.n_train, args.seed, "train", args.tasks, difficulty=difficulty),
        "pref_val.jsonl": make_preference_pairs(args.n_eval, args.seed, "val", args.tasks, difficulty=difficulty),
    }
    print("examples:")
    for name in task_names(args.tasks):
        example = next((e for e in files["sft_train.jsonl"] if e["task"] == name), None) \
            or make_examples(1, args.seed, tasks=[name])[0]
        print(f"  {name:8s} " + " | ".join(f"{m['role']}: {m['content'] or m.get('tool_calls')!r}"
                                          for m in example["messages"]))
    if files["pref_train.jsonl"]:
        pair = files["pref_train.jsonl"][0]
        print(f"  preference: prompt {next(m['content'] for m in pair['prompt'] if m['role'] == 'user')!r}\n"
              f"    edited {pair.get('edited')!r} > chosen {pair['chosen']!r} > rejected {pair['rejected']!r}")
    report = {"seed": args.seed, "tasks": task_names(args.tasks), "difficulty": asdict(difficulty),
              "files": {}}
    for name, rows in files.items():
        path = write_jsonl(rows, os.path.join(args.out, name))
        counts = {}
        for r in rows:
            counts[r["task"]] = counts.get(r["task"], 0) + 1
        unique = len({json.dumps(r.get("messages", r.get("prompt"))) for r in rows})
        report["files"][name] = {"rows": len(rows), "unique_prompts": unique, "per_task": counts}
        print(f"wrote {path}: {len(rows):,} rows ({unique:,} distinct prompts) {counts}")
    atomic_write_json(os.path.join(args.out, "report.json"), report)
    return report


if __name__ == "__main__":
    rc = main()
    raise SystemExit(rc if isinstance(rc, int) else 0)
