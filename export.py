"""
export.py -- write a trained model where people run models: a Hugging Face folder,
one GGUF file for llama.cpp, or Meta's own layout.

Stage: infrastructure, after any training stage. checkpoint.py reads every format;
this file writes the three that other programs read, from any checkpoint load_model
reads (this project's model.pt, a distributed checkpoint, Meta's, Hugging Face's):

  hf    OUT/config.json, model.safetensors (past --max-shard-mb: model-0000i-of-0000n
        .safetensors + model.safetensors.index.json, as the hub shards), generation_config
        .json (Meta's temperature 0.6 / top-p 0.9 and the three stop tokens),
        tokenizer.json + tokenizer_config.json + special_tokens_map.json (built from the
        tiktoken-format BPE file, with Llama 3's chat template) and original/tokenizer.model.
        For transformers, vLLM, lm-evaluation-harness -- anything that calls
        AutoTokenizer / AutoModelForCausalLM.from_pretrained(OUT).
  gguf  OUT.gguf: architecture "llama", llama.cpp's tensor names, the BPE vocabulary and
        merges with the Llama 3 pre-tokenizer ("llama-bpe"), special tokens, chat
        template, RoPE θ and Llama 3.1 scaling, in fp32 / fp16 / bf16 / q8_0. For
        llama.cpp, Ollama, LM Studio.
  meta  OUT/consolidated.00.pth + params.json + tokenizer.model, what Meta's reference
        code (llama-models) loads.

The three layouts of the same weights
  - Names. Ours are Meta's (tok_embeddings, layers.i.attention.wq, ...). Hugging Face
    renames them (checkpoint.to_hf_state_dict); llama.cpp has its own (GGUF_NAMES).
  - The rows of wq and wk. RoPE rotates pairs of dimensions inside each head: Meta
    (and so this model) pairs neighbours (x0, x1), (x2, x3), ...; Hugging Face pairs
    halves (x0, x_hd/2), ... and therefore stores wq/wk with their rows permuted per
    head. llama.cpp's "llama" architecture rotates neighbours again (ggml's
    GGML_ROPE_TYPE_NORMAL), which is why its converter un-permutes HF's rows back to
    Meta's order: a GGUF holds wq/wk exactly as Meta's checkpoint does.
  - The tokenizer. Ours is tiktoken's format: "base64(bytes) rank" per line; BPE
    encodes a chunk by repeatedly merging the adjacent pair whose concatenation has the
    lowest rank. Hugging Face and llama.cpp want a vocabulary of printable strings (each
    byte mapped to a visible character, GPT-2's trick) and an ordered list of merges
    (bpe_merges derives it from the ranks), plus the pre-tokenizer regex by name.

Reads:  a checkpoint and its tokenizer.model (beside it, or --tokenizer PATH).
Writes: OUT (a folder for hf and meta, a .gguf file for gguf), written under a
        temporary name and renamed when complete; an existing non-empty OUT is refused.

How to run
    python checkpoint.py export out/dpo/final --to hf out/export/hf
    python checkpoint.py export out/dpo/final --to gguf out/export/model.gguf --dtype fp16
    python checkpoint.py export out/pretrain/checkpoints/step_00000095 --to meta out/export/meta \\
        --tokenizer out/data/tokenizer.model     # a distributed checkpoint keeps no tokenizer
    from export import export; export("out/sft/final", "hf", "out/hf")

Read next: checkpoint.py (the loaders, the other direction), sample.py.
Tests: tests/test_export.py (transformers, gguf's GGUFReader and Meta's model code as
the references).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
import sys
import uuid
from typing import Optional

import torch

import checkpoint
from common import UsageError, atomic_write_json, print0
from model import ModelArgs, rope_frequencies
from tokenizer import PAT_STR, Tokenizer

FORMATS = ("hf", "gguf", "meta")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}  # q8_0: gguf only

# Meta's reference sampling defaults (llama-models' generation.py; §6 does not change them).
TEMPERATURE, TOP_P = 0.6, 0.9

# Llama 3's chat template, as Meta's Hugging Face repositories ship it (Meta-Llama-3-8B-
# Instruct): bos, then per message a header, the content stripped of surrounding
# whitespace, <|eot_id|>; then the assistant header the model completes. It renders
# exactly tokenizer.ChatFormat's tokens. (Llama 3.1's template adds a default system
# message with a knowledge-cutoff date and tool-calling text, which ChatFormat has not.)
CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# -----------------------------------------------------------------------------
# 1. The tokenizer as Hugging Face and llama.cpp spell it


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from the 256 byte values to printable characters: bytes that are
    printable Latin-1 stand for themselves, the others (controls, space, ...) are moved
    to U+0100 and up, in order. b" the" -> "Ġthe", b"\\n" -> "Ċ". Byte-level BPE files
    (tokenizer.json, GGUF "gpt2") store every token as such a string."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars = {b: chr(b) for b in printable}
    for n, b in enumerate(b for b in range(256) if b not in chars):
        chars[b] = chr(256 + n)
    return dict(sorted(chars.items()))


def token_strings(tok: Tokenizer) -> list[str]:
    """Every id's string: byte-level strings for the BPE ranks, then the special tokens'
    names. [b"!" -> "!", ..., b" the" -> "Ġthe", ..., "<|begin_of_text|>", ...]."""
    to_char = bytes_to_unicode()
    strings = [""] * tok.n_words
    for token, rank in tok.mergeable_ranks.items():
        strings[rank] = "".join(to_char[b] for b in token)
    for name, i in tok.special_tokens.items():
        strings[i] = name
    return strings


def bpe_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge list equivalent to tiktoken's ranks, in priority order.

    tiktoken merges, in a chunk, the adjacent pair (a, b) whose concatenation has the
    lowest rank. A merge list gives pair (a, b) the priority of its position. So list
    every split of every token into two tokens, ordered by the rank of the token they
    make: {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"bc": 4, b"abc": 5} ->
    [(a, b), (b, c), (a, bc), (ab, c)] -- both splits of "abc", since BPE can reach it
    from either side. Same tokens, same order of merges, same ids as tiktoken (the
    standard tiktoken -> Hugging Face conversion; for Meta's 128K file: 280,147 merges)."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        splits = [(token[:i], token[i:]) for i in range(1, len(token))
                  if token[:i] in ranks and token[i:] in ranks]
        merges.extend((rank, ranks[a], ranks[b], a, b) for a, b in splits)
    merges.sort()  # by the merged token's rank, then the parts' ranks (ties never compete)
    return [(a, b) for _, _, _, a, b in merges]


def merge_strings(tok: Tokenizer) -> list[tuple[str, str]]:
    """bpe_merges as byte-level strings: [(b" ", b"t") -> ("Ġ", "t"), ...]."""
    to_char = bytes_to_unicode()
    return [("".join(to_char[x] for x in a), "".join(to_char[x] for x in b)) for a, b in bpe_merges(tok.mergeable_ranks)]


def hf_tokenizer_files(tok: Tokenizer, max_seq_len: int) -> dict[str, dict]:
    """{"tokenizer.json": ..., "tokenizer_config.json": ..., "special_tokens_map.json": ...}
    for Hugging Face `tokenizers` / transformers, encoding exactly as `tok` does."""
    strings = token_strings(tok)
    bos, eos = "<|begin_of_text|>", "<|end_of_text|>"
    specials = sorted(tok.special_tokens.items(), key=lambda kv: kv[1])
    tokenizer_json = {
        "version": "1.0", "truncation": None, "padding": None,
        # Special tokens are matched as whole strings before anything else.
        "added_tokens": [{"id": i, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for name, i in specials],
        "normalizer": None,
        # §3.2: Meta's regex cuts text into chunks (tokenizer.PAT_STR), then every byte
        # of a chunk becomes its printable character; merges never cross a chunk.
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PAT_STR}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        # encode(text) with add_special_tokens=True prepends bos, as Meta's encode(bos=True).
        "post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {bos: {"id": bos, "ids": [tok.bos_id], "tokens": [bos]}}}]},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        # ignore_merges: a chunk that is itself a token is that token (tiktoken does the same).
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": {strings[i]: i for i in range(tok.n_base_tokens)},
                  "merges": [list(pair) for pair in merge_strings(tok)]},
    }
    pad = "<|finetune_right_pad_id|>"
    config = {
        "added_tokens_decoder": {str(i): {"content": name, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True} for name, i in specials},
        "bos_token": bos, "eos_token": eos, "pad_token": pad, "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,  # decode exactly, as tiktoken does
        "model_input_names": ["input_ids", "attention_mask"], "model_max_length": max_seq_len,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    special_map = {"bos_token": bos, "eos_token": eos, "pad_token": pad}
    return {"tokenizer.json": tokenizer_json, "tokenizer_config.json": config,
            "special_tokens_map.json": special_map}


def stop_ids(tok: Tokenizer) -> list[int]:
    """Generation stops at the end of a document, of a message or of a turn (Meta's
    stop_tokens): [<|end_of_text|>, <|eom_id|>, <|eot_id|>]."""
    return sorted(tok.stop_tokens)


# -----------------------------------------------------------------------------
# 2. Hugging Face: safetensors, written here
#
# A .safetensors file is: 8 bytes (little-endian u64) = N, then N bytes of JSON
# {"name": {"dtype": "F32", "shape": [rows, cols], "data_offsets": [begin, end]}, ...,
#  "__metadata__": {"format": "pt"}} padded with spaces to a multiple of 8, then the raw
# little-endian bytes of every tensor, row-major, at those offsets. No pickle, no code.

SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def _raw(t: torch.Tensor):
    """A tensor's bytes, row-major, as a buffer file.write accepts (no copy when contiguous)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def write_safetensors(path: str, tensors: dict, metadata: Optional[dict] = None) -> int:
    """Write {name: tensor} as one .safetensors file; returns its size in bytes."""
    header, offset = {}, 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = dict(metadata or {}, format="pt")
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in tensors.values():
            f.write(_raw(t))
    return 8 + len(raw) + offset


