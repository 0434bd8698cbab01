"""
checkpoint.py -- saving, loading, verifying and averaging checkpoints (§3.3.4, §3.4.3, §4.1.5).

Stage: infrastructure. §3.3.4 of "The Llama 3 Herd of Models" counts 466 job
interruptions in 54 days of 405B pre-training; a run survives them only if it can
save quickly, never leave a half-written checkpoint, notice a corrupt one and fall
back to the previous one. This file is the chapter on checkpoint formats:

  1. Hugging Face names  -- the q/k row permutation and the name map between this
                            model and transformers' LlamaForCausalLM.
  2. Checksums           -- a sha256 of every file, recorded at save time
                            (checksums.json) and checked before anything is read.
  3. Loading safely      -- nothing in a checkpoint can run code: model files are read
                            with torch.load(weights_only=True), a DCP folder's
                            .metadata pickle with an allow-list unpickler, and DCP's
                            non-tensor entries with weights_only=True too.
  4. Single-file models  -- save_model / load_model for every format below.
  5. Distributed (DCP)   -- save_checkpoint / load_checkpoint / latest_checkpoint:
                            model, optimizer, step, "extra" positions and per-rank RNG
                            states; atomic (temp folder + rename), resumable on another
                            number of ranks, the latest N kept; export_model.
  6. Averaging           -- average_checkpoints: the Polyak average of annealing
                            checkpoints (§3.4.3) and model averaging (§4.1.5).
  7. Command line        -- average, verify, export (the writers for Hugging Face,
                            GGUF and Meta's layout live in export.py).

Formats (load_model reads all four; detect_format tells them apart):
  project  DIR/model.pt = {"model_args": dict, "model": state dict} + tokenizer.model
           + checksums.json (written by save_model / export_model)
  meta     DIR/params.json + consolidated.00.pth (+ tokenizer.model), Meta's release
  hf       DIR/config.json + *.safetensors (+ model.safetensors.index.json), Hugging Face
  dcp      CKPT_ROOT/step_XXXXXXXX/ = .metadata + __*_*.distcp (torch.distributed.checkpoint)
           + model_args.json + state.json + rng/rank_XXXXX.pt + checksums.json

Use:
    from checkpoint import load_model, save_model, save_checkpoint, load_checkpoint
    model, args = load_model("out/pretrain/final")           # any format
    python checkpoint.py verify out/pretrain/ckpt/step_00000100
    python checkpoint.py average out/sft_a/final out/sft_b/final --out out/sft_avg
    python checkpoint.py export out/dpo/final --to hf|gguf|meta OUT   # export.py
Tests: tests/test_checkpoint.py.
"""

from __future__ import annotations

import argparse
import glob
import io
import json
import os
import pickle
import random
import re
import shutil
import typing
import uuid
import warnings
from dataclasses import asdict, fields
from typing import Optional

import torch
import torch.distributed as torch_dist
import torch.nn as nn

from common import (UsageError, atomic_torch_save, atomic_write_json, atomic_write_text, cli, fsync_dir,
                    print0, sha256_file)
from model import ModelArgs, Transformer

# -----------------------------------------------------------------------------
# 1. Hugging Face names and the q/k row permutation


def _permute_meta_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta rotates interleaved pairs (0,1),(2,3),...; Hugging Face rotates halves
    (0, hd/2),(1, hd/2+1),... Its converter therefore reorders the rows of wq and wk
    within each head: [x0 x1 x2 x3 ...] -> [x0 x2 ... | x1 x3 ...]. (rows, dim)."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _permute_hf_to_meta(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of _permute_meta_to_hf."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


