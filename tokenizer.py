"""
tokenizer.py -- the Llama 3 tokenizer, its chat format, and training your own BPE.

Stage of the paper: §3.2 (the 128K vocabulary: 100K tiktoken tokens + 28K for other
languages, English compression 3.17 -> 3.94 characters per token) and the chat format
used by post-training (§4.1, with the DPO formatting-token mask of §4.1.4).

What is notable here
- `Tokenizer` is Meta's tokenizer, line for line in behaviour: any byte-level BPE file in
  tiktoken's format ("base64(token bytes) rank" per line), Meta's pre-tokenization regex,
  and the 256 special tokens appended after the BPE ranks (Llama 3.1 names). With Meta's
  own `tokenizer.model` it gives exactly Meta's ids; tiktoken (Rust) does the encoding.
- `ChatFormat` is Meta's chat format, plus `encode_dialog`, which also returns the two
  masks post-training needs: which tokens the SFT loss trains on, and which tokens are
  formatting that DPO masks out (§4.1.4).
- Tool use (§4.3.5) in Llama 3.1's format, Meta's ids exactly: tool calls after
  <|python_tag|>, <|eom_id|> (waiting for a tool) vs <|eot_id|>, the ipython role for
  results, "Environment: ipython" / "Tools:" in the system prompt (`system_prompt`), JSON
  calls of custom tools, RAG context on a user message; and the inverse,
  `parse_assistant_message`, which reads a generated message as Meta's tool_utils does.
- `train_bpe` trains a byte-level BPE from scratch in readable pure Python that is still
  fast: pre-token chunks are counted once, and each merge updates the pair counts of
  only the chunks that contain the merged pair (no recount of the corpus per merge).
- `reference_encode` is the encoding algorithm in ~30 lines of Python, for teaching; the
  tests hold it to tiktoken's exact output on Meta's tokenizer and on a trained one.

Reads:  a tokenizer file (Meta's ships in the `llama-models` package), text files.
Writes: `train` writes a tokenizer file in tiktoken's format (+ PATH.json record);
        `stats` writes out/tokenizer/stats.json; `bench` writes out/tokenizer/bench.json.

How to run
    python tokenizer.py train --vocab-size 8192 --input a.txt b.txt --out out/tok.model
    python tokenizer.py train --vocab-size 8192 --out out/tok.model   # built-in corpus
    python tokenizer.py encode --tokenizer out/tok.model "Hello world"
    echo "9906 1917" | python tokenizer.py decode                     # Meta's by default
    python tokenizer.py stats --train-vocab-size 8192   # chars/token: Meta's vs trained
    python tokenizer.py bench                           # training speed vs HF tokenizers

Read next: data.py (uses `train_tokenizer` and `Tokenizer.encode` to build the token
shards), then tasks.py / sft.py / dpo.py (use `ChatFormat.encode_dialog`) and tools.py
(runs the tool calls).
"""

from __future__ import annotations

import argparse
import base64
import heapq
import importlib.util
import json
import os
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import AbstractSet, Collection, Iterable, Iterator, Literal, Sequence

import regex  # the `regex` module comes with tiktoken (pip show tiktoken -> Requires: regex)
import tiktoken

# ----------------------------------------------------------------------------------------
# Constants shared with Meta's tokenizer (llama_models/llama3/tokenizer.py)

# Pre-tokenization (§3.2): text is first cut into chunks by this regex, and BPE merges never
# cross a chunk boundary. In order: English contractions ('s 't ...), words with at most
# one leading non-letter (" the", "(self"), numbers in groups of at most 3 digits,
# punctuation runs with an optional leading space, newline runs, and other whitespace
# (`\s+(?!\S)` keeps the last space of a run for the next word: "   x" -> "  ", " x").
PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRETOKENIZE = regex.compile(PAT_STR)  # the pure-Python twin of tiktoken's internal regex

# tiktoken (Rust) can panic on very long inputs: Meta encodes at most 400,000 characters
# at a time, and cuts runs of more than 25,000 consecutive whitespace or non-whitespace
# characters (https://github.com/openai/tiktoken/issues/195).
TIKTOKEN_MAX_ENCODE_CHARS = 400_000
MAX_NO_WHITESPACES_CHARS = 25_000

NUM_SPECIAL_TOKENS = 256  # §3.2: the 128,256 vocabulary = 128,000 BPE + 256 special
NUM_BYTE_TOKENS = 256  # byte-level BPE: every byte is a token, so any text is encodable


def special_token_names() -> list[str]:
    """The 256 special tokens in id order (Llama 3.1 naming), appended after the BPE ranks.

    ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", ...,
     "<|eot_id|>" (index 9), ..., "<|reserved_special_token_245|>"]  (256 names)
    """
    named = [
        "<|begin_of_text|>",  # n_base + 0: bos, starts every document and dialog
        "<|end_of_text|>",  # n_base + 1: eos, ends a pre-training document
        "<|reserved_special_token_0|>",
        "<|reserved_special_token_1|>",
        "<|finetune_right_pad_id|>",  # n_base + 4: padding
        "<|step_id|>",
        "<|start_header_id|>",  # n_base + 6: opens a message header "...role..."
        "<|end_header_id|>",  # n_base + 7: closes it
        "<|eom_id|>",  # n_base + 8: end of message (a tool call follows)
        "<|eot_id|>",  # n_base + 9: end of turn
        "<|python_tag|>",  # n_base + 10: code-interpreter call
        "<|image|>",  # n_base + 11
    ]
    reserved = [f"<|reserved_special_token_{2 + i}|>" for i in range(NUM_SPECIAL_TOKENS - len(named))]
    return named + reserved


# ----------------------------------------------------------------------------------------
# The tokenizer file: one "base64(token bytes) rank" line per BPE token (tiktoken's format)


