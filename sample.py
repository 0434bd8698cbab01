"""
sample.py -- generation from any Llama 3 checkpoint: text, chat, batches (§6, §4.2.2).

Stage of the paper: inference (§6; Meta's defaults: temperature 0.6, top-p 0.9) and the sampler
rejection sampling needs (§4.2.2: K samples per prompt sharing one prefilled KV cache).

What is notable here
- `generate(model, tokenizer, prompt_tokens, ...)` is the library function later stages
  call (reward.py's rejection sampling, evaluation). Prompts of different lengths are
  LEFT-padded into one batch, with explicit RoPE positions and an explicit attention
  mask over the static KV cache, so every row gives exactly what it would give alone.
- A static KV cache (gpt-fast style) sized once per call: one prefill, then one token per step through
  a lean `decode_step` with fixed shapes that torch.compile captures (`--compile`; a CUDA graph on GPU).
- `num_samples=K` prefills the B prompts ONCE, then copies their cache rows K times (B -> B·K
  rows): §4.2.2's compute sharing (the paper shares the memory too, with PagedAttention).
- Sampling = temperature, top-k, top-p (Meta's `sample_top_p`), seeded (same seed -> same tokens); 0 = greedy.
- Decoding is bound by bytes and per-call costs, not FLOPs: every step reads every weight once.
  The CLI fuses the matrices for decoding and, with `--quantize int8`, stores them in 8 bits
  (§6.2's row-wise idea): quantize.py.
  Every run prints decoding tokens/s (and on GPU the bandwidth achieved);
  `python bench.py --only decode` measures it against transformers' generate.
- `torchrun --nproc_per_node=N sample.py ... [--pp P]` splits the layers into P pipeline
  stages (§6.1) and every matrix over the N/P ranks of a stage (tensor parallel without
  sequence parallel: a decoding token is never split; parallel.shard_for_inference).

Reads:  a checkpoint in any format checkpoint.load_model knows (this project's model.pt, a DCP
        checkpoint, Meta's consolidated.*.pth + params.json, a Hugging Face directory) and its
        tokenizer.model (or --tokenizer PATH).
Writes: stdout; with --prompts, OUT/completions.jsonl (--out, default out/sample).

How to run
    python sample.py --ckpt out/pretrain/final --prompt "def fibonacci(n):"
    python sample.py --ckpt out/sft/final --chat --system "You are terse."
    python sample.py --ckpt out/sft/final --prompt "Hi!" --chat-template   # a chat model, one turn
    python sample.py --ckpt out/pretrain/final --prompts prompts.txt --batch-size 8
    python sample.py --ckpt CKPT --prompt "..." --dtype bf16 --compile
    python sample.py --ckpt CKPT --prompt "..." --compile --quantize int8  # fewest bytes per step
    torchrun --nproc_per_node=2 sample.py --ckpt BIG --prompt "..." [--pp 2]  # tensor [pipeline] parallel

Read next: quantize.py (decoding-ready and int8 matrices), reward.py (rejection
sampling: generate(..., num_samples=K) + reward model), then bench.py.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from typing import Callable, Optional, Sequence

import torch

import checkpoint
import model as M
from common import UsageError, cli as _cli, parse_dtype, print0, read_jsonl, set_threads
from quantize import decode_bandwidth, fuse_for_decoding, quantize_int8

# Meta's reference defaults (llama3 example_text_completion.py / example_chat_completion.py).
DEFAULT_TEMPERATURE = 0.6
DEFAULT_TOP_P = 0.9
EMPTY_COMPLETION = "empty completion: the model ended at once; a chat model needs --chat-template"


# -----------------------------------------------------------------------------
# 1. Sampling: temperature, then top-k, then top-p (nucleus)


def sample_next(logits: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE,
                top_p: float = DEFAULT_TOP_P, top_k: Optional[int] = None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Pick the next token of every row. logits (N, vocab) -> token ids (N,).

    temperature 0 -> argmax (greedy). Otherwise logits / temperature; keep the top_k
    largest (renormalized, as Hugging Face does); then Meta's sample_top_p: sort the
    probabilities, keep the smallest prefix whose cumulative mass exceeds top_p (a
    token is dropped when the mass BEFORE it already exceeds p, so the first token is
    always kept), and draw from the kept ones.
    probs [0.5, 0.3, 0.15, 0.05], top_p 0.7 -> cumulative before each [0, .5, .8, .95]
    -> keep [0.5, 0.3] (0.5 < 0.7 so the second is still needed), draw from [5/8, 3/8].
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        logits, index = torch.topk(logits, top_k, dim=-1)  # (N, k), sorted descending
    elif top_p < 1.0:
        logits, index = torch.sort(logits, dim=-1, descending=True)  # (N, vocab)
    else:  # plain temperature sampling: no sort needed
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    probs = torch.softmax(logits, dim=-1)  # sorted descending, (N, k or vocab)
    if top_p < 1.0:
        mass_before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above
        probs = probs.masked_fill(mass_before > top_p, 0.0)
    choice = torch.multinomial(probs, 1, generator=generator)  # (N, 1); no need to renormalize
    return index.gather(-1, choice).squeeze(-1)


# -----------------------------------------------------------------------------
# 2. Batching prompts of different lengths: left padding, positions, masks
#
# Three prompts of lengths 2, 4, 3 padded on the left to P = 4 (· = pad):
#     slot:      0  1  2  3 | 4  5 ...   <- static KV cache slots, S in all
#     row 0:     ·  ·  a  b | x  x       positions 0 0 0 1 | 2 3 ...
#     row 1:     c  d  e  f | x  x       positions 0 1 2 3 | 4 5 ...
#     row 2:     ·  g  h  i | x  x       positions 0 0 1 2 | 3 4 ...
# All rows then decode in lockstep: step t writes slot P + t in every row. A token may
# attend to slots <= its own that are not padding. Padding tokens attend to themselves
# only: a query that sees nothing gives NaN (softmax of all -inf), and a NaN in a pad
# slot's values would leak into real tokens (0 weight x NaN = NaN).


def check_vocab(model: M.Transformer, tokenizer) -> None:
    """The tokenizer must produce exactly the ids the model was trained with."""
    if tokenizer is None:
        return
    n_words, vocab_size = int(tokenizer.n_words), int(model.args.vocab_size)
    if n_words != vocab_size:
        raise ValueError(f"tokenizer/model vocabulary mismatch: the tokenizer ({getattr(tokenizer, 'model_path', '?')}) "
                         f"has {n_words} tokens but the model's vocab_size is {vocab_size}. "
                         "Pass the tokenizer the model was trained with (--tokenizer PATH).")


def _check_prompts(prompt_tokens, vocab_size: int) -> list[list[int]]:
    if isinstance(prompt_tokens, torch.Tensor) or not isinstance(prompt_tokens, (list, tuple)):
        raise TypeError("prompt_tokens must be a list of token-id lists, e.g. [[128000, 9906]]")
    if not prompt_tokens:
        raise ValueError("prompt_tokens is empty: give at least one prompt")
    prompts = []
    for i, p in enumerate(prompt_tokens):
        if not isinstance(p, (list, tuple)) or (p and isinstance(p[0], (list, tuple))):
            raise TypeError(f"prompt {i} must be a list of ints, got {type(p).__name__}")
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty: the model needs at least one token (encode with bos=True)")
        prompts.append([int(t) for t in p])
        bad = [t for t in prompts[-1] if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"prompt {i} has token id {bad[0]} outside the vocabulary [0, {vocab_size})")
    return prompts


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """[[5, 6], [7, 8, 9]] -> tokens [[pad, 5, 6], [7, 8, 9]], pad lengths [1, 0]."""
    P = max(len(p) for p in prompts)
    tokens = torch.tensor([[pad_id] * (P - len(p)) + p for p in prompts], dtype=torch.long, device=device)
    pads = torch.tensor([P - len(p) for p in prompts], dtype=torch.long, device=device)
    return tokens, pads  # (B, P), (B,)


def prefill_mask(pads: torch.Tensor, P: int, S: int) -> torch.Tensor:
    """(B,) pad lengths -> (B, P, S) bool: query slot q sees key slot k iff k <= q and
    (k is not padding, or k == q). Slots >= P are not written yet (k > q hides them)."""
    q = torch.arange(P, device=pads.device)[:, None]  # (P, 1)
    k = torch.arange(S, device=pads.device)[None, :]  # (1, S)
    not_pad = k[None] >= pads[:, None, None]  # (B, 1, S)
    return (k <= q)[None] & (not_pad | (k == q)[None])  # (B, P, S)


# -----------------------------------------------------------------------------
# 3. The static KV cache: one prefill, then one token per step


def setup_caches(model: M.Transformer, batch_size: int, cache_len: int):
    """model.setup_caches, plus a fix for tensor parallelism: each rank then holds only
    n_kv_heads / tp key-value heads, so size the cache from the local wk width."""
    model.setup_caches(batch_size, cache_len)
    for attention in (layer.attention for layer in model.layers.values()):
        wk = attention.wk.weight if attention.wk is not None else None  # None: fused, never sharded
        if wk is not None and hasattr(wk, "to_local"):  # a DTensor: this rank's rows of wk
            cache, local_kv_heads = attention.cache, wk.to_local().shape[0] // attention.head_dim
            shape = (batch_size, local_kv_heads, cache_len, attention.head_dim)
            cache.k_cache = torch.zeros(shape, dtype=cache.k_cache.dtype, device=cache.k_cache.device)
            cache.v_cache = torch.zeros_like(cache.k_cache)


def expand_caches(model: M.Transformer, k: int):
    """Rows [a, b] -> [a, a, a, b, b, b] (k=3) in every layer's cache: the K samples of a
    prompt start from its prefilled keys and values, computed once (§4.2.2)."""
    for layer in model.layers.values():
        cache = layer.attention.cache
        cache.k_cache = cache.k_cache.repeat_interleave(k, dim=0)  # (B·K, n_kv, S, hd)
        cache.v_cache = cache.v_cache.repeat_interleave(k, dim=0)


def decode_step(model: M.Transformer, tokens: torch.Tensor, positions: torch.Tensor,
                mask: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
    """One new token per row through the cached model -> next-token logits (N, vocab).

    tokens (N, 1); positions (N, 1) RoPE positions; mask (N, 1, S) bool over the cache;
    slot (1,) the cache slot written. This is Transformer.forward without its argument
    checks (each costs a host sync): fixed shapes and no Python branches on data, so
    torch.compile captures it whole. tests/test_sample.py holds it to the full forward.
    """
    h = model.tok_embeddings(tokens)  # (N, 1, dim)
    freqs_cis = model.freqs_cis[positions]  # (N, 1, hd/2, 2)
    mask = mask[:, None]  # (N, 1, 1, S): broadcast over heads
    for layer in model.layers.values():
        h = layer(h, freqs_cis, mask, slot)
    return model.output(model.norm(h[:, -1])).float()  # (N, vocab)


_compiled_steps: dict = {}


def _step_fn(compile: bool, device_type: str = "cpu") -> Callable:
    if not compile:
        return decode_step
    if device_type not in _compiled_steps:
        # Shapes are static within a call (cache sized once), so one graph per (N, S).
        # On GPU, eager decoding is bound by kernel launches; "reduce-overhead" records
        # the step as a CUDA graph: one launch per token instead of ~10 per layer. Its
        # inputs (tokens, positions, mask, slot) are copied into the graph's buffers at
        # each replay; the caches are module buffers updated in place, as it expects.
        mode = "reduce-overhead" if device_type == "cuda" else None
        _compiled_steps[device_type] = torch.compile(decode_step, dynamic=False, fullgraph=True, mode=mode)
    return _compiled_steps[device_type]


# -----------------------------------------------------------------------------
# 4. generate(): the library function


@torch.inference_mode()
def generate(model: M.Transformer, tokenizer, prompt_tokens: Sequence[Sequence[int]],
             max_new_tokens: int = 256, temperature: float = DEFAULT_TEMPERATURE,
             top_p: float = DEFAULT_TOP_P, top_k: Optional[int] = None,
             stop_tokens: Optional[Sequence[int]] = None, seed: Optional[int] = None, *,
             num_samples: int = 1, include_stop: bool = False, compile: bool = False,
             on_token: Optional[Callable[[torch.Tensor], None]] = None,
             stats: Optional[dict] = None) -> list[list[int]]:
    """Continue every prompt; return the NEW tokens of each (never the prompt).

    prompt_tokens: list of B token-id lists (any lengths >= 1; include bos yourself).
    tokenizer:     a tokenizer.Tokenizer (its vocabulary is checked against the model's
                   and its stop_tokens are the default), or None (then stop_tokens
                   defaults to none).
    stop_tokens:   a row ends at the first of these; the returned list stops just
                   before it (Meta's convention), or includes it with include_stop=True
                   (then "ended with a stop token" is visible to the caller).
    max_new_tokens: at most this many new tokens, and never more than
                   model.args.max_seq_len - len(longest prompt) (a prompt that already
                   fills max_seq_len is an error).
    temperature 0 = greedy; else sampling with top_k (None = off) then top_p (1 = off).
    seed:          seeds a torch.Generator: the same seed, prompts and batch give the same
                   tokens (None = a random seed).
    num_samples K: K completions per prompt; the prompts are prefilled once and their
                   cache rows copied K times. Returns a flat list of B·K lists in
                   prompt-major order: result[i*K + j] is sample j of prompt i.
    on_token:      called with the (B·K,) tensor of sampled ids after every step
                   (streaming); stats: a dict filled with timings and token counts.
    """
    # ---- check the inputs
    check_vocab(model, tokenizer)
    args = model.args
    prompts = _check_prompts(prompt_tokens, args.vocab_size)
    for bad, what in ((not temperature >= 0, f"temperature must be >= 0, got {temperature}"),
                      (not 0.0 < top_p <= 1.0, f"top_p must be in (0, 1], got {top_p}"),
                      (top_k is not None and top_k < 1, f"top_k must be >= 1 (or None), got {top_k}"),
                      (num_samples < 1, f"num_samples must be >= 1, got {num_samples}"),
                      (max_new_tokens < 0, f"max_new_tokens must be >= 0, got {max_new_tokens}")):
        if bad:
            raise ValueError(what)
    longest = max(len(p) for p in prompts)
    if longest >= args.max_seq_len:
        raise ValueError(f"prompt of {longest} tokens leaves no room to generate: the model's "
                         f"max_seq_len is {args.max_seq_len} (shorten the prompt)")
    if stop_tokens is None:
        stop_tokens = sorted(tokenizer.stop_tokens) if tokenizer is not None else []
    B, K = len(prompts), num_samples
    N = B * K  # rows while decoding
    new_tokens = min(max_new_tokens, args.max_seq_len - longest)  # sequence <= max_seq_len
    if new_tokens == 0:
        return [[] for _ in range(N)]

    device = model.freqs_cis.device
    pad_id = tokenizer.pad_id if tokenizer is not None and hasattr(tokenizer, "pad_id") else 0
    generator = torch.Generator(device=device)  # seed None: a fresh random seed
    generator.manual_seed(seed) if seed is not None else generator.seed()
    stops = torch.tensor(sorted(set(int(t) for t in stop_tokens)), dtype=torch.long, device=device)

    # ---- the static cache: every prompt token and every new token but the last one
    # (which is sampled, never fed back) gets a slot. Sized once, for the B prompts.
    P = longest
    S = P + new_tokens - 1  # cache slots (new_tokens >= 1, so S >= P)
    tokens, pads = left_pad(prompts, pad_id, device)  # (B, P), (B,)
    positions = (torch.arange(P, device=device)[None] - pads[:, None]).clamp(min=0)  # (B, P)
    setup_caches(model, B, S)
    try:
        # ---- prefill: all prompt tokens of the B prompts at once (B rows, not B·K)
        t0 = time.perf_counter()
        hidden = model(tokens, positions=positions, attn_mask=prefill_mask(pads, P, S),
                       start_pos=0, return_hidden=True)  # (B, P, dim)
        logits = model.output(hidden[:, -1]).float()  # (B, vocab): only the last position
        if K > 1:
            expand_caches(model, K)  # (B, ...) -> (B·K, ...) rows, prompt-major
            logits = logits.repeat_interleave(K, dim=0)
            pads = pads.repeat_interleave(K, dim=0)
        out = torch.empty(N, new_tokens, dtype=torch.long, device=device)  # generated ids
        next_token = sample_next(logits, temperature, top_p, top_k, generator)  # (N,)
        out[:, 0] = next_token
        done = torch.isin(next_token, stops)  # (N,) row has produced a stop token
        if on_token is not None:
            on_token(next_token)
        _sync(device)
        t1 = time.perf_counter()

        # ---- decode: one token per row per step, every row in lockstep at slot P + i - 1.
        # The mask over the cache is kept incrementally: after prefill a row sees its own
        # prompt slots; each step adds the slot being written.
        key_slots = torch.arange(S, device=device)
        step_mask = ((key_slots[None] >= pads[:, None]) & (key_slots[None] < P))[:, None]  # (N, 1, S)
        position = (P - pads)[:, None].clone()  # (N, 1): RoPE position of the token fed
        slot = torch.tensor([P], device=device)  # (1,) cache slot written by this step
        step = _step_fn(compile, device.type)
        steps = 1
        for i in range(1, new_tokens):
            if bool(done.all()):  # the one host sync per step: every row has stopped
                break
            step_mask[:, 0, P + i - 1] = True
            logits = step(model, next_token[:, None], position, step_mask, slot)  # (N, vocab)
            next_token = sample_next(logits, temperature, top_p, top_k, generator)
            out[:, i] = next_token
            done |= torch.isin(next_token, stops)
            position += 1
            slot += 1
            steps += 1
            if on_token is not None:
                on_token(next_token)
        _sync(device)
        t2 = time.perf_counter()
    finally:
        model.clear_caches()

    # ---- cut every row at its first stop token
    stop_set, result = set(stops.tolist()), []
    for row in out[:, :steps].tolist():
        cut = next((j for j, t in enumerate(row) if t in stop_set), len(row))
        result.append(row[: cut + 1] if include_stop else row[:cut])
    if stats is not None:
        stats.update(rows=N, prompts=B, prefill_tokens=B * P, prefill_s=t1 - t0,
                     decode_steps=steps - 1, decode_s=t2 - t1, cache_len=S,
                     new_tokens=sum(len(r) for r in result))
    return result


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -----------------------------------------------------------------------------
# 5. Loading a checkpoint and its tokenizer


def load_for_inference(ckpt: str, tokenizer_path: Optional[str] = None, device=None, dtype=None):
    """Any checkpoint format -> (model in eval mode, tokenizer). The tokenizer is
    --tokenizer if given, else the one next to the checkpoint (checkpoint.find_tokenizer)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:  # bf16 on GPUs that have it; fp32 on CPU (exact; --dtype bf16 is faster)
        dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    model, _ = checkpoint.load_model(ckpt, device=device, dtype=dtype)
    model.eval()
    tokenizer_path = tokenizer_path or checkpoint.find_tokenizer(ckpt)
    if tokenizer_path is None:
        raise UsageError(f"{ckpt}: no tokenizer.model next to the checkpoint; pass --tokenizer PATH")
    # Same vocabulary size is not the same tokenizer: ids would decode to other strings.
    checkpoint.check_tokenizer(ckpt, tokenizer_path)
    from tokenizer import Tokenizer  # tiktoken-based, Meta's semantics
    tokenizer = Tokenizer(tokenizer_path)
    check_vocab(model, tokenizer)
    return model, tokenizer


# -----------------------------------------------------------------------------
# 6. Streaming text and chat


class TextStream:
    """Prints the text of tokens as they arrive. Decoding token by token would split
    multi-byte characters, so it decodes everything generated so far and prints the
    new part, holding back a trailing U+FFFD (half a UTF-8 character) until complete."""

    def __init__(self, tokenizer, out=None, stop_tokens=()):
        self.tokenizer, self.out, self.stops = tokenizer, out or sys.stdout, set(stop_tokens)
        self.ids: list[int] = []
        self.printed, self.stopped = 0, False  # characters already printed; a stop token seen

    def __call__(self, next_token: torch.Tensor):  # the on_token hook of generate (1 row)
        token = int(next_token[0])
        if self.stopped or token in self.stops:
            self.stopped = True
            return
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        stable = len(text.rstrip("\ufffd"))
        if stable > self.printed:
            self.out.write(text[self.printed:stable])
            self.out.flush()
            self.printed = stable

    def finish(self) -> str:
        text = self.tokenizer.decode(self.ids)
        self.out.write(text[self.printed:] + "\n")
        self.out.flush()
        return text


CHAT_HELP = ("commands: /help this list, /reset forget the dialog, /system TEXT new system prompt "
             "(resets), /quit or Ctrl-D leave; Ctrl-C stops a reply")


def chat(model: M.Transformer, tokenizer, *, system: Optional[str] = None, max_new_tokens: int = 512,
         temperature: float = DEFAULT_TEMPERATURE, top_p: float = DEFAULT_TOP_P, top_k: Optional[int] = None,
         seed: Optional[int] = None, compile: bool = False, input_fn: Callable[[str], str] = input,
         out=None, tools: bool = False) -> list[dict]:
    """Interactive chat in Llama 3's format (tokenizer.ChatFormat): each turn streams the
    reply to the whole dialog until a stop token (<|eot_id|> ends a turn); commands: CHAT_HELP.
    tools=True turns the code interpreter on (§4.3.5): tools.run_dialogs runs each call and
    sends its ipython result back. input_fn/out let tests drive it. Returns the dialog."""
    from tokenizer import ChatFormat, system_prompt
    from tools import run_dialogs
    out, formatter = out or sys.stdout, ChatFormat(tokenizer)
    system = "\n\n".join(filter(None, [system_prompt(["code_interpreter"]) if tools else "", system]))
    start = [{"role": "system", "content": system}] if system else []
    dialog = list(start)
    out.write(CHAT_HELP + "\n")
    while True:
        try:
            line = input_fn("user> ")
        except (EOFError, KeyboardInterrupt):  # Ctrl-D or Ctrl-C at the prompt: leave
            out.write("\n")
            break
        command = line.strip()
        if command in ("/exit", "/quit"):
            break
        if command == "/help" or not command:  # /help is answered here, never sent to the model
            out.write(CHAT_HELP + "\n" if command else "")
            continue
        if command == "/reset" or command.startswith("/system"):
            if command.startswith("/system"):  # a new system prompt (none if empty)
                start = [{"role": "system", "content": text} for text in [command[len("/system"):].strip()] if text]
            dialog = list(start)
            out.write(f"(dialog reset{'' if command == '/reset' else '; new system prompt'})\n")
            continue
        dialog.append({"role": "user", "content": line})
        prompt = formatter.encode_dialog_prompt(dialog)
        # Too long for the context: forget the oldest exchanges (the system prompt stays).
        while len(prompt) >= model.args.max_seq_len and len(dialog) > len(start) + 1:
            del dialog[len(start): len(start) + 2]
            prompt = formatter.encode_dialog_prompt(dialog)
        if len(prompt) >= model.args.max_seq_len:
            out.write(f"(message too long: {len(prompt)} tokens, max_seq_len {model.args.max_seq_len})\n")
            dialog.pop()
            continue
        def reply(prompts):  # stream one reply, its stop token kept (tools.run_dialogs parses it)
            out.write("assistant> ")
            stream = TextStream(tokenizer, out, tokenizer.stop_tokens)
            try:
                return generate(model, tokenizer, prompts, max_new_tokens, temperature, top_p, top_k, seed=seed,
                                compile=compile, on_token=stream, include_stop=True)
            except KeyboardInterrupt:  # Ctrl-C during a reply: keep what was said, back to the prompt
                out.write(" (stopped)")
                return [stream.ids]
            finally:
                stream.finish()
        run_dialogs(reply, formatter, [dialog], tools=tools,
                    on_message=lambda _, message: out.write(f"ipython> {message['content']}\n"))
    return dialog


# -----------------------------------------------------------------------------
# 7. Command line


def _read_prompts(path: str) -> list[str]:
    """A .jsonl file: rows {"prompt": "..."}; any other file: one prompt per line, with
    "\\n" for a newline inside a prompt. Blank lines are skipped; a bad row is a
    UsageError naming path:line."""
    if not path.endswith(".jsonl"):
        with open(path, encoding="utf-8", errors="replace") as f:
            prompts = [line.rstrip("\n").replace("\\n", "\n") for line in f if line.strip()]
    else:
        prompts = []
        for line_no, row, error in read_jsonl(path):
            prompt = row.get("prompt") if isinstance(row, dict) else None
            if error is None and not isinstance(prompt, str):
                error = f'expected {{"prompt": "..."}}: "prompt" must be a string, got {type(prompt).__name__}'
            if error:
                raise UsageError(f"{path}:{line_no}: {error}")
            prompts.append(prompt)
    if not prompts:
        raise UsageError(f"{path}: no prompts")
    return prompts


def _report_speed(model, stats: dict):
    """One line: tokens, prefill time, decoding tokens/s and ms/step (GB/s on a GPU)."""
    if not stats.get("decode_steps"):
        return
    steps, seconds = stats["decode_steps"], stats["decode_s"]
    line = (f"[{stats['new_tokens']} new tokens, prefill {stats['prefill_tokens']} tokens in "
            f"{stats['prefill_s']:.2f}s, decoding {stats['rows'] * steps / seconds:.1f} tokens/s "
            f"({1000 * seconds / steps:.1f} ms/step, batch {stats['rows']})")
    if model.freqs_cis.device.type == "cuda":
        line += f", {decode_bandwidth(model, stats):.0f} GB/s"
    print0(line + "]")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Generate text or chat with a Llama 3 checkpoint.")
    p.add_argument("--ckpt", required=True, help="model.pt / project, Meta, Hugging Face or DCP checkpoint dir")
    p.add_argument("--tokenizer", default=None, help="tokenizer.model (default: the one next to --ckpt)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--prompt", default=None, help="text to continue")
    mode.add_argument("--prompts", default=None, help="file: one prompt per line, or .jsonl rows {\"prompt\": ...}")
    mode.add_argument("--chat", action="store_true", help="interactive chat in Llama 3's chat format")
    p.add_argument("--system", default=None, help="system prompt for --chat / --chat-template")
    p.add_argument("--tools", action="store_true", help="--chat with the code interpreter on (tools.py, §4.3.5)")
    p.add_argument("--chat-template", action="store_true", help="wrap each --prompt/--prompts text in "
                   "Llama 3's chat format (user turn + assistant header); needed for SFT/DPO models")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=DEFAULT_TOP_P)
    p.add_argument("--top-k", type=int, default=0, help="0 = no top-k")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=1, help="completions per prompt (shared prefill)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per batch with --prompts")
    p.add_argument("--out", default="out/sample", help="folder where --prompts writes completions.jsonl")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    p.add_argument("--pp", type=int, default=1, help="under torchrun: pipeline stages (§6.1); TP inside each")
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"], help="default: bf16 on GPU")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all cores)")
    p.add_argument("--compile", action="store_true", help="torch.compile the decoding step")
    p.add_argument("--quantize", default=None, choices=["int8", "int8-ffn"], help="int8 weight-only matrices, "
                   "bf16 activations (§6.2); int8-ffn: §6.2's choice, FFN of all but the first and last layers")
    return p.parse_args(argv)