_HF_NAMES = {  # ours -> Hugging Face's, per layer
    "attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj", "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def to_hf_state_dict(sd: dict, args: ModelArgs) -> dict:
    """This model's state dict -> Hugging Face LlamaForCausalLM's."""
    out = {"model.embed_tokens.weight": sd["tok_embeddings.weight"],
           "model.norm.weight": sd["norm.weight"]}
    if not args.tie_embeddings:
        out["lm_head.weight"] = sd["output.weight"]
    for i in range(args.n_layers):
        for ours, theirs in _HF_NAMES.items():
            w = sd[f"layers.{i}.{ours}.weight"]
            if ours == "attention.wq":
                w = _permute_meta_to_hf(w, args.n_heads)
            elif ours == "attention.wk":
                w = _permute_meta_to_hf(w, args.n_kv_heads)
            out[f"model.layers.{i}.{theirs}.weight"] = w.clone()
    return out


def _hf_names_needed(args: ModelArgs) -> list:
    """The Hugging Face tensor names (without "model.") a model of `args` needs."""
    names = ["embed_tokens.weight", "norm.weight"]
    names += [f"layers.{i}.{theirs}.weight" for i in range(args.n_layers) for theirs in _HF_NAMES.values()]
    return names


def convert_hf_state_dict(sd: dict, args: ModelArgs, source: str = "Hugging Face checkpoint") -> dict:
    """Hugging Face LlamaForCausalLM's state dict -> this model's (the inverse)."""
    sd = {k.removeprefix("model."): v for k, v in sd.items()}
    missing = [k for k in _hf_names_needed(args) if k not in sd]
    if missing:
        raise UsageError(f"{source}: missing tensor(s) {missing[:5]}" + (" ..." if len(missing) > 5 else ""))
    out = {"tok_embeddings.weight": sd["embed_tokens.weight"], "norm.weight": sd["norm.weight"]}
    out["output.weight"] = sd.get("lm_head.weight", sd["embed_tokens.weight"]) if not args.tie_embeddings \
        else sd["embed_tokens.weight"]
    for i in range(args.n_layers):
        for ours, theirs in _HF_NAMES.items():
            w = sd[f"layers.{i}.{theirs}.weight"]
            if ours == "attention.wq":
                w = _permute_hf_to_meta(w, args.n_heads)
            elif ours == "attention.wk":
                w = _permute_hf_to_meta(w, args.n_kv_heads)
            out[f"layers.{i}.{ours}.weight"] = w.clone()
    return out


def to_hf_config(args: ModelArgs) -> dict:
    """ModelArgs -> a Hugging Face LlamaConfig dict (config.json)."""
    rope = {"rope_theta": args.rope_theta, "rope_type": "default"}
    if args.use_scaled_rope:
        rope.update(rope_type="llama3", factor=args.rope_scale_factor,
                    low_freq_factor=args.rope_low_freq_factor,
                    high_freq_factor=args.rope_high_freq_factor,
                    original_max_position_embeddings=args.rope_original_max_seq_len)
    return dict(
        architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=args.dim,
        intermediate_size=args.ffn_hidden_dim, num_hidden_layers=args.n_layers,
        num_attention_heads=args.n_heads, num_key_value_heads=args.n_kv_heads,
        head_dim=args.head_dim, vocab_size=args.vocab_size, rms_norm_eps=args.norm_eps,
        max_position_embeddings=args.max_seq_len, tie_word_embeddings=args.tie_embeddings,
        hidden_act="silu", attention_bias=False, mlp_bias=False,
        rope_parameters=rope, rope_theta=args.rope_theta,
        rope_scaling=None if not args.use_scaled_rope else {k: v for k, v in rope.items() if k != "rope_theta"},
        bos_token_id=args.vocab_size - 256 if args.vocab_size > 256 else None,
        eos_token_id=args.vocab_size - 256 + 1 if args.vocab_size > 256 else None,
    )


# -----------------------------------------------------------------------------
# 2. Checksums (§3.3.4: a restart must not start from a damaged checkpoint)
#
# checksums.json = {"files": {relative path: sha256}, "tokenizer_sha256": ... | null}
# is written last, after every file it lists is on disk; a reader hashes each file
# again before reading it. Bit rot, a truncated copy or a shard overwritten with
# zeros all show up as a mismatch that names the file.

CHECKSUMS = "checksums.json"


def _read_json(path: str):
    """json.load with a UsageError that names the file."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UsageError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: not valid JSON ({e})") from None


def write_checksums(folder: str, files: Optional[list] = None, tokenizer_sha256: Optional[str] = None) -> str:
    """Record the sha256 of `files` (paths relative to folder; default: every file
    under it except checksums.json and temp files) in folder/checksums.json."""
    if files is None:
        files = sorted(os.path.relpath(os.path.join(d, f), folder)
                       for d, _, names in os.walk(folder) for f in names
                       if f != CHECKSUMS and ".tmp" not in f)
    record = {"files": {f: sha256_file(os.path.join(folder, f)) for f in files},
              "tokenizer_sha256": tokenizer_sha256}
    return atomic_write_json(os.path.join(folder, CHECKSUMS), record)


def record_file(folder: str, rel: str) -> None:
    """Add folder/rel (written after save_model, e.g. reward_head.pt) to checksums.json."""
    path = os.path.join(folder, CHECKSUMS)
    record = _read_json(path) if os.path.exists(path) else {"files": {}, "tokenizer_sha256": None}
    record["files"][rel] = sha256_file(os.path.join(folder, rel))
    atomic_write_json(path, record)


def checksum_problems(folder: str, only: Optional[list] = None) -> list:
    """["model.pt: sha256 mismatch", ...] for folder (empty: intact). `only` limits
    the check to these relative paths. A folder without checksums.json -> one problem."""
    path = os.path.join(folder, CHECKSUMS)
    if not os.path.exists(path):
        return [f"no {CHECKSUMS}"]
    try:
        record = _read_json(path)
        files = record["files"]
        assert isinstance(files, dict)
    except (UsageError, KeyError, TypeError, AssertionError):
        return [f"{CHECKSUMS} is unreadable"]
    problems = []
    for rel, digest in sorted(files.items()):
        if only is not None and rel not in only:
            continue
        file = os.path.join(folder, rel)
        if not os.path.exists(file):
            problems.append(f"{rel}: missing")
        elif sha256_file(file) != digest:
            problems.append(f"{rel}: sha256 mismatch")
    return problems


def _recorded_files(folder: str) -> dict:
    path = os.path.join(folder, CHECKSUMS)
    if not os.path.exists(path):
        return {}
    try:
        return dict(_read_json(path).get("files") or {})
    except (UsageError, AttributeError, TypeError, ValueError):
        return {}


def verify(path: str) -> None:
    """Raise UsageError if the checkpoint at `path` fails its checksums, naming the
    damaged file(s) and, for a step folder, the newest earlier one that is intact."""
    folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
    only = None if os.path.isdir(path) else [os.path.basename(path)]
    problems = checksum_problems(folder, only)
    if problems == [f"no {CHECKSUMS}"]:
        return  # written by other tools (Meta, plain dcp.save): nothing to check against
    if problems:
        msg = f"{path} is corrupt ({'; '.join(problems[:3])})"
        previous = _previous_intact(folder)
        if previous:
            msg += f"; the previous intact checkpoint is {previous}"
        raise UsageError(msg)


def check_tokenizer(ckpt_path: str, tokenizer_path: str) -> None:
    """UsageError if the checkpoint recorded a tokenizer and `tokenizer_path` is a
    different file (two tokenizers of the same vocabulary size map ids to different
    strings; the model would run and print nonsense). Silent if nothing is recorded."""
    folder = ckpt_path if os.path.isdir(ckpt_path) else os.path.dirname(ckpt_path) or "."
    file = os.path.join(folder, CHECKSUMS)
    if not tokenizer_path or not os.path.exists(file):
        return
    try:
        recorded = _read_json(file).get("tokenizer_sha256")
    except (UsageError, AttributeError):
        return
    if recorded and sha256_file(tokenizer_path) != recorded:
        raise UsageError(f"{tokenizer_path} is not the tokenizer {ckpt_path} was saved with "
                         f"(sha256 {sha256_file(tokenizer_path)[:12]}... vs recorded {recorded[:12]}...)")


# -----------------------------------------------------------------------------
# 3. Loading without running code from the checkpoint
#
# A pickle can name any importable function and have it called on load, so a
# downloaded checkpoint could run code. Every torch.load here uses weights_only=True
# (tensors and plain containers only). torch.distributed.checkpoint (DCP) itself
# unpickles two things freely; both are replaced:
#   - the folder's .metadata: read by _SafeReader with an unpickler that builds only
#     the DCP metadata classes listed in _DCP_METADATA_CLASSES;
#   - non-tensor values in the shards (optimizer lr/betas, ...): read by
#     _SafeLoadPlanner with torch.load(weights_only=True).

def _why_refused(e: Exception) -> str:
    """The line of a weights_only UnpicklingError that names what was asked for."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    named = [line for line in lines if "Unsupported global" in line or "Unsupported operand" in line]
    return (named or lines or [type(e).__name__])[0][:200]


def _torch_load(path: str, **kw):
    """torch.load(weights_only=True) with one-line errors that name the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, **kw)
    except FileNotFoundError:
        raise UsageError(f"{path}: file not found") from None
    except pickle.UnpicklingError as e:
        raise UsageError(f"refusing to load {path}: it holds more than tensors and plain "
                         f"containers ({_why_refused(e)})") from None
    except (EOFError, RuntimeError, OSError, ValueError) as e:
        raise UsageError(f"{path}: unreadable or truncated ({type(e).__name__}: {str(e)[:200]})") from None


_DCP_METADATA_CLASSES = {  # exactly what a .metadata written by save_checkpoint contains
    ("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")
} | {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"), ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"), ("pathlib", "WindowsPath"),
    ("pathlib", "PureWindowsPath"), ("collections", "OrderedDict"),
} | {("torch", name) for name in dir(torch) if isinstance(getattr(torch, name, None), (torch.dtype, torch.layout,
                                                                                        torch.memory_format))}


class _MetadataUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str):
        super().__init__(file)
        self.path = path

    def find_class(self, module, name):
        if (module, name) not in _DCP_METADATA_CLASSES:
            raise UsageError(f"refusing to load {self.path}: it asks to build {module}.{name}")
        return super().find_class(module, name)


def _make_safe_reader():
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class _SafeReader(FileSystemReader):
        """DCP's FileSystemReader whose .metadata is read by _MetadataUnpickler."""

        def read_metadata(self, *args, **kwargs):
            path = os.fspath(self._get_metadata_path(kwargs.get("rank")))
            try:
                with open(path, "rb") as f:
                    metadata = _MetadataUnpickler(f, path).load()
            except FileNotFoundError:
                raise UsageError(f"{path}: file not found") from None
            except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError, IndexError) as e:
                if isinstance(e, UsageError):
                    raise
                raise UsageError(f"{path}: unreadable DCP metadata ({type(e).__name__}: {str(e)[:200]})") from None
            if type(metadata).__name__ != "Metadata":
                raise UsageError(f"{path}: not DCP metadata (a {type(metadata).__name__})")
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return _SafeReader