def shard(tensors: dict, max_bytes: int) -> list[dict]:
    """Split {name: tensor} in order into groups of at most max_bytes each (a tensor
    larger than that gets a group of its own), as the hub's sharding does."""
    groups, size = [{}], 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        if groups[-1] and size + n > max_bytes:
            groups.append({})
            size = 0
        groups[-1][name] = t
        size += n
    return groups


def save_hf(sd: dict, args: ModelArgs, tok: Tokenizer, tok_path: str, out: str, dtype: torch.dtype,
            max_shard_bytes: int) -> None:
    """Write a Hugging Face folder (see the file's docstring) into `out` (exists, empty)."""
    hf = {k: v.to(dtype) for k, v in checkpoint.to_hf_state_dict(sd, args).items()}
    groups = shard(hf, max_shard_bytes)
    if len(groups) == 1:
        write_safetensors(os.path.join(out, "model.safetensors"), hf)
    else:
        weight_map, total = {}, 0
        for i, group in enumerate(groups, start=1):
            name = f"model-{i:05d}-of-{len(groups):05d}.safetensors"
            write_safetensors(os.path.join(out, name), group)
            weight_map.update({k: name for k in group})
            total += sum(t.numel() * t.element_size() for t in group.values())
        atomic_write_json(os.path.join(out, "model.safetensors.index.json"),
                          {"metadata": {"total_size": total}, "weight_map": weight_map})
    dtype_name = str(dtype).removeprefix("torch.")
    config = dict(checkpoint.to_hf_config(args), bos_token_id=tok.bos_id, eos_token_id=stop_ids(tok),
                  torch_dtype=dtype_name)
    atomic_write_json(os.path.join(out, "config.json"), config)
    atomic_write_json(os.path.join(out, "generation_config.json"), {
        "bos_token_id": tok.bos_id, "eos_token_id": stop_ids(tok), "pad_token_id": tok.pad_id,
        "do_sample": True, "temperature": TEMPERATURE, "top_p": TOP_P})
    for name, content in hf_tokenizer_files(tok, args.max_seq_len).items():
        atomic_write_json(os.path.join(out, name), content)
    # Meta's HF repositories keep the tiktoken file here; checkpoint.find_tokenizer and
    # so sample.py find it, and load_model reads the folder back.
    os.makedirs(os.path.join(out, "original"))
    shutil.copyfile(tok_path, os.path.join(out, "original", "tokenizer.model"))


