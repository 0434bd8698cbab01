"""
bench.py -- one table of speed and memory, each row measured side by side with its
reference in the same run.

Stage: none of the paper's; this is how the project keeps its speed claims honest
(numbers, not feelings). Every row runs our implementation and a well-known reference
on the same input, in fresh child processes one after the other, so that each side's
peak memory (the child's max RSS, or CUDA's max allocated) is its own. Each value is the
median of --repeats runs after a warm-up run that is not counted, shown with the
(min-max) of the runs. A row is flagged "!" (reasons printed below the table) when a
value is impossible (MFU > 100%), a ratio is far outside what the same work can give,
or the runs disagree by more than 1.5x; the 1-minute load average at the start and end
says whether the machine was busy. `+compile` rows are measured only with --compile.

Rows (CPU):
  tokenizer training   tokenizer.train_bpe vs Hugging Face `tokenizers` (same corpus, vocab)
  tokenizer encoding   tiktoken on our trained file vs `tokenizers` on theirs
  MinHash signatures   dedup.minhash_signatures (numpy) vs `datasketch` (test extra), 1 core
  data pipeline        data.build on the built-in corpus, MB/s (no reference exists)
  training step        model.Transformer vs transformers' LlamaForCausalLM, same config,
                       dtype, batch: tokens/s and MFU, fp32 and bf16 autocast
  decoding             sample.generate vs transformers' generate, batch 1 and 8, fp32,
                       bf16 and int8 (quantize.py); benchmark_decoding / compare_with_hf
With --device cuda (and a GPU): training MFU of llama3.2-1b in bf16 (FSDP wrapping,
optional compile), decoding tokens/s with memory bandwidth, and document masking at
8K tokens: FlexAttention's block mask vs SDPA's dense mask (agreement, then speed).

A reference that is not installed is reported as "missing", never silently skipped.

Reads: the built-in corpus (data.py, tokenizer.py), nothing else.
Writes: out/bench/bench.json and prints the table.
Run:    python bench.py                 # all CPU rows (~5-8 minutes on 2 cores)
        python bench.py --only train decode --repeats 5
        python bench.py --device cuda   # the GPU rows
Next:   README.md records the CPU table measured on the project's 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
import traceback

from common import atomic_write_text

# -----------------------------------------------------------------------------
# Running one measurement in a fresh process (its own peak memory)


def _child(fn_name, kwargs, queue):
    try:
        import torch
        torch.set_num_threads(kwargs.pop("threads", os.cpu_count() or 1))
        result = globals()[fn_name](**kwargs)
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        result.setdefault("peak_mem_mb", round(rss_mb, 1))
        queue.put(result)
    except ImportError as e:
        queue.put({"missing": str(e)})
    except Exception as e:  # reported in the table, the other rows still run
        queue.put({"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=3)})


def run_isolated(fn_name: str, **kwargs) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn_name, kwargs, queue))
    proc.start()
    try:
        result = queue.get(timeout=kwargs.get("timeout", 900))
    except Exception:
        result = {"error": "timed out or crashed"}
    proc.join(10)
    if proc.is_alive():
        proc.kill()
    return result


def _timings(fn, repeats: int, warmup: bool = True) -> list[float]:
    """Seconds of each of `repeats` calls of fn, after one uncounted warm-up call."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _rate(work: float, times: list[float]) -> tuple[float, list[float]]:
    """work / seconds: the median over the runs and its [min, max] (the spread)."""
    return work / statistics.median(times), [work / max(times), work / min(times)]


# -----------------------------------------------------------------------------
# Tokenizer: training and encoding


def _corpus(mb: float):
    from tokenizer import builtin_texts
    return builtin_texts(int(mb * 1_000_000))


def tok_ours(mb: float, vocab_size: int, repeats: int) -> dict:
    from tokenizer import NUM_SPECIAL_TOKENS, Tokenizer, save_bpe, train_bpe
    texts = _corpus(mb)
    chars = sum(len(t) for t in texts)
    # training is deterministic and takes seconds: time it `repeats` times, no warm-up
    times, ranks = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        ranks = train_bpe(texts, vocab_size)
        times.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "tok.model")
        save_bpe(ranks, path)
        tok = Tokenizer(path)
        encode_mb_s, encode_range = _rate(chars / 1e6, _timings(lambda: [tok.encode(t) for t in texts], repeats))
        n_tokens = sum(len(tok.encode(t)) for t in texts)
    return {"train_s": statistics.median(times), "encode_mb_s": encode_mb_s,
            "range": {"train_s": [min(times), max(times)], "encode_mb_s": encode_range},
            "chars_per_token": chars / n_tokens, "vocab": len(ranks) + NUM_SPECIAL_TOKENS}