def _make_safe_planner():
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint._traverse import set_element

    class _SafeLoadPlanner(DefaultLoadPlanner):
        """DCP's default load planner, except that non-tensor entries are read with
        torch.load(weights_only=True) instead of weights_only=False."""

        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            fqn = read_item.dest_index.fqn
            try:
                obj = torch.load(value, weights_only=True)
            except pickle.UnpicklingError as e:
                raise UsageError(f"refusing to load {fqn!r} from {self.path}: it holds more than tensors and "
                                 f"plain containers ({_why_refused(e)})") from None
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[fqn], obj)
            else:
                self.state_dict[fqn] = obj

    return _SafeLoadPlanner


def dcp_load(state: dict, path: str):
    """dcp.load(state, path) in place, through the safe reader and planner, on one
    process or on every rank of a process group."""
    import torch.distributed.checkpoint as dcp
    reader = _make_safe_reader()(path)
    reader.read_metadata()  # refuse a bad .metadata here, with our message, not DCP's wrapper
    planner = _make_safe_planner()()
    planner.path = path
    with warnings.catch_warnings():  # DCP warns that one process means no_dist
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, storage_reader=reader, planner=planner,
                 no_dist=not _distributed())


# -----------------------------------------------------------------------------
# 4. Single-file models in every format