# -----------------------------------------------------------------------------
# 3. GGUF (llama.cpp), written here
#
# A GGUF file (version 3, little-endian):
#   "GGUF", u32 version, u64 n_tensors, u64 n_kv,
#   n_kv x (string key, u32 value type, value)            -- the metadata
#   n_tensors x (string name, u32 n_dims, u64 dims[n_dims] (innermost first: a
#               (rows, cols) matrix is [cols, rows]), u32 ggml type, u64 offset)
#   padding to 32 bytes, then every tensor's bytes at its offset (each 32-aligned).
# A string is u64 length + UTF-8 bytes; an array is u32 element type + u64 count + items.

GGUF_MAGIC, GGUF_VERSION, GGUF_ALIGNMENT = b"GGUF", 3, 32
_U32, _I32, _F32, _BOOL, _STR, _ARR = 4, 5, 6, 7, 8, 9  # GGUF value types
GGML_TYPES = {"fp32": 0, "fp16": 1, "q8_0": 8, "bf16": 30}  # tensor types in ggml.h
FILE_TYPES = {"fp32": 0, "fp16": 1, "q8_0": 7, "bf16": 32}  # general.file_type (llama.h's ftype)
TOKEN_NORMAL, TOKEN_CONTROL = 1, 3  # tokenizer.ggml.token_type
QK8_0 = 32  # q8_0: blocks of 32 values, one fp16 scale each