def tok_hf(mb: float, vocab_size: int, repeats: int) -> dict:
    from tokenizers import Regex, Tokenizer as HFTokenizer, models, pre_tokenizers, trainers
    from tokenizer import NUM_SPECIAL_TOKENS, PAT_STR
    texts = _corpus(mb)
    chars = sum(len(t) for t in texts)

    def train():
        tok = HFTokenizer(models.BPE())
        # the same job: Meta's pre-tokenization regex, byte-level alphabet, same vocab
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PAT_STR), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        trainer = trainers.BpeTrainer(vocab_size=vocab_size - NUM_SPECIAL_TOKENS, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(texts, trainer=trainer)
        return tok

    times, tok = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        tok = train()
        times.append(time.perf_counter() - t0)
    encode_mb_s, encode_range = _rate(chars / 1e6, _timings(lambda: tok.encode_batch(texts), repeats))
    n_tokens = sum(len(e.ids) for e in tok.encode_batch(texts))
    return {"train_s": statistics.median(times), "encode_mb_s": encode_mb_s,
            "range": {"train_s": [min(times), max(times)], "encode_mb_s": encode_range},
            "chars_per_token": chars / n_tokens, "vocab": tok.get_vocab_size() + NUM_SPECIAL_TOKENS}


# -----------------------------------------------------------------------------
# Data: MinHash and the whole pipeline


def _minhash_docs(n_docs: int):
    import corpus
    return corpus.synthetic_documents(n_docs, doc_bytes=4096, seed=0)


def minhash_ours(n_docs: int, repeats: int) -> dict:
    import dedup
    docs = _minhash_docs(n_docs)
    docs_per_s, spread = _rate(n_docs, _timings(lambda: dedup.minhash_signatures(docs), repeats))
    return {"docs_per_s": docs_per_s, "range": {"docs_per_s": spread}, "num_perm": dedup.BANDS * dedup.ROWS}


def minhash_datasketch(n_docs: int, repeats: int) -> dict:
    import dedup
    from datasketch import MinHash  # the usual Python reference; not a dependency
    docs = _minhash_docs(n_docs)
    num_perm = dedup.BANDS * dedup.ROWS

    def run():
        for d in docs:
            words = d.split()
            m = MinHash(num_perm=num_perm)
            m.update_batch([" ".join(words[i:i + dedup.NGRAM]).encode() for i in range(len(words) - dedup.NGRAM + 1)])
    docs_per_s, spread = _rate(n_docs, _timings(run, repeats))
    return {"docs_per_s": docs_per_s, "range": {"docs_per_s": spread}, "num_perm": num_perm}


def pipeline_ours() -> dict:
    import data
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        data.build(d)
        seconds = time.perf_counter() - t0
        with open(os.path.join(d, "report.json")) as f:
            report = json.load(f)
    chars = report["stages"][0]["chars_in"] if isinstance(report.get("stages"), list) else None
    return {"seconds": seconds, "mb_s": (chars / 1e6 / seconds) if chars else None, "input_mb": (chars or 0) / 1e6}


# -----------------------------------------------------------------------------
# Training step: ours vs transformers' LlamaForCausalLM


def _train_setup(model_name: str, batch: int, seq_len: int, device: str):
    import torch
    import model as M
    args = M.ModelArgs.from_name(model_name, max_seq_len=max(seq_len, 256))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, args.vocab_size, (batch, seq_len + 1), generator=g).to(device)
    return args, tokens


def _peak_flops(dtype, device: str) -> tuple[float, str]:
    import common
    return common.peak_flops(device, dtype)


def measure_peak(dtype: str, device: str = "cpu") -> dict:
    import torch
    peak, note = _peak_flops(torch.bfloat16 if dtype == "bf16" else torch.float32, device)
    return {"peak_flops": peak, "note": note}