def model_args_from(d, source: str) -> ModelArgs:
    """ModelArgs from a dict read out of `source`, with a UsageError naming the file
    and the field for unknown fields, wrong types and non-positive sizes."""
    if not isinstance(d, dict):
        raise UsageError(f"{source}: model arguments must be a JSON object, got {type(d).__name__}")
    known = {f.name for f in fields(ModelArgs)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise UsageError(f"{source}: unknown field(s) {unknown}")
    hints = typing.get_type_hints(ModelArgs)
    for name, value in d.items():  # "dim": "64" or 64.0 must not reach the arithmetic
        allowed = tuple(t for t in typing.get_args(hints[name]) if t is not type(None)) or (hints[name],)
        if value is None and type(None) in typing.get_args(hints[name]):
            continue
        ok = isinstance(value, bool) if allowed == (bool,) else not isinstance(value, bool) and (
            isinstance(value, allowed) or (float in allowed and isinstance(value, int)))
        if not ok:
            raise UsageError(f"{source}: field {name!r} must be {' or '.join(t.__name__ for t in allowed)}, "
                             f"got {value!r}")
    try:
        return ModelArgs(**d)
    except (TypeError, ValueError) as e:
        raise UsageError(f"{source}: {e}") from None


def args_from_params_json(path: str) -> ModelArgs:
    """ModelArgs from Meta's params.json. Unknown keys are an error that names them,
    missing required ones too (a truncated file must not silently become an 8B default)."""
    params = _read_json(path)
    if not isinstance(params, dict):
        raise UsageError(f"{path}: expected a JSON object, got {type(params).__name__}")
    missing = [k for k in ("dim", "n_layers", "n_heads", "vocab_size") if k not in params]
    if missing:
        raise UsageError(f"{path}: missing required field(s) {missing}")
    if params.get("use_scaled_rope"):
        params.setdefault("max_seq_len", 131072)  # 3.1+ models are 128K-context
    return model_args_from(params, path)


def args_from_hf_config(cfg: dict, source: str = "config.json") -> ModelArgs:
    """ModelArgs from a Hugging Face LlamaConfig (config.json as a dict)."""
    if not isinstance(cfg, dict):
        raise UsageError(f"{source}: expected a JSON object, got {type(cfg).__name__}")
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                           "vocab_size", "intermediate_size") if k not in cfg]
    if missing:
        raise UsageError(f"{source}: Hugging Face config is missing field(s) {missing}")
    # transformers >= 5 keeps RoPE settings in "rope_parameters"; older versions
    # in "rope_theta" + "rope_scaling". Accept both.
    rope = {**(cfg.get("rope_scaling") or {}), **(cfg.get("rope_parameters") or {})}
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise UsageError(f"{source}: unsupported rope_type {rope_type!r} (only default and llama3)")
    head_dim = cfg.get("head_dim")
    if head_dim is not None and head_dim * cfg["num_attention_heads"] != cfg["hidden_size"]:
        raise UsageError(f"{source}: head_dim={head_dim} x heads != hidden_size: not a Llama 3 layout")
    args = dict(
        dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"],
        n_heads=cfg["num_attention_heads"],
        n_kv_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
        vocab_size=cfg["vocab_size"], norm_eps=cfg.get("rms_norm_eps", 1e-5),
        rope_theta=float(theta), use_scaled_rope=(rope_type == "llama3"),
        max_seq_len=cfg.get("max_position_embeddings", 8192),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        hidden_dim=cfg["intermediate_size"],
    )
    if rope_type == "llama3":
        try:
            args.update(rope_scale_factor=float(rope["factor"]),
                        rope_low_freq_factor=float(rope["low_freq_factor"]),
                        rope_high_freq_factor=float(rope["high_freq_factor"]),
                        rope_original_max_seq_len=int(rope["original_max_position_embeddings"]))
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"{source}: llama3 rope scaling without a usable {e}") from None
    return model_args_from(args, source)


def save_model(model: Optional[Transformer], args: ModelArgs, out_dir: str, tokenizer_path: Optional[str] = None,
               state_dict: Optional[dict] = None):
    """This project's single-file checkpoint: DIR/model.pt = {"model_args", "model"}
    and a copy of the tokenizer at DIR/tokenizer.model, both atomic, then
    DIR/checksums.json with their sha256 (the tokenizer's is what check_tokenizer
    compares against). Pass `model`, or `state_dict` (then model may be None)."""
    os.makedirs(out_dir, exist_ok=True)
    record = os.path.join(out_dir, CHECKSUMS)
    if os.path.exists(record):  # stale until rewritten below
        os.remove(record)
    sd = state_dict if state_dict is not None else model.state_dict()
    sd = {k: v.detach().cpu() for k, v in sd.items()}
    atomic_torch_save({"model_args": asdict(args), "model": sd}, os.path.join(out_dir, "model.pt"))
    files, tok_sha = ["model.pt"], None
    if tokenizer_path:
        dst = os.path.join(out_dir, "tokenizer.model")
        if os.path.abspath(tokenizer_path) != os.path.abspath(dst):
            shutil.copyfile(tokenizer_path, dst + ".tmp")
            os.replace(dst + ".tmp", dst)
        files.append("tokenizer.model")
        tok_sha = sha256_file(dst)
    write_checksums(out_dir, files, tokenizer_sha256=tok_sha)
    return out_dir


def detect_format(path: str) -> str:
    """'project' | 'meta' | 'hf' | 'dcp' for a checkpoint file or directory."""
    if os.path.isfile(path):
        if path.endswith((".pt", ".pth")):
            return "project"
        raise UsageError(f"{path}: not a checkpoint (expected a .pt file or a directory)")
    if not os.path.isdir(path):
        raise UsageError(f"checkpoint not found: {path}")
    if os.path.exists(os.path.join(path, "model.pt")):
        return "project"
    if os.path.exists(os.path.join(path, "params.json")) and glob.glob(os.path.join(path, "consolidated.*.pth")):
        return "meta"
    if os.path.exists(os.path.join(path, "config.json")) and (
            glob.glob(os.path.join(path, "*.safetensors")) or os.path.exists(_HF_INDEX(path))):
        return "hf"
    if os.path.exists(os.path.join(path, ".metadata")) and os.path.exists(os.path.join(path, "model_args.json")):
        return "dcp"
    raise UsageError(
        f"{path}: unknown checkpoint format. Expected one of: model.pt (this project); "
        "params.json + consolidated.*.pth (Meta); config.json + *.safetensors (Hugging Face); "
        ".metadata + model_args.json (a distributed checkpoint of save_checkpoint)")


def _HF_INDEX(path):
    return os.path.join(path, "model.safetensors.index.json")


