"""
exercises/checks.py -- one check per exercise: the student's code against the project's.

Stage: classroom (see exercises/README.md for the statements, docs/TEACHING.md for the
order). Every `check_<name>(ns)` takes a namespace `ns` -- the student's exercise module,
or exercises/solutions.py, or any object with the right attributes -- and compares its
functions with the project's own implementation (model.py, tokenizer.py, dedup.py,
pretrain.py, plan.py, sample.py, reward.py, dpo.py) on seeded random inputs, or with a
closed form / numpy's least squares where the project has no code (exercise 14). A
mismatch raises AssertionError with a message that says what differed; a skeleton
that was not filled in raises its NotImplementedError.

Reads:  nothing on disk (every input is generated here from a fixed seed).
Writes: nothing.
Run:    pytest exercises/ -k rmsnorm            # the student's command, one exercise
        python -m pytest -q tests/test_classroom.py   # the checks hold their teeth
Next:   exercises/test_exercises.py (the pytest entry points), exercises/solutions.py.

Tolerances (documented once, used everywhere): float32 results are compared with
`torch.testing.assert_close(..., atol=1e-5, rtol=1e-5)` (TOL below): the same maths in
a different order differs in the last bits, never more. Integer results (masks,
positions, token ids, byte counts, MinHash signatures) must be exactly equal, and so
must RMSNorm's bf16 output: the mistakes of that exercise are one bf16 step off, which
any bf16-sized tolerance would forgive, while every correct formula rounds to the same
bf16 values. The losses are also run in float32 where -log(sigmoid(x)) overflows. The one
statistical check (exercise 12, sampling) compares frequencies over 40,000 seeded draws
with the student's probabilities at atol 0.02 -- about 8 standard deviations of the
worst-case sampling noise (sqrt(0.25/40,000) = 0.0025) -- and is also held to an exact
hand-worked example.

The checks of exercises 10 and 11 (reward and DPO losses) work in two layers: a
closed-form formula written here, in the check itself, always runs; the comparison
with the project's reward.py / dpo.py runs as soon as those files exist (until then
it is skipped with a reason). The closed form keeps the skip from hiding a bug: the
student's code = formula, and project = student's code, imply project = formula.
"""

from __future__ import annotations

import importlib
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

TOL = dict(atol=1e-5, rtol=1e-5)


def _close(actual, expected, what, **tol):
    """assert_close with a message that names the quantity and what it is compared with."""
    torch.testing.assert_close(actual, expected, **(tol or TOL),
                               msg=lambda m: f"{what}: your result differs from the expected one.\n{m}")


def project_module(module_name: str, reason: str = ""):
    """Import one of the project's files, or skip the test (with the reason) while that
    file does not exist yet. Unlike pytest.importorskip, only a MISSING module skips:
    a module that exists but fails to import (one of ITS imports is missing, a syntax
    error) is an error, never a silent skip."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name != module_name:
            raise
        pytest.skip(f"{module_name}.py does not exist yet{reason}")


def _project(module_name: str, function_name: str):
    """The project's function (skipped while its file is missing, see project_module).
    A module that exists but lacks the function is an error: the names are fixed by
    the project's contract."""
    module = project_module(module_name, f": the comparison with {module_name}.{function_name} "
                                         f"runs as soon as it does")
    return getattr(module, function_name)


# -----------------------------------------------------------------------------
# 1. RMSNorm (§3.2) vs model.RMSNorm


def check_rmsnorm(ns):
    import model
    gen = torch.Generator().manual_seed(1)
    for shape, eps in [((2, 5, 16), 1e-5), ((3, 64), 1e-6), ((1, 1, 7, 8), 0.1)]:
        x = torch.randn(shape, generator=gen) * 3
        weight = torch.randn(shape[-1], generator=gen)
        norm = model.RMSNorm(shape[-1], eps=eps)
        with torch.no_grad():
            norm.weight.copy_(weight)
            expected = norm(x)
        got = ns.rmsnorm(x, weight, eps)
        assert got.shape == x.shape, f"rmsnorm: shape {tuple(got.shape)}, expected {tuple(x.shape)}"
        _close(got, expected, f"rmsnorm(x of shape {shape}, eps={eps})")
    # bf16 input: the project normalizes in fp32, casts back to bf16, THEN multiplies by the
    # (fp32) weight. Compared EXACTLY: every correct order of the fp32 operations (rsqrt or
    # 1/sqrt, mean or sum/n, F.rms_norm) rounds to the same bf16 values, while normalizing
    # in bf16 or never casting back is off by about one bf16 step (~0.4%) -- inside any
    # tolerance loose enough for bf16, so a tolerance would let both mistakes through.
    for weight in (torch.ones(32), torch.randn(32, generator=gen)):  # unit weight first: see below
        x = (torch.randn(4, 32, generator=gen) * 3).bfloat16()
        norm = model.RMSNorm(32)
        with torch.no_grad():
            norm.weight.copy_(weight)
            expected = norm(x)  # bf16 normalized values times the fp32 weight: fp32
        got = ns.rmsnorm(x, weight, 1e-5)
        assert got.dtype == expected.dtype, (
            f"rmsnorm of a bf16 input with an fp32 weight: dtype {got.dtype}, expected {expected.dtype} "
            f"(normalize in fp32, cast back to x's dtype, then multiply by the weight)")
        if torch.equal(got, expected):
            continue
        n_diff, worst = int((got != expected).sum()), float((got - expected).abs().max())
        if not torch.equal(got, got.bfloat16().float()) and bool((weight == 1).all()):
            mistake = ("with a weight of ones your values are not bf16 numbers: the normalized values were "
                       "never cast back to x's dtype (.type_as(x)) before the weight")
        else:
            mistake = ("the normalized values differ at bf16 precision: normalizing in bf16 (x.pow(2).mean() "
                       "on the bf16 input) instead of in float32 (x.float())?")
        raise AssertionError(f"rmsnorm of a bf16 input: {n_diff} of {got.numel()} values differ from model.RMSNorm "
                             f"(largest difference {worst:.4g}; compared exactly): {mistake}")