def _check_flags(cli) -> None:
    """UsageError for flag values that would otherwise fail deep inside generate()."""
    for flag, value, low in (("--max-new-tokens", cli.max_new_tokens, 1), ("--top-k", cli.top_k, 0), ("--pp", cli.pp, 1),
                             ("--num-samples", cli.num_samples, 1), ("--batch-size", cli.batch_size, 1)):
        if value < low:
            raise UsageError(f"{flag} must be >= {low}, got {value}")
    if not cli.temperature >= 0 or cli.temperature == float("inf"):  # NaN fails every comparison
        raise UsageError(f"--temperature must be a finite number >= 0 (0 = greedy), got {cli.temperature}")
    if not 0 < cli.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], got {cli.top_p}")


@_cli
def main(argv=None) -> int:
    cli = parse_args(argv)
    _check_flags(cli)
    set_threads(cli.threads, cli.device or "cpu")
    dtype = parse_dtype(cli.dtype) if cli.dtype else None
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed and dtype is None and torch.cuda.is_available():
        dtype = torch.bfloat16  # load on CPU (then shard): pick the GPU's dtype up front
    try:
        model, tokenizer = load_for_inference(cli.ckpt, cli.tokenizer, "cpu" if distributed else cli.device, dtype)
    except (ValueError, FileNotFoundError, KeyError) as e:  # UsageError included
        raise UsageError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    if cli.quantize and distributed:
        raise UsageError("--quantize works on one process (not with tensor parallel)")
    is_main = True
    if distributed or cli.pp > 1:
        from parallel import input_from_rank0, shard_for_inference  # only imported here
        try:  # --pp without torchrun or not dividing the ranks, heads not divisible by TP, ...
            model, dist = shard_for_inference(model, pp=cli.pp)
        except ValueError as e:
            raise UsageError(str(e)) from None
        cli.seed = 0 if cli.seed is None else cli.seed  # every rank must draw the same tokens
        is_main = dist.is_main
    else:
        fuse_for_decoding(model)  # fewer, faster matmuls per step (quantize.py)
        if cli.quantize:
            quantize_int8(model, ffn_only=cli.quantize == "int8-ffn")

    def encode(text: str) -> list[int]:
        if not cli.chat_template:
            return tokenizer.encode(text, bos=True)  # bos alone continues "from nothing"
        from tokenizer import ChatFormat  # §4.1.1 chat format; generation stops at <|eot_id|>
        system = [{"role": "system", "content": cli.system}] if cli.system else []
        return ChatFormat(tokenizer).encode_dialog_prompt(system + [{"role": "user", "content": text}])

    def note_empty(ids):  # a chat model prompted with plain text ends its turn at once
        if not ids and is_main:
            print(EMPTY_COMPLETION, file=sys.stderr)
    top_k = cli.top_k or None
    kw = dict(temperature=cli.temperature, top_p=cli.top_p, top_k=top_k, compile=cli.compile)
    a = model.args
    print0(f"model: {M.count_params(a):,} parameters (dim {a.dim}, {a.n_layers} layers), "
           f"vocab {a.vocab_size}, max_seq_len {a.max_seq_len}, {next(model.parameters()).dtype}, "
           f"{model.freqs_cis.device}; tokenizer {tokenizer.model_path}")
    try:
        if cli.chat:
            chat(model, tokenizer, system=cli.system, max_new_tokens=cli.max_new_tokens, seed=cli.seed, tools=cli.tools,
                 input_fn=input_from_rank0 if distributed else input,
                 out=sys.stdout if is_main else io.StringIO(), **kw)
        elif cli.prompts:
            texts = _read_prompts(cli.prompts)
            path = os.path.join(cli.out, "completions.jsonl")
            if is_main:
                os.makedirs(cli.out, exist_ok=True)
            with open(path if is_main else os.devnull, "w", encoding="utf-8") as f:
                for start in range(0, len(texts), cli.batch_size):
                    batch = texts[start: start + cli.batch_size]
                    stats: dict = {}
                    outs = generate(model, tokenizer, [encode(t) for t in batch],
                                    cli.max_new_tokens, seed=cli.seed, num_samples=cli.num_samples,
                                    stats=stats, **kw)
                    for i, ids in enumerate(outs):
                        prompt = batch[i // cli.num_samples]
                        completion = tokenizer.decode(ids)
                        note_empty(ids)
                        f.write(json.dumps({"prompt": prompt, "sample": i % cli.num_samples,
                                            "completion": completion}) + "\n")
                        print0(f"--- {prompt!r}\n{prompt}{completion}")
                    _report_speed(model, stats)
            print0(f"wrote {path}")
        else:
            text = cli.prompt if cli.prompt is not None else ""
            prompt = encode(text)
            for sample in range(cli.num_samples):
                print0(text, end="")
                stream = TextStream(tokenizer, sys.stdout if is_main else io.StringIO(), tokenizer.stop_tokens)
                stats = {}
                seed = None if cli.seed is None else cli.seed + sample
                ids = generate(model, tokenizer, [prompt], cli.max_new_tokens, seed=seed, on_token=stream,
                               stats=stats, **kw)[0]
                stream.finish()
                note_empty(ids)
                _report_speed(model, stats)
    except (ValueError, FileNotFoundError) as e:  # e.g. a prompt longer than max_seq_len
        raise UsageError(str(e)) from None
    finally:
        if distributed:  # leave together: a rank that exits while another still talks
            # to it (gloo's threads alive) aborts with "terminate called without an active exception"
            from parallel import barrier, teardown_distributed
            barrier()
            teardown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