GGUF_NAMES = {  # ours -> llama.cpp's, per layer (blk.N.*)
    "attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v",
    "attention.wo": "attn_output", "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down",
    "feed_forward.w3": "ffn_up", "attention_norm": "attn_norm", "ffn_norm": "ffn_norm",
}


def gguf_state_dict(sd: dict, args: ModelArgs) -> dict:
    """This model's state dict -> llama.cpp's tensor names, wq/wk rows unchanged (see the
    docstring: GGUF keeps Meta's RoPE layout). Tied embeddings: no output.weight
    (llama.cpp then uses token_embd). Llama 3.1 scaling: rope_freqs.weight, the factor
    each RoPE frequency is divided by (1 for short wavelengths, rope_scale_factor for
    long ones, interpolated between), shape (head_dim/2,)."""
    out = {"token_embd.weight": sd["tok_embeddings.weight"], "output_norm.weight": sd["norm.weight"]}
    if not args.tie_embeddings:
        out["output.weight"] = sd["output.weight"]
    if args.use_scaled_rope:
        plain = rope_frequencies(dataclasses.replace(args, use_scaled_rope=False)).double()
        out["rope_freqs.weight"] = (plain / rope_frequencies(args).double()).float()
    for i in range(args.n_layers):
        for ours, theirs in GGUF_NAMES.items():
            out[f"blk.{i}.{theirs}.weight"] = sd[f"layers.{i}.{ours}.weight"]
    return out


