"""
figures.py -- pictures of what the paper describes, for the classroom (docs/TEACHING.md).

Stage: none (teaching material). Each figure is drawn from the project's own code, so a
picture cannot disagree with what the scripts do:

  document_mask.png     §3.2: the document-causal mask of one packed row, and the RoPE
                        positions that restart at each document (model.document_causal_mask,
                        model.positions_from_doc_ids).
  rope_wavelengths.png  §3.2 / Llama 3.1: the wavelength of every RoPE frequency of a
                        128-wide head, with and without use_scaled_rope (model.rope_frequencies).
  lr_schedule_405b.png  §3.4.1, §3.4.3: 405B's learning rate -- warm-up, cosine, annealing
                        (pretrain.lr_at), with the two ends magnified.
  batch_growth_405b.png §3.4.1 (and §3.4.2): tokens per step and sequence length against
                        the tokens seen (pretrain.stage_at).
  attention.png         the attention probabilities of every head of a small model on a
                        short text: --ckpt (e.g. out/pretrain/final), else a tiny byte-level
                        model trained here on the built-in English text (~10 s on 2 cores).

Reads:  --ckpt (optional; its tokenizer.model beside it).
Writes: the five PNGs into --out (small: 90 dpi).
Run:    python figures.py --out docs/figures
        python figures.py --out /tmp/fig --ckpt out/pretrain/final --text "def add(a, b):"
Tests:  tests/test_figures.py.
Next:   docs/TEACHING.md, where the figures are shown and discussed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import time

import torch
import torch.nn.functional as F

import model as M
import pretrain
from common import UsageError, cli, set_threads

DPI = 90
FIGURES = ("document_mask", "rope_wavelengths", "lr_schedule_405b", "batch_growth_405b", "attention")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: str) -> str:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)
    return path


# -----------------------------------------------------------------------------
# 1. The document mask of a packed row (§3.2)


def draw_document_mask(path: str, doc_lengths=(6, 4, 7, 3)) -> str:
    """Left: plain causal attention over a packed row; right: Llama 3's mask, which also
    stops attention between documents. Cell (i, j) colored = query i may see key j."""
    plt = _pyplot()
    doc_ids = torch.repeat_interleave(torch.arange(len(doc_lengths)), torch.tensor(doc_lengths))[None]  # (1, T)
    T = doc_ids.shape[1]
    mask = M.document_causal_mask(doc_ids)[0]  # (T, T) bool
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    positions = M.positions_from_doc_ids(doc_ids)[0]
    colored = torch.where(mask, doc_ids[0][:, None].float() + 1, torch.zeros(T, T))  # 0 = masked, d+1 = document d
    from matplotlib.colors import ListedColormap
    palette = ListedColormap(["white"] + [plt.get_cmap("tab10")(i) for i in range(1, len(doc_lengths) + 1)])
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4))
    for ax, image, cmap, title in (
            (axes[0], causal.float(), ListedColormap(["white", "gray"]), "causal only: every earlier token"),
            (axes[1], colored, palette, "§3.2 document mask: earlier tokens of the same document")):
        ax.imshow(image.numpy(), cmap=cmap, vmin=0, vmax=cmap.N - 1, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("key j (its RoPE position below)")
        ax.set_ylabel("query i")
        ax.set_xticks(range(T), [str(int(p)) for p in positions], fontsize=7)
        ax.set_yticks(range(T), [f"d{int(d)}" for d in doc_ids[0]], fontsize=7)
    seen = int(mask.sum())
    fig.suptitle(f"One packed row of {T} tokens, documents of {', '.join(map(str, doc_lengths))} tokens: "
                 f"{seen} of {int(causal.sum())} causal pairs remain; positions restart per document", fontsize=10)
    return _save(fig, path)


# -----------------------------------------------------------------------------
# 2. RoPE wavelengths with and without the Llama 3.1 scaling


def draw_rope_wavelengths(path: str, name: str = "llama3.1-8b") -> str:
    """The wavelength 2π/freq (in positions) of each of the head_dim/2 rotation pairs:
    Llama 3 (θ = 500,000) and Llama 3.1's use_scaled_rope, which divides the slow
    frequencies by 8, keeps the fast ones and blends those in between."""
    plt = _pyplot()
    args = M.ModelArgs.from_name(name)
    scaled = (2 * math.pi / M.rope_frequencies(args).double()).numpy()  # (hd/2,)
    plain = (2 * math.pi / M.rope_frequencies(dataclasses.replace(args, use_scaled_rope=False)).double()).numpy()
    low = args.rope_original_max_seq_len / args.rope_low_freq_factor  # longer than this: divided by the factor
    high = args.rope_original_max_seq_len / args.rope_high_freq_factor  # shorter than this: kept
    fig, ax = plt.subplots(figsize=(8, 4.4))
    pairs = range(len(plain))
    ax.axhspan(plain.min() / 2, high, color="tab:green", alpha=0.08)
    ax.axhspan(high, low, color="tab:orange", alpha=0.1)
    ax.axhspan(low, scaled.max() * 2, color="tab:red", alpha=0.06)
    ax.semilogy(pairs, plain, "o", ms=3, label=f"Llama 3 (θ = {args.rope_theta:,.0f})")
    ax.semilogy(pairs, scaled, "-", lw=1.5, label=f"Llama 3.1 use_scaled_rope (factor {args.rope_scale_factor:g})")
    for y, text in ((high, f"{high:,.0f} = {args.rope_original_max_seq_len:,} / high_freq_factor: kept below"),
                    (low, f"{low:,.0f} = {args.rope_original_max_seq_len:,} / low_freq_factor: "
                          f"×{args.rope_scale_factor:g} above"),
                    (131072, "131,072: the 128K context")):
        ax.axhline(y, color="gray", lw=0.8, ls="--")
        ax.text(1, y * 1.15, text, fontsize=8, color="dimgray")
    ax.set_xlabel(f"rotation pair i of a {args.head_dim}-wide head (frequency θ^(-2i/{args.head_dim}))")
    ax.set_ylabel("wavelength 2π/freq (positions)")
    ax.set_title(f"RoPE wavelengths of {name}: only the slow pairs change", fontsize=10)
    ax.set_ylim(plain.min() / 2, scaled.max() * 2)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


# -----------------------------------------------------------------------------
# 3. The 405B learning-rate schedule (§3.4.1, §3.4.3) and 4. its batch growth (§3.4.1)

# §3.4.1: peak 8e-5, linear warm-up over 8,000 steps, cosine to 8e-7 over 1,200,000 steps.
# §3.4.3: the learning rate is annealed linearly to 0 over the last 40M tokens, which at
# 16M tokens per step is 3 steps.
SCHEDULE_405B = dict(max_lr=8e-5, warmup_steps=8000, total_steps=1_200_000, min_lr_ratio=0.01,
                     anneal_steps=math.ceil(40e6 / 16 * 2**-20))


def draw_lr_schedule(path: str) -> str:
    plt = _pyplot()
    cfg = SCHEDULE_405B
    total = cfg["total_steps"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), gridspec_kw=dict(width_ratios=[2, 1, 1]))
    views = [(range(0, total, 500), 0, 1e-5, "the whole run (1.2M steps)", "optimizer step"),
             (range(0, 20_001, 50), 0, 1e-5, f"warm-up: {cfg['warmup_steps']:,} linear steps", "optimizer step"),
             (range(total - 10, total), total, 1e-7, f"the end: cosine at 1%, then {cfg['anneal_steps']} steps to 0",
              "steps before the end")]
    for ax, (steps, origin, unit, title, xlabel) in zip(axes, views):
        lrs = [pretrain.lr_at(s, **cfg) / unit for s in steps]
        ax.plot([s - origin for s in steps], lrs, "-o" if len(steps) < 20 else "-", ms=3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"learning rate (×{unit:.0e})")
        ax.grid(alpha=0.3)
    axes[0].annotate("annealing (§3.4.3): 40M tokens\n= 3 steps, invisible here", xy=(total, 0.08), xytext=(6e5, 4),
                     fontsize=8, arrowprops=dict(arrowstyle="->", color="gray"))
    fig.suptitle("Llama 3 405B: peak 8e-5, warm-up 8,000 steps, cosine to 8e-7 over 1.2M steps (§3.4.1), "
                 "annealed to 0 (§3.4.3) -- pretrain.lr_at", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def batch_schedule_405b() -> tuple[pretrain.PretrainConfig, int]:
    """§3.4.1 as pretrain.py's step schedules: 4M tokens per step at sequence length
    4,096; 8M at 8,192 once 252M tokens are seen; 16M once 2.87T are seen; 15.6T in all
    (§3.4.2's ~800B long-context tokens at the end, one stage here, six in the paper).
    -> (config, total steps)."""
    M4, M8, M16 = 1024 * 4096, 1024 * 8192, 2048 * 8192  # tokens per step
    step_8m = math.ceil(252e6 / M4)
    step_16m = step_8m + math.ceil((2.87e12 - step_8m * M4) / M8)
    total = step_16m + math.ceil((15.6e12 - step_8m * M4 - (step_16m - step_8m) * M8) / M16)
    cfg = pretrain.PretrainConfig(seq_len=4096, tokens_per_step=M4, seq_len_schedule=f"0:4096,{step_8m}:8192",
                                  batch_schedule=f"0:{M4},{step_8m}:{M8},{step_16m}:{M16}",
                                  long_context_steps=math.ceil(800e9 / M16), long_context_seq_len=131072)
    return cfg, total


def draw_batch_growth(path: str) -> str:
    plt = _pyplot()
    cfg, total = batch_schedule_405b()
    # stage_at is constant between the change points: evaluate it there (and at the end)
    # and count the tokens seen in between.
    changes = sorted({0, total} | {s for text in (cfg.seq_len_schedule, cfg.batch_schedule)
                                   for s, _ in pretrain.parse_schedule(text, 0)} | {total - cfg.long_context_steps})
    seen, xs, batch, seq = 0, [], [], []
    for start, end in zip(changes, changes[1:]):
        seq_len, tokens = pretrain.stage_at(cfg, start, total)
        xs += [max(seen, 1e8), seen + (end - start) * tokens]  # log axis: start drawing at 100M
        batch += [tokens / 2**20] * 2
        seq += [seq_len] * 2
        seen += (end - start) * tokens
    fig, axes = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    axes[0].plot(xs, batch, lw=2)
    axes[0].set_ylabel("tokens per step (M)")
    axes[1].plot(xs, seq, lw=2, color="tab:orange")
    axes[1].set_yscale("log", base=2)
    axes[1].set_yticks([4096, 8192, 131072], ["4,096", "8,192", "131,072"])
    axes[1].set_ylabel("sequence length")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("tokens seen (log scale)")
    for ax in axes:
        ax.grid(alpha=0.3)
        for x, text in ((252e6, "252M"), (2.87e12, "2.87T"), (seen - cfg.long_context_steps * 16 * 2**20, "§3.4.2")):
            ax.axvline(x, color="gray", lw=0.8, ls="--")
            ax.text(x * 1.1, ax.get_ylim()[1] * 0.8 if ax is axes[0] else 5000, text, fontsize=8, color="dimgray")
    axes[0].set_title(f"Llama 3 405B (§3.4.1): 4M -> 8M -> 16M tokens per step, 4,096 -> 8,192 tokens per "
                      f"row; {seen / 1e12:.1f}T tokens in {total:,} steps", fontsize=10)
    axes[1].text(2e8, 40000, "long context (§3.4.2): 8K -> 128K in six stages over ~800B tokens;\n"
                            "pretrain.py's stage_at has one stage (--long-context-steps)", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# -----------------------------------------------------------------------------
# 5. Attention patterns of a small model


def attention_probs(model: M.Transformer, tokens: torch.Tensor) -> list[torch.Tensor]:
    """Run the model on tokens (1, T) and return each layer's attention probabilities
    (n_heads, T, T). The model attends with fused SDPA, which never materializes them;
    here each layer's _attend is wrapped to recompute softmax(q·kᵀ/√d + causal mask)
    from the q and k it receives (after RoPE), KV heads repeated for GQA."""
    captured = []

    def capture(attention):
        original = attention._attend

        def attend(q, k, v, mask, doc_ids):  # q (B, H, T, hd), k (B, KV, T, hd)
            k_all = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # query head h reads KV head h // G
            scores = (q.float() @ k_all.float().transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, T, T)
            causal = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
            captured.append(scores.masked_fill(~causal, float("-inf")).softmax(-1)[0])
            return original(q, k, v, mask, doc_ids)
        return attend

    layers = [block.attention for block in model.layers.values()]
    for attention in layers:
        attention._attend = capture(attention)  # instance attribute: shadows the method
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        for attention in layers:
            del attention._attend
    return captured


def train_tiny_model(steps: int = 300, seed: int = 0, chars: int = 300_000) -> tuple[M.Transformer, list[float]]:
    """A 2-layer, 4-head byte-level model (ids = UTF-8 bytes) trained for `steps` AdamW
    steps on the built-in English text (Python's documentation topics): enough for
    attention heads to specialize. -> (model, loss per step)."""
    import tokenizer
    torch.manual_seed(seed)
    text = "\n".join(tokenizer.builtin_texts(chars, kind="docs"))
    data = torch.tensor(list(text.encode("utf-8")[:chars]), dtype=torch.long)
    args = M.ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, multiple_of=32, max_seq_len=128)
    model = M.Transformer(args)
    model.init_weights()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses, T = [], args.max_seq_len
    for step in range(steps):
        starts = torch.randint(0, len(data) - T - 1, (16,))
        rows = torch.stack([data[s: s + T + 1] for s in starts])  # (16, T + 1)
        loss = F.cross_entropy(model(rows[:, :-1]).flatten(0, 1), rows[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return model.eval(), losses


def draw_attention(path: str, model: M.Transformer, tokens: torch.Tensor, labels: list[str], title: str,
                   layers: list[int] | None = None) -> str:
    """One panel per (layer, head) of the chosen layers (default: all of a model up to 4
    layers deep, else the first, middle and last): row = query token, column = key."""
    plt = _pyplot()
    probs = attention_probs(model, tokens)
    if layers is None:
        layers = list(range(len(probs))) if len(probs) <= 4 else [0, len(probs) // 2, len(probs) - 1]
    n_heads = probs[0].shape[0]
    size = min(4.0, max(2.4, 0.09 * len(labels)))  # inches per panel: ~8 px per token at 90 dpi
    fig, axes = plt.subplots(len(layers), n_heads, figsize=(size * n_heads, size * len(layers) + 0.6), squeeze=False)
    step = max(1, len(labels) // 40)  # at most ~40 tick labels per axis
    rotation = 0 if max(map(len, labels)) <= 1 else 90
    for row, layer in enumerate(layers):
        heads = probs[layer]
        for head in range(n_heads):
            ax = axes[row][head]
            ax.imshow(heads[head].numpy() ** 0.5, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"layer {layer}, head {head}", fontsize=8)
            ax.set_xticks(range(0, len(labels), step), labels[::step], fontsize=6, rotation=rotation)
            ax.set_yticks(range(0, len(labels), step), labels[::step], fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _visible(piece: str) -> str:
    """A token's text for a tick label: spaces and newlines made visible, specials shortened."""
    if piece.startswith("<|") and piece.endswith("|>"):
        return {"<|begin_of_text|>": "<bos>"}.get(piece, piece[2:8])
    return piece.replace(" ", "·").replace("\n", "⏎") or "∅"


# -----------------------------------------------------------------------------
# 6. Command line

DEFAULT_TEXT = "The cat sat on the mat. The cat ran."


@cli
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Draw the classroom figures (docs/TEACHING.md) from the project's code.")
    p.add_argument("--out", default="docs/figures", help="folder for the PNGs")
    p.add_argument("--ckpt", help="model for attention.png (e.g. out/pretrain/final; default: a tiny byte-level "
                                  "model trained here in seconds)")
    p.add_argument("--text", default=DEFAULT_TEXT, help="the short text whose attention is drawn")
    p.add_argument("--train-steps", type=int, default=300, help="steps of the tiny model (without --ckpt)")
    p.add_argument("--layers", help="comma-separated layers to draw in attention.png (default: all, or the first, "
                                    "middle and last of a model deeper than 4 layers)")
    p.add_argument("--only", default=",".join(FIGURES), help=f"comma-separated subset of {','.join(FIGURES)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: the cores)")
    a = p.parse_args(argv)
    only = [f.strip() for f in a.only.split(",") if f.strip()]
    unknown = sorted(set(only) - set(FIGURES))
    if unknown:
        raise UsageError(f"--only: unknown figure(s) {', '.join(unknown)}; known: {', '.join(FIGURES)}")
    if a.train_steps <= 0:
        raise UsageError(f"--train-steps must be > 0 (got {a.train_steps})")
    if not a.text.strip():
        raise UsageError("--text is empty")
    try:
        layers = [int(x) for x in a.layers.split(",")] if a.layers else None
    except ValueError:
        raise UsageError(f"--layers {a.layers!r}: expected comma-separated layer numbers, e.g. 0,3,5") from None
    set_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    out = lambda name: os.path.join(a.out, f"{name}.png")  # noqa: E731
    drawn = []
    if "document_mask" in only:
        drawn.append(draw_document_mask(out("document_mask")))
    if "rope_wavelengths" in only:
        drawn.append(draw_rope_wavelengths(out("rope_wavelengths")))
    if "lr_schedule_405b" in only:
        drawn.append(draw_lr_schedule(out("lr_schedule_405b")))
    if "batch_growth_405b" in only:
        drawn.append(draw_batch_growth(out("batch_growth_405b")))
    if "attention" in only:
        t0 = time.time()
        if a.ckpt:
            import checkpoint
            from tokenizer import Tokenizer
            if not os.path.exists(a.ckpt):
                raise UsageError(f"--ckpt {a.ckpt}: no such file or folder")
            tokenizer_path = checkpoint.find_tokenizer(a.ckpt)
            if tokenizer_path is None:
                raise UsageError(f"--ckpt {a.ckpt}: no tokenizer.model beside it")
            model, _ = checkpoint.load_model(a.ckpt)
            tok = Tokenizer(tokenizer_path)
            ids = tok.encode(a.text, bos=True)[: model.args.max_seq_len]
            labels = [_visible(tok.decode_token_bytes(i).decode("utf-8", "replace")) for i in ids]
            title = f"attention of {a.ckpt} on {a.text!r} (row: query, column: key; color: √probability)"
            model.eval()
        else:
            model, losses = train_tiny_model(a.train_steps, a.seed)
            print(f"tiny byte-level model: {a.train_steps} steps in {time.time() - t0:.1f}s, loss {losses[0]:.2f} "
                  f"-> {sum(losses[-20:]) / len(losses[-20:]):.2f} nats/byte")
            ids = list(a.text.encode("utf-8"))[: model.args.max_seq_len]
            labels = [_visible(bytes([i]).decode("utf-8", "replace")) for i in ids]
            title = (f"attention of a tiny byte-level model (2 layers x 4 heads, {a.train_steps} steps) on the text "
                     f"(row: query, column: key; color: √probability)")
        if layers is not None and not all(0 <= x < model.args.n_layers for x in layers):
            raise UsageError(f"--layers {a.layers}: the model has layers 0..{model.args.n_layers - 1}")
        drawn.append(draw_attention(out("attention"), model, torch.tensor([ids]), labels, title, layers))
    for path in drawn:
        print(f"wrote {path} ({os.path.getsize(path) / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
