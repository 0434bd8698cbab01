"""Tests of export.py and `python checkpoint.py export`: the Hugging Face folder read by
transformers (AutoTokenizer ids equal tokenizer.py's on hard strings, for our own BPE and
Meta's 128K tokenizer.model; apply_chat_template equals ChatFormat; greedy generation
equals sample.py's; sharded safetensors), the GGUF file read back with the gguf package's
GGUFReader (metadata, vocabulary, merges, tensors equal to the model's with llama.cpp's
layout change undone, fp16/bf16/q8_0 against gguf's reference quantizer), Meta's layout
loaded with strict=True by load_model and by Meta's own model code, a distributed
checkpoint exported, and one-line errors (exit 2). Tiny models: seconds per test."""
import json
import math
import os
import struct
import sys
import types

import pytest
import torch

import checkpoint
import export as E
import parallel
import sample as S
import tokenizer as T
from model import ModelArgs, Transformer

HARD_STRINGS = [
    "This is a test sentence.",
    "Hello, world! I'm here; you'll see. THEY'RE CAPS'S we'Ve a'lL",
    "def f(x):\n    return x ** 2  # square\n\n\n\tpass\r\n",
    " " * 3000 + "x" + "\n" * 500 + "\t \t  y   " + "\u3000" * 40,
    "   leading and trailing   ",
    "numbers 1234567 3.14159 1,000,000 and 12ab34 ٣٤٥ 四五六",
    "日本語のテキストと中文文本，还有한국어 문장.",
    "Ελληνικά, русский текст, עברית, العربية, हिन्दी",
    "emoji 🦙🦙🔥 👩‍👩‍👧‍👦 flags 🇫🇷 and ✓ marks; Ünïcödé naïve café — “quotes” …",
    "mixed\u00a0nbsp\u2003em-space\u200bzero-width\r\n\r\n",
    "a" * 3000 + " " + "ab" * 700,
    "<|begin_of_text|> <|eot_id|> text that looks special <|start_header_id|>x<|end_header_id|>",
]
DIALOGS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "  Be terse.\n"}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "\n  And 3+3 ?  "}],
    [{"role": "user", "content": "日本語 🦙\n\n```python\nprint(1)\n```"}],
]


def tiny_args(vocab_size, **kw):
    return ModelArgs(**{**dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=vocab_size,
                               multiple_of=32, max_seq_len=128), **kw})


def tiny_model(args, seed=0):
    torch.manual_seed(seed)
    m = Transformer(args).eval()
    m.init_weights(seed)
    with torch.no_grad():  # sharper logits: no near-ties in greedy argmax
        m.output.weight.mul_(20)
    return m


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """Our own BPE: 1,024 tokens trained on ~200K characters of stdlib code + the hard strings."""
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    return T.train_tokenizer(T.builtin_texts(200_000) + HARD_STRINGS[:10], 1024, path)


def saved(tmp_path, tok, name="ckpt", seed=0, **kw):
    args = tiny_args(tok.n_words, **kw)
    m = tiny_model(args, seed)
    folder = str(tmp_path / name)
    checkpoint.save_model(m, args, folder, tokenizer_path=tok.model_path)
    return m, args, folder


def run_cli(*argv):
    return checkpoint.main(["export", *map(str, argv)])


# -----------------------------------------------------------------------------
# The pieces


def test_bytes_to_unicode_and_merges_from_ranks():
    to_char = E.bytes_to_unicode()
    assert len(set(to_char.values())) == 256 and to_char[ord(" ")] == "Ġ" and to_char[ord("\n")] == "Ċ"
    assert to_char[ord("a")] == "a" and all(c.isprintable() and not c.isspace() for c in to_char.values())
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({b"ab": 256, b"bc": 257, b"abc": 258})
    assert E.bpe_merges(ranks) == [(b"a", b"b"), (b"b", b"c"), (b"a", b"bc"), (b"ab", b"c")]