def train_step(impl: str, model_name: str, batch: int, seq_len: int, dtype: str, steps: int,
               peak: float, device: str = "cpu", compile: bool = False) -> dict:
    import torch
    import torch.nn.functional as F
    import model as M
    args, tokens = _train_setup(model_name, batch, seq_len, device)
    torch.manual_seed(0)
    if impl == "ours":
        net = M.Transformer(args).to(device)
        if compile:
            for block in net.layers.values():
                block.compile()

        def loss_fn():
            logits = net(tokens[:, :-1])
            return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
    else:
        import transformers
        net = hf_model_from(M.Transformer(args)).to(device).train()

        def loss_fn():
            # labels are shifted inside; same tokens, same cross-entropy
            return net(input_ids=tokens[:, :-1], labels=tokens[:, :-1]).loss
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=(device == "cuda") or None)
    amp_dtype = torch.bfloat16 if dtype == "bf16" else None

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp_dtype is not None):
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):  # warm-up (and compilation)
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    tokens_per_s, spread = _rate(batch * seq_len, times)
    # MFU = achieved model FLOP/s (PaLM's 6N + attention, model.flops_per_token) over
    # the peak, which the parent measured once so that both sides share it.
    flops = M.flops_per_token(args, seq_len) / peak
    out = {"tokens_per_s": tokens_per_s, "mfu": tokens_per_s * flops,
           "range": {"tokens_per_s": spread, "mfu": [spread[0] * flops, spread[1] * flops]}}
    if device == "cuda":
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


# -----------------------------------------------------------------------------
# Decoding: ours vs transformers' generate


def _random_prompts(vocab_size: int, batch_size: int, prompt_len: int, seed: int = 0) -> list[list[int]]:
    import torch
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch_size, prompt_len), generator=g).tolist()


def _sync(device):
    import torch
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _median_run(runs: list[dict], key: str = "tokens_per_s") -> dict:
    """The run with the median `key` (robust to a busy machine), with the spread of all
    runs attached: range = {key: [min, max]}, n_runs."""
    median = dict(sorted(runs, key=lambda r: r[key])[len(runs) // 2])
    spread = {k: [min(r[k] for r in runs), max(r[k] for r in runs)] for k in (key,)}
    for r in runs:  # a run that was itself a median of several keeps its wider range
        for k, (lo, hi) in r.get("range", {}).items():
            if k in spread:
                spread[k] = [min(spread[k][0], lo), max(spread[k][1], hi)]
    median.update(range=spread, n_runs=sum(r.get("n_runs", 1) for r in runs))
    return median


def benchmark_decoding(model, tokenizer_or_vocab, batch_size: int = 1, new_tokens: int = 128,
                       prompt_len: int = 16, *, repeats: int = 3, compile: bool = False,
                       warmup: bool = True) -> dict:
    """Greedy decoding speed of sample.generate on random prompts, with no stop tokens
    so every row makes exactly new_tokens tokens. tokenizer_or_vocab: a Tokenizer or the
    vocabulary size. Returns the median of `repeats` runs (after one warm-up run):
      tokens_per_s       decoded tokens/s summed over the batch, decoding steps only
      e2e_tokens_per_s   batch_size x new_tokens / (prefill + decoding) wall time
      ms_per_step, bandwidth_gb_s (weights + KV cache read per step), the settings,
      and range = {"tokens_per_s": [min, max]} over the runs."""
    import torch
    from quantize import Int8Linear, decode_bandwidth
    from sample import generate
    vocab = tokenizer_or_vocab if isinstance(tokenizer_or_vocab, int) else tokenizer_or_vocab.n_words
    tokenizer = None if isinstance(tokenizer_or_vocab, int) else tokenizer_or_vocab
    prompts = _random_prompts(vocab, batch_size, prompt_len)
    kw = dict(max_new_tokens=new_tokens, temperature=0.0, stop_tokens=[], compile=compile)
    quantized = any(isinstance(m, Int8Linear) for m in model.modules())
    if warmup:
        generate(model, tokenizer, prompts, **kw)  # warm-up (and compilation with compile=True)
    runs = []
    for _ in range(repeats):
        stats: dict = {}
        generate(model, tokenizer, prompts, stats=stats, **kw)
        steps = stats["decode_steps"]
        runs.append(dict(
            impl="ours" + ("+int8" if quantized else "") + ("+compile" if compile else ""),
            batch_size=batch_size, new_tokens=new_tokens,
            prompt_len=prompt_len, device=str(model.tok_embeddings.weight.device),
            dtype=str(model.tok_embeddings.weight.dtype).removeprefix("torch."),
            tokens_per_s=batch_size * steps / stats["decode_s"],
            e2e_tokens_per_s=batch_size * new_tokens / (stats["prefill_s"] + stats["decode_s"]),
            ms_per_step=1000 * stats["decode_s"] / steps, bandwidth_gb_s=decode_bandwidth(model, stats),
            threads=torch.get_num_threads()))
    return _median_run(runs)


def hf_model_from(model):
    """A transformers LlamaForCausalLM holding exactly our weights (checkpoint.to_hf_*)."""
    import transformers  # optional dependency, only for comparisons
    import checkpoint

    cfg = {k: v for k, v in checkpoint.to_hf_config(model.args).items() if k not in ("architectures", "model_type")}
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).eval()
    sd = checkpoint.to_hf_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()}, model.args)
    hf.load_state_dict(sd, strict=False)  # the rotary buffer is not in our state dict
    return hf.to(device=model.tok_embeddings.weight.device, dtype=model.tok_embeddings.weight.dtype)