# -----------------------------------------------------------------------------
# 2. RoPE (§3.2) with the Llama 3.1 release's scaling vs model.rope_frequencies,
#    model.precompute_freqs_cis and model.apply_rotary_emb


_ROPE_CASES = [
    # head_dim, theta, scaled, factor, low, high, original context
    (128, 500000.0, True, 8.0, 1.0, 4.0, 8192),     # Llama 3.1 8B/70B/405B
    (64, 500000.0, True, 32.0, 1.0, 4.0, 8192),     # Llama 3.2 1B (head_dim 64)
    (128, 500000.0, False, 8.0, 1.0, 4.0, 8192),    # Llama 3 (no scaling)
    (32, 10000.0, True, 4.0, 2.0, 8.0, 256),        # an odd one: every branch is used
]


def check_rope(ns):
    import model
    for hd, theta, scaled, factor, low, high, orig in _ROPE_CASES:
        args = model.ModelArgs(dim=hd * 2, n_heads=2, n_kv_heads=1, rope_theta=theta, use_scaled_rope=scaled,
                               rope_scale_factor=factor, rope_low_freq_factor=low, rope_high_freq_factor=high,
                               rope_original_max_seq_len=orig, max_seq_len=64)
        got = ns.rope_frequencies(hd, theta=theta, use_scaled_rope=scaled, scale_factor=factor,
                                  low_freq_factor=low, high_freq_factor=high, original_max_seq_len=orig)
        expected = model.rope_frequencies(args)
        assert got.shape == (hd // 2,), f"rope_frequencies: shape {tuple(got.shape)}, expected ({hd // 2},)"
        assert got.dtype == torch.float32, f"rope_frequencies must return float32 (compute in float64), got {got.dtype}"
        _close(got.float(), expected, f"rope_frequencies(head_dim={hd}, scaled={scaled}, factor={factor})",
               atol=0.0, rtol=1e-5)

    # Rotation: random q-like tensors at random (per-document) positions.
    gen = torch.Generator().manual_seed(2)
    args = model.ModelArgs(dim=64, n_heads=4, n_kv_heads=2, use_scaled_rope=True, max_seq_len=64)
    freqs = model.rope_frequencies(args)  # (8,)
    table = model.precompute_freqs_cis(args)  # (64, 8, 2)
    B, T, H, hd = 2, 10, 4, args.head_dim
    x = torch.randn(B, T, H, hd, generator=gen)
    positions = torch.randint(0, 64, (B, T), generator=gen)
    expected = model.apply_rotary_emb(x, table[positions])
    got = ns.apply_rope(x, freqs, positions)
    assert got.shape == x.shape, f"apply_rope: shape {tuple(got.shape)}, expected {tuple(x.shape)}"
    assert got.dtype == x.dtype, f"apply_rope must return x's dtype ({x.dtype}), got {got.dtype}"
    _close(got, expected, "apply_rope (rotate interleaved pairs (x[2i], x[2i+1]) by position·freq[i])")
    # A rotation keeps lengths; relative positions: <R(m)q, R(n)k> depends on m - n only.
    q, k = torch.randn(1, 1, 1, hd, generator=gen), torch.randn(1, 1, 1, hd, generator=gen)
    dots = [(ns.apply_rope(q, freqs, torch.tensor([[m]])) * ns.apply_rope(k, freqs, torch.tensor([[m - 3]]))).sum()
            for m in (3, 20, 50)]
    _close(torch.stack(dots), dots[0].expand(3), "RoPE: <R(m)q, R(m-3)k> must not depend on m", atol=1e-4, rtol=1e-4)


# -----------------------------------------------------------------------------
# 3. Grouped-query attention and the KV cache (§3.2) vs model.Attention._attend and
#    model.KVCache


def check_gqa(ns):
    import model
    gen = torch.Generator().manual_seed(3)
    for B, H, KV, T, hd in [(2, 8, 2, 7, 16), (1, 4, 4, 5, 8), (3, 6, 1, 9, 4)]:
        args = model.ModelArgs(dim=H * hd, n_heads=H, n_kv_heads=KV, max_seq_len=64)
        attention = model.Attention(args)
        q = torch.randn(B, H, T, hd, generator=gen)
        k = torch.randn(B, KV, T, hd, generator=gen)
        v = torch.randn(B, KV, T, hd, generator=gen)
        expected = attention._attend(q, k, v, None, None)  # causal, KV heads shared by groups
        got = ns.gqa_attention(q, k, v)
        assert got.shape == (B, H, T, hd), f"gqa_attention: shape {tuple(got.shape)}, expected {(B, H, T, hd)}"
        _close(got, expected, f"gqa_attention with {H} query heads sharing {KV} KV heads")

    # KV-cache size: what the project's static cache allocates (on the meta device: no memory).
    for name, batch, seq, dtype in [("llama3-70b", 1, 8192, torch.bfloat16), ("llama3-8b", 4, 2048, torch.bfloat16),
                                    ("llama3.1-405b", 1, 131072, torch.bfloat16), ("tiny-1m", 3, 100, torch.float32)]:
        for override in ({}, {"n_kv_heads": None}):  # GQA, then plain multi-head (n_kv = n_heads)
            args = model.ModelArgs.from_name(name, **override)
            cache = model.KVCache(batch, seq, args.n_kv_heads, args.head_dim, dtype, "meta")
            expected = args.n_layers * sum(b.numel() * b.element_size() for b in cache.buffers())
            got = ns.kv_cache_bytes(args.n_layers, args.n_kv_heads, args.head_dim, seq, batch,
                                    bytes_per_value=torch.finfo(dtype).bits // 8)
            assert int(got) == expected, (f"kv_cache_bytes for {name} with {args.n_kv_heads} KV heads, batch {batch}, "
                                          f"{seq} tokens: got {got:,}, the project's cache holds {expected:,} bytes")
    args = model.ModelArgs.from_name("llama3-70b")
    saving = (ns.kv_cache_bytes(80, 64, 128, 8192, 1, bytes_per_value=2)
              / ns.kv_cache_bytes(80, args.n_kv_heads, args.head_dim, 8192, 1, bytes_per_value=2))
    assert saving == 8, f"llama3-70b: 64 heads / 8 KV heads should make the cache 8x smaller, got {saving}"


# -----------------------------------------------------------------------------
# 4. The document mask (§3.2) vs model.positions_from_doc_ids / document_causal_mask


def _random_doc_ids(gen, B, T, max_docs):
    """(B, T) non-decreasing document indices, like a packed row: [[0,0,0,1,1,2,...]]."""
    rows = []
    for _ in range(B):
        n_docs = int(torch.randint(1, max_docs + 1, (1,), generator=gen))
        cuts = torch.randperm(T - 1, generator=gen)[: n_docs - 1] + 1
        starts = torch.zeros(T, dtype=torch.long)
        starts[cuts] = 1
        rows.append(starts.cumsum(0))
    return torch.stack(rows)


def check_document_mask(ns):
    import model
    gen = torch.Generator().manual_seed(4)
    examples = [torch.tensor([[0, 0, 0, 1, 1]]), torch.tensor([[5, 5, 5, 5]]), torch.tensor([[0, 1, 2, 3]])]
    examples += [_random_doc_ids(gen, B, T, d) for B, T, d in [(3, 16, 4), (2, 33, 8), (1, 1, 1), (4, 64, 1)]]
    for doc_ids in examples:
        pos = ns.positions_from_doc_ids(doc_ids)
        assert pos.dtype == doc_ids.dtype == torch.long, (
            f"positions_from_doc_ids must return integer positions (torch.long, like doc_ids), got {pos.dtype}: "
            f"float positions crash later, where they index the RoPE table and the KV cache")
        assert torch.equal(pos, model.positions_from_doc_ids(doc_ids)), (
            f"positions_from_doc_ids({doc_ids.tolist()}) = {pos.tolist()}, expected "
            f"{model.positions_from_doc_ids(doc_ids).tolist()}")
        mask = ns.document_causal_mask(doc_ids)
        expected = model.document_causal_mask(doc_ids)
        assert mask.dtype == torch.bool, f"document_causal_mask must be a bool tensor, got {mask.dtype}"
        assert torch.equal(mask, expected), (
            f"document_causal_mask differs for doc_ids {doc_ids.tolist()} at (row, query, key) "
            f"{(mask != expected).nonzero()[:5].tolist()}")


# -----------------------------------------------------------------------------
# 5. SwiGLU, its width and the parameter count (§3.2, Table 3) vs model.FeedForward,
#    ModelArgs.ffn_hidden_dim and model.count_params

OFFICIAL_PARAMS = {  # counted from Meta's reference configurations (params.json)
    "llama3-8b": 8_030_261_248, "llama3-70b": 70_553_706_496, "llama3.1-405b": 405_853_388_800,
    "llama3.2-1b": 1_235_814_400, "llama3.2-3b": 3_212_749_824,
}


def check_swiglu(ns):
    import model
    gen = torch.Generator().manual_seed(5)
    for dim, hidden in [(16, 48), (8, 32)]:
        ffn = model.FeedForward(dim, hidden)
        for lin in (ffn.w1, ffn.w2, ffn.w3):
            torch.nn.init.normal_(lin.weight, 0.0, 0.3, generator=gen)
        x = torch.randn(2, 3, dim, generator=gen)
        got = ns.swiglu(x, ffn.w1.weight.detach(), ffn.w2.weight.detach(), ffn.w3.weight.detach())
        _close(got, ffn(x).detach(), f"swiglu(dim={dim}, hidden={hidden})")

    configs = [model.ModelArgs.from_name(n) for n in model.CONFIGS]
    rng = random.Random(5)
    for _ in range(20):  # random shapes: GQA or not, multiplier or not, tied or not
        heads = rng.choice([2, 4, 8])
        configs.append(model.ModelArgs(
            dim=heads * rng.choice([8, 16, 64]), n_layers=rng.randint(1, 6), n_heads=heads,
            n_kv_heads=rng.choice([h for h in (1, 2, heads) if heads % h == 0]), vocab_size=rng.randint(256, 5000),
            multiple_of=rng.choice([16, 32, 256]), ffn_dim_multiplier=rng.choice([None, 1.3, 1.5, 0.7]),
            tie_embeddings=rng.random() < 0.5))
    for args in configs:
        got = ns.ffn_hidden_dim(args.dim, args.multiple_of, args.ffn_dim_multiplier)
        assert got == args.ffn_hidden_dim, (f"ffn_hidden_dim(dim={args.dim}, multiple_of={args.multiple_of}, "
                                            f"multiplier={args.ffn_dim_multiplier}) = {got}, expected {args.ffn_hidden_dim}")
        got = ns.count_params(args)
        assert got == model.count_params(args), f"count_params({args}) = {got:,}, expected {model.count_params(args):,}"
    for name, official in OFFICIAL_PARAMS.items():  # and the official numbers themselves
        assert ns.count_params(model.ModelArgs.from_name(name)) == official, f"{name}: expected {official:,} parameters"


# -----------------------------------------------------------------------------
# 6. A BPE merge step (§3.2) vs tokenizer._merge_word and tokenizer.train_bpe

_BPE_TEXTS = [
    "the cat sat on the mat; the cat ate the rat. " * 3,
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n",
    "low lower lowest newer wider newest widest aaaa aaaa aaab",
    "naïve café déjà vu, façade and 3.14159 26535 + 42 = 42",
]


def check_bpe(ns):
    import tokenizer
    rng = random.Random(6)
    cases = [([1, 2, 3, 1, 2], 1, 2), ([5, 5, 5], 5, 5), ([5, 5, 5, 5], 5, 5), ([], 1, 2), ([7], 7, 7)]
    for _ in range(200):
        word = [rng.randint(0, 3) for _ in range(rng.randint(0, 12))]
        cases.append((word, rng.randint(0, 3), rng.randint(0, 3)))
    for word, a, b in cases:
        got = ns.merge_pair(list(word), a, b, 99)
        expected = tokenizer._merge_word(list(word), a, b, 99)
        assert got == expected, f"merge_pair({word}, {a}, {b}, 99) = {got}, expected {expected}"

    for texts, n in [(_BPE_TEXTS[:1], 10), (_BPE_TEXTS[1:2], 20), (_BPE_TEXTS, 40),
                     (["ab abc bc abcd"] * 2, 8)]:  # this corpus runs out of pairs after 6 merges: stop there
        ranks = tokenizer.train_bpe(texts, tokenizer.NUM_BYTE_TOKENS + tokenizer.NUM_SPECIAL_TOKENS + n)
        expected = [t for t, _ in sorted(ranks.items(), key=lambda kv: kv[1])][tokenizer.NUM_BYTE_TOKENS:]
        got = ns.learn_merges(texts, n)
        assert [bytes(t) for t in got] == expected, (
            f"learn_merges({len(texts)} texts, {n}): first difference at merge "
            f"{next((i for i, (g, e) in enumerate(zip(got, expected)) if g != e), min(len(got), len(expected)))}:\n"
            f"  yours:     {got}\n  train_bpe: {expected}")


# -----------------------------------------------------------------------------
# 7. MinHash de-duplication (§3.1.1) vs dedup.minhash_signatures and dedup.jaccard

_DOC = ("Llama 3 is a herd of language models that natively support multilinguality coding reasoning "
        "and tool usage; the largest model is a dense Transformer with 405B parameters and a context "
        "window of up to 128K tokens; this paper presents an extensive empirical evaluation of Llama 3")


def check_minhash(ns):
    import dedup
    words = _DOC.split()
    rng = random.Random(7)
    texts = [_DOC, _DOC.replace("dense", "sparse"), " ".join(words[:20]), "short text", "",
             " ".join(rng.choice(words) for _ in range(300)), "x " * 5000]
    for num_perm, seed in [(dedup.BANDS * dedup.ROWS, 0), (16, 3)]:
        a, b = dedup.minhash_params(num_perm, seed)
        expected = dedup.minhash_signatures(texts, num_perm=num_perm, seed=seed)
        for i, text in enumerate(texts):
            got = np.asarray(ns.minhash_signature(dedup.shingle_hashes(text), a, b))
            assert got.dtype == np.uint32, f"minhash_signature must return uint32 values, got {got.dtype}"
            assert np.array_equal(got, expected[i]), (
                f"minhash_signature of text {i} ({num_perm} hash functions): first differing entry "
                f"{int(np.flatnonzero(got != expected[i])[0]) if got.shape == expected[i].shape else 'shape'}")

    # The estimate: the fraction of agreeing entries, unbiased for the Jaccard similarity.
    a, b = dedup.minhash_params(512, 0)
    for i, j in [(0, 1), (0, 2), (0, 5), (0, 0)]:
        sa = dedup.minhash_signatures([texts[i]], num_perm=512)[0]
        sb = dedup.minhash_signatures([texts[j]], num_perm=512)[0]
        got = ns.estimate_jaccard(sa, sb)
        assert abs(got - float(np.mean(sa == sb))) < 1e-12, "estimate_jaccard: the fraction of equal entries"
        exact = dedup.jaccard(texts[i], texts[j])
        assert abs(got - exact) < 0.1, f"estimate {got:.3f} vs exact Jaccard {exact:.3f} (512 hashes: within 0.1)"


# -----------------------------------------------------------------------------
# 8. The learning-rate schedule (§3.4.1, §3.4.3) vs pretrain.lr_at


def check_lr_schedule(ns):
    import pretrain
    configs = [dict(max_lr=1.0, warmup_steps=10, total_steps=100),
               dict(max_lr=8e-5, warmup_steps=8000, total_steps=1_200_000),  # 405B (§3.4.1)
               dict(max_lr=3e-4, warmup_steps=0, total_steps=50, min_lr_ratio=0.1),
               dict(max_lr=6e-4, warmup_steps=5, total_steps=40, anneal_steps=8),  # §3.4.3 annealing
               dict(max_lr=1e-3, warmup_steps=3, total_steps=3)]
    for cfg in configs:
        total = cfg["total_steps"]
        steps = sorted({0, 1, 2, total - 1, total, total + 5} | set(range(0, total + 1, max(1, total // 200)))
                       | {cfg["warmup_steps"] - 1, cfg["warmup_steps"], cfg["warmup_steps"] + 1})
        for step in (s for s in steps if s >= 0):
            got = ns.lr_schedule(step, **cfg)
            expected = pretrain.lr_at(step, **cfg)
            assert math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-15), (
                f"lr_schedule(step={step}, {cfg}) = {got!r}, expected {expected!r}")


# -----------------------------------------------------------------------------
# 9. FSDP memory per GPU (§3.3.2) vs plan.plan


def check_fsdp_memory(ns):
    import plan
    layouts = [dict(model="llama3.1-405b", gpus=16384, tp=8, pp=16),  # Table 4, row 2
               dict(model="llama3.1-405b", gpus=8192, tp=8, pp=16),   # Table 4, row 1
               dict(model="llama3-70b", gpus=64, tp=8, pp=1),
               dict(model="llama3-8b", gpus=8, tp=1, pp=1),
               dict(model="llama3-8b", gpus=1, tp=1, pp=1)]          # no sharding at all
    keys = {"weights_bf16": "weights_bf16_bytes", "master_fp32": "master_fp32_bytes",
            "grads_fp32": "grads_fp32_bytes", "optimizer": "optimizer_bytes", "total": "static_bytes"}
    for layout in layouts:
        p = plan.plan(**layout, reshard_after_forward=False)
        got = ns.fsdp_memory_per_gpu(p["params_per_gpu"], p["dp"])
        for mine, theirs in keys.items():
            assert mine in got, f"fsdp_memory_per_gpu must return a dict with the key {mine!r}"
            assert int(got[mine]) == p[theirs], (f"{layout}: {mine} = {int(got[mine]):,} bytes, "
                                                 f"plan.plan says {p[theirs]:,}")


# -----------------------------------------------------------------------------
# 10. The reward model's loss (§4.1.2): closed form here + reward.reward_loss


_NAIVE_LOGSIGMOID = ("torch.log(torch.sigmoid(z)) is -inf in float32 once z < -88.7 (σ(z) rounds to 0; "
                     "at z = -50 it is still -50), and its gradient is nan there: use F.logsigmoid(z), "
                     "which is finite for every z")


def _preference_scores(seed, n=64):
    gen = torch.Generator().manual_seed(seed)
    chosen = torch.randn(n, generator=gen) * 3
    rejected = torch.randn(n, generator=gen) * 3
    chosen[:4] = torch.tensor([0.0, 50.0, -50.0, 1.0])  # saturated both ways: must stay finite
    rejected[:4] = torch.tensor([0.0, -50.0, 50.0, 1.0])
    return chosen, rejected


def check_reward_loss(ns):
    """Closed form: mean over pairs of -log σ(r_c - r_r) = mean softplus(r_r - r_c)
    (σ(z) = 1/(1+e^-z), so -log σ(z) = log(1 + e^-z), computed stably)."""
    chosen, rejected = _preference_scores(10)
    c, r = chosen.clone().requires_grad_(), rejected.clone().requires_grad_()
    got = ns.reward_loss(c, r)
    assert got.dim() == 0, f"reward_loss must return a scalar, got shape {tuple(got.shape)}"
    assert torch.isfinite(got), (f"reward_loss = {float(got.detach())} for float32 scores with gaps of -100 ... +100: "
                                 f"{_NAIVE_LOGSIGMOID}")
    z = (chosen - rejected).double()
    expected = torch.where(z > 0, torch.log1p(torch.exp(-z)), -z + torch.log1p(torch.exp(z))).mean()
    _close(got.double(), expected, "reward_loss vs the closed form mean(-log σ(r_chosen - r_rejected))")
    got.backward()  # d/dr_c = -σ(-(r_c - r_r)) / N
    _close(c.grad, -torch.sigmoid(-(chosen - rejected)) / len(chosen), "d reward_loss / d r_chosen")
    _close(r.grad, torch.sigmoid(-(chosen - rejected)) / len(chosen), "d reward_loss / d r_rejected")
    assert math.isclose(float(ns.reward_loss(torch.zeros(3), torch.zeros(3))), math.log(2), rel_tol=1e-6), \
        "equal scores: the loss is log 2"


def check_reward_loss_vs_project(ns):
    project = _project("reward", "reward_loss")
    for seed in (11, 12):
        chosen, rejected = _preference_scores(seed)
        _close(ns.reward_loss(chosen, rejected), project(chosen, rejected), "reward_loss vs reward.reward_loss")


# -----------------------------------------------------------------------------
# 11. The DPO loss and its gradient (§4.1.4): closed form here + dpo.dpo_loss


def _dpo_inputs(seed, n=32):
    gen = torch.Generator().manual_seed(seed)
    return [-(torch.rand(n, generator=gen) * 40 + 1) for _ in range(4)]  # sequence log-probs < 0


def _dpo_closed_form(pc, pr, rc, rr, beta):
    """-log σ(β((πc - rc) - (πr - rr))) per pair, the rewards, and the gradient of the
    SUM of losses w.r.t. πc: dL/dπc = -β σ(-βΔ), dL/dπr = +β σ(-βΔ)."""
    delta = (pc - rc) - (pr - rr)
    losses = F.softplus(-beta * delta)
    return losses, beta * (pc - rc), beta * (pr - rr), -beta * torch.sigmoid(-beta * delta)


def check_dpo(ns):
    for seed, beta in [(20, 0.1), (21, 0.5), (22, 2.0)]:
        pc, pr, rc, rr = (t.double() for t in _dpo_inputs(seed))
        losses_cf, chosen_cf, rejected_cf, grad_cf = _dpo_closed_form(pc, pr, rc, rr, beta)
        pc_, pr_ = pc.clone().requires_grad_(), pr.clone().requires_grad_()
        losses, chosen_rewards, rejected_rewards = ns.dpo_loss(pc_, pr_, rc, rr, beta=beta)
        assert losses.shape == pc.shape, f"dpo_loss: losses must be per pair, shape {tuple(pc.shape)}"
        _close(losses, losses_cf, f"dpo_loss (beta={beta}) vs -log σ(β((πc-rc)-(πr-rr)))")
        _close(chosen_rewards, chosen_cf, "chosen_rewards = β(πc - rc)")
        _close(rejected_rewards, rejected_cf, "rejected_rewards = β(πr - rr)")
        assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad, \
            "the rewards are for logging: detach them"
        losses.sum().backward()
        _close(pc_.grad, grad_cf, "autograd dL/dπc of your dpo_loss vs the closed form -β σ(-βΔ)")
        _close(pr_.grad, -grad_cf, "autograd dL/dπr of your dpo_loss vs the closed form +β σ(-βΔ)")
        grad_chosen, grad_rejected = ns.dpo_loss_grad(pc, pr, rc, rr, beta=beta)
        _close(grad_chosen, grad_cf, "dpo_loss_grad: dL/dπc (closed form)")
        _close(grad_rejected, -grad_cf, "dpo_loss_grad: dL/dπr (closed form)")
    # float32, β = 0.1, sequence log-probs of long responses: β·Δ = -120, -90, +120, 0. The naive
    # -log(sigmoid(βΔ)) gives inf (and a nan gradient) for the first two; the loss is 120 and 90.
    pc = torch.tensor([-1300.0, -1000.0, -100.0, -40.0])
    pr, ref = torch.tensor([-100.0, -100.0, -1300.0, -40.0]), torch.full((4,), -100.0)
    pc_ = pc.clone().requires_grad_()
    losses, _, _ = ns.dpo_loss(pc_, pr, ref, ref, beta=0.1)
    assert torch.isfinite(losses).all(), f"dpo_loss = {losses.tolist()} for β·Δ = [-120, -90, 120, 0] in float32: " \
        f"{_NAIVE_LOGSIGMOID}"
    losses_cf, _, _, grad_cf = _dpo_closed_form(pc.double(), pr.double(), ref.double(), ref.double(), 0.1)
    _close(losses.double(), losses_cf, "dpo_loss in float32 for β·Δ = [-120, -90, 120, 0]")
    losses.sum().backward()
    assert torch.isfinite(pc_.grad).all(), f"autograd through your dpo_loss gives {pc_.grad.tolist()}: " \
        f"{_NAIVE_LOGSIGMOID}"
    _close(pc_.grad.double(), grad_cf, "autograd dL/dπc of your float32 dpo_loss for β·Δ = [-120, -90, 120, 0]")
    # Policy = reference: Δ = 0, every loss is log 2 and the gradient is ∓β/2.
    z = torch.full((3,), -5.0)
    losses, _, _ = ns.dpo_loss(z, z, z, z, beta=0.1)
    _close(losses, torch.full((3,), math.log(2)), "policy == reference: loss log 2")


def check_dpo_vs_project(ns):
    project = _project("dpo", "dpo_loss")
    for seed, beta in [(23, 0.1), (24, 1.0)]:
        pc, pr, rc, rr = _dpo_inputs(seed)
        mine = ns.dpo_loss(pc, pr, rc, rr, beta=beta)
        theirs = project(pc, pr, rc, rr, beta=beta)
        for what, m, t in zip(("losses", "chosen_rewards", "rejected_rewards"), mine, theirs):
            _close(m, t, f"dpo_loss {what} vs dpo.dpo_loss (beta={beta})")
        pc_ = pc.clone().requires_grad_()
        project(pc_, pr, rc, rr, beta=beta)[0].sum().backward()
        _close(ns.dpo_loss_grad(pc, pr, rc, rr, beta=beta)[0], pc_.grad, "dpo_loss_grad vs autograd of dpo.dpo_loss")


# -----------------------------------------------------------------------------
# 12. Temperature, top-k and top-p (Meta's reference code: T=0.6, p=0.9; not in the paper) vs sample.sample_next


def check_sampling(ns):
    import sample
    # The worked example of sample.sample_next's docstring, exactly.
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    got = ns.sampling_distribution(logits, temperature=1.0, top_p=0.7)
    _close(got, torch.tensor([[5 / 8, 3 / 8, 0.0, 0.0]]), "top_p=0.7 on [0.5, 0.3, 0.15, 0.05]")
    got = ns.sampling_distribution(logits, temperature=1.0, top_p=1.0, top_k=3)
    _close(got, torch.tensor([[0.5, 0.3, 0.15, 0.0]]) / 0.95, "top_k=3 on [0.5, 0.3, 0.15, 0.05]")
    # The order matters: top-k first, then top-p on the RENORMALIZED top-k probabilities.
    order = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    got = ns.sampling_distribution(order, temperature=1.0, top_p=0.5, top_k=2)
    assert torch.allclose(got, torch.tensor([[1.0, 0.0, 0.0, 0.0]]), atol=1e-5), (
        f"top_k=2, top_p=0.5 on [0.4, 0.3, 0.2, 0.1]: got {[round(v, 4) for v in got[0].tolist()]}, expected "
        f"[1, 0, 0, 0]. top-k comes first: [4/7, 3/7], and the mass before the second token (4/7) already "
        f"exceeds 0.5, so only the first survives. Applying top-p before top-k keeps [0.4, 0.3] and gives "
        f"[4/7, 3/7, 0, 0]")
    got = ns.sampling_distribution(logits[:, [2, 0, 3, 1]], temperature=0.0, top_p=0.9)
    _close(got, torch.tensor([[0.0, 1.0, 0.0, 0.0]]), "temperature 0 is greedy: all mass on the argmax")

    # Against the project: empirical frequencies of sample_next's draws.
    gen = torch.Generator().manual_seed(12)
    V, n_draws = 12, 40_000
    for temperature, top_p, top_k in [(1.0, 0.9, None), (0.6, 0.9, None), (1.3, 1.0, 5), (0.8, 0.5, 6), (1.0, 1.0, None)]:
        logits = torch.randn(2, V, generator=gen) * 2
        probs = ns.sampling_distribution(logits, temperature=temperature, top_p=top_p, top_k=top_k)
        assert probs.shape == logits.shape, f"sampling_distribution: shape {tuple(probs.shape)}, expected {(2, V)}"
        _close(probs.sum(-1), torch.ones(2), "each row of the distribution sums to 1")
        draws = sample.sample_next(logits.repeat_interleave(n_draws, 0), temperature=temperature, top_p=top_p,
                                   top_k=top_k, generator=torch.Generator().manual_seed(0)).view(2, n_draws)
        freq = torch.stack([torch.bincount(row, minlength=V) for row in draws]).float() / n_draws
        where = f"(temperature={temperature}, top_p={top_p}, top_k={top_k})"
        assert not ((freq > 0) & (probs == 0)).any(), f"sample_next draws tokens to which you give probability 0 {where}"
        _close(probs, freq, f"your probabilities vs sample_next's frequencies over {n_draws} draws {where}",
               atol=0.02, rtol=0.0)


# -----------------------------------------------------------------------------
# 13. The DPO formatting-token mask (§4.1.4) vs tokenizer.ChatFormat.encode_dialog and
#     dpo.encode_pair_response; the summed log-probabilities vs their closed form

_DIALOGS = [
    [{"role": "user", "content": "Add 2 and 3."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Sort 3 1 2"}],
    [{"role": "user", "content": "  <|eot_id|> is plain text here  "}, {"role": "assistant", "content": ""}],
]


def _small_chat():
    """A ChatFormat over a small BPE trained here (multi-token roles and contents), so that
    no download is needed; the tokenizer file lives in a temporary folder."""
    import tempfile

    import tokenizer
    texts = ["user assistant system Add 2 and 3. Sort the numbers. Hello! Be brief.\n\n"] * 4
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/tokenizer.model"
        tokenizer.save_bpe(tokenizer.train_bpe(texts, tokenizer.NUM_BYTE_TOKENS + tokenizer.NUM_SPECIAL_TOKENS + 40),
                           path)
        return tokenizer.ChatFormat(tokenizer.Tokenizer(path))


def _mask_diff(got, expected, tokens, chat):
    """The first differing token, shown with its text: '"\\n\\n" (index 4): yours True, expected False'."""
    i = next(i for i, (g, e) in enumerate(zip(got, expected)) if g != e)
    return f"{chat.tokenizer.decode([tokens[i]])!r} (index {i}): yours {got[i]}, expected {expected[i]}"


def check_dpo_mask(ns):
    chat = _small_chat()
    for messages in _DIALOGS:
        for generation_prompt in (False, True):
            expected = chat.encode_dialog(messages, add_generation_prompt=generation_prompt)
            tokens, mask = ns.dialog_format_mask(chat, messages, add_generation_prompt=generation_prompt)
            where = f"{[m['role'] for m in messages]}, add_generation_prompt={generation_prompt}"
            assert list(tokens) == expected.tokens, f"dialog_format_mask({where}): tokens differ from ChatFormat's"
            assert [bool(m) for m in mask] == expected.format_mask, (
                f"dialog_format_mask({where}): format mask differs at "
                f"{_mask_diff([bool(m) for m in mask], expected.format_mask, tokens, chat)} -- bos, every header "
                f"token (the role and the \"\\n\\n\" too) and every <|eot_id|> are formatting tokens")

    # Summed log-probs: position t of the logits predicts token t+1, so the mask of token t+1
    # goes with logits[:, t]. Closed form here; random logits, tokens and masks.
    gen = torch.Generator().manual_seed(13)
    N, T, V = 3, 9, 11
    tokens = torch.randint(0, V, (N, T), generator=gen)
    logits = torch.randn(N, T - 1, V, generator=gen) * 2
    mask = torch.rand(N, T, generator=gen) < 0.6
    mask[:, 0] = True  # never predicted: must not count
    expected = (logits.log_softmax(-1).gather(-1, tokens[:, 1:, None]).squeeze(-1) * mask[:, 1:]).sum(-1)
    got = ns.sequence_logp(logits, tokens, mask)
    assert got.shape == (N,), f"sequence_logp: shape {tuple(got.shape)}, expected ({N},)"
    _close(got, expected, "sequence_logp: sum over t >= 1 of mask[t] · log softmax(logits[t-1])[tokens[t]] "
                          "(the logits at position t-1 predict token t: shift the mask with the targets)")

    dpo = project_module("dpo", ": the comparison with dpo.encode_pair_response runs as soon as it does")
    for messages in _DIALOGS[:2]:
        for response in ("5", "The sorted list is 1 2 3.", ""):
            for mask_format in (True, False):
                expected = dpo.encode_pair_response(chat, messages, response, mask_format_tokens=mask_format)
                tokens, mask = ns.dpo_logp_mask(chat, messages, response, mask_format_tokens=mask_format)
                assert list(tokens) == expected["tokens"], "dpo_logp_mask: tokens differ from dpo.encode_pair_response's"
                mask = [bool(m) for m in mask]
                assert mask == expected["logp_mask"], (
                    f"dpo_logp_mask(response {response!r}, mask_format_tokens={mask_format}): differs at "
                    f"{_mask_diff(mask, expected['logp_mask'], tokens, chat)} -- the response's own tokens only "
                    f"(the assistant header belongs to the prompt), without its <|eot_id|> when masking")


# -----------------------------------------------------------------------------
# 14. The scaling-law fit (§3.2.1): synthetic IsoFLOPs curves made from a known law,
#     and numpy's least-squares fits as the reference for noisy ones

_ALPHA, _A = 0.53, 0.29  # §3.2.1: N*(C) = A·C^α, the compute-optimal number of training tokens
_BUDGETS = np.array([6e18, 1e19, 3e19, 6e19, 1e20, 3e20, 6e20, 1e21, 3e21, 1e22])  # FLOPs, the paper's range


def _isoflops_curves(noise: float, seed: int):
    """For every budget: token counts spread unevenly around the optimum (a wider span
    above it) and losses = a parabola in log10(tokens) around it, plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    offsets = np.array([-0.8, -0.45, -0.2, 0.05, 0.3, 0.6, 1.0])  # log10(tokens / optimum)
    curves = []
    for c in _BUDGETS:
        tokens = _A * c ** _ALPHA * 10 ** offsets
        losses = 2.0 + 40.0 * c ** -0.1 + 0.25 * offsets ** 2 + noise * rng.standard_normal(len(offsets))
        curves.append((tokens, losses))
    return curves


def check_scaling_law(ns):
    # Exact parabolas: the optimum and the loss there come back to 1e-9.
    optima = []
    for c, (tokens, losses) in zip(_BUDGETS, _isoflops_curves(0.0, 0)):
        got_tokens, got_loss = ns.isoflops_minimum(tokens, losses)
        truth = _A * c ** _ALPHA
        assert math.isclose(got_tokens, truth, rel_tol=1e-9), (
            f"isoflops_minimum at C = {c:.0e}: {got_tokens:.6g} tokens, expected {truth:.6g} (the losses are an exact "
            f"parabola in log10(tokens): fit a second-degree polynomial in log tokens, return its vertex)")
        assert math.isclose(got_loss, 2.0 + 40.0 * c ** -0.1, rel_tol=1e-9), \
            f"isoflops_minimum at C = {c:.0e}: the fitted loss at the vertex is {got_loss}, expected {2 + 40 * c ** -0.1}"
        optima.append(got_tokens)
    A, alpha = ns.fit_power_law(_BUDGETS, np.array(optima))
    assert math.isclose(alpha, _ALPHA, rel_tol=1e-9) and math.isclose(A, _A, rel_tol=1e-7), (
        f"fit_power_law on exact optima: (A, α) = ({A}, {alpha}), expected ({_A}, {_ALPHA}) -- a line in log-log, "
        f"and A itself (not log A)")

    # Noisy measurements: the same least squares as numpy's polyfit.
    for seed in (1, 2):
        optima = []
        for tokens, losses in _isoflops_curves(0.02, seed):
            a, b, c = np.polyfit(np.log10(tokens), losses, 2)
            expected = 10 ** (-b / (2 * a))
            got_tokens, _ = ns.isoflops_minimum(tokens, losses)
            assert math.isclose(got_tokens, expected, rel_tol=1e-6), (
                f"isoflops_minimum on noisy losses: {got_tokens:.6g} tokens, the least-squares parabola in "
                f"log10(tokens) has its vertex at {expected:.6g} (not the smallest measured point)")
            optima.append(expected)
        slope, intercept = np.polyfit(np.log10(_BUDGETS), np.log10(optima), 1)
        A, alpha = ns.fit_power_law(_BUDGETS, np.array(optima))
        assert math.isclose(alpha, slope, rel_tol=1e-6) and math.isclose(A, 10 ** intercept, rel_tol=1e-5), (
            f"fit_power_law on noisy optima: (A, α) = ({A:.6g}, {alpha:.6g}), least squares in log-log gives "
            f"({10 ** intercept:.6g}, {slope:.6g})")