def quantize_q8_0(w: torch.Tensor) -> torch.Tensor:
    """ggml's q8_0 (quantize_row_q8_0_ref): each block of 32 values along a row becomes
    d = max|x| / 127 (stored as fp16) and 32 int8 values round(x / d), rounding halves
    away from zero as C's roundf does. (rows, cols) -> (rows, cols/32 * 34) bytes."""
    blocks = w.detach().float().reshape(-1, QK8_0)  # (n_blocks, 32)
    d = blocks.abs().amax(dim=1, keepdim=True) / 127
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    x = (blocks * inv).abs()
    q = torch.sign(blocks * inv) * (x.floor() + (2 * (x - x.floor())).floor())  # roundf, exactly
    raw = torch.cat([d.half().view(torch.uint8), q.to(torch.int8).view(torch.uint8)], dim=1)  # (n_blocks, 34)
    return raw.reshape(w.shape[0], -1)


def dequantize_q8_0(raw: torch.Tensor, cols: int) -> torch.Tensor:
    """Inverse of quantize_q8_0 (up to its rounding): (rows, cols/32 * 34) bytes -> floats."""
    blocks = raw.reshape(-1, 2 + QK8_0)
    d = blocks[:, :2].contiguous().view(torch.float16).float()
    return (blocks[:, 2:].contiguous().view(torch.int8).float() * d).reshape(-1, cols)


def _gguf_string(s: str) -> bytes:
    data = s.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def _gguf_value(vtype: int, value) -> bytes:
    if vtype == _ARR:
        item_type, items = value
        return struct.pack("<IQ", item_type, len(items)) + b"".join(_gguf_value(item_type, v) for v in items)
    if vtype == _STR:
        return _gguf_string(value)
    return struct.pack({_U32: "<I", _I32: "<i", _F32: "<f", _BOOL: "<?"}[vtype], value)


def gguf_metadata(args: ModelArgs, tok: Tokenizer, dtype: str, name: str) -> list:
    """[(key, value type, value)] for a llama.cpp "llama" model and its tokenizer."""
    merges = [f"{a} {b}" for a, b in merge_strings(tok)]  # no token string holds a space (-> "Ġ")
    control = set(tok.special_tokens.values())
    return [
        ("general.architecture", _STR, "llama"),
        ("general.name", _STR, name),
        ("general.file_type", _U32, FILE_TYPES[dtype]),
        ("general.quantization_version", _U32, 2),
        ("llama.vocab_size", _U32, args.vocab_size),
        ("llama.context_length", _U32, args.max_seq_len),
        ("llama.embedding_length", _U32, args.dim),
        ("llama.block_count", _U32, args.n_layers),
        ("llama.feed_forward_length", _U32, args.ffn_hidden_dim),
        ("llama.attention.head_count", _U32, args.n_heads),
        ("llama.attention.head_count_kv", _U32, args.n_kv_heads),
        ("llama.attention.layer_norm_rms_epsilon", _F32, args.norm_eps),
        ("llama.rope.freq_base", _F32, args.rope_theta),  # §3.2: θ = 500,000
        ("llama.rope.dimension_count", _U32, args.head_dim),
        # "gpt2" = byte-level BPE with merges; "llama-bpe" = Meta's pre-tokenizer regex.
        ("tokenizer.ggml.model", _STR, "gpt2"),
        ("tokenizer.ggml.pre", _STR, "llama-bpe"),
        ("tokenizer.ggml.tokens", _ARR, (_STR, token_strings(tok))),
        ("tokenizer.ggml.token_type", _ARR, (_I32, [TOKEN_CONTROL if i in control else TOKEN_NORMAL
                                                    for i in range(tok.n_words)])),
        ("tokenizer.ggml.merges", _ARR, (_STR, merges)),
        ("tokenizer.ggml.bos_token_id", _U32, tok.bos_id),
        ("tokenizer.ggml.eos_token_id", _U32, tok.eos_id),
        ("tokenizer.ggml.eot_token_id", _U32, tok.eot_id),
        ("tokenizer.ggml.eom_token_id", _U32, tok.eom_id),
        ("tokenizer.ggml.padding_token_id", _U32, tok.pad_id),
        ("tokenizer.ggml.add_bos_token", _BOOL, True),
        ("tokenizer.ggml.add_eos_token", _BOOL, False),
        ("tokenizer.chat_template", _STR, CHAT_TEMPLATE),
    ]