def hf_generate(hf, prompts: list[list[int]], new_tokens: int, pad_id: int = 0) -> list[list[int]]:
    """transformers' greedy generate (do_sample=False, use_cache=True) on left-padded
    prompts, never stopping early; returns the new tokens of each row."""
    import torch
    device = next(hf.parameters()).device
    P = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (P - len(p)) + p for p in prompts], device=device)
    attention = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts], device=device)
    with torch.inference_mode():
        out = hf.generate(input_ids=ids, attention_mask=attention, do_sample=False, use_cache=True,
                          max_new_tokens=new_tokens, min_new_tokens=new_tokens, eos_token_id=None,
                          pad_token_id=pad_id, temperature=None, top_p=None, top_k=None)
    return out[:, P:].tolist()


def benchmark_hf_decoding(model, batch_size: int = 1, new_tokens: int = 128, prompt_len: int = 16, *,
                          repeats: int = 3, warmup: bool = True, hf=None) -> dict:
    """The same measurement for transformers' generate on the same weights. Its
    decoding time = generate(new_tokens) - generate(1 token) (prefill + first sample)."""
    import torch
    hf = hf if hf is not None else hf_model_from(model)
    prompts = _random_prompts(model.args.vocab_size, batch_size, prompt_len)
    device = next(hf.parameters()).device
    if warmup:
        hf_generate(hf, prompts, new_tokens)

    def timed(n):
        t0 = time.perf_counter()
        hf_generate(hf, prompts, n)
        _sync(device)
        return time.perf_counter() - t0

    runs = []
    for _ in range(repeats):
        total_s, first_s = timed(new_tokens), timed(1)
        decode_s = max(total_s - first_s, 1e-9)
        runs.append(dict(impl="transformers", batch_size=batch_size, new_tokens=new_tokens,
                         prompt_len=prompt_len, device=str(device), dtype=str(next(hf.parameters()).dtype),
                         tokens_per_s=batch_size * (new_tokens - 1) / decode_s,
                         e2e_tokens_per_s=batch_size * new_tokens / total_s,
                         ms_per_step=1000 * decode_s / (new_tokens - 1), threads=torch.get_num_threads()))
    return _median_run(runs)


def compare_with_hf(model, batch_sizes=(1, 8), new_tokens: int = 128, prompt_len: int = 16,
                    repeats: int = 5, compile: bool = False, reference=None) -> list[dict]:
    """Side by side in one process: ours vs transformers at each batch size. Runs are
    interleaved (ours, theirs, ours, theirs, ...) so that a change of machine load
    hits both alike; each side reports its median run and range. reference: the model
    whose weights transformers gets (default: `model`; pass the unquantized model when
    `model` went through quantize.quantize_int8)."""
    hf = hf_model_from(reference if reference is not None else model)
    rows = []
    for bs in batch_sizes:
        ours_runs, hf_runs = [], []
        for i in range(repeats):
            ours_runs.append(benchmark_decoding(model, model.args.vocab_size, bs, new_tokens, prompt_len,
                                                repeats=1, compile=compile, warmup=(i == 0)))
            hf_runs.append(benchmark_hf_decoding(model, bs, new_tokens, prompt_len, repeats=1,
                                                 warmup=(i == 0), hf=hf))
        ours, theirs = _median_run(ours_runs), _median_run(hf_runs)
        rows.append(dict(batch_size=bs, ours=ours, transformers=theirs,
                         speedup=ours["tokens_per_s"] / theirs["tokens_per_s"],
                         e2e_speedup=ours["e2e_tokens_per_s"] / theirs["e2e_tokens_per_s"]))
    return rows