def load_state_dict_checked(model: Transformer, sd: dict, source: str):
    """load_state_dict(strict=True) with an error message a person can act on."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    def shape(v):
        return tuple(v.shape) if isinstance(v, torch.Tensor) else f"a {type(v).__name__}, not a tensor"
    bad = [f"{k}: checkpoint {shape(sd[k])} vs model {tuple(expected[k].shape)}"
           for k in expected if k in sd and shape(sd[k]) != tuple(expected[k].shape)]
    if missing or unexpected or bad:
        msg = [f"{source}: checkpoint does not match the model"]
        if missing:
            msg.append(f"missing keys ({len(missing)}): {missing[:5]}")
        if unexpected:
            msg.append(f"unexpected keys ({len(unexpected)}): {unexpected[:5]}")
        if bad:
            msg.append(f"shape mismatches ({len(bad)}): {bad[:5]}")
        raise UsageError("; ".join(msg))
    model.load_state_dict(sd, strict=True)


def _load_project(path: str):
    file = path if os.path.isfile(path) else os.path.join(path, "model.pt")
    verify(file)
    ckpt = _torch_load(file)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) or "model_args" not in ckpt:
        raise UsageError(f"{file}: not a model checkpoint (expected a dict with 'model_args' and 'model')")
    return model_args_from(ckpt["model_args"], file), ckpt["model"]


def _load_meta(path: str):
    args = args_from_params_json(os.path.join(path, "params.json"))
    shards = sorted(glob.glob(os.path.join(path, "consolidated.*.pth")))
    if len(shards) != 1:
        raise UsageError(f"{path}: {len(shards)} consolidated shards; only single-shard "
                         "(model-parallel 1) Meta checkpoints are supported -- merge them first")
    sd = _torch_load(shards[0], mmap=True)
    if not isinstance(sd, dict):
        raise UsageError(f"{shards[0]}: not a state dict (a {type(sd).__name__})")
    if args.tie_embeddings and "output.weight" not in sd and "tok_embeddings.weight" in sd:
        sd = dict(sd, **{"output.weight": sd.get("tok_embeddings.weight")})
    return args, sd


def _load_hf(path: str):
    from safetensors import SafetensorError
    from safetensors.torch import load_file  # installed with transformers
    config = os.path.join(path, "config.json")
    args = args_from_hf_config(_read_json(config), config)
    expected = {}  # tensor name -> shard file the index names
    if os.path.exists(_HF_INDEX(path)):
        expected = dict(_read_json(_HF_INDEX(path)).get("weight_map") or {})
    files = sorted(set(expected.values()) | {os.path.basename(f) for f in glob.glob(os.path.join(path, "*.safetensors"))})
    sd = {}
    for name in files:
        file = os.path.join(path, name)
        if not os.path.exists(file):
            continue  # reported below with the tensors it should have held
        try:
            sd.update(load_file(file))
        except (SafetensorError, OSError, ValueError) as e:
            raise UsageError(f"{file}: unreadable safetensors file ({e})") from None
    have = {k.removeprefix("model.") for k in sd}
    missing = [k for k in _hf_names_needed(args) if k not in have]
    if missing:
        where = sorted({expected.get("model." + k, expected.get(k, "?")) for k in missing})
        raise UsageError(f"{path}: missing tensor(s) {['model.' + k for k in missing[:5]]}"
                         + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
                         + (f"; the index expects them in {where}" if where != ["?"] else ""))
    return args, convert_hf_state_dict(sd, args, path)


def _load_dcp_weights(path: str):
    verify(path)
    args = model_args_from(_read_json(os.path.join(path, "model_args.json")), os.path.join(path, "model_args.json"))
    with torch.device("meta"):
        shell = Transformer(args)
    # A single process may read a checkpoint written by any number of ranks: DCP
    # reshards on load (key prefix "model." as save_checkpoint writes it).
    wrapped = {"model": {k: torch.empty(v.shape, dtype=v.dtype) for k, v in shell.state_dict().items()}}
    _dcp_load_checked(wrapped, path)
    return args, wrapped["model"]


def load_model(path: str, device="cpu", dtype: Optional[torch.dtype] = None, tokenizer_path: Optional[str] = None):
    """Load a checkpoint in any of the four formats -> (Transformer, ModelArgs).
    Verifies checksums where they were recorded; every problem is a one-line
    UsageError naming the file. With tokenizer_path, check_tokenizer is applied."""
    fmt = detect_format(path)
    args, sd = {"project": _load_project, "meta": _load_meta, "hf": _load_hf, "dcp": _load_dcp_weights}[fmt](path)
    if tokenizer_path:
        check_tokenizer(path, tokenizer_path)
    with torch.device("meta"):
        model = Transformer(args)
    model.to_empty(device=device)
    if dtype is not None:
        model.to(dtype)
    load_state_dict_checked(model, sd, path)
    model.reset_rope()
    return model, args


def find_tokenizer(path: str) -> Optional[str]:
    """The tokenizer.model that belongs to a checkpoint, if any."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    for candidate in ("tokenizer.model", os.path.join("original", "tokenizer.model")):
        if os.path.exists(os.path.join(folder, candidate)):
            return os.path.join(folder, candidate)
    pointer = os.path.join(folder, "tokenizer_path.txt")
    if os.path.exists(pointer):
        with open(pointer) as f:
            recorded = f.read().strip()
        if os.path.exists(recorded):
            return recorded
    return None


# -----------------------------------------------------------------------------
# 5. Distributed checkpoints (DCP): save, load, resume, prune, export

_STEP_DIR = re.compile(r"^step_(\d{8})$")


def _distributed() -> bool:
    return torch_dist.is_available() and torch_dist.is_initialized()


def _rank() -> int:
    return torch_dist.get_rank() if _distributed() else 0


def _barrier():
    if _distributed():
        torch_dist.barrier()