def save_gguf(sd: dict, args: ModelArgs, tok: Tokenizer, path: str, dtype: str, name: str) -> None:
    """Write one GGUF file. fp16/bf16/q8_0 apply to the matrices; norms and rope_freqs
    stay fp32 (as llama.cpp's converter keeps every 1-D tensor); q8_0 needs rows of a
    multiple of 32 values and falls back to fp16 for a matrix without them."""
    if sys.byteorder != "little":
        raise UsageError("GGUF export needs a little-endian machine")
    tensors = []  # (name, shape, ggml type, data)
    for key, w in gguf_state_dict(sd, args).items():
        kind = dtype if w.dim() == 2 else "fp32"
        if kind == "q8_0" and w.shape[1] % QK8_0:
            print0(f"{key}: {w.shape[1]} columns are not a multiple of {QK8_0}; stored as fp16, not q8_0")
            kind = "fp16"
        data = quantize_q8_0(w) if kind == "q8_0" else w.to(DTYPES[kind])
        tensors.append((key, tuple(w.shape), GGML_TYPES[kind], data))
    with open(path, "wb") as f:
        meta = gguf_metadata(args, tok, dtype, name)
        f.write(GGUF_MAGIC + struct.pack("<IQQ", GGUF_VERSION, len(tensors), len(meta)))
        for key, vtype, value in meta:
            f.write(_gguf_string(key) + struct.pack("<I", vtype) + _gguf_value(vtype, value))
        offset = 0
        for key, shape, ggml_type, data in tensors:
            f.write(_gguf_string(key) + struct.pack("<I", len(shape)))
            f.write(struct.pack(f"<{len(shape)}Q", *reversed(shape)) + struct.pack("<IQ", ggml_type, offset))
            offset += data.numel() * data.element_size()
            offset += -offset % GGUF_ALIGNMENT
        f.write(b"\0" * (-f.tell() % GGUF_ALIGNMENT))
        for key, shape, ggml_type, data in tensors:
            f.write(_raw(data))
            f.write(b"\0" * (-f.tell() % GGUF_ALIGNMENT))


# -----------------------------------------------------------------------------
# 4. Meta's layout


def meta_params(args: ModelArgs) -> dict:
    """params.json: the ModelArgs fields, without max_seq_len (Meta's Llama.build passes
    max_seq_len itself; a second one in params.json would be a TypeError there). Meta's
    ModelArgs ignores the fields it lacks (rope_scale_factor, hidden_dim, ...);
    checkpoint.load_model reads them."""
    return {k: v for k, v in dataclasses.asdict(args).items() if v is not None and k != "max_seq_len"}


def save_meta(sd: dict, args: ModelArgs, tok_path: str, out: str, dtype: torch.dtype) -> None:
    """consolidated.00.pth (this model's state dict: Meta's names and layout, output.weight
    included even when tied) + params.json + tokenizer.model."""
    derived = dataclasses.replace(args, hidden_dim=None).ffn_hidden_dim
    if args.hidden_dim is not None and args.hidden_dim != derived:
        print0(f"note: hidden_dim={args.hidden_dim} is not what multiple_of/ffn_dim_multiplier give ({derived}): "
               "load_model reads this export, Meta's reference code would build the wrong FFN width")
    if args.use_scaled_rope and args.rope_scale_factor != 8.0:
        print0(f"note: rope_scale_factor={args.rope_scale_factor}: Meta's llama3 reference code hard-codes 8")
    torch.save({k: v.to(dtype).contiguous() for k, v in sd.items()}, os.path.join(out, "consolidated.00.pth"))
    atomic_write_json(os.path.join(out, "params.json"), meta_params(args))
    shutil.copyfile(tok_path, os.path.join(out, "tokenizer.model"))