def decode(impl: str, model_name: str, batch: int, new_tokens: int, repeats: int,
           device: str = "cpu", dtype: str = "fp32", compile: bool = False) -> dict:
    """dtype: fp32, bf16, or int8 (ours only: quantize.quantize_int8, bf16 activations)."""
    import torch
    import model as M
    import quantize
    args = M.ModelArgs.from_name(model_name)
    torch.manual_seed(0)
    net = M.Transformer(args).to(device=device, dtype=torch.float32 if dtype == "fp32" else torch.bfloat16).eval()
    if impl == "ours":
        quantize.fuse_for_decoding(net)  # sample.py's CLI does the same (transformers gets net unfused)
        if dtype == "int8":
            quantize.quantize_int8(net)
        r = benchmark_decoding(net, args.vocab_size, batch, new_tokens, repeats=repeats, compile=compile)
    else:
        r = benchmark_hf_decoding(net, batch, new_tokens, repeats=repeats)
    if device == "cuda":
        r["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return r


# -----------------------------------------------------------------------------
# Document masking (§3.2): FlexAttention's block mask vs SDPA with a dense mask


def _packed_doc_ids(seq_len: int, n_docs: int, device):
    """(1, seq_len) document ids of n_docs documents of random lengths (seeded)."""
    import random
    import torch
    cuts = sorted(random.Random(0).sample(range(1, seq_len), n_docs - 1))
    doc_ids = torch.zeros(1, seq_len, dtype=torch.long)
    for i, c in enumerate(cuts):
        doc_ids[0, c:] = i + 1
    return doc_ids.to(device)


def doc_masking(impl: str, model_name: str, seq_len: int, n_docs: int, repeats: int, device: str = "cuda") -> dict:
    """Forward + backward tokens/s of one packed row of n_docs documents, bf16 weights,
    with impl = "flex" (block mask, compiled on GPU) or "sdpa" (dense (T, T) bool mask)."""
    import torch
    import model as M
    args = M.ModelArgs.from_name(model_name)
    args.max_seq_len = max(args.max_seq_len, seq_len)
    torch.manual_seed(0)
    net = M.Transformer(args).to(device=device, dtype=torch.bfloat16)
    net.set_attention(impl)
    tokens = torch.randint(0, args.vocab_size, (1, seq_len), device=device)
    doc_ids = _packed_doc_ids(seq_len, n_docs, device)

    def step():
        net.zero_grad(set_to_none=True)
        net(tokens, doc_ids=doc_ids).logsumexp(-1).mean().backward()
        if device == "cuda":
            torch.cuda.synchronize()

    times = _timings(step, repeats)
    tokens_per_s, spread = _rate(seq_len, times)
    out = {"tokens_per_s": tokens_per_s, "ms_per_step": 1000 * statistics.median(times),
           "range": {"tokens_per_s": spread}}
    if device == "cuda":
        out["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def doc_masking_parity(model_name: str, seq_len: int, n_docs: int, n_layers: int = 2, device: str = "cuda") -> dict:
    """The two paths on the same weights and packed row, fp32, a model cut to n_layers:
    max |difference| of the logits and of every gradient, relative to their scale."""
    import torch
    import model as M
    args = M.ModelArgs.from_name(model_name)
    args.max_seq_len, args.n_layers = max(args.max_seq_len, seq_len), n_layers
    torch.manual_seed(0)
    net = M.Transformer(args).to(device)
    tokens = torch.randint(0, args.vocab_size, (1, seq_len), device=device)
    doc_ids = _packed_doc_ids(seq_len, n_docs, device)
    results = {}
    for impl in ("sdpa", "flex"):
        net.set_attention(impl)
        net.zero_grad(set_to_none=True)
        logits = net(tokens, doc_ids=doc_ids)
        logits.logsumexp(-1).mean().backward()
        results[impl] = (logits.detach(), {n: p.grad.detach().clone() for n, p in net.named_parameters()})
    (l0, g0), (l1, g1) = results["sdpa"], results["flex"]
    grad_rel = max(((g0[n] - g1[n]).abs().max() / g0[n].abs().max().clamp(min=1e-30)).item() for n in g0)
    return {"logits_max_abs_diff": (l0 - l1).abs().max().item(), "logits_scale": l0.abs().max().item(),
            "grad_max_rel_diff": grad_rel}


# -----------------------------------------------------------------------------
# The table


def _fmt(x, spec=".1f"):
    if x is None:
        return "-"
    return format(x, spec) if isinstance(x, (int, float)) else str(x)


def _side(result: dict, key: str, spec: str):
    """'572 (548-590)': the median and, when there were several runs, their range."""
    if "missing" in result:
        return "missing"
    if "error" in result:
        return "error"
    text = _fmt(result.get(key), spec)
    lo_hi = result.get("range", {}).get(key)
    if lo_hi and lo_hi[0] != lo_hi[1]:
        text += f" ({_fmt(lo_hi[0], spec)}-{_fmt(lo_hi[1], spec)})"
    return text


PLAUSIBLE_RATIO = (0.1, 10.0)  # ours/ref outside this: one side did not do the same work
NOISY_SPREAD = 1.5             # max/min of one side's runs above this: the machine was busy


def flags(metric: str, key: str, ours: dict, ref: dict | None, ratio: float | None) -> list[str]:
    """What makes a row untrustworthy: an impossible value (MFU > 100%), a ratio far
    outside what the same work can give, or runs that disagree with each other."""
    out = []
    for side, result in (("ours", ours), ("ref", ref)):
        if not result or key not in result or not isinstance(result[key], (int, float)):
            continue
        if key == "mfu" and result[key] > 1.0:
            out.append(f"{side}: impossible MFU {result[key]:.0%} > 100% (the peak was measured "
                       f"on a busy machine, or the FLOP count is wrong)")
        lo, hi = result.get("range", {}).get(key, (None, None))
        if lo and hi and hi / lo > NOISY_SPREAD:
            out.append(f"{side}: runs spread {hi / lo:.1f}x (min-max): busy machine, take it with care")
    if ratio is not None and not PLAUSIBLE_RATIO[0] <= ratio <= PLAUSIBLE_RATIO[1]:
        out.append(f"ratio {ratio:.2f} is outside {PLAUSIBLE_RATIO[0]}-{PLAUSIBLE_RATIO[1]}: "
                   f"implausible for the same work, check both sides")
    return out


def row(name: str, metric: str, ours: dict, ref: dict | None, ref_name: str, key: str, spec=".1f",
        lower_is_better=False) -> dict:
    ratio = None
    if ref is not None and key in ours and key in ref and ours[key] and ref[key]:
        ratio = (ref[key] / ours[key]) if lower_is_better else (ours[key] / ref[key])
    return {"row": name, "metric": metric, "ours": _side(ours, key, spec),
            "reference": ref_name, "ref": _side(ref, key, spec) if ref is not None else "-",
            "speedup": _fmt(ratio, ".2f") if ratio else "-",
            "ours_mem_mb": _fmt(ours.get("peak_mem_mb"), ".0f"),
            "ref_mem_mb": _fmt(ref.get("peak_mem_mb"), ".0f") if ref else "-",
            "flags": flags(metric, key, ours, ref, ratio),
            "details": {"ours": ours, "ref": ref}}


def machine_load(load_start: float, load_end: float, cores: int, threads: int) -> tuple[str, bool]:
    """One line on the 1-minute load average, and whether the machine was busy: at the
    start anything above half a core is someone else's work; at the end our own
    children account for up to `threads` of it."""
    busy = load_start > 0.5 or load_end > threads + 0.5
    line = (f"1-minute load average {load_start:.2f} at start, {load_end:.2f} at end, on {cores} cores "
            f"({threads} threads per measurement)")
    if busy:
        line = "WARNING: busy machine, every row is suspect: " + line
    return line, busy


def print_table(rows: list[dict]):
    cols = ["row", "metric", "ours", "reference", "ref", "speedup", "ours_mem_mb", "ref_mem_mb", "flag"]
    heads = ["row", "metric", "ours (min-max)", "reference", "reference value", "ours/ref", "ours MB",
             "ref MB", "!"]
    for r in rows:
        r["flag"] = "!" if r.get("flags") else ""
    widths = [max(len(h), *(len(str(r[c])) for r in rows)) for c, h in zip(cols, heads)]
    line = " | ".join(h.ljust(w) for h, w in zip(heads, widths))
    print("| " + line + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths)) + " |")
    for r in rows:
        for flag in r.get("flags", []):
            print(f"  ! {r['row']} ({r['metric']}): {flag}")
        for side in ("ours", "ref"):
            d = r["details"][side] or {}
            if "error" in d:
                print(f"  {r['row']} ({side}): {d['error']}")
            if "missing" in d:
                print(f"  {r['row']} ({side}): reference not installed ({d['missing']})")