def test_bpe_merges_reproduce_tiktoken(tok):
    """Encoding with the merge list (lowest position first, as Hugging Face and llama.cpp
    do) gives tiktoken's ids for every chunk of the hard strings."""
    priority = {pair: i for i, pair in enumerate(E.bpe_merges(tok.mergeable_ranks))}
    for text in HARD_STRINGS:
        for chunk in T.PRETOKENIZE.findall(text):
            data = chunk.encode("utf-8")
            parts = [data[i:i + 1] for i in range(len(data))]
            while len(parts) > 1:
                pairs = [(priority.get((a, b), math.inf), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
                best, i = min(pairs)
                if best == math.inf:
                    break
                parts[i:i + 2] = [parts[i] + parts[i + 1]]
            assert [tok.mergeable_ranks[p] for p in parts] == tok.encode(chunk), chunk


def test_q8_0_equals_ggml_reference():
    quants = pytest.importorskip("gguf.quants")
    from gguf import GGMLQuantizationType as Q
    torch.manual_seed(0)
    w = torch.randn(8, 96) * torch.logspace(-3, 1, 96)  # varied block scales
    w[0, :32] = 0  # an all-zero block (d = 0)
    w[1, :32] = torch.arange(32) / 254 * 127 / 31.75  # values landing on .5 before rounding
    ours = E.quantize_q8_0(w)
    ref = quants.quantize(w.numpy(), Q.Q8_0)
    assert ours.shape == (8, 96 // 32 * 34)
    assert ours.numpy().tobytes() == ref.tobytes()
    back = E.dequantize_q8_0(ours, 96)
    assert torch.equal(back, torch.from_numpy(quants.dequantize(ref, Q.Q8_0)))
    # half a step of d = max|x|/127, plus d's own fp16 rounding (2^-11 relative) times 127
    d = w.abs().reshape(-1, 32).amax(1, keepdim=True) / 127
    assert ((back - w).abs().reshape(-1, 32) <= d * (0.5 + 127 * 2**-11) + 1e-12).all()
    assert ((back - w).abs().reshape(-1, 32) > d * 0.45).any()  # the bound is not loose by 10x


# -----------------------------------------------------------------------------
# Hugging Face


def assert_hf_tokenizer_equal(folder, tok):
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(folder)
    for text in HARD_STRINGS:
        plain = hf(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        assert plain == tok.encode(text), text[:40]
        assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text, allowed_special="all"), text[:40]
        assert hf(text)["input_ids"] == tok.encode(text, bos=True, allowed_special="all")
        assert hf.decode(plain) == tok.decode(plain)
    chat = T.ChatFormat(tok)
    for dialog in DIALOGS:
        for prompt in (True, False):
            ids = hf.apply_chat_template(dialog, add_generation_prompt=prompt, tokenize=True, return_dict=True)
            assert ids["input_ids"] == chat.encode_dialog(dialog, add_generation_prompt=prompt).tokens
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (tok.bos_id, tok.eos_id, tok.pad_id)


def test_hf_export_tokenizer_chat_template_and_generation(tmp_path, tok):
    transformers = pytest.importorskip("transformers")
    m, args, ckpt = saved(tmp_path, tok)
    out = tmp_path / "hf"
    assert run_cli(ckpt, "--to", "hf", out) == 0
    assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors", "original",
                                       "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    assert_hf_tokenizer_equal(str(out), tok)
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == sorted(tok.stop_tokens) and (gen["temperature"], gen["top_p"]) == (0.6, 0.9)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    prompts = [[tok.bos_id] + tok.encode(p) for p in ("def main():", "import os\n", " ")]
    prompts.append(T.ChatFormat(tok).encode_dialog_prompt(DIALOGS[0]))
    for prompt in prompts:
        ours = S.generate(m, tok, [prompt], max_new_tokens=24, temperature=0, include_stop=True)[0]
        with torch.no_grad():  # eos_token_id from generation_config.json: stops where sample.py does
            theirs = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=24,
                                 temperature=None, top_p=None)[0, len(prompt):].tolist()
        assert theirs == ours
    # and it reads back here, tokenizer found in original/
    loaded, largs = checkpoint.load_model(str(out))
    assert checkpoint.find_tokenizer(str(out)) == str(out / "original" / "tokenizer.model")
    for k, v in m.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_hf_export_sharded_tied_scaled_rope_bf16(tmp_path, tok):
    transformers = pytest.importorskip("transformers")
    m, args, ckpt = saved(tmp_path, tok, tie_embeddings=True, use_scaled_rope=True, rope_original_max_seq_len=32)
    out = tmp_path / "hf"
    E.export(ckpt, "hf", str(out), max_shard_mb=0.1)  # 0.37 MB of weights -> 4 shards
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert sorted(set(index["weight_map"].values())) == shards and "lm_head.weight" not in index["weight_map"]
    assert index["metadata"]["total_size"] == sum(v.numel() * 4 for k, v in m.state_dict().items() if k != "output.weight")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    tokens = torch.tensor([[tok.bos_id] + tok.encode("while True:\n    pass")])
    with torch.no_grad():
        assert (hf(tokens).logits - m(tokens)).abs().max() < 1e-4
    # bf16: what transformers loads is our weights cast to bf16
    out16 = tmp_path / "hf16"
    E.export(ckpt, "hf", str(out16), dtype="bf16")
    hf16 = transformers.AutoModelForCausalLM.from_pretrained(str(out16))
    assert hf16.dtype == torch.bfloat16
    assert torch.equal(hf16.model.layers[1].mlp.down_proj.weight, m.layers["1"].feed_forward.w2.weight.bfloat16())


def test_safetensors_written_here_reads_with_the_safetensors_package(tmp_path):
    from safetensors.torch import load_file
    tensors = {"a": torch.randn(3, 5), "b": torch.randn(7).bfloat16(), "c": torch.randn(2, 2, 2).half(),
               "d": torch.randn(6, 4).t()}  # not contiguous
    size = E.write_safetensors(str(tmp_path / "x.safetensors"), tensors)
    assert size == os.path.getsize(tmp_path / "x.safetensors")
    back = load_file(str(tmp_path / "x.safetensors"))
    assert set(back) == set(tensors) and all(torch.equal(back[k], v) for k, v in tensors.items())


@pytest.mark.skipif(T.meta_tokenizer_path() is None, reason="llama-models (Meta's tokenizer.model) not installed")
def test_hf_tokenizer_of_metas_128k_tokenizer(tmp_path):
    """Meta's tokenizer.model through our conversion: the same ids as tiktoken with Meta's
    file (tokenizer.py reproduces Meta's own ids: tests/test_tokenizer.py)."""
    pytest.importorskip("transformers")
    meta = T.Tokenizer(T.meta_tokenizer_path())
    for name, content in E.hf_tokenizer_files(meta, 8192).items():
        (tmp_path / name).write_text(json.dumps(content))
    assert_hf_tokenizer_equal(str(tmp_path), meta)
    assert (meta.bos_id, meta.eot_id) == (128000, 128009)


# -----------------------------------------------------------------------------
# GGUF


def llama_cpp_permute(w, n_head):
    """llama.cpp's converter (conversion/llama.py, LlamaModel.permute): Hugging Face's
    q/k rows -> the layout llama.cpp's rope expects."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_cpp_rope_factors(args):
    """llama.cpp's converter (LlamaModel.generate_extra_tensors) for rope_type llama3."""
    dim, base = args.head_dim, args.rope_theta
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    low, high, old = args.rope_low_freq_factor, args.rope_high_freq_factor, args.rope_original_max_seq_len
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            factors.append(1)
        elif wavelen > old / low:
            factors.append(args.rope_scale_factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / args.rope_scale_factor + smooth))
    return torch.tensor(factors, dtype=torch.float32)


def read_gguf(path):
    gguf = pytest.importorskip("gguf")
    reader = gguf.GGUFReader(str(path))
    meta = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    return reader, meta, {t.name: t for t in reader.tensors}


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16", "q8_0"])
def test_gguf_metadata_and_tensors(tmp_path, tok, dtype):
    m, args, ckpt = saved(tmp_path, tok, dim=96, n_heads=6, n_kv_heads=2, use_scaled_rope=dtype == "fp32",
                          rope_original_max_seq_len=32)
    path = tmp_path / "model.gguf"
    assert run_cli(ckpt, "--to", "gguf", path, "--dtype", dtype) == 0
    reader, meta, tensors = read_gguf(path)
    from gguf import GGMLQuantizationType as Q, quants
    assert meta["general.architecture"] == "llama"
    assert meta["general.file_type"] == {"fp32": 0, "fp16": 1, "bf16": 32, "q8_0": 7}[dtype]
    want = {"llama.block_count": 2, "llama.embedding_length": 96, "llama.feed_forward_length": args.ffn_hidden_dim,
            "llama.attention.head_count": 6, "llama.attention.head_count_kv": 2, "llama.context_length": 128,
            "llama.rope.dimension_count": 16, "llama.vocab_size": tok.n_words, "llama.rope.freq_base": 500000.0,
            "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe",
            "tokenizer.ggml.bos_token_id": tok.bos_id, "tokenizer.ggml.eos_token_id": tok.eos_id,
            "tokenizer.ggml.eot_token_id": tok.eot_id, "tokenizer.ggml.eom_token_id": tok.eom_id,
            "tokenizer.ggml.add_bos_token": True, "tokenizer.chat_template": E.CHAT_TEMPLATE}
    assert {k: meta[k] for k in want} == want
    assert meta["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    # the vocabulary and merges are Hugging Face's, which transformers encodes with (above)
    hf = E.hf_tokenizer_files(tok, 128)["tokenizer.json"]
    strings = meta["tokenizer.ggml.tokens"]
    assert len(strings) == tok.n_words == args.vocab_size
    assert {s: i for i, s in enumerate(strings[:tok.n_base_tokens])} == hf["model"]["vocab"]
    assert strings[tok.eot_id] == "<|eot_id|>" and strings[tok.bos_id] == "<|begin_of_text|>"
    assert meta["tokenizer.ggml.merges"] == [" ".join(pair) for pair in hf["model"]["merges"]]
    types_ = meta["tokenizer.ggml.token_type"]
    assert set(types_[:tok.n_base_tokens]) == {1} and set(types_[tok.n_base_tokens:]) == {3}

    sd, hf_sd = m.state_dict(), checkpoint.to_hf_state_dict(m.state_dict(), args)
    expected = {"token_embd.weight": sd["tok_embeddings.weight"], "output.weight": sd["output.weight"],
                "output_norm.weight": sd["norm.weight"]}
    for i in range(args.n_layers):
        # llama.cpp un-permutes Hugging Face's q/k rows: the result is our (Meta's) wq/wk
        hq, hk = hf_sd[f"model.layers.{i}.self_attn.q_proj.weight"], hf_sd[f"model.layers.{i}.self_attn.k_proj.weight"]
        assert torch.equal(llama_cpp_permute(hq, 6), sd[f"layers.{i}.attention.wq.weight"])
        assert not torch.equal(hq, sd[f"layers.{i}.attention.wq.weight"])
        expected[f"blk.{i}.attn_q.weight"] = llama_cpp_permute(hq, 6)
        expected[f"blk.{i}.attn_k.weight"] = llama_cpp_permute(hk, 2)
        for ours, theirs in [("attention.wv", "attn_v"), ("attention.wo", "attn_output"),
                             ("feed_forward.w1", "ffn_gate"), ("feed_forward.w2", "ffn_down"),
                             ("feed_forward.w3", "ffn_up"), ("attention_norm", "attn_norm"), ("ffn_norm", "ffn_norm")]:
            expected[f"blk.{i}.{theirs}.weight"] = sd[f"layers.{i}.{ours}.weight"]
    if args.use_scaled_rope:
        factors = torch.from_numpy(tensors.pop("rope_freqs.weight").data.copy())
        assert torch.allclose(factors, llama_cpp_rope_factors(args), rtol=1e-6)
        assert factors.min() == 1 and factors.max() == args.rope_scale_factor
    assert set(tensors) == set(expected)
    for name, w in expected.items():
        t = tensors[name]
        assert list(t.shape) == list(reversed(w.shape)), name  # ggml order: innermost first
        kind = "fp32" if w.dim() == 1 else dtype
        assert t.tensor_type == {"fp32": Q.F32, "fp16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}[kind], name
        if kind == "q8_0":  # byte for byte what gguf's (= ggml's) reference quantizer writes
            assert t.data.tobytes() == quants.quantize(w.numpy(), Q.Q8_0).tobytes(), name
            got = torch.from_numpy(quants.dequantize(t.data, Q.Q8_0))
            assert (got - w).abs().max() <= w.abs().max() / 127 * (0.5 + 127 * 2**-11), name
        elif kind == "bf16":
            got = torch.from_numpy(t.data.copy()).view(torch.bfloat16).reshape(w.shape)
            assert torch.equal(got, w.bfloat16()), name
        else:
            got = torch.from_numpy(t.data.copy()).reshape(w.shape)
            assert torch.equal(got, w.to(got.dtype)), name
    assert all(t.data_offset % 32 == 0 for t in reader.tensors)


def test_gguf_tied_embeddings_have_no_output_tensor(tmp_path, tok):
    m, args, ckpt = saved(tmp_path, tok, tie_embeddings=True)
    E.export(ckpt, "gguf", str(tmp_path / "m.gguf"))
    _, meta, tensors = read_gguf(tmp_path / "m.gguf")
    assert "output.weight" not in tensors and "rope_freqs.weight" not in tensors
    assert torch.equal(torch.from_numpy(tensors["token_embd.weight"].data.copy()), m.tok_embeddings.weight.detach())


# -----------------------------------------------------------------------------
# Meta


def meta_reference_model(monkeypatch):
    """llama-models' Transformer (Meta's reference code), with fairscale's model-parallel
    layers stood in for by plain ones (one rank: they are nn.Linear / nn.Embedding)."""
    pytest.importorskip("llama_models")

    class Column(torch.nn.Linear):
        def __init__(self, n_in, n_out, bias=False, **_):
            super().__init__(n_in, n_out, bias=bias)

    class Row(Column):
        pass

    class Vocab(torch.nn.Embedding):
        def __init__(self, n, dim, **_):
            super().__init__(n, dim)

    names = ["fairscale", "fairscale.nn", "fairscale.nn.model_parallel",
             "fairscale.nn.model_parallel.initialize", "fairscale.nn.model_parallel.layers"]
    modules = {name: types.ModuleType(name) for name in names}
    for parent, child in zip(names[:3], names[1:4]):
        setattr(modules[parent], child.rsplit(".", 1)[1], modules[child])
    modules[names[2]].layers = modules[names[4]]
    modules[names[3]].get_model_parallel_world_size = lambda: 1
    modules[names[4]].__dict__.update(ColumnParallelLinear=Column, RowParallelLinear=Row, VocabParallelEmbedding=Vocab)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, "llama_models.llama3.model", raising=False)
    from llama_models.llama3.args import ModelArgs as MetaArgs
    from llama_models.llama3.model import Transformer as MetaTransformer
    del sys.modules["llama_models.llama3.model"]  # built on the stand-ins: not for later imports
    return MetaArgs, MetaTransformer


@pytest.mark.parametrize("tied", [False, True])
def test_meta_export_loads_strict_here_and_in_metas_code(tmp_path, tok, monkeypatch, tied):
    m, args, ckpt = saved(tmp_path, tok, tie_embeddings=tied)
    out = tmp_path / "meta"
    assert run_cli(ckpt, "--to", "meta", "--out", out) == 0
    assert sorted(os.listdir(out)) == ["consolidated.00.pth", "params.json", "tokenizer.model"]
    params = json.loads((out / "params.json").read_text())
    assert "max_seq_len" not in params and params["n_kv_heads"] == 2 and params["tie_embeddings"] == tied
    loaded, largs = checkpoint.load_model(str(out))  # strict=True inside
    assert largs.tie_embeddings == tied and largs.ffn_hidden_dim == args.ffn_hidden_dim
    for k, v in m.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    MetaArgs, MetaTransformer = meta_reference_model(monkeypatch)
    ref = MetaTransformer(MetaArgs(max_seq_len=128, max_batch_size=1, **params))
    ref.load_state_dict(torch.load(out / "consolidated.00.pth", weights_only=True), strict=True)
    tokens = torch.tensor([[tok.bos_id] + tok.encode("class Foo(object):\n    x = 1")])
    with torch.no_grad():
        assert (ref(tokens, 0) - m(tokens)).abs().max() < 1e-4


# -----------------------------------------------------------------------------
# A distributed checkpoint, and the errors


def test_export_a_distributed_checkpoint(tmp_path, tok, capsys):
    args = tiny_args(tok.n_words)
    m = parallel.build_model(args, parallel.setup_distributed(), seed=1)
    step = checkpoint.save_checkpoint(str(tmp_path / "ckpt"), 7, m, model_args=args)
    assert run_cli(step, "--to", "meta", tmp_path / "a") == 2  # a DCP folder keeps no tokenizer
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no tokenizer.model" in err and "--tokenizer" in err
    assert not os.path.exists(tmp_path / "a")
    assert run_cli(step, "--to", "gguf", tmp_path / "m.gguf", "--tokenizer", tok.model_path) == 0
    _, _, tensors = read_gguf(tmp_path / "m.gguf")
    assert torch.equal(torch.from_numpy(tensors["blk.1.ffn_down.weight"].data.copy()), m.layers["1"].feed_forward.w2.weight.detach())
    assert run_cli(step, "--to", "meta", tmp_path / "a", "--tokenizer", tok.model_path) == 0
    loaded, _ = checkpoint.load_model(str(tmp_path / "a"))
    for k, v in m.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_cli_errors_are_one_line_with_exit_2(tmp_path, tok, capsys):
    _, _, ckpt = saved(tmp_path, tok)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "there.gguf").write_text("x")
    cases = [((ckpt, tmp_path / "o"), "missing --to"),
             ((ckpt, "--to", "onnx", tmp_path / "o"), "unknown export format 'onnx'"),
             ((ckpt, "--to", "hf"), "missing OUT"),
             ((ckpt, "--to", "hf", tmp_path / "full"), "already exists and is not an empty folder"),
             ((ckpt, "--to", "gguf", tmp_path / "there.gguf"), "already exists"),
             ((ckpt, "--to", "gguf", tmp_path / "model.bin"), "name it *.gguf"),
             ((ckpt, "--to", "hf", tmp_path / "o", "--dtype", "q8_0"), "not available for hf"),
             ((tmp_path / "nowhere", "--to", "hf", tmp_path / "o"), "checkpoint not found"),
             ((ckpt, "--to", "hf", tmp_path / "o", "--tokenizer", tmp_path / "no.model"), "tokenizer not found"),
             ((ckpt, "--to", "hf", tmp_path / "o", tmp_path / "p"), "one OUT expected"),
             ((ckpt, "gguf", tmp_path / "o.gguf"), "missing --to: write --to gguf"),
             ((ckpt, "--to", "hf", tmp_path / "o", "--bogus"), "unrecognized arguments")]
    for argv, message in cases:
        assert run_cli(*argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (argv, err)
    assert not os.path.exists(tmp_path / "o") and os.listdir(tmp_path / "full") == ["x"]
    # an empty folder is fine, and nothing temporary is left beside OUT
    assert run_cli(ckpt, "--to", "meta", tmp_path / "empty") == 0
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]
    # a tokenizer of another vocabulary size is refused
    other = tmp_path / "other.model"
    T.save_bpe({bytes([i]): i for i in range(256)}, other)
    assert run_cli(ckpt, "--to", "hf", tmp_path / "o", "--tokenizer", other) == 2
    assert "not the tokenizer" in capsys.readouterr().err


# -----------------------------------------------------------------------------
# llama.cpp itself, where llama-cpp-python is installed (not in the test extra: it
# compiles llama.cpp, ~6-20 minutes on 2 cores)


def llama_cpp_model(path, kv_f32=True):
    llama_cpp = pytest.importorskip("llama_cpp")
    import llama_cpp.llama as L
    params = llama_cpp.llama_model_default_params()
    # Without llama.cpp's extra buffer types (AMX, repacked weights): on a VM whose CPU
    # reports AMX but does not let a process use its tiles, q8_0 matmuls die of SIGILL.
    params.use_extra_bufts = False
    original = L.llama_cpp.llama_model_default_params
    L.llama_cpp.llama_model_default_params = lambda: params
    try:  # f32 KV cache (type 0): llama.cpp's default f16 cache alone moves logits by ~1e-3
        return llama_cpp.Llama(str(path), n_ctx=256, n_threads=2, verbose=False, logits_all=True,
                               **({"type_k": 0, "type_v": 0} if kv_f32 else {}))
    finally:
        L.llama_cpp.llama_model_default_params = original


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "q8_0"])
def test_gguf_runs_in_llama_cpp(tmp_path, tok, dtype):
    pytest.importorskip("llama_cpp")
    m, args, ckpt = saved(tmp_path, tok, use_scaled_rope=True, rope_original_max_seq_len=32)
    E.export(ckpt, "gguf", str(tmp_path / "m.gguf"), dtype=dtype)
    llm = llama_cpp_model(tmp_path / "m.gguf")
    for text in HARD_STRINGS:
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tok.encode(text), text[:40]
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == tok.encode(text, bos=True, allowed_special="all")
    for prompt in ([tok.bos_id] + tok.encode("def main():"), T.ChatFormat(tok).encode_dialog_prompt(DIALOGS[1])):
        ours = S.generate(m, tok, [prompt], max_new_tokens=16, temperature=0, include_stop=True)[0]
        llm.reset()
        llm.eval(prompt + ours)
        theirs = torch.tensor(llm.scores[:len(prompt) + len(ours)])
        with torch.no_grad():
            logits = m(torch.tensor([prompt + ours]))[0]
        # logits up to ~14: fp32 the same computation up to float rounding (4e-6 seen); fp16
        # weights 7e-3; q8_0 (llama.cpp also rounds the activations to 8 bits for it) 0.14
        assert (theirs - logits).abs().max() < {"fp32": 1e-4, "fp16": 0.02, "q8_0": 0.3}[dtype]
        if dtype == "fp32":
            greedy = [int(t) for t, _ in zip(llm.generate(prompt, temp=0.0, top_k=1, reset=True), range(len(ours)))]
            assert greedy == ours