def load_bpe(path: str | os.PathLike) -> dict[bytes, int]:
    """Read a tiktoken-format file into mergeable ranks {token bytes: rank}.

    "IQ== 0\\nIg== 1\\n..." -> {b"!": 0, b'"': 1, ...}. Errors name the file and line. Ranks
    must be exactly 0..n-1 (special tokens go at n, n+1, ...) and all 256 single bytes must
    be tokens (otherwise some text would have no encoding).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    ranks: dict[bytes, int] = {}
    seen_ranks: set[int] = set()
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue  # tolerate blank lines (e.g. a trailing newline)
            parts = line.split()
            where = f"{path}, line {line_no}"
            if len(parts) != 2:
                raise ValueError(f"{where}: expected 'base64 rank', got {line[:80]!r}")
            try:
                token = base64.b64decode(parts[0], validate=True)
                rank = int(parts[1])
            except ValueError as e:  # binascii.Error is a ValueError
                raise ValueError(f"{where}: malformed 'base64 rank' line {line[:80]!r} ({e})") from None
            if not token:
                raise ValueError(f"{where}: empty token")
            if token in ranks:
                raise ValueError(f"{where}: token {token!r} appears twice")
            if rank in seen_ranks or rank < 0:
                raise ValueError(f"{where}: rank {rank} is negative or appears twice")
            ranks[token] = rank
            seen_ranks.add(rank)
    if not ranks:
        raise ValueError(f"{path}: no tokens (empty tokenizer file)")
    if len(ranks) - 1 != max(seen_ranks):  # distinct, non-negative, so this means 0..n-1
        missing = min(set(range(len(ranks))) - seen_ranks)
        raise ValueError(f"{path}: ranks must be 0..{len(ranks) - 1} without gaps; rank {missing} is missing")
    missing_bytes = [b for b in range(256) if bytes([b]) not in ranks]
    if missing_bytes:
        raise ValueError(f"{path}: not a byte-level BPE, {len(missing_bytes)} single bytes are not tokens "
                         f"(first: {bytes([missing_bytes[0]])!r})")
    return ranks


def save_bpe(ranks: dict[bytes, int], path: str | os.PathLike) -> None:
    """Write mergeable ranks in tiktoken's format, atomically (temp file + rename), so a
    reader never sees half a file. {b"!": 0, ...} -> "IQ== 0\\n..." sorted by rank."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{base64.b64encode(token).decode('ascii')} {rank}\n"
             for token, rank in sorted(ranks.items(), key=lambda kv: kv[1])]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.writelines(lines)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def meta_tokenizer_path() -> str | None:
    """Path of Meta's Llama 3 tokenizer.model inside the `llama-models` package, or None.

    Found with importlib.util.find_spec, which locates the package without importing it
    (importing llama_models would pull in torch, PIL, pydantic, ...)."""
    try:
        spec = importlib.util.find_spec("llama_models")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(location, "llama3", "tokenizer.model")
        if os.path.isfile(path):
            return path
    return None


# ----------------------------------------------------------------------------------------
# Tokenizer: Meta's semantics, tiktoken's speed


def _split_long_runs(s: str, max_run: int) -> Iterator[str]:
    """Cut `s` so no piece holds more than `max_run` consecutive whitespace or consecutive
    non-whitespace characters; exactly the cuts of Meta's `_split_whitespaces_or_
    nonwhitespaces` (a per-character loop), found here per run with a regex.

    ("aaaaa bb", max_run=2) -> "aa", "aa", "a bb": a run starting at p is cut at p + k*max_run.
    """
    if len(s) <= max_run:  # the common case: nothing can be too long
        yield s
        return
    start = 0  # start of the piece being built
    # `\s` on str is str.isspace(), the test Meta's loop uses.
    for run in _RUNS.finditer(s):
        for cut in range(run.start() + max_run, run.end(), max_run):
            yield s[start:cut]
            start = cut
    yield s[start:]


_RUNS = re.compile(r"\s+|\S+")  # stdlib re: `\s` on str is exactly str.isspace()


