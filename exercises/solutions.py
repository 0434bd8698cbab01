"""
exercises/solutions.py -- reference answers to the exercises (for teachers).

Stage: classroom. Each function has the signature of its skeleton in exercises/exNN_*.py
and is written out in full (not a call into the project), adapted from the project's
own code: model.py, tokenizer.py, dedup.py, pretrain.py, plan.py, sample.py, the
reward / DPO losses of §4.1.2 and §4.1.4 and dpo.py's masks; exercise 14 (§3.2.1) is
plain numpy. tests/test_classroom.py plugs these into
exercises/checks.py: every check must pass with them (and fail on the skeletons, and
on a deliberately wrong variant), so a project change that the exercises no longer
match shows up as a failing test.

Reads / writes: nothing.
Run:    python -m pytest -q tests/test_classroom.py
Next:   exercises/README.md (the statements), docs/TEACHING.md (how to run a class).

Students: try the exercise first. Reading this file before is like reading the last
page of a crossword.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F


# -----------------------------------------------------------------------------
# 1. RMSNorm (§3.2) -- model.RMSNorm.forward


def rmsnorm(x, weight, eps=1e-5):
    x32 = x.float()  # (..., dim): normalize in fp32 even for bf16 inputs
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return normed.type_as(x) * weight  # cast back first, then scale (as Meta does)


# -----------------------------------------------------------------------------
# 2. RoPE (§3.2) with the Llama 3.1 release's scaling -- model.rope_frequencies, apply_rotary_emb


def rope_frequencies(head_dim, theta=500000.0, use_scaled_rope=True, scale_factor=8.0,
                     low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=8192):
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (hd/2,)
    if not use_scaled_rope:
        return freqs.float()
    wavelen = 2 * math.pi / freqs
    # long wavelengths (> original / low_freq_factor): divide the frequency by the factor;
    # short ones (< original / high_freq_factor): keep; in between: interpolate.
    smooth = (original_max_seq_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    out = (1 - smooth) * freqs / scale_factor + smooth * freqs
    out = torch.where(wavelen > original_max_seq_len / low_freq_factor, freqs / scale_factor, out)
    out = torch.where(wavelen < original_max_seq_len / high_freq_factor, freqs, out)
    return out.float()


def apply_rope(x, freqs, positions):
    angles = positions[..., None].float() * freqs  # (B, T, hd/2)
    cos, sin = angles.cos()[:, :, None], angles.sin()[:, :, None]  # (B, T, 1, hd/2)
    x0, x1 = x.float()[..., 0::2], x.float()[..., 1::2]  # interleaved pairs (Meta's layout)
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)  # (B, T, H, hd/2, 2)
    return out.flatten(-2).type_as(x)


# -----------------------------------------------------------------------------
# 3. Grouped-query attention and the KV cache (§3.2) -- model.Attention, model.KVCache


def gqa_attention(q, k, v):
    B, H, T, hd = q.shape
    n_rep = H // k.shape[1]  # query heads per KV head
    k = k.repeat_interleave(n_rep, dim=1)  # (B, H, T, hd): head h uses KV head h // n_rep
    v = v.repeat_interleave(n_rep, dim=1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(hd)  # (B, H, T, T)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    return scores.softmax(-1) @ v  # (B, H, T, hd)


def kv_cache_bytes(n_layers, n_kv_heads, head_dim, seq_len, batch_size, bytes_per_value=2):
    return 2 * n_layers * batch_size * n_kv_heads * seq_len * head_dim * bytes_per_value  # 2: keys and values


# -----------------------------------------------------------------------------
# 4. The document mask (§3.2) -- model.positions_from_doc_ids, document_causal_mask


def positions_from_doc_ids(doc_ids):
    B, T = doc_ids.shape
    positions = torch.zeros_like(doc_ids)
    for t in range(1, T):  # a loop reads best here; the project's version is vectorized
        same = doc_ids[:, t] == doc_ids[:, t - 1]
        positions[:, t] = torch.where(same, positions[:, t - 1] + 1, torch.zeros_like(positions[:, t]))
    return positions


def document_causal_mask(doc_ids):
    T = doc_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()  # (T, T): key j <= query i
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]  # (B, T, T)
    return causal & same_doc


# -----------------------------------------------------------------------------
# 5. SwiGLU, its width and the parameter count (§3.2, Table 3) -- model.FeedForward,
#    ModelArgs.ffn_hidden_dim, model.count_params


def swiglu(x, w1, w2, w3):
    return F.linear(F.silu(F.linear(x, w1)) * F.linear(x, w3), w2)


def ffn_hidden_dim(dim, multiple_of, ffn_dim_multiplier=None):
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)


def count_params(args):
    d, hd = args.dim, args.dim // args.n_heads
    h = args.hidden_dim or ffn_hidden_dim(args.dim, args.multiple_of, args.ffn_dim_multiplier)
    attention = 2 * d * args.n_heads * hd + 2 * d * args.n_kv_heads * hd  # wq wo, wk wv
    block = attention + 3 * d * h + 2 * d  # w1 w2 w3, two RMSNorm weights
    embeddings = args.vocab_size * d * (1 if args.tie_embeddings else 2)  # input + output
    return args.n_layers * block + embeddings + d  # + final norm


# -----------------------------------------------------------------------------
# 6. A BPE merge step (§3.2) -- tokenizer._merge_word, tokenizer.train_bpe


def merge_pair(word, a, b, new_id):
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def learn_merges(texts, n_merges):
    from tokenizer import count_chunks  # Meta's pre-tokenization regex, chunks counted
    chunks = count_chunks(texts)
    words = [list(c.encode("utf-8")) for c in chunks]
    freqs = list(chunks.values())
    token_bytes = [bytes([i]) for i in range(256)]
    new_tokens = []
    while len(new_tokens) < n_merges:
        pairs = Counter()
        for word, freq in zip(words, freqs):
            for pair in zip(word, word[1:]):
                pairs[pair] += freq
        if not pairs:
            break
        # most frequent; ties: smallest (bytes of a, bytes of b)
        a, b = min(pairs, key=lambda p: (-pairs[p], token_bytes[p[0]], token_bytes[p[1]]))
        merged = token_bytes[a] + token_bytes[b]  # always new bytes (docs/NOTES.md proves it)
        token_bytes.append(merged)
        new_tokens.append(merged)
        words = [merge_pair(w, a, b, len(token_bytes) - 1) for w in words]
    return new_tokens


# -----------------------------------------------------------------------------
# 7. MinHash (§3.1.1) -- dedup.minhash_signatures


def minhash_signature(shingles, a, b):
    x = np.asarray(shingles, dtype=np.uint64)  # (S,) 32-bit shingle hashes
    hashed = x[:, None] * a[None, :] + b[None, :]  # (S, K), wraps mod 2^64
    return (hashed.min(axis=0) >> np.uint64(32)).astype(np.uint32)  # top 32 bits of the min


def estimate_jaccard(sig_a, sig_b):
    return float(np.mean(np.asarray(sig_a) == np.asarray(sig_b)))


# -----------------------------------------------------------------------------
# 8. Learning-rate schedule (§3.4.1, §3.4.3) -- pretrain.lr_at


def lr_schedule(step, max_lr, warmup_steps, total_steps, min_lr_ratio=0.01, anneal_steps=0):
    min_lr = max_lr * min_lr_ratio

    def cosine(s):
        if s < warmup_steps:
            return max_lr * (s + 1) / warmup_steps
        progress = min(1.0, (s - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr + (max_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))

    anneal_start = total_steps - anneal_steps
    if anneal_steps > 0 and step >= anneal_start:
        return cosine(anneal_start) * max(0.0, (total_steps - step - 1) / anneal_steps)
    return cosine(step)


# -----------------------------------------------------------------------------
# 9. FSDP memory per GPU (§3.3.2) -- plan.plan


def fsdp_memory_per_gpu(params_per_gpu, dp):
    shard = math.ceil(params_per_gpu / dp)
    out = dict(weights_bf16=2 * params_per_gpu,  # gathered bf16 copy, kept after forward
               master_fp32=4 * shard, grads_fp32=4 * shard, optimizer=8 * shard)
    out["total"] = sum(out.values())
    return out


# -----------------------------------------------------------------------------
# 10. Reward-model loss (§4.1.2) -- reward.reward_loss


def reward_loss(chosen_scores, rejected_scores):
    return -F.logsigmoid(chosen_scores - rejected_scores).mean()


# -----------------------------------------------------------------------------
# 11. DPO loss and its gradient (§4.1.4) -- dpo.dpo_loss


def dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
             beta=0.1):
    chosen = policy_chosen_logps - reference_chosen_logps  # log π/π_ref of the chosen response
    rejected = policy_rejected_logps - reference_rejected_logps
    losses = -F.logsigmoid(beta * (chosen - rejected))
    return losses, (beta * chosen).detach(), (beta * rejected).detach()


def dpo_loss_grad(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
                  beta=0.1):
    delta = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    g = beta * torch.sigmoid(-beta * delta)  # large when the model still prefers the rejected one
    return -g, g


# -----------------------------------------------------------------------------
# 12. Temperature, top-k, top-p (Meta's reference code, not the paper) -- sample.sample_next


def sampling_distribution(logits, temperature=0.6, top_p=0.9, top_k=None):
    N, V = logits.shape
    if temperature == 0:
        return F.one_hot(logits.argmax(-1), V).float()
    logits = logits.float() / temperature
    if top_k is not None and top_k < V:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (N, 1) k-th largest
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(-1, descending=True)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs  # mass ranked above each token
        sorted_probs = sorted_probs.masked_fill(mass_before > top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return probs / probs.sum(-1, keepdim=True)


# -----------------------------------------------------------------------------
# 13. The DPO formatting-token mask (§4.1.4) -- tokenizer.ChatFormat.encode_dialog,
#     dpo.encode_pair_response, dpo.sequence_logps


def dialog_format_mask(chat, messages, add_generation_prompt=False):
    tokens, is_format = [chat.tokenizer.bos_id], [True]
    for message in messages:
        header = chat.encode_header(message)  # <|start_header_id|> role <|end_header_id|> "\n\n"
        content = chat.tokenizer.encode(message["content"].strip(), bos=False, eos=False)
        tokens += header + content + [chat.tokenizer.eot_id]
        is_format += [True] * len(header) + [False] * len(content) + [True]
    if add_generation_prompt:
        header = chat.encode_header({"role": "assistant", "content": ""})
        tokens += header
        is_format += [True] * len(header)
    return tokens, is_format


def dpo_logp_mask(chat, prompt, response, mask_format_tokens=True):
    prompt_len = len(dialog_format_mask(chat, prompt, add_generation_prompt=True)[0])  # assistant header included
    tokens, is_format = dialog_format_mask(chat, list(prompt) + [{"role": "assistant", "content": response}])
    mask = [t >= prompt_len and not (mask_format_tokens and f) for t, f in enumerate(is_format)]
    return tokens, mask


def sequence_logp(logits, tokens, mask):
    logp = logits.float().log_softmax(-1)  # (N, T-1, vocab): position t predicts token t+1
    picked = logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)  # (N, T-1): log p(token t+1)
    return (picked * mask[:, 1:]).sum(-1)  # the mask shifted to the predicted tokens


# -----------------------------------------------------------------------------
# 14. The scaling-law fit (§3.2.1): IsoFLOPs parabolas, then N*(C) = A·C^α


def isoflops_minimum(tokens, losses):
    x = np.log10(np.asarray(tokens, dtype=np.float64))  # the IsoFLOPs curves are parabolas in log tokens
    a, b, c = np.polyfit(x, np.asarray(losses, dtype=np.float64), 2)
    x_min = -b / (2 * a)  # the vertex
    return float(10 ** x_min), float(a * x_min ** 2 + b * x_min + c)


def fit_power_law(compute, optimal_tokens):
    alpha, log_a = np.polyfit(np.log10(compute), np.log10(optimal_tokens), 1)  # a line in log-log
    return float(10 ** log_a), float(alpha)