def main(argv=None):
    p = argparse.ArgumentParser(description="Speed and memory, ours vs references, side by side.")
    p.add_argument("--only", nargs="*", default=None,
                   help="subset of: tokenizer minhash pipeline train decode docmask (default: all; "
                        "docmask only on cuda)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", default="small-15m", help="model for the training/decoding rows")
    p.add_argument("--batch", type=int, default=8, help="training rows: sequences per step")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--tokenizer-mb", type=float, default=10.0)
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd variants")
    p.add_argument("--out", default="out/bench/bench.json")
    cli = p.parse_args(argv)
    threads = os.cpu_count() or 1
    want = set(cli.only or ["tokenizer", "minhash", "pipeline", "train", "decode"]
               + (["docmask"] if cli.device == "cuda" else []))
    rows = []
    t_start = time.time()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0

    if cli.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            print("--device cuda: no CUDA device on this machine; nothing to measure.")
            return 1
        want &= {"train", "decode", "docmask"}
        cli.model = "llama3.2-1b" if cli.model == "small-15m" else cli.model
        cli.seq_len = 2048 if cli.seq_len == 256 else cli.seq_len
        cli.batch = 4 if cli.batch == 8 else cli.batch

    if "tokenizer" in want:
        print(f"tokenizer: training an 8,192-token BPE on {cli.tokenizer_mb} MB, ours vs tokenizers ...", flush=True)
        kw = dict(mb=cli.tokenizer_mb, vocab_size=8192, repeats=cli.repeats, threads=threads)
        ours, ref = run_isolated("tok_ours", **kw), run_isolated("tok_hf", **kw)
        rows.append(row("tokenizer training", "seconds", ours, ref, "HF tokenizers", "train_s", ".2f",
                        lower_is_better=True))
        rows.append(row("tokenizer encoding", "MB/s", ours, ref, "HF tokenizers", "encode_mb_s", ".2f"))
    if "minhash" in want:
        print("MinHash signatures of 2,000 documents of ~4 KB ...", flush=True)
        kw = dict(n_docs=2000, repeats=cli.repeats, threads=1)
        rows.append(row("MinHash signatures (1 core)", "docs/s", run_isolated("minhash_ours", **kw),
                        run_isolated("minhash_datasketch", **kw), "datasketch", "docs_per_s", ".0f"))
    if "pipeline" in want:
        print("data pipeline on the built-in corpus ...", flush=True)
        rows.append(row("data pipeline (built-in corpus)", "MB/s", run_isolated("pipeline_ours", threads=threads),
                        None, "(none)", "mb_s", ".2f"))
    if "train" in want:
        dtypes = ["bf16"] if cli.device == "cuda" else ["fp32", "bf16"]
        for dtype in dtypes:
            print(f"training step, {cli.model}, batch {cli.batch}x{cli.seq_len}, {dtype} ...", flush=True)
            peak = run_isolated("measure_peak", dtype=dtype, device=cli.device, threads=threads)
            print(f"  peak: {peak.get('peak_flops', float('nan')) / 1e9:.0f} GFLOP/s ({peak.get('note')})")
            kw = dict(model_name=cli.model, batch=cli.batch, seq_len=cli.seq_len, dtype=dtype,
                      steps=max(3, cli.repeats), device=cli.device, threads=threads,
                      peak=peak.get("peak_flops", float("nan")))
            ours, ref = run_isolated("train_step", impl="ours", **kw), run_isolated("train_step", impl="hf", **kw)
            rows.append(row(f"train step {cli.model} {dtype}", "tokens/s", ours, ref, "transformers", "tokens_per_s", ".0f"))
            rows.append(row(f"train step {cli.model} {dtype}", "MFU", ours, ref, "transformers", "mfu", ".1%"))
            if cli.compile:
                comp = run_isolated("train_step", impl="ours", compile=True, **kw)
                rows.append(row(f"train step {cli.model} {dtype} +compile", "tokens/s", comp, ref, "transformers",
                                "tokens_per_s", ".0f"))
    if "docmask" in want:
        # §3.2 document masking at 8K tokens: FlexAttention (compiled on GPU) vs SDPA with a
        # dense boolean mask, first their agreement (fp32, 2 layers), then their speed.
        seq, n_docs = (8192, 8) if cli.device == "cuda" else (512, 4)
        print(f"document masking, {cli.model}, {seq} tokens in {n_docs} documents: flex vs sdpa ...", flush=True)
        parity = run_isolated("doc_masking_parity", model_name=cli.model, seq_len=min(seq, 2048), n_docs=n_docs,
                              device=cli.device, threads=threads)
        print(f"  parity (fp32, 2 layers, {min(seq, 2048)} tokens): " + json.dumps(parity))
        kw = dict(model_name=cli.model, seq_len=seq, n_docs=n_docs, repeats=cli.repeats, device=cli.device,
                  threads=threads)
        ours, ref = run_isolated("doc_masking", impl="flex", **kw), run_isolated("doc_masking", impl="sdpa", **kw)
        rows.append(row(f"doc-masked fwd+bwd {cli.model} {seq} tok, {n_docs} docs, flex", "tokens/s", ours, ref,
                        "SDPA + dense mask", "tokens_per_s", ".0f"))
        rows.append(row(f"flex vs sdpa parity (fp32, {min(seq, 2048)} tok)", "max |dlogits|", parity, None, "(none)",
                        "logits_max_abs_diff", ".2e"))
    if "decode" in want and cli.device == "cpu":
        # Each precision against transformers in the SAME precision: fp32, bf16; then
        # int8 weight-only (§6.2-style, bf16 activations) against transformers in bf16,
        # its fastest setting on this CPU. With --compile, each also compiled.
        variants = [(dtype, compile) for compile in ([False, True] if cli.compile else [False])
                    for dtype in ("fp32", "bf16", "int8")]
        for bs in (1, 8):
            refs = {}
            for dtype, compile in variants:
                ref_dtype = "bf16" if dtype == "int8" else dtype
                print(f"decoding, {cli.model}, batch {bs}, {dtype}{' +compile' if compile else ''} ...", flush=True)
                kw = dict(model_name=cli.model, batch=bs, new_tokens=128, repeats=cli.repeats, device=cli.device,
                          threads=threads)
                if ref_dtype not in refs:
                    refs[ref_dtype] = run_isolated("decode", impl="hf", dtype=ref_dtype, **kw)
                ours = run_isolated("decode", impl="ours", dtype=dtype, compile=compile, **kw)
                rows.append(row(f"decode {cli.model} batch {bs} {dtype}{' +compile' if compile else ''}",
                                "tokens/s", ours, refs[ref_dtype], f"transformers generate {ref_dtype}",
                                "tokens_per_s", ".0f"))
    elif "decode" in want:
        dtype = "bf16"
        for bs in (1, 8):
            print(f"decoding, {cli.model}, batch {bs}, {dtype} ...", flush=True)
            kw = dict(model_name=cli.model, batch=bs, new_tokens=128, repeats=cli.repeats, device=cli.device,
                      dtype=dtype, threads=threads)
            ours, ref = run_isolated("decode", impl="ours", **kw), run_isolated("decode", impl="hf", **kw)
            rows.append(row(f"decode {cli.model} batch {bs}", "tokens/s", ours, ref, "transformers generate",
                            "tokens_per_s", ".0f"))
            rows.append(row(f"decode {cli.model} batch {bs}", "GB/s", ours, None, "(none)", "bandwidth_gb_s", ".0f"))
            if cli.compile:
                comp = run_isolated("decode", impl="ours", compile=True, **kw)
                rows.append(row(f"decode {cli.model} batch {bs} +compile", "tokens/s", comp, ref,
                                "transformers generate", "tokens_per_s", ".0f"))

    load_end = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    load_line, busy = machine_load(load_start, load_end, os.cpu_count() or 1, threads)
    print()
    print_table(rows)
    print(f"\n{len(rows)} rows in {time.time() - t_start:.0f}s; {threads} threads; "
          f"medians of {cli.repeats} runs after a warm-up, (min-max) over the runs; peak memory = "
          f"child max RSS (CPU) or CUDA max allocated.")
    print(load_line)
    atomic_write_text(cli.out, json.dumps({"argv": sys.argv[1:], "load": [load_start, load_end], "busy": busy,
                                           "rows": rows}, indent=1, default=str) + "\n")
    print(f"wrote {cli.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
