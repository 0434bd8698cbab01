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
shards), then tasks.py / sft.py / dpo.py (use `ChatFormat.encode_dialog`).
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
# Chat format (Meta's ChatFormat) and the post-training masks (§4.1, §4.1.4)


@dataclass
class DialogTokens:
    """A tokenized dialog with one entry per token in each list.

    tokens:         the ids (bos, then per message: header, content, <|eot_id|>).
    assistant_mask: True on assistant content tokens and on the <|eot_id|> that closes each
                    assistant turn: the SFT loss targets (the model must learn to stop).
    format_mask:    True on bos, header tokens (<|start_header_id|>, role, <|end_header_id|>,
                    "\\n\\n") and <|eot_id|>: the formatting tokens DPO masks out of its
                    loss (§4.1.4: they appear in both the chosen and rejected responses,
                    and the conflicting gradient on them made the model stop early or repeat).
    """

    tokens: list[int]
    assistant_mask: list[bool]
    format_mask: list[bool]


class ChatFormat:
    """Meta's Llama 3 chat format:

    <|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\n{content}<|eot_id|>
    <|start_header_id|>user<|end_header_id|>\\n\\n{content}<|eot_id|>
    <|start_header_id|>assistant<|end_header_id|>\\n\\n   <- generation prompt

    A message is {"role": "system" | "user" | "assistant" | "ipython" | ..., "content": str}.
    The role is encoded as written; content is stripped of surrounding whitespace, and any
    special-token text inside it is plain text (a user cannot forge a header).
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer

    @staticmethod
    def _check(message: dict) -> None:
        if not isinstance(message, dict):
            raise TypeError(f"a message is a dict with 'role' and 'content', got {type(message).__name__}")
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise ValueError(f"message[{key!r}] must be a str, got {message.get(key)!r:.80}")

    def encode_header(self, message: dict) -> list[int]:
        """{"role": "user", ...} -> [<|start_header_id|>, "user"..., <|end_header_id|>, "\\n\\n"]
        (Meta's ids: 128006, 882, 128007, 271)."""
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValueError(f"a message needs a str 'role', got {message!r:.80}")
        tokens = [self.tokenizer.special_tokens["<|start_header_id|>"]]
        tokens.extend(self.tokenizer.encode(message["role"], bos=False, eos=False))
        tokens.append(self.tokenizer.special_tokens["<|end_header_id|>"])
        tokens.extend(self.tokenizer.encode("\n\n", bos=False, eos=False))
        return tokens

    def encode_message(self, message: dict) -> list[int]:
        """Header + stripped content + <|eot_id|>."""
        self._check(message)
        tokens = self.encode_header(message)
        tokens.extend(self.tokenizer.encode(message["content"].strip(), bos=False, eos=False))
        tokens.append(self.tokenizer.eot_id)
        return tokens

    def encode_dialog_prompt(self, messages: Sequence[dict]) -> list[int]:
        """<|begin_of_text|> + every message + the assistant header the model completes."""
        return self.encode_dialog(messages, add_generation_prompt=True).tokens

    def encode_dialog(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> DialogTokens:
        """Tokens plus the SFT and DPO masks (see DialogTokens). With add_generation_prompt
        the tokens equal encode_dialog_prompt's (the trailing assistant header is format)."""
        tokens = [self.tokenizer.bos_id]
        assistant_mask = [False]
        format_mask = [True]

        def add(ids: list[int], is_assistant: bool, is_format: bool) -> None:
            tokens.extend(ids)
            assistant_mask.extend([is_assistant] * len(ids))
            format_mask.extend([is_format] * len(ids))

        for message in messages:
            self._check(message)
            is_assistant = message["role"] == "assistant"
            add(self.encode_header(message), False, True)  # never a loss target
            add(self.tokenizer.encode(message["content"].strip(), bos=False, eos=False), is_assistant, False)
            add([self.tokenizer.eot_id], is_assistant, True)  # SFT learns to stop; DPO masks it
        if add_generation_prompt:
            add(self.encode_header({"role": "assistant", "content": ""}), False, True)
        return DialogTokens(tokens, assistant_mask, format_mask)


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


def train_bpe(texts: Iterable[str], vocab_size: int, verbose: bool = False) -> dict[bytes, int]:
    """Learn mergeable ranks {token bytes: rank} from text, tiktoken style.

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
        if len(data) >= 2:  # a 1-byte chunk has no pair to merge
            words.append(list(data))
            freqs.append(freq)
    t_count = time.time() - t0

    # Token id == rank: ids 0..255 are the single bytes, merges take 256, 257, ...
    token_bytes: list[bytes] = [bytes([b]) for b in range(NUM_BYTE_TOKENS)]
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
    n_merges = n_ranks - NUM_BYTE_TOKENS
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
                    verbose: bool = False) -> Tokenizer:
    """train_bpe + save_bpe + load: the trained file, ready to use with n_words == vocab_size."""
    save_bpe(train_bpe(texts, vocab_size, verbose=verbose), out_path)
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