# -----------------------------------------------------------------------------
# 5. export(): checks, load, write under a temporary name, rename


def _check_out(out: str, to: str) -> None:
    if to == "gguf":
        if not out.endswith(".gguf"):
            raise UsageError(f"{out}: a gguf export is one file; name it *.gguf")
        if os.path.exists(out):
            raise UsageError(f"{out} already exists; remove it or choose another name")
    elif os.path.isfile(out) or (os.path.isdir(out) and os.listdir(out)):
        raise UsageError(f"{out} already exists and is not an empty folder; remove it or choose another")


def export(ckpt: str, to: Optional[str], out: Optional[str], *, tokenizer_path: Optional[str] = None,
           dtype: str = "fp32", max_shard_mb: float = 5000.0) -> str:
    """Write the checkpoint `ckpt` (any format load_model reads) as `to` ("hf", "gguf",
    "meta") at `out`, in `dtype` ("fp32", "bf16", "fp16"; "q8_0" for gguf). The tokenizer
    is `tokenizer_path`, else the one beside the checkpoint; an export without one is
    refused (a GGUF without its vocabulary cannot run, and a folder without it is not
    what AutoTokenizer or Meta's code expect). Returns `out`."""
    if to is None:
        raise UsageError("missing --to: choose one of hf, gguf, meta")
    if to not in FORMATS:
        raise UsageError(f"unknown export format {to!r}: choose one of hf, gguf, meta")
    if not out:
        raise UsageError("missing OUT: the folder (hf, meta) or .gguf file to write")
    kinds = list(DTYPES) + (["q8_0"] if to == "gguf" else [])
    if dtype not in kinds:
        raise UsageError(f"--dtype {dtype!r} is not available for {to}: choose one of {', '.join(kinds)}")
    if not max_shard_mb > 0:
        raise UsageError(f"--max-shard-mb must be positive, got {max_shard_mb}")
    _check_out(out, to)
    checkpoint.detect_format(ckpt)  # "checkpoint not found" / "unknown format" before anything else
    tok_path = tokenizer_path or checkpoint.find_tokenizer(ckpt)
    if tok_path is None:
        raise UsageError(f"{ckpt}: no tokenizer.model beside the checkpoint (a distributed checkpoint keeps "
                         "none); pass --tokenizer PATH, e.g. --tokenizer out/data/tokenizer.model")
    if not os.path.isfile(tok_path):
        raise UsageError(f"tokenizer not found: {tok_path}")
    checkpoint.check_tokenizer(ckpt, tok_path)
    try:
        tok = Tokenizer(tok_path)
    except ValueError as e:
        raise UsageError(str(e)) from None
    # GGUF keeps norms in fp32 whatever the matrices are, so it starts from fp32 weights.
    model, args = checkpoint.load_model(ckpt, device="cpu", dtype=torch.float32 if to == "gguf" else DTYPES[dtype])
    if tok.n_words != args.vocab_size:
        raise UsageError(f"{tok_path} has {tok.n_words} tokens but {ckpt} has vocab_size {args.vocab_size}: "
                         "not the tokenizer this model was trained with")
    sd = {k: v.detach() for k, v in model.state_dict().items()}

    # Written under a temporary name beside OUT and renamed at the end: an interrupted
    # export leaves no half-written folder or file under OUT's name.
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(os.path.abspath(out))}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        if to == "gguf":
            name = "/".join(os.path.abspath(ckpt).split(os.sep)[-2:])  # "sft/final"
            save_gguf(sd, args, tok, tmp, dtype, name)
        else:
            os.makedirs(tmp)
            if to == "hf":
                save_hf(sd, args, tok, tok_path, tmp, DTYPES[dtype], int(max_shard_mb * 2**20))
            else:
                save_meta(sd, args, tok_path, tmp, DTYPES[dtype])
            if os.path.isdir(out):
                os.rmdir(out)  # empty (checked above)
        os.replace(tmp, out)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.remove(tmp)
    return out