class Tokenizer:
    """Byte-level BPE tokenizer with Llama 3's special tokens (Meta's Tokenizer).

    tok = Tokenizer(meta_tokenizer_path())
    tok.encode("This is a test sentence.", bos=True, eos=False)
        -> [128000, 2028, 374, 264, 1296, 11914, 13]
    tok.decode([2028, 374]) -> "This is"
    """

    def __init__(self, model_path: str | os.PathLike):
        self.model_path = str(model_path)
        self.mergeable_ranks = load_bpe(model_path)  # {token bytes: rank}, ranks 0..n_base-1
        self.n_base_tokens = len(self.mergeable_ranks)  # 128,000 for Meta's
        # §3.2: the 256 special tokens come right after the BPE ranks (128000.. for Meta's).
        self.special_tokens = {name: self.n_base_tokens + i for i, name in enumerate(special_token_names())}
        self.model = tiktoken.Encoding(
            name=Path(model_path).name,
            pat_str=PAT_STR,
            mergeable_ranks=self.mergeable_ranks,
            special_tokens=self.special_tokens,
        )
        self.n_words = self.n_base_tokens + len(self.special_tokens)  # 128,256 for Meta's
        self.bos_id = self.special_tokens["<|begin_of_text|>"]
        self.eos_id = self.special_tokens["<|end_of_text|>"]
        self.eot_id = self.special_tokens["<|eot_id|>"]
        self.eom_id = self.special_tokens["<|eom_id|>"]
        self.python_tag_id = self.special_tokens["<|python_tag|>"]
        self.pad_id = self.special_tokens["<|finetune_right_pad_id|>"]
        # Generation stops at any of these: end of a document, of a turn, of a message.
        self.stop_tokens = {self.eos_id, self.eom_id, self.eot_id}

    def __repr__(self) -> str:
        return f"Tokenizer({self.model_path!r}, n_words={self.n_words})"

    def encode(
        self,
        s: str,
        *,
        bos: bool = False,
        eos: bool = False,
        allowed_special: Literal["all"] | AbstractSet[str] = frozenset(),
        disallowed_special: Literal["all"] | Collection[str] = (),
    ) -> list[int]:
        """Text -> token ids, optionally with bos/eos.

        Meta's semantics: the text of a special token ("<|eot_id|>") is encoded as plain
        text unless it is in `allowed_special` ("all" allows all); names in
        `disallowed_special` raise instead. So user text can never inject a header or
        an end of turn by accident.
        """
        if not isinstance(s, str):
            raise TypeError(f"Tokenizer.encode expects a str, got {type(s).__name__}")
        tokens: list[int] = [self.bos_id] if bos else []
        # Cut the input the way Meta does, so that tiktoken never panics and the ids are
        # identical to Meta's even for 1,000,000-character runs without whitespace.
        for i in range(0, len(s), TIKTOKEN_MAX_ENCODE_CHARS):
            for piece in _split_long_runs(s[i: i + TIKTOKEN_MAX_ENCODE_CHARS], MAX_NO_WHITESPACES_CHARS):
                tokens.extend(self.model.encode(piece, allowed_special=allowed_special,
                                                disallowed_special=disallowed_special))
        if eos:
            tokens.append(self.eos_id)
        return tokens

    def encode_batch(self, texts: Sequence[str], *, bos: bool = False, eos: bool = False,
                     num_threads: int = 2) -> list[list[int]]:
        """encode(text, bos=bos, eos=eos) for many texts (special-token text as plain text),
        with tiktoken's threads for the texts short enough to need no cutting."""
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"Tokenizer.encode_batch expects str items, got {type(t).__name__}")
        short = [i for i, t in enumerate(texts) if len(t) <= MAX_NO_WHITESPACES_CHARS]
        out: list[list[int] | None] = [None] * len(texts)
        for i, ids in zip(short, self.model.encode_ordinary_batch([texts[i] for i in short],
                                                                   num_threads=num_threads)):
            out[i] = ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])
        for i, t in enumerate(texts):
            if out[i] is None:
                out[i] = self.encode(t, bos=bos, eos=eos)
        return out  # type: ignore[return-value]

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids -> text (invalid UTF-8, e.g. half a character, becomes U+FFFD)."""
        return self.model.decode(list(ids))

    def decode_token_bytes(self, token_id: int) -> bytes:
        """The raw bytes of one token (a token may be part of a UTF-8 character)."""
        return self.model.decode_single_token_bytes(token_id)


# ----------------------------------------------------------------------------------------
# Chat format (Meta's ChatFormat), tool calls (§4.3.5) and the post-training masks (§4.1, §4.1.4)

# §4.3.5: Llama 3 is trained to call a search engine (Brave Search), a Python interpreter
# and Wolfram Alpha (photogen is a fourth built-in in Meta's code). A call of a search-like
# tool is `NAME.call(query="...")`; the interpreter's call is the code itself, after
# <|python_tag|>. Custom ("zero-shot") tools are called in JSON, `<function=NAME>{...}`
# or a Python list of calls (TOOL_PROMPT_FORMATS: how the call text is written).
BUILTIN_TOOLS = ("brave_search", "wolfram_alpha", "photogen", "code_interpreter")
TOOL_PROMPT_FORMATS = ("json", "function_tag", "python_list")
# An assistant message ends with <|eom_id|> when it waits for a tool's answer (end of
# message) and with <|eot_id|> when the turn is over (Meta's StopReason).
END_TOKENS = {"end_of_turn": "<|eot_id|>", "end_of_message": "<|eom_id|>"}


def system_prompt(builtin_tools: Sequence[str] = (), *, custom_tools: bool = False,
                  today: str | None = None, instruction: str | None = None) -> str:
    """The system prompt that turns tools on, as Meta's Llama 3.1 templates write it.

    "Environment: ipython" enables the code interpreter (and the <|eom_id|> ending); the
    other built-in tools are named on a "Tools:" line. With `today`, Meta's full form:
      system_prompt(["brave_search", "wolfram_alpha"], today="21 September 2024",
                    instruction="You are a helpful assistant.") ->
      "Environment: ipython\\nTools: brave_search, wolfram_alpha\\nCutting Knowledge Date:
       December 2023\\nToday Date: 21 September 2024\\n\\nYou are a helpful assistant.\\n"
    Without `today` and `instruction`, the short form of Meta's examples:
      system_prompt(["code_interpreter"]) -> "Environment: ipython"
    """
    unknown = [t for t in builtin_tools if t not in BUILTIN_TOOLS]
    if unknown:
        raise ValueError(f"unknown built-in tool(s) {unknown}; built-in: {', '.join(BUILTIN_TOOLS)}")
    named = [t for t in builtin_tools if t != "code_interpreter"]  # the interpreter needs no name
    lines = (["Environment: ipython"] if builtin_tools or custom_tools else []) + \
        ([f"Tools: {', '.join(named)}"] if named else [])
    if today is None and instruction is None:
        return "\n".join(lines)
    text = ""
    if lines:  # Meta's template renders "Environment: ipython\n" alone, or without that "\n" before "Tools:"
        text = ("\n".join(lines) if named else lines[0] + "\n") + "\n"
    text += f"Cutting Knowledge Date: December 2023\nToday Date: {today}"
    return text + (f"\n\n{instruction}" if instruction else "") + "\n"


def _check_tool_call(call) -> None:
    if not (isinstance(call, dict) and isinstance(call.get("tool_name"), str)
            and isinstance(call.get("arguments"), dict)):
        raise ValueError(f"a tool call is {{'tool_name': str, 'arguments': dict}}, got {call!r:.80}")
    key = "code" if call["tool_name"] == "code_interpreter" else "query"
    if call["tool_name"] in BUILTIN_TOOLS and not isinstance(call["arguments"].get(key), str):
        raise ValueError(f"a {call['tool_name']} call needs a str argument {key!r}, got {call['arguments']!r:.80}")


def encode_tool_call(call: dict, tool_prompt_format: str = "json") -> str:
    """The text of one tool call in an assistant message (Meta's ToolUtils.encode_tool_call).

    {"tool_name": "brave_search", "arguments": {"query": "gold price"}}
        -> 'brave_search.call(query="gold price")'
    {"tool_name": "code_interpreter", "arguments": {"code": "347 * 582"}} -> "347 * 582"
    {"tool_name": "get_weather", "arguments": {"city": "Paris"}} ->
        json:         '{"type": "function", "name": "get_weather", "parameters": {"city": "Paris"}}'
        function_tag: '<function=get_weather>{"city": "Paris"}</function>'
        python_list:  '[get_weather(city="Paris")]'
    """
    _check_tool_call(call)
    name, args = call["tool_name"], call["arguments"]
    if name == "code_interpreter":
        return args["code"]
    if name in BUILTIN_TOOLS:
        return f'{name}.call(query="{args["query"]}")'
    if tool_prompt_format == "json":
        return json.dumps({"type": "function", "name": name, "parameters": args})
    if tool_prompt_format == "function_tag":
        return f"<function={name}>{json.dumps(args)}</function>"
    if tool_prompt_format == "python_list":
        def value(v):  # Meta's format_value: strings in double quotes, dicts as k=v
            if isinstance(v, str):
                return f'"{v}"'
            if isinstance(v, list):
                return f"[{', '.join(value(x) for x in v)}]"
            if isinstance(v, dict):
                return "{" + ", ".join(f"{k}={value(x)}" for k, x in v.items()) + "}"
            if isinstance(v, (int, float, bool)) or v is None:
                return str(v)
            raise ValueError(f"unsupported argument type {type(v).__name__} in a python_list call")
        return f"[{name}({', '.join(f'{k}={value(v)}' for k, v in args.items())})]"
    raise ValueError(f"tool_prompt_format must be one of {TOOL_PROMPT_FORMATS}, got {tool_prompt_format!r}")


# Meta's patterns (llama_models/llama3/tool_utils.py).
_BUILTIN_CALL = re.compile(r'\b(?P<tool_name>\w+)\.call\(query="(?P<query>[^"]*)"\)')
_FUNCTION_TAG_CALL = re.compile(r"<function=(?P<function_name>[^}]+)>(?P<args>{.*?})")


def _python_list_calls(text: str) -> list[tuple[str, dict]] | None:
    """'[f(a=1, b="x"), g()]' -> [("f", {"a": 1, "b": "x"}), ("g", {})]; None if the text
    is not a non-empty list of calls with keyword arguments only. Values are read with
    ast.literal_eval (literals only: nothing is ever run)."""
    import ast
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Expr) or not isinstance(tree.body[0].value, ast.List):
        return None
    calls = tree.body[0].value.elts
    if not calls or not all(isinstance(c, ast.Call) and isinstance(c.func, ast.Name) and not c.args
                            for c in calls):
        return None
    try:
        return [(c.func.id, {k.arg: ast.literal_eval(k.value) for k in c.keywords}) for c in calls]
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
        return None


def _custom_tool_call(text: str) -> tuple[str, dict] | None:
    """Meta's ToolUtils.maybe_extract_custom_tool_call: a `<function=NAME>{json}` tag
    anywhere, else the whole text as a JSON object with a "name" (or "type": "function")
    and "parameters", else a Python list of calls (the first one is taken)."""
    match = _FUNCTION_TAG_CALL.search(text)
    if match:
        try:
            args = json.loads(match.group("args").replace("'", '"'))
        except ValueError:
            return None
        return (match.group("function_name"), args) if isinstance(args, dict) else None
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        obj = None
    if isinstance(obj, dict):
        if (obj.get("type") == "function" or "name" in obj) and isinstance(obj.get("name"), str):
            return obj["name"], obj.get("parameters", {})
        return None
    calls = _python_list_calls(text)
    return calls[0] if calls else None


def parse_assistant_message(text: str, stop_reason: str = "out_of_tokens") -> dict:
    """A generated assistant message (its text) -> a message dict: plain text, or a tool
    call. Meta's ChatFormat.decode_assistant_message_from_content, step for step:

    '<|python_tag|>brave_search.call(query="gold")<|eom_id|>' ->
        {"role": "assistant", "content": "", "stop_reason": "end_of_message",
         "tool_calls": [{"tool_name": "brave_search", "arguments": {"query": "gold"}}]}
    '<|python_tag|>347 * 582<|eom_id|>' -> a code_interpreter call {"code": "347 * 582"}
    'It is 7.<|eot_id|>' -> {"content": "It is 7.", "stop_reason": "end_of_turn", "tool_calls": []}

    The ending token sets stop_reason (else the one given: "out_of_tokens" by default). A
    custom call (function tag, JSON, Python list) is looked for first, then a built-in
    `NAME.call(query=...)`; failing both, text after <|python_tag|> is interpreter code.
    """
    content = text.strip(" ")
    header = "<|start_header_id|>assistant<|end_header_id|>\n\n"
    content = content[len(header):] if content.startswith(header) else content
    ipython = content.startswith("<|python_tag|>")
    content = content[len("<|python_tag|>"):] if ipython else content
    for reason, token in END_TOKENS.items():
        if content.endswith(token):
            content, stop_reason = content[: -len(token)], reason
            break
    call = None
    custom = _custom_tool_call(content)
    if custom is not None:
        name, args = custom
        if name in BUILTIN_TOOLS:  # a built-in called in the custom format: its one argument is the query
            args = {"query": next(iter(args.values()), "")}
        call = {"tool_name": name, "arguments": args}
    elif (builtin := _BUILTIN_CALL.search(content)) is not None:
        call = {"tool_name": builtin.group("tool_name"), "arguments": {"query": builtin.group("query")}}
    elif ipython:
        call = {"tool_name": "code_interpreter", "arguments": {"code": content}}
    return {"role": "assistant", "content": "" if call else content, "stop_reason": stop_reason,
            "tool_calls": [call] if call else []}


@dataclass
class DialogTokens:
    """A tokenized dialog with one entry per token in each list.

    tokens:         the ids (bos, then per message: header, content, <|eot_id|> or
                    <|eom_id|>).
    assistant_mask: True on what the assistant wrote: its content, its tool calls (with
                    <|python_tag|>) and the <|eot_id|> / <|eom_id|> that closes each of its
                    messages: the SFT loss targets (the model must learn when to call a
                    tool and when to stop). Tool results (ipython) are never targets.
    format_mask:    True on bos, header tokens (<|start_header_id|>, role, <|end_header_id|>,
                    "\\n\\n") and <|eot_id|> / <|eom_id|>: the formatting tokens DPO masks
                    out of its loss (§4.1.4: they appear in both the chosen and rejected
                    responses, and the conflicting gradient on them made the model stop
                    early or repeat). <|python_tag|> is not formatting: it is the decision
                    to call a tool.
    """

    tokens: list[int]
    assistant_mask: list[bool]
    format_mask: list[bool]


class ChatFormat:
    """Meta's Llama 3 / 3.1 chat format:

    <|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\n{content}<|eot_id|>
    <|start_header_id|>user<|end_header_id|>\\n\\n{content}<|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>\\n\\n   <- generation prompt

    A message is a dict:
      {"role": "system" | "user" | "assistant" | "ipython" | ..., "content": str}
      user, optionally "context": str -- retrieved text (RAG), after content and "\\n\\n"
      assistant, optionally "tool_calls": [{"tool_name": str, "arguments": dict}] and
        "stop_reason": "end_of_message" (ends with <|eom_id|>: waiting for a tool) or
        "end_of_turn" (the default, <|eot_id|>)
      "ipython" (or "tool", written "ipython" as Meta does): a tool's result.
    A tool call with a system prompt from `system_prompt` (§4.3.5):
      ...assistant<|end_header_id|>\\n\\n<|python_tag|>347 * 582<|eom_id|>
      <|start_header_id|>ipython<|end_header_id|>\\n\\n201954<|eot_id|>
      <|start_header_id|>assistant<|end_header_id|>\\n\\n201954<|eot_id|>
    Meta's current ChatFormat writes <|python_tag|> only before a code_interpreter call;
    its prompt-format docs (made by an earlier version) show it before every tool call.
    We follow the code; `parse_assistant_message` reads both.

    strip: True (default) strips each message's content and context of surrounding
    whitespace, as Llama 3's reference code and Hugging Face's template do; False keeps
    it, as Meta's llama-models (Llama 3.1+) does: the ids are then Meta's byte for byte.
    Special-token text inside content is plain text (a user cannot forge a header).
    """

    def __init__(self, tokenizer: Tokenizer, strip: bool = True):
        self.tokenizer = tokenizer
        self.strip = strip

    @staticmethod
    def check_message(message: dict) -> None:
        """ValueError (TypeError for a non-dict) naming the field if `message` is not a
        message this format encodes (see the class docstring)."""
        if not isinstance(message, dict):
            raise TypeError(f"a message is a dict with 'role' and 'content', got {type(message).__name__}")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise ValueError(f"message[{key!r}] must be a str, got {message.get(key)!r:.80}")
        if message.get("context") is not None and not isinstance(message["context"], str):
            raise ValueError(f"message['context'] must be a str, got {message['context']!r:.80}")
        if not isinstance(message.get("tool_calls", []), list):
            raise ValueError(f"message['tool_calls'] must be a list, got {message['tool_calls']!r:.80}")
        for call in message.get("tool_calls", []):
            _check_tool_call(call)
        if message.get("stop_reason") not in (None, "end_of_turn", "end_of_message", "out_of_tokens"):
            raise ValueError(f"message['stop_reason'] must be 'end_of_turn' or 'end_of_message', "
                             f"got {message['stop_reason']!r:.80}")

    def encode_header(self, message: dict) -> list[int]:
        """{"role": "user", ...} -> [<|start_header_id|>, "user"..., <|end_header_id|>, "\\n\\n"]
        (Meta's ids: 128006, 882, 128007, 271). Role "tool" is written "ipython"."""
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValueError(f"a message needs a str 'role', got {message!r:.80}")
        role = "ipython" if message["role"] == "tool" else message["role"]
        tokens = [self.tokenizer.special_tokens["<|start_header_id|>"]]
        tokens.extend(self.tokenizer.encode(role, bos=False, eos=False))
        tokens.append(self.tokenizer.special_tokens["<|end_header_id|>"])
        tokens.extend(self.tokenizer.encode("\n\n", bos=False, eos=False))
        return tokens

    def _pieces(self, message: dict, tool_prompt_format: str) -> list[tuple[list[int], bool, bool]]:
        """One message as (ids, written by the assistant, is formatting) pieces, in order:
        header, [<|python_tag|>], content, [\\n\\n + context], [tool calls], end token.
        Each piece is encoded on its own, as Meta does (so ids never merge across pieces)."""
        self.check_message(message)
        encode = lambda text: self.tokenizer.encode(text, bos=False, eos=False)  # noqa: E731
        clean = (lambda text: text.strip()) if self.strip else (lambda text: text)  # noqa: E731
        mine = message["role"] == "assistant"
        calls = (message.get("tool_calls") or []) if mine else []
        pieces = [(self.encode_header(message), False, True)]  # never a loss target
        if calls and calls[0]["tool_name"] == "code_interpreter":
            pieces.append(([self.tokenizer.python_tag_id], True, False))
        pieces.append((encode(clean(message["content"])), mine, False))
        if message["role"] == "user" and message.get("context") is not None:
            pieces += [(encode("\n\n"), False, False), (encode(clean(message["context"])), False, False)]
        pieces += [(encode(encode_tool_call(call, tool_prompt_format)), True, False) for call in calls]
        end = "end_of_message" if mine and message.get("stop_reason") == "end_of_message" else "end_of_turn"
        pieces.append(([self.tokenizer.special_tokens[END_TOKENS[end]]], mine, True))  # SFT learns it; DPO masks it
        return pieces

    def encode_message(self, message: dict, tool_prompt_format: str = "json") -> list[int]:
        """Header + content (+ context, tool calls) + <|eot_id|> or <|eom_id|>."""
        return [t for ids, _, _ in self._pieces(message, tool_prompt_format) for t in ids]

    def encode_dialog_prompt(self, messages: Sequence[dict], tool_prompt_format: str = "json") -> list[int]:
        """<|begin_of_text|> + every message + the assistant header the model completes."""
        return self.encode_dialog(messages, add_generation_prompt=True, tool_prompt_format=tool_prompt_format).tokens

    def encode_dialog(self, messages: Sequence[dict], add_generation_prompt: bool = False,
                      tool_prompt_format: str = "json") -> DialogTokens:
        """Tokens plus the SFT and DPO masks (see DialogTokens). With add_generation_prompt
        the tokens equal encode_dialog_prompt's (the trailing assistant header is format).
        tool_prompt_format: how custom tool calls are written (TOOL_PROMPT_FORMATS)."""
        tokens, assistant_mask, format_mask = [self.tokenizer.bos_id], [False], [True]
        pieces = [p for message in messages for p in self._pieces(message, tool_prompt_format)]
        if add_generation_prompt:
            pieces.append((self.encode_header({"role": "assistant"}), False, True))
        for ids, is_assistant, is_format in pieces:
            tokens.extend(ids)
            assistant_mask.extend([is_assistant] * len(ids))
            format_mask.extend([is_format] * len(ids))
        return DialogTokens(tokens, assistant_mask, format_mask)

    def decode_assistant_message(self, tokens: Sequence[int], stop_reason: str = "out_of_tokens") -> dict:
        """Generated ids (with the stop token, if any: generate(..., include_stop=True))
        -> a message dict, plain text or tool call (parse_assistant_message)."""
        return parse_assistant_message(self.tokenizer.decode(tokens), stop_reason)


# ----------------------------------------------------------------------------------------
# Training a byte-level BPE (§3.2: Llama 3 took 100K tokens from tiktoken and added 28K;
# here we learn a small vocabulary from scratch with the same regex and format)


def count_chunks(texts: Iterable[str]) -> Counter[str]:
    """Pre-tokenize every text with Meta's regex and count the chunks.

    ["hello hello world"] -> Counter({"hello": 1, " hello": 1, " world": 1})
    BPE merges never cross chunk boundaries, so from here on the corpus is just this
    table: a 10 MB corpus of Python code has ~2.3M chunks but only ~56K distinct ones.
    """
    if isinstance(texts, str):  # a lone string would otherwise be iterated per character
        texts = [texts]
    counts: Counter[str] = Counter()
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"training texts must be str, got {type(text).__name__}")
        counts.update(PRETOKENIZE.findall(text))
    return counts


def _merge_word(word: list[int], a: int, b: int, new_id: int) -> list[int]:
    """Replace every (a, b) in `word`, left to right, by new_id.
    ([1, 2, 3, 1, 2], 1, 2, 9) -> [9, 3, 9];  ([5, 5, 5], 5, 5, 7) -> [7, 5]."""
    out = []
    i, n = 0, len(word)
    while i < n:
        if i < n - 1 and word[i] == a and word[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


# Llama 3's vocabulary holds every string of 1-3 ASCII digits as one token (Meta's
# tokenizer.model: 1,000 + 100 + 10), and its pre-tokenizer cuts numbers into groups of
# at most 3 digits: "201954" -> "201" "954", always 2 tokens. A BPE trained on our small
# corpus learns only the frequent ones ("201" "9" "5" "4"), so the same number can be 2
# to 6 tokens and copying one is a different task for every number (docs/NOTES.md).
NUMBER_TOKENS = [str(i).zfill(k).encode() for k in (2, 3) for i in range(10 ** k)]


def train_bpe(texts: Iterable[str], vocab_size: int, verbose: bool = False,
              number_tokens: bool = False) -> dict[bytes, int]:
    """Learn mergeable ranks {token bytes: rank} from text, tiktoken style.
    number_tokens: every 2- and 3-digit string is a token (ranks 256..1355, before the
    learned merges), as in Llama 3's vocabulary.

    vocab_size counts everything, the 256 special tokens included: the result has
    vocab_size - 256 ranks (256 single bytes, then the merges in the order learned), so a
    Tokenizer built on it has n_words == vocab_size (unless the corpus runs out of pairs).

    Algorithm (classic BPE, Sennrich et al. 2016, on bytes as in GPT-2):
      1. count distinct pre-token chunks once (count_chunks); each chunk becomes a list of
         byte ids with a frequency;
      2. pair_counts[(a, b)] = sum of frequencies of adjacent (a, b) over all chunks, and
         where[(a, b)] = the chunks that contain it;
      3. repeatedly merge the most frequent pair: rewrite only the chunks in where[pair],
         and apply to pair_counts only the difference between their old and new pairs.
    Picking the most frequent pair uses a max-heap with lazy invalidation: an entry may
    hold a stale (too high) count; when popped, it is re-pushed with the true count.
    Ties (deterministic): highest count, then the smallest (bytes_a, bytes_b) in byte order.
    A merge always makes new bytes: two different pairs with the same bytes ("ab"+"c",
    "a"+"bc") never both occur, because a merge applied everywhere segments equal byte
    spans alike (proof and search in docs/NOTES.md); the id_of look-up is only a guard.
    """
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    minimum = NUM_BYTE_TOKENS + NUM_SPECIAL_TOKENS
    if vocab_size < minimum:
        raise ValueError(f"vocab_size={vocab_size} is too small: it must be at least {minimum} "
                         f"({NUM_BYTE_TOKENS} byte tokens + {NUM_SPECIAL_TOKENS} special tokens)")
    n_ranks = vocab_size - NUM_SPECIAL_TOKENS  # BPE tokens to learn, bytes included
    if number_tokens and n_ranks < NUM_BYTE_TOKENS + len(NUMBER_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} is too small for the {len(NUMBER_TOKENS)} number tokens")
    t0 = time.time()

    # 1. The corpus as distinct chunks of byte ids, with their frequencies.
    chunk_counts = count_chunks(texts)
    words: list[list[int]] = []
    freqs: list[int] = []
    for chunk, freq in chunk_counts.items():
        try:
            data = chunk.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: replace them, as tiktoken does
            data = chunk.encode("utf-8", "surrogatepass").decode("utf-8", "replace").encode("utf-8")
        if number_tokens and data.isdigit():  # a 1-3 digit chunk (the regex's \p{N}{1,3}): one token already
            continue
        if len(data) >= 2:  # a 1-byte chunk has no pair to merge
            words.append(list(data))
            freqs.append(freq)
    t_count = time.time() - t0

    # Token id == rank: ids 0..255 are the single bytes, merges take 256, 257, ...
    token_bytes: list[bytes] = [bytes([b]) for b in range(NUM_BYTE_TOKENS)] + (NUMBER_TOKENS if number_tokens else [])
    id_of: dict[bytes, int] = {t: i for i, t in enumerate(token_bytes)}

    # 2. Pair counts and the inverted index pair -> chunks that contain it.
    pair_counts: defaultdict[tuple[int, int], int] = defaultdict(int)
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for w_index, (word, freq) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += freq
            where[pair].add(w_index)
    # Heap entries (-count, bytes_a, bytes_b, a, b): heapq is a min-heap, so the first
    # entry popped has the highest count, then the smallest byte strings.
    heap = [(-c, token_bytes[a], token_bytes[b], a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    # 3. Merge until the vocabulary is full.
    n_merges = n_ranks - len(token_bytes)
    report_every = max(1, n_merges // 10)
    n_done = 0
    while len(token_bytes) < n_ranks and heap:
        neg_count, bytes_a, bytes_b, a, b = heapq.heappop(heap)
        count = pair_counts.get((a, b), 0)
        if count != -neg_count:  # stale entry: the pair's count went down since it was pushed
            if count > 0:
                heapq.heappush(heap, (-count, bytes_a, bytes_b, a, b))
            continue
        merged = bytes_a + bytes_b
        new_id = id_of.get(merged)
        if new_id is None:  # always (see the docstring): a new token
            new_id = len(token_bytes)
            token_bytes.append(merged)
            id_of[merged] = new_id

        # Rewrite the chunks that contain (a, b); collect the change of every pair count.
        delta: defaultdict[tuple[int, int], int] = defaultdict(int)
        for w_index in where.pop((a, b)):
            word = words[w_index]
            new_word = _merge_word(word, a, b, new_id)
            if len(new_word) == len(word):
                continue  # the index is lazy too: this chunk lost the pair to an earlier merge
            freq = freqs[w_index]
            for pair in zip(word, word[1:]):
                delta[pair] -= freq
            for pair in zip(new_word, new_word[1:]):
                delta[pair] += freq
                where[pair].add(w_index)
            words[w_index] = new_word
        for pair, change in delta.items():
            if change == 0:
                continue
            new_count = pair_counts[pair] + change
            if new_count > 0:
                pair_counts[pair] = new_count
            else:
                del pair_counts[pair]  # (a, b) itself always ends here, at 0
            if change > 0:  # counts that rose need a fresh heap entry; fallen ones are lazy
                heapq.heappush(heap, (-new_count, token_bytes[pair[0]], token_bytes[pair[1]], *pair))

        n_done += 1
        if verbose and (n_done % report_every == 0 or len(token_bytes) == n_ranks):
            elapsed = time.time() - t0
            eta = (elapsed - t_count) / n_done * (n_merges - n_done)  # merges run at ~constant speed
            print(f"merge {n_done:6d}/{n_merges} | {token_bytes[new_id]!r:>24} count {count:8d} | "
                  f"{elapsed:6.1f}s elapsed, ETA ~{eta:5.1f}s", flush=True)

    if len(token_bytes) < n_ranks:
        print(f"warning: the corpus ran out of pairs after {len(token_bytes) - NUM_BYTE_TOKENS} merges; "
              f"vocabulary has {len(token_bytes) + NUM_SPECIAL_TOKENS} tokens, not {vocab_size}", file=sys.stderr)
    if verbose:
        print(f"trained {len(token_bytes)} BPE tokens (+{NUM_SPECIAL_TOKENS} special) from "
              f"{sum(chunk_counts.values()):,} chunks ({len(chunk_counts):,} distinct) in "
              f"{time.time() - t0:.1f}s (counting chunks {t_count:.1f}s)", flush=True)
    return {t: i for i, t in enumerate(token_bytes)}


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_path: str | os.PathLike,
                    verbose: bool = False, number_tokens: bool = False) -> Tokenizer:
    """train_bpe + save_bpe + load: the trained file, ready to use with n_words == vocab_size."""
    save_bpe(train_bpe(texts, vocab_size, verbose=verbose, number_tokens=number_tokens), out_path)
    return Tokenizer(out_path)


# ----------------------------------------------------------------------------------------
# The encoding algorithm in pure Python (for teaching; tests hold it equal to tiktoken)


def _bpe_chunk(data: bytes, ranks: dict[bytes, int]) -> list[int]:
    """Encode one pre-token chunk: start from single bytes and repeatedly merge the adjacent
    pair whose concatenation has the lowest rank (the leftmost on a tie), until no adjacent
    pair is a token. tiktoken's byte_pair_merge, without its speed tricks.

    b"hello" with ranks {..., b"he": 1, b"ll": 2, b"llo": 3, b"hello": 4}
    -> [h e l l o] -> [he l l o] -> [he ll o] -> [he llo] -> [hello]
    """
    if data in ranks:  # a whole chunk that is a token (most words): one id
        return [ranks[data]]
    parts = [data[i: i + 1] for i in range(len(data))]
    while len(parts) > 1:
        best_rank, best_i = None, -1
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best_rank is None or rank < best_rank):
                best_rank, best_i = rank, i
        if best_rank is None:
            break
        parts[best_i: best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return [ranks[p] for p in parts]


def reference_encode(text: str, ranks: dict[bytes, int], special_tokens: dict[str, int] | None = None,
                     allowed_special: AbstractSet[str] = frozenset()) -> list[int]:
    """Pure-Python encode: special tokens in `allowed_special` are cut out first and become
    their ids; every other piece is pre-tokenized with Meta's regex and each chunk is BPE
    encoded. Matches Tokenizer.encode (tiktoken) for inputs Meta does not need to cut.

    reference_encode("Hi!", meta_ranks) -> [13347, 0]
    """
    if not isinstance(text, str):
        raise TypeError(f"reference_encode expects a str, got {type(text).__name__}")
    special_tokens = special_tokens or {}
    allowed = [s for s in special_tokens if s in allowed_special]
    # With specials allowed, split around them: "a<|eot_id|>b" -> "a", "<|eot_id|>", "b".
    pieces = regex.split("(" + "|".join(regex.escape(s) for s in allowed) + ")", text) if allowed else [text]
    ids: list[int] = []
    for piece in pieces:
        if piece in allowed:
            ids.append(special_tokens[piece])
            continue
        for chunk in PRETOKENIZE.findall(piece):
            ids.extend(_bpe_chunk(chunk.encode("utf-8"), ranks))
    return ids


# ----------------------------------------------------------------------------------------
# Built-in corpus, compression statistics and the training benchmark


def builtin_texts(max_chars: int = 10_000_000, kind: str = "code") -> list[str]:
    """Texts of corpus.py's built-in documents, for training and measuring BPE:
    kind="code" -> the standard library's .py sources in a fixed order, until max_chars;
    kind="docs" -> the English Language Reference (pydoc topics, one text per topic)."""
    import corpus
    source = {"code": "python-source", "docs": "pydoc-topics"}[kind]
    return [d["text"] for d in corpus.builtin_corpus([source], max_chars=max_chars)]


def chars_per_token(tokenizer: Tokenizer, texts: Sequence[str]) -> dict:
    """Compression (§3.2: 3.17 chars/token for Llama 2 -> 3.94 for Llama 3, on English)."""
    n_chars = sum(len(t) for t in texts)
    n_tokens = sum(len(ids) for ids in tokenizer.encode_batch(list(texts)))
    return {"tokenizer": tokenizer.model_path, "n_words": tokenizer.n_words, "chars": n_chars,
            "tokens": n_tokens, "chars_per_token": n_chars / max(1, n_tokens)}


def bench_train(texts: Sequence[str] | None = None, vocab_size: int = 8192, hf: bool = True) -> dict:
    """Time train_bpe against Hugging Face `tokenizers` (Rust) on the same texts, side by
    side (default: 10 MB of stdlib code). HF is set up for the same job: Meta's regex as
    the pre-tokenizer, byte-level alphabet, vocab_size - 256 BPE tokens. -> a dict of
    seconds and the ratio (the target is ours <= 30x HF's)."""
    texts = list(texts) if texts is not None else builtin_texts(10_000_000)
    result: dict = {"chars": sum(len(t) for t in texts), "vocab_size": vocab_size}
    t0 = time.time()
    ranks = train_bpe(texts, vocab_size)
    result["ours_s"] = time.time() - t0
    result["ours_n_ranks"] = len(ranks)
    if hf:
        try:
            from tokenizers import Regex, Tokenizer as HFTokenizer, models, pre_tokenizers, trainers
        except ImportError:
            result["hf_s"] = None
            return result
        hf_tok = HFTokenizer(models.BPE())
        hf_tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PAT_STR), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        trainer = trainers.BpeTrainer(vocab_size=vocab_size - NUM_SPECIAL_TOKENS, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        t0 = time.time()
        hf_tok.train_from_iterator(texts, trainer=trainer)
        result["hf_s"] = time.time() - t0
        result["hf_vocab"] = hf_tok.get_vocab_size()
        result["ratio"] = result["ours_s"] / max(result["hf_s"], 1e-9)
    return result


# ----------------------------------------------------------------------------------------
# Command line


def _read_inputs(paths: list[str] | None) -> list[str]:
    if not paths:
        return builtin_texts()
    texts = []
    for p in paths:
        if not os.path.isfile(p):
            raise SystemExit(f"input file not found: {p}")
        texts.append(Path(p).read_text(encoding="utf-8", errors="replace"))
    return texts


def _default_tokenizer(path: str | None) -> str:
    path = path or meta_tokenizer_path() or "out/data/tokenizer.model"
    if not os.path.isfile(path):
        raise SystemExit(f"tokenizer file not found: {path} (pass --tokenizer PATH)")
    return path


def _write_json(record: dict, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Llama 3 tokenizer: train, encode, decode, stats, bench (§3.2)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a byte-level BPE and write it in tiktoken format")
    p.add_argument("--vocab-size", type=int, default=8192, help="total tokens incl. 256 special (>= 512)")
    p.add_argument("--input", nargs="*", help="UTF-8 text files (default: the built-in stdlib corpus)")
    p.add_argument("--out", required=True, help="tokenizer file written, tiktoken format (e.g. "
                   "out/data/tokenizer.model), plus OUT.json with its size and training time")

    p = sub.add_parser("encode", help="print the token ids of TEXT (or of stdin)")
    p.add_argument("text", nargs="?", help="text to encode (default: read stdin)")
    p.add_argument("--tokenizer", help="tokenizer file (default: Meta's from llama-models)")
    p.add_argument("--bos", action="store_true", help="prepend <|begin_of_text|>")
    p.add_argument("--allow-special", action="store_true", help="encode special-token text as special tokens")
    p.add_argument("--pieces", action="store_true", help="one token per line: its id and its text (its bytes "
                   "when the token is only part of a UTF-8 character)")

    p = sub.add_parser("decode", help="print the text of token IDS (or of whitespace-separated ids on stdin)")
    p.add_argument("ids", nargs="*", type=int)
    p.add_argument("--tokenizer", help="tokenizer file (default: Meta's from llama-models)")

    p = sub.add_parser("stats", help="characters per token of tokenizers on a corpus")
    p.add_argument("--tokenizer", nargs="*", help="tokenizer files (default: Meta's)")
    p.add_argument("--input", nargs="*", help="text files (default: built-in English docs, pydoc topics)")
    p.add_argument("--train-vocab-size", type=int, default=0,
                   help="also train a tokenizer of this size on the built-in code corpus and compare")
    p.add_argument("--out", default="out/tokenizer/stats.json",
                   help="JSON file written: chars/token of each tokenizer on the corpus")

    p = sub.add_parser("bench", help="training speed: train_bpe vs Hugging Face tokenizers, same text")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--chars", type=int, default=10_000_000, help="size of the built-in corpus used")
    p.add_argument("--out", default="out/tokenizer/bench.json",
                   help="JSON file written: seconds of train_bpe and of HF tokenizers, and their ratio")

    args = parser.parse_args(argv)
    print(f"args: {vars(args)}", file=sys.stderr)

    if args.command == "train":
        texts = _read_inputs(args.input)
        print(f"training on {len(texts)} texts, {sum(map(len, texts)):,} characters, vocab_size {args.vocab_size}")
        t0 = time.time()
        tok = train_tokenizer(texts, args.vocab_size, args.out, verbose=True)
        record = {"out": os.path.abspath(args.out), "n_words": tok.n_words, "seconds": time.time() - t0,
                  "inputs": args.input or "builtin", "chars": sum(map(len, texts))}
        _write_json(record, args.out + ".json")
        print(f"wrote {args.out}: n_words {tok.n_words}")
    elif args.command == "encode":
        tok = Tokenizer(_default_tokenizer(args.tokenizer))
        text = args.text if args.text is not None else sys.stdin.read()
        ids = tok.encode(text, bos=args.bos, allowed_special="all" if args.allow_special else frozenset())
        if not args.pieces:
            print(" ".join(map(str, ids)))
            return
        for i in ids:  # one per line: "   2028  'This'", "     99  b'\xa6'"
            piece = tok.decode_token_bytes(i)
            try:
                print(f"{i:7d}  {piece.decode('utf-8')!r}")
            except UnicodeDecodeError:  # part of a multi-byte character: show the bytes
                print(f"{i:7d}  {piece!r}")
    elif args.command == "decode":
        tok = Tokenizer(_default_tokenizer(args.tokenizer))
        ids = args.ids or [int(x) for x in sys.stdin.read().split()]
        bad = [i for i in ids if not 0 <= i < tok.n_words]
        if bad:
            raise SystemExit(f"token ids out of range [0, {tok.n_words}): {bad[:10]}")
        print(tok.decode(ids))
    elif args.command == "stats":
        texts = _read_inputs(args.input) if args.input else builtin_texts(kind="docs")
        paths = args.tokenizer or [_default_tokenizer(None)]
        if args.train_vocab_size:
            # Train on stdlib code (disjoint from the English docs evaluated by default).
            trained = f"out/tokenizer/trained_{args.train_vocab_size}.model"
            print(f"training a {args.train_vocab_size}-token BPE on the built-in code corpus -> {trained}")
            train_tokenizer(builtin_texts(), args.train_vocab_size, trained, verbose=True)
            paths.append(trained)
        rows = [chars_per_token(Tokenizer(p), texts) for p in paths]
        print(f"{'tokenizer':60s} {'n_words':>8s} {'chars':>10s} {'tokens':>10s} {'chars/token':>11s}")
        for r in rows:
            print(f"{r['tokenizer'][-60:]:60s} {r['n_words']:8d} {r['chars']:10d} {r['tokens']:10d} "
                  f"{r['chars_per_token']:11.3f}")
        print("(paper §3.2, English: Llama 2 3.17 -> Llama 3 3.94 characters per token)")
        _write_json({"corpus": args.input or "builtin pydoc topics", "results": rows}, args.out)
    elif args.command == "bench":
        texts = builtin_texts(args.chars)
        print(f"benchmark: {sum(map(len, texts)):,} characters, vocab_size {args.vocab_size}")
        r = bench_train(texts, args.vocab_size)
        print(f"train_bpe (pure Python): {r['ours_s']:.1f}s | HF tokenizers (Rust): "
              f"{r['hf_s'] if r.get('hf_s') is None else round(r['hf_s'], 1)}s | ratio "
              f"{r.get('ratio', float('nan')):.1f}x (target <= 30x)")
        _write_json(r, args.out)


if __name__ == "__main__":
    main()