def _rng_state() -> dict:
    """Every RNG as tensors, ints and floats only (loadable with weights_only=True)."""
    import numpy as np
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
             "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def _set_rng_state(state: dict, source: str):
    import numpy as np
    try:
        py, npy = state["python"], state["numpy"]
        random.setstate((int(py["version"]), tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
        np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), int(npy["pos"]),
                             int(npy["has_gauss"]), float(npy["cached_gaussian"])))
        torch.set_rng_state(state["torch"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise UsageError(f"{source}: not an RNG state of save_checkpoint ({type(e).__name__}: {e})") from None
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _state_dicts(model, optimizer):
    """{"model": ..., "optim": ...} keyed by parameter names (FQNs), values DTensors
    when sharded. DCP flattens these into "model.layers.0.attention.wq.weight", ...
    which is the prefix load_model expects."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict
    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optim": optim_sd}


def save_checkpoint(ckpt_root: str, step: int, model: nn.Module, optimizer=None, *, model_args: ModelArgs,
                    extra: Optional[dict] = None, keep: int = 3) -> str:
    """Save to ckpt_root/step_{step:08d}; every rank calls this. Returns the path.

    Each rank writes only its own shards (DCP), in parallel. Atomic: everything is
    written into step_XXXXXXXX.tmp-<id>; after a barrier (all ranks done) rank 0
    adds model_args.json, state.json and checksums.json (sha256 of every file) and
    renames the folder. A process killed mid-save therefore leaves only a *.tmp-*
    folder, which latest_checkpoint ignores and the next save deletes. Keeps the
    latest `keep` checkpoints (keep <= 0: all).

    Folder: .metadata + __*_*.distcp (DCP: keys "model.<param name>" and
    "optim.state.<param name>.exp_avg", ...), model_args.json, state.json
    ({"step", "extra"}), rng/rank_XXXXX.pt (python, numpy, torch, cuda RNG as
    tensors), checksums.json."""
    import torch.distributed.checkpoint as dcp
    rank = _rank()
    final = os.path.join(ckpt_root, f"step_{step:08d}")
    # Serialize the small JSON files first, on every rank: a value that is not
    # JSON-able fails here on all ranks alike, not on rank 0 alone (which would
    # leave the others waiting at a barrier).
    args_json = json.dumps(asdict(model_args), indent=1)
    state_json = json.dumps({"step": step, "extra": extra or {}}, indent=1, default=_json_scalar)
    # All ranks must write into the same temp folder: rank 0 names it.
    name = [f"step_{step:08d}.tmp-{uuid.uuid4().hex[:8]}"]
    if _distributed():
        torch_dist.broadcast_object_list(name, src=0)
    tmp = os.path.join(ckpt_root, name[0])
    if rank == 0:
        os.makedirs(tmp, exist_ok=True)
    _barrier()
    state = _state_dicts(model, optimizer)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(state, checkpoint_id=tmp, no_dist=not _distributed())
    # RNG states are per rank (each rank drew different numbers): one small file each.
    os.makedirs(os.path.join(tmp, "rng"), exist_ok=True)
    atomic_torch_save(_rng_state(), os.path.join(tmp, "rng", f"rank_{rank:05d}.pt"))
    _barrier()  # every shard is on disk
    if rank == 0:
        atomic_write_text(os.path.join(tmp, "model_args.json"), args_json)
        atomic_write_text(os.path.join(tmp, "state.json"), state_json)
        write_checksums(tmp)
        if os.path.exists(final):  # saving a step again (e.g. after a resume): move the
            shutil.rmtree(final + ".tmp-old", ignore_errors=True)  # old one aside,
            os.rename(final, final + ".tmp-old")  # prune deletes it
        os.rename(tmp, final)  # the commit point: atomic on a POSIX filesystem
        fsync_dir(ckpt_root)  # make the rename itself durable
        prune(ckpt_root, keep)
    _barrier()
    return final


def _json_scalar(value):
    """numpy / torch scalars (a data-loader position is often an np.int64) -> Python."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    raise TypeError(f"extra must be JSON-able; got {type(value).__name__}: {value!r}")


def prune(ckpt_root: str, keep: int):
    """Delete all but the latest `keep` complete checkpoints and any leftover temp
    folders of killed saves (only called by rank 0 after its own save completed)."""
    complete = sorted(d for d in os.listdir(ckpt_root) if _STEP_DIR.match(d))
    for d in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(os.path.join(ckpt_root, d), ignore_errors=True)
    for d in os.listdir(ckpt_root):
        if ".tmp-" in d and d.startswith("step_"):
            shutil.rmtree(os.path.join(ckpt_root, d), ignore_errors=True)


def _step_dirs(ckpt_root: str) -> list:
    """Committed step folders (state.json present), newest first."""
    if not os.path.isdir(ckpt_root):
        return []
    return [os.path.join(ckpt_root, d) for d in sorted(os.listdir(ckpt_root), reverse=True)
            if _STEP_DIR.match(d) and os.path.exists(os.path.join(ckpt_root, d, "state.json"))]


def _previous_intact(folder: str) -> Optional[str]:
    """For a step folder: the newest earlier step folder beside it that verifies."""
    name = os.path.basename(os.path.normpath(folder))
    if not _STEP_DIR.match(name):
        return None
    for other in _step_dirs(os.path.dirname(os.path.normpath(folder))):
        if os.path.basename(other) < name and not checksum_problems(other):
            return other
    return None


def latest_checkpoint(ckpt_root: str) -> Optional[str]:
    """The newest complete checkpoint folder whose checksums verify, or None. Temp
    folders never count; each damaged newer one is reported in one line and skipped."""
    for path in _step_dirs(ckpt_root):
        problems = checksum_problems(path)
        if not problems:
            return path
        print0(f"skipping checkpoint {path}: {'; '.join(problems[:3])}")
    return None


def _dcp_load_checked(state: dict, path: str):
    """dcp_load with DCP's own failures (a shard that does not parse, a key the
    metadata lacks) turned into a UsageError naming the folder."""
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException
    try:
        dcp_load(state, path)
    except UsageError:
        raise
    except (CheckpointException, Exception) as e:
        causes = [exc for exc, _ in getattr(e, "failures", {}).values()] or [e]
        for cause in causes:
            if isinstance(cause, UsageError):
                raise UsageError(str(cause)) from None
        cause = causes[0]
        text = str(cause).strip().splitlines()
        raise UsageError(f"{path}: cannot read this distributed checkpoint ({type(cause).__name__}: "
                         f"{text[-1][:300] if text else ''})") from None


def load_checkpoint(path: str, model: nn.Module, optimizer=None, *, rng: bool = True) -> dict:
    """Load a checkpoint into an already-built (and already-sharded) model and
    optimizer, in place; every rank calls this. Returns dict(extra, step=step).
    Verifies the checksums first; restores this rank's RNG states unless rng=False.

    The number of ranks and the layout may differ from the save: DCP stores every
    tensor with its global shape and each rank reads just the pieces it now owns
    (2-rank FSDP -> 1 process, FSDP -> TP, ...). The optimizer must be built (it
    may be empty: get_state_dict initializes its state before loading)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict
    verify(path)
    meta = _read_json(os.path.join(path, "state.json"))
    if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
        raise UsageError(f"{os.path.join(path, 'state.json')}: no integer 'step'")
    state = _state_dicts(model, optimizer)
    _dcp_load_checked(state, path)
    if optimizer is None:
        set_model_state_dict(model, state["model"])
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    if isinstance(model, Transformer):
        model.reset_rope()  # not in the checkpoint; make sure it is valid
    rng_dir = os.path.join(path, "rng")
    saved = sorted(os.listdir(rng_dir)) if rng and os.path.isdir(rng_dir) else []
    if saved:
        # Same rank if it existed; on a larger world, reuse rank (r mod saved ranks).
        rank = _rank()
        file = f"rank_{rank:05d}.pt" if f"rank_{rank:05d}.pt" in saved else saved[rank % len(saved)]
        file = os.path.join(rng_dir, file)
        _set_rng_state(_torch_load(file), file)
    return dict(meta.get("extra") or {}, step=meta["step"])


def full_state_dict(model: nn.Module) -> dict:
    """A snapshot of the whole, unsharded state dict on CPU, on rank 0 (other ranks
    get {}). Every rank must call it (it all-gathers one tensor at a time)."""
    if getattr(model, "pipeline", None) is not None:
        return _pipeline_full_state_dict(model)
    if not _distributed():
        sd = model.state_dict()
    else:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # On a CPU run a replicated (or unsharded) parameter comes back as the parameter
    # itself, not a copy; copy it so that later training does not change the snapshot.
    # (On GPU the move to CPU already copies; no second copy of a 405B state dict.)
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    return {k: v.detach().to("cpu", copy=on_cpu) for k, v in sd.items()}


def _pipeline_full_state_dict(model: nn.Module) -> dict:
    """full_state_dict of a pipeline-parallel model (parallel.build_pipeline): each
    rank holds other layers, so each gathers its stages' tensors whole (over its FSDP
    and TP ranks), then rank 0 collects them from the ranks of its "pp" group."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    sd = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    sd = {k: v.detach().to("cpu", copy=True) for k, v in sd.items()}
    group = model.pipeline.group
    if 0 not in torch_dist.get_process_group_ranks(group):  # another replica (dp, cp, tp > 0)
        return {}
    parts = [None] * torch_dist.get_world_size(group) if _rank() == 0 else None
    torch_dist.gather_object(sd, parts, dst=0, group=group)
    return {k: v for part in parts for k, v in part.items()} if _rank() == 0 else {}


def export_model(model: nn.Module, model_args: ModelArgs, out_dir: str, tokenizer_path: Optional[str] = None) -> str:
    """Gather the full weights and write this project's single-file format
    (DIR/model.pt via save_model), which load_model, sample.py and -- through
    to_hf_state_dict -- Hugging Face read. Every rank calls this."""
    sd = full_state_dict(model)
    if _rank() == 0:
        if model_args.tie_embeddings and "output.weight" not in sd:
            sd["output.weight"] = sd["tok_embeddings.weight"]
        save_model(None, model_args, out_dir, tokenizer_path=tokenizer_path, state_dict=sd)
    _barrier()
    return out_dir


# -----------------------------------------------------------------------------
# 6. Averaging checkpoints (§3.4.3 annealing, §4.1.5 model averaging)


@torch.no_grad()
def average_checkpoints(paths: list, out_dir: Optional[str] = None, *, model: Optional[nn.Module] = None,
                        tokenizer_path: Optional[str] = None):
    """The mean of the weights of several checkpoints of ONE architecture.

    §3.4.3: "the final model is the average of checkpoints during annealing" -- pass
    the live (possibly sharded) `model` and DCP step folders: each is loaded into it
    (weights only) and the model is left holding the mean; every rank calls this.
    §4.1.5: "we average models obtained from experiments using various versions of
    data or hyperparameters at each RM, SFT, or DPO stage" -- pass checkpoints in
    any load_model format and `out_dir`: the mean is written there with save_model
    (tokenizer: tokenizer_path, else the first checkpoint's, checked against each).
    The mean is taken in fp32 and cast back. Different ModelArgs, keys or shapes are
    a UsageError naming the first mismatch. Returns the model, or out_dir."""
    if len(paths) < 2 and model is None:
        raise UsageError(f"averaging needs at least two checkpoints, got {len(paths)}")
    if model is None and out_dir is None:
        raise UsageError("average_checkpoints: pass out_dir (write the mean) or model (hold it)")
    total, first, first_args = None, None, None
    tokenizer_path = tokenizer_path or (find_tokenizer(paths[0]) if model is None else None)
    for path in paths:
        if model is not None:
            load_checkpoint(path, model, rng=False)
            args, sd = None, model.state_dict()
        else:
            loaded, args = load_model(path, device="cpu")
            sd = loaded.state_dict()
            if tokenizer_path:
                check_tokenizer(path, tokenizer_path)
        if total is None:
            first, first_args = path, args
            meta = {k: (tuple(v.shape), v.dtype) for k, v in sd.items()}
            total = {k: v.detach().float().clone() for k, v in sd.items()}
            continue
        if args is not None:
            a, b = asdict(first_args), asdict(args)
            differ = [f"{k}: {a[k]!r} vs {b[k]!r}" for k in a if a[k] != b.get(k)]
            if differ:
                raise UsageError(f"cannot average {first} and {path}: different ModelArgs ({'; '.join(differ)})")
        if set(sd) != set(meta):
            raise UsageError(f"cannot average {first} and {path}: keys differ (missing "
                             f"{sorted(set(meta) - set(sd))[:5]}, unexpected {sorted(set(sd) - set(meta))[:5]})")
        for k, v in sd.items():
            if tuple(v.shape) != meta[k][0]:
                raise UsageError(f"cannot average {first} and {path}: {k} has shape {meta[k][0]} vs {tuple(v.shape)}")
            total[k] += v.detach().float()
    if model is not None:
        for k, v in model.state_dict().items():
            v.copy_((total[k] / len(paths)).to(v.dtype))
        return model
    averaged = {k: (v / len(paths)).to(meta[k][1]) for k, v in total.items()}
    return save_model(None, first_args, out_dir, tokenizer_path=tokenizer_path, state_dict=averaged)


# -----------------------------------------------------------------------------
# 7. Command line: python checkpoint.py {average, verify, export}


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description="Verify, average and export Llama 3 checkpoints (any format).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{average,verify,export}")
    p = sub.add_parser("average", help="§4.1.5: average the weights of checkpoints of one architecture")
    p.add_argument("paths", nargs="+", help="checkpoints of one architecture (any format load_model reads)")
    p.add_argument("--out", required=True, help="output folder (model.pt + tokenizer.model + checksums.json)")
    p.add_argument("--tokenizer", default=None, help="tokenizer.model (default: the first checkpoint's)")
    v = sub.add_parser("verify", help="check a checkpoint's recorded sha256 checksums")
    v.add_argument("path", help="a checkpoint folder (model.pt folder or DCP step folder) or a file in one")
    e = sub.add_parser("export", help="write a checkpoint for Hugging Face (hf), llama.cpp (gguf) or Meta's code "
                       "(meta): python checkpoint.py export CKPT --to hf|gguf|meta OUT (export.py)")
    e.add_argument("ckpt", help="any checkpoint load_model reads (model.pt folder, DCP step folder, Meta, HF)")
    e.add_argument("out_path", nargs="?", metavar="OUT", help="folder (hf, meta) or .gguf file to write; or --out")
    e.add_argument("--to", default=None, help="hf | gguf | meta")
    e.add_argument("--out", default=None, help="the same as OUT")
    e.add_argument("--tokenizer", default=None, help="tokenizer.model (default: the one beside CKPT)")
    e.add_argument("--dtype", default="fp32", help="fp32 | bf16 | fp16, and q8_0 for gguf (default fp32)")
    e.add_argument("--max-shard-mb", type=float, default=5000.0,
                   help="hf: split model.safetensors into shards of at most this size (default 5000)")
    # OUT may come after --to (export CKPT --to hf OUT), which argparse leaves unparsed.
    cli_args, extra = parser.parse_known_args(argv)
    if extra and (cli_args.command != "export" or any(x.startswith("-") for x in extra)):
        raise UsageError(f"unrecognized arguments: {' '.join(extra)}")
    if cli_args.command == "export":
        outs = [x for x in [cli_args.out_path, cli_args.out, *extra] if x is not None]
        if len(outs) > 1 and cli_args.to is None and outs[0] in ("hf", "gguf", "meta"):
            raise UsageError(f"missing --to: write --to {outs[0]} {' '.join(outs[1:])}")
        if len(outs) > 1:
            raise UsageError(f"one OUT expected, got {outs}")
        from export import export
        out = export(cli_args.ckpt, cli_args.to, outs[0] if outs else None, tokenizer_path=cli_args.tokenizer,
                     dtype=cli_args.dtype, max_shard_mb=cli_args.max_shard_mb)
        print(f"exported {cli_args.ckpt} -> {out} ({cli_args.to}, {cli_args.dtype}); next: " + {
            "hf": f"AutoModelForCausalLM.from_pretrained({out!r}), AutoTokenizer.from_pretrained({out!r})",
            "gguf": f"llama-cli -m {out}", "meta": f"load_model({out!r}) or Meta's llama-models"}[cli_args.to])
    elif cli_args.command == "average":
        out = average_checkpoints(cli_args.paths, cli_args.out, tokenizer_path=cli_args.tokenizer)
        print(f"§4.1.5 average of {len(cli_args.paths)} checkpoints -> {out}/model.pt")
    else:
        if not os.path.exists(cli_args.path):
            raise UsageError(f"checkpoint not found: {cli_args.path}")
        folder = cli_args.path if os.path.isdir(cli_args.path) else os.path.dirname(cli_args.path) or "."
        if not os.path.exists(os.path.join(folder, CHECKSUMS)):
            raise UsageError(f"{folder}: no {CHECKSUMS} (this checkpoint recorded no checksums)")
        verify(cli_args.path)
        n = len(_recorded_files(folder))
        print(f"{cli_args.path}: OK ({n} file(s) match their recorded sha256)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
