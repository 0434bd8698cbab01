"""
Tests for tokenizer.py (§3.2 tokenizer, chat format, BPE training).

- Meta's exact ids on strings and dialogs, with the real tokenizer.model shipped in the
  `llama-models` package (found with importlib, nothing heavy imported).
- Round trips on random Unicode, special-token text included; Meta's long-input cutting.
- Training: deterministic, and hand-checked merges on a tiny corpus.
- The pure-Python reference encoder equals tiktoken, on Meta's and on a trained tokenizer.
- Bad input gives clear errors.

Run: python -m pytest -q tests/test_tokenizer.py     (budget: well under 45 s on 2 cores)
"""

import ast
import base64
import random
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tokenizer as T  # noqa: E402

META_PATH = T.meta_tokenizer_path()
needs_meta = pytest.mark.skipif(META_PATH is None, reason="llama-models (Meta's tokenizer.model) not installed")

# Varied text: English, code, CJK, emoji, accents, numbers, long whitespace, contractions.
TEST_STRINGS = [
    "",
    "This is a test sentence.",
    "Hello, world! I'm here; you'll see. THEY'RE CAPS'S",
    "def f(x):\n    return x ** 2  # square\n\n\n\tpass\r\n",
    "日本語のテキストと中文文本，还有한국어 문장.",
    "emoji 🦙🦙🔥 👩‍👩‍👧‍👦 flags 🇫🇷 and ✓ marks",
    "Ünïcödé naïve café résumé — “quotes” ‘single’ …",
    "numbers 1234567 3.14159 1,000,000 and 12ab34",
    " " * 100 + "x" + "\n" * 50 + "\t \t  y   ",
    "   leading and trailing   ",
    "<|begin_of_text|> <|eot_id|> text that looks special <|start_header_id|>",
    "mixed\u00a0nbsp\u2003em-space\u3000ideographic\u200bzero-width",
    "Ελληνικά, русский текст, עברית, العربية, हिन्दी",
    "a" * 3000 + " " + "ab" * 700,
]


def random_unicode(rng: random.Random, n: int) -> str:
    """Random text mixing ASCII, whitespace, special-token text and any Unicode code point
    (surrogates excluded: they are not encodable text)."""
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.3:
            out.append(rng.choice("abcdefghij ABC xyz \n\t 0123 .,;'!?()"))
        elif kind < 0.35:
            out.append(rng.choice(["<|eot_id|>", "<|begin_of_text|>", "'s", "  \n ", "\r\n", "🦙", "日本"]))
        else:
            cp = rng.choice([rng.randrange(0x80, 0x800), rng.randrange(0x800, 0xD800),
                             rng.randrange(0xE000, 0x10000), rng.randrange(0x10000, 0x110000)])
            out.append(chr(cp))
    return "".join(out)


@pytest.fixture(scope="module")
def meta():
    if META_PATH is None:
        pytest.skip("llama-models not installed")
    return T.Tokenizer(META_PATH)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1,024-token BPE trained on ~300K characters of stdlib code plus varied text."""
    texts = T.builtin_texts(300_000) + TEST_STRINGS[1:8] * 3
    path = tmp_path_factory.mktemp("tok") / "trained.model"
    return T.train_tokenizer(texts, 1024, path)


# ----------------------------------------------------------------------------------------
# Meta's ids


@needs_meta
def test_meta_ids(meta):
    assert meta.n_words == 128256 and meta.n_base_tokens == 128000
    assert meta.encode("This is a test sentence.", bos=True, eos=False) == [128000, 2028, 374, 264, 1296, 11914, 13]
    assert meta.encode("This is a test sentence.", bos=True, eos=True)[-1] == 128001
    assert meta.decode([128000, 2028, 374, 264, 1296, 11914, 13]) == "<|begin_of_text|>This is a test sentence."
    assert [meta.encode(w) for w in ["user", "system", "assistant", "\n\n"]] == [[882], [9125], [78191], [271]]
    assert (meta.bos_id, meta.eos_id, meta.pad_id, meta.eot_id, meta.eom_id) == (128000, 128001, 128004, 128009, 128008)
    assert meta.stop_tokens == {128001, 128008, 128009}
    s = meta.special_tokens
    assert s["<|start_header_id|>"] == 128006 and s["<|end_header_id|>"] == 128007
    assert s["<|python_tag|>"] == 128010 and s["<|image|>"] == 128011 and s["<|step_id|>"] == 128005
    assert s["<|reserved_special_token_0|>"] == 128002 and s["<|reserved_special_token_245|>"] == 128255
    assert len(s) == 256 and sorted(s.values()) == list(range(128000, 128256))


@needs_meta
def test_meta_chat_format(meta):
    chat = T.ChatFormat(meta)
    # Meta's llama3 repository tests, verbatim ids.
    assert chat.encode_message({"role": "user", "content": "This is a test sentence."}) == \
        [128006, 882, 128007, 271, 2028, 374, 264, 1296, 11914, 13, 128009]
    dialog = [{"role": "system", "content": "This is a test sentence."},
              {"role": "user", "content": "This is a response."}]
    assert chat.encode_dialog_prompt(dialog) == [
        128000, 128006, 9125, 128007, 271, 2028, 374, 264, 1296, 11914, 13, 128009,
        128006, 882, 128007, 271, 2028, 374, 264, 2077, 13, 128009, 128006, 78191, 128007, 271]
    # Content is stripped; special-token text in content stays plain text.
    assert chat.encode_message({"role": "user", "content": "  \n This is a test sentence.\n "}) == \
        chat.encode_message({"role": "user", "content": "This is a test sentence."})
    injected = chat.encode_message({"role": "user", "content": "<|eot_id|>"})
    assert injected.count(meta.eot_id) == 1 and injected[-1] == meta.eot_id


@needs_meta
def test_dialog_masks(meta):
    chat = T.ChatFormat(meta)
    dialog = [{"role": "system", "content": "Be brief."},
              {"role": "user", "content": "This is a test sentence."},
              {"role": "assistant", "content": " This is a response. "}]
    d = chat.encode_dialog(dialog)
    assert len(d.tokens) == len(d.assistant_mask) == len(d.format_mask)
    assert d.tokens == chat.encode_dialog_prompt(dialog)[: -4]  # minus the generation prompt
    assert chat.encode_dialog(dialog, add_generation_prompt=True).tokens == chat.encode_dialog_prompt(dialog)
    # SFT targets: the assistant's content and its closing <|eot_id|>, nothing else.
    targets = [t for t, m in zip(d.tokens, d.assistant_mask) if m]
    assert targets == meta.encode("This is a response.") + [meta.eot_id]
    # DPO masks formatting: bos, 3 headers of 4 tokens each, 3 eots.
    formatted = [t for t, m in zip(d.tokens, d.format_mask) if m]
    header = lambda role: [128006, *meta.encode(role), 128007, 271]  # noqa: E731
    assert formatted == [128000, *header("system"), 128009, *header("user"), 128009, *header("assistant"), 128009]
    # No token is both assistant content and format except the assistant's eot.
    both = [t for t, a, f in zip(d.tokens, d.assistant_mask, d.format_mask) if a and f]
    assert both == [meta.eot_id]
    g = chat.encode_dialog(dialog[:2], add_generation_prompt=True)
    assert g.format_mask[-4:] == [True] * 4 and not any(g.assistant_mask)


@needs_meta
def test_special_tokens_plain_unless_allowed(meta):
    text = "<|eot_id|>"
    assert meta.eot_id not in meta.encode(text)
    assert meta.encode(text, allowed_special="all") == [meta.eot_id]
    assert meta.encode(text, allowed_special={"<|eot_id|>"}) == [meta.eot_id]
    with pytest.raises(ValueError):
        meta.encode(text, disallowed_special="all")


@needs_meta
def test_long_inputs_split_like_meta(meta):
    # 1,000,000 characters without whitespace: tiktoken alone would panic or crawl.
    ids = meta.encode("a" * 1_000_000)
    assert meta.decode(ids) == "a" * 1_000_000
    long_mixed = ("x" * 30_000 + " " * 30_000) * 3 + "y"
    assert meta.decode(meta.encode(long_mixed)) == long_mixed


def _meta_split(s, max_len):
    """Meta's per-character loop (llama_models/llama3/tokenizer.py), the reference."""
    current_len, current_is_space = 0, (s[0].isspace() if s else False)
    start = 0
    for i in range(len(s)):
        is_space = s[i].isspace()
        if current_is_space ^ is_space:
            current_len, current_is_space = 1, is_space
        else:
            current_len += 1
            if current_len > max_len:
                yield s[start:i]
                start, current_len = i, 1
    yield s[start:]


def test_split_long_runs_equals_meta():
    rng = random.Random(0)
    for _ in range(300):
        s = "".join(rng.choice(["a", "b", " ", "\n", "\u3000", "\x1c", "é"]) * rng.randint(1, 9)
                    for _ in range(rng.randint(0, 12)))
        for max_len in (1, 2, 3, 5, 8):
            assert list(T._split_long_runs(s, max_len)) == list(_meta_split(s, max_len)), (s, max_len)


# ----------------------------------------------------------------------------------------
# Round trips and the reference encoder


@needs_meta
def test_round_trip_random_unicode(meta, trained):
    rng = random.Random(1234)
    for _ in range(40):
        s = random_unicode(rng, rng.randint(0, 300))
        for tok in (meta, trained):
            assert tok.decode(tok.encode(s)) == s
            assert tok.decode(tok.encode(s, allowed_special="all")) == s


@needs_meta
def test_reference_encoder_equals_tiktoken(meta, trained):
    rng = random.Random(7)
    strings = TEST_STRINGS + [random_unicode(rng, 200) for _ in range(15)]
    for tok in (meta, trained):
        for s in strings:
            assert T.reference_encode(s, tok.mergeable_ranks) == tok.encode(s), s[:60]
            assert T.reference_encode(s, tok.mergeable_ranks, tok.special_tokens, allowed_special={"<|eot_id|>"}) \
                == tok.encode(s, allowed_special={"<|eot_id|>"}), s[:60]


def test_reference_encoder_trained_only(trained):
    """The same check without llama-models installed."""
    for s in TEST_STRINGS:
        assert T.reference_encode(s, trained.mergeable_ranks) == trained.encode(s)
    # encode_batch (tiktoken threads) == encode, long inputs included.
    batch = TEST_STRINGS + ["z" * 60_000]
    assert trained.encode_batch(batch, bos=True, eos=True) == [trained.encode(s, bos=True, eos=True) for s in batch]


# ----------------------------------------------------------------------------------------
# Training


def test_tiny_corpus_merges():
    # "aaabdaaabac" is one chunk. Pairs: aa 4, ab 2, ... -> merge "aa".
    # Then (aa,a) 2 and (a,b) 2 tie: (b"a", b"b") < (b"aa", b"a") in byte order -> "ab".
    # Then (aa,ab) 2 -> "aaab". Then all pairs count 1; the smallest is (b"a", b"c") -> "ac".
    ranks = T.train_bpe(["aaabdaaabac"], 256 + 256 + 4)
    merges = sorted((r, t) for t, r in ranks.items() if r >= 256)
    assert merges == [(256, b"aa"), (257, b"ab"), (258, b"aaab"), (259, b"ac")]
    assert all(ranks[bytes([b])] == b for b in range(256))
    # Chunks are separate: " hello" and "hello" never merge across the space boundary.
    ranks = T.train_bpe(["hello hello hello"], 256 + 256 + 5)
    # Chunks: "hello" x1, " hello" x2, so he/el/ll/lo count 3 and " h" 2. Ties at 3 go to the
    # smallest bytes: (e,l) -> "el"; then (el,l) < (h,el) < (l,o) -> "ell"; then "ello";
    # then (h,ello) -> "hello"; last (" ", hello) 2 -> " hello". Nothing spans "o h".
    learned = sorted(ranks, key=ranks.get)[256:]
    assert learned == [b"el", b"ell", b"ello", b"hello", b" hello"]


def test_duplicate_bytes_reuse_token():
    # ("ab","c") and ("a","bc") both make b"abc": ranks stay unique and contiguous.
    ranks = T.train_bpe(["abc abc abc xbc xbc xbc ab ab ab ab bcx"], 256 + 256 + 12)
    assert sorted(ranks.values()) == list(range(len(ranks)))
    assert len(set(ranks)) == len(ranks)


def test_training_deterministic(tmp_path):
    texts = T.builtin_texts(150_000) + TEST_STRINGS
    a = T.train_bpe(texts, 900)
    b = T.train_bpe(list(texts), 900)
    assert a == b and len(a) == 900 - 256
    T.save_bpe(a, tmp_path / "a.model")
    T.save_bpe(b, tmp_path / "b.model")
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    assert T.load_bpe(tmp_path / "a.model") == a


def test_number_tokens_as_in_llama3(tmp_path, meta):
    """number_tokens: every 1-3 digit string is one token, numbers split in groups of 3
    from the left -- the same pieces as Meta's tokenizer.model; the rest still BPE."""
    texts = T.builtin_texts(150_000) + ["in 2024 it cost 3,141.59 and 201954 units; ² 23 ٣٤"] * 5
    ranks = T.train_bpe(texts, 2048, number_tokens=True)
    assert len(ranks) == 2048 - 256 and all(ranks[n] == 256 + i for i, n in enumerate(T.NUMBER_TOKENS))
    T.save_bpe(ranks, tmp_path / "n.model")
    tok = T.Tokenizer(tmp_path / "n.model")
    for i in range(1000):
        for s in {str(i), str(i).zfill(2), str(i).zfill(3)}:
            assert len(tok.encode(s)) == 1 and len(meta.encode(s)) == 1, s
    digits = lambda t, s: [t.decode([i]) for i in t.encode(s) if t.decode([i]).isdigit()]  # noqa: E731
    for s in ["201954", "What is 347 * 582?", "pi is 3.14159265, e 2.71828", "1234567890123", "x86_64 v2.0"]:
        assert digits(tok, s) == digits(meta, s), s  # the numbers in the same pieces as Meta's
        assert T.reference_encode(s, ranks) == tok.encode(s) and tok.decode(tok.encode(s)) == s
    assert [tok.decode([t]) for t in tok.encode("201954")] == ["201", "954"]
    plain = T.train_bpe(texts, 2048)
    assert sum(len(T.reference_encode(str(i), plain)) == 1 for i in range(100, 1000)) < 1000  # without: not all
    with pytest.raises(ValueError, match="number tokens"):
        T.train_bpe(texts, 1024, number_tokens=True)


def test_trained_tokenizer_layout(trained):
    assert trained.n_words == 1024 and trained.n_base_tokens == 768
    assert trained.bos_id == 768 and trained.eot_id == 777 and trained.pad_id == 772
    assert trained.encode("hi", bos=True, eos=True)[::len(trained.encode("hi")) + 1] == [768, 769]
    chat = T.ChatFormat(trained)
    d = chat.encode_dialog([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])
    assert trained.decode(d.tokens) == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nx<|eot_id|>"
                                        "<|start_header_id|>assistant<|end_header_id|>\n\ny<|eot_id|>")


def test_runs_out_of_pairs_warns(capsys):
    ranks = T.train_bpe(["ab"], 256 + 256 + 10)
    assert len(ranks) == 257
    assert "ran out of pairs" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------
# Bad input


def test_bad_tokenizer_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        T.Tokenizer(tmp_path / "missing.model")
    good = [f"{base64.b64encode(bytes([b])).decode()} {b}" for b in range(256)]
    bad = tmp_path / "bad.model"
    bad.write_text("\n".join(good[:10] + ["!!notbase64 10"] + good[11:]) + "\n")
    with pytest.raises(ValueError, match="line 11"):
        T.Tokenizer(bad)
    bad.write_text("\n".join(good[:5] + ["QQ=="] + good[6:]) + "\n")
    with pytest.raises(ValueError, match="line 6"):
        T.load_bpe(bad)
    bad.write_text("\n".join(good[:5] + ["QQ== x"] + good[6:]) + "\n")
    with pytest.raises(ValueError, match="line 6"):
        T.load_bpe(bad)
    bad.write_text("\n".join(good[:255] + [f"{base64.b64encode(b'ab').decode()} 300"]) + "\n")
    with pytest.raises(ValueError, match="rank 255 is missing"):
        T.load_bpe(bad)
    bad.write_text("\n".join(good[:200]) + "\n")
    with pytest.raises(ValueError, match="single bytes"):
        T.load_bpe(bad)
    bad.write_text("")
    with pytest.raises(ValueError, match="empty"):
        T.load_bpe(bad)
    bad.write_text("\n".join(good + [good[3].split()[0] + " 256"]) + "\n")
    with pytest.raises(ValueError, match="line 257.*twice"):
        T.load_bpe(bad)


def test_bad_arguments(trained):
    with pytest.raises(ValueError, match="at least 512"):
        T.train_bpe(["hello"], 511)
    with pytest.raises(TypeError):
        T.train_bpe(["hello"], 600.0)
    with pytest.raises(TypeError, match="str"):
        T.train_bpe([b"bytes"], 600)
    with pytest.raises(TypeError, match="str"):
        trained.encode(b"bytes")
    with pytest.raises(TypeError, match="str"):
        trained.encode(None)
    with pytest.raises(TypeError, match="str"):
        T.reference_encode(123, trained.mergeable_ranks)
    chat = T.ChatFormat(trained)
    with pytest.raises(ValueError, match="content"):
        chat.encode_message({"role": "user"})
    with pytest.raises(TypeError):
        chat.encode_dialog(["not a dict"])


# ----------------------------------------------------------------------------------------
# Tool calls (§4.3.5): Meta's own dialogs, encoded by Meta's ChatFormat and by ours

def _meta_chat():
    """Meta's ChatFormat from the installed llama-models package (its real tokenizer.model)."""
    pytest.importorskip("llama_models.llama3.chat_format")
    from llama_models.llama3.chat_format import ChatFormat as MetaChatFormat
    from llama_models.llama3.tokenizer import Tokenizer as MetaTokenizer
    return MetaChatFormat(MetaTokenizer.get_instance())


def _to_meta(messages):
    """Our message dicts -> Meta's RawMessage objects ("ipython" is Meta's role "tool")."""
    from llama_models.datatypes import BuiltinTool, RawMessage, StopReason, ToolCall
    out = []
    for m in messages:
        calls = [ToolCall(call_id=str(i), arguments=c["arguments"],
                          tool_name=BuiltinTool(c["tool_name"]) if c["tool_name"] in T.BUILTIN_TOOLS else c["tool_name"])
                 for i, c in enumerate(m.get("tool_calls", []))]
        out.append(RawMessage(role="tool" if m["role"] == "ipython" else m["role"], content=m["content"],
                              context=m.get("context"), tool_calls=calls,
                              stop_reason=StopReason(m["stop_reason"]) if m.get("stop_reason") else None))
    return out


WOLFRAM_RESPONSE = """
{
    "queryresult": {
        "success": true,
        "inputstring": "100th decimal of pi",
        "pods": [
            {
                "title": "Input interpretation",
                "subpods": [
                    {
                        "title": "",
                        "plaintext": "100th digit | \u03c0"
                    }
                ]
            },
            {
                "title": "Nearby digits",
                "subpods": [
                    {
                        "title": "",
                        "plaintext": "...86208998628034825342117067982148086513282306647093..."
                    }
                ]
            },
            {
                "title": "Result",
                "primary": true,
                "subpods": [
                    {
                        "title": "",
                        "plaintext": "7"
                    }
                ]
            }
        ]
    }
}
"""


def _doc_blocks(relative: str, heading: str) -> list[str]:
    """The code blocks under `heading` in one of llama-models' prompt-format docs."""
    path = Path(T.meta_tokenizer_path()).parents[1] / relative
    if not path.is_file():
        pytest.skip(f"{relative} not in this llama-models version")
    return re.findall(f"##### {heading}\n```\n(.*?)\n```", path.read_text(encoding="utf-8"), flags=re.S)


def _meta_dialogs():
    """(name, messages, tool_prompt_format) for the dialogs of Meta's Llama 3.1 / 3.2 prompt
    docs (llama-models' prompts.py built them from these messages) and its tests."""
    sys_31 = T.system_prompt(["brave_search", "wolfram_alpha"], today="21 September 2024",
                             instruction="You are a helpful assistant.")
    custom_sys = T.system_prompt(custom_tools=True, today="21 September 2024",
                                 instruction="You are a helpful assistant.")
    def doc_message(relative, marker, role):  # the first `role` message of the block holding `marker`
        block = next(b for b in _doc_blocks(relative, "Input Prompt Format") if marker in b)
        return block.split(f"<|start_header_id|>{role}<|end_header_id|>\n\n")[1].split("<|eot_id|>")[0]
    json_tools = doc_message("llama3_1/prompt_format.md", "Return function calls in JSON format.", "user")
    tag_tools = doc_message("llama3_1/prompt_format.md", "<function=example_function_name>", "user")
    py_list_sys = doc_message("llama3_2/text_prompt_format.md", "What is the weather in SF?", "system")
    code = "def is_prime(n):\n    return n > 1 and all(n % d for d in range(2, n))\n\nprint(is_prime(7))"
    return [
        ("jeopardy", [{"role": "system", "content": "You are a helpful assistant"},
                      {"role": "user", "content": "Answer who are you in the form of jeopardy?"}], "json"),
        ("brave_search", [{"role": "system", "content": sys_31},
                          {"role": "user", "content": "Search the web for the latest price of 1oz gold?"}], "json"),
        ("code_interpreter", [{"role": "system", "content": "Environment: ipython"},
                              {"role": "user", "content": "Write code to check if number is prime, use that to "
                                                          "see if the number 7 is prime"}], "json"),
        ("wolfram_full", [{"role": "system", "content": "Environment: ipython\nTools: brave_search, wolfram_alpha\n"},
                          {"role": "user", "content": "What is the 100th decimal of pi?"},
                          {"role": "assistant", "content": "", "stop_reason": "end_of_message",
                           "tool_calls": [{"tool_name": "wolfram_alpha",
                                           "arguments": {"query": "100th decimal of pi"}}]},
                          {"role": "tool", "content": WOLFRAM_RESPONSE}], "json"),
        ("json_custom", [{"role": "system", "content": custom_sys}, {"role": "user", "content": json_tools},
                         {"role": "user", "content": "Use tools to get latest trending songs"}], "json"),
        ("function_tag", [{"role": "system", "content": custom_sys}, {"role": "user", "content": tag_tools},
                          {"role": "user", "content": "Use tools to get latest trending songs"}], "function_tag"),
        ("python_list_e2e", [{"role": "system", "content": py_list_sys},
                             {"role": "user", "content": "What is the weather in SF?"},
                             {"role": "assistant", "content": "", "stop_reason": "end_of_turn",
                              "tool_calls": [{"tool_name": "get_weather",
                                              "arguments": {"city": "San Francisco", "metric": "celsius"}}]},
                             {"role": "ipython", "content": '"25 C"'}], "python_list"),
        # Not in the docs: a whole interpreter round trip, a JSON call answered, RAG context.
        ("code_round_trip", [{"role": "system", "content": "Environment: ipython"},
                             {"role": "user", "content": "Is 7 prime?"},
                             {"role": "assistant", "content": "", "stop_reason": "end_of_message",
                              "tool_calls": [{"tool_name": "code_interpreter", "arguments": {"code": code}}]},
                             {"role": "ipython", "content": "True"},
                             {"role": "assistant", "content": "Yes, 7 is prime."}], "json"),
        ("json_e2e", [{"role": "system", "content": custom_sys}, {"role": "user", "content": json_tools},
                      {"role": "user", "content": "Use tools to get latest trending songs"},
                      {"role": "assistant", "content": "", "stop_reason": "end_of_message",
                       "tool_calls": [{"tool_name": "trending_songs", "arguments": {"n": "10", "genre": "latest"}}]},
                      {"role": "tool", "content": '["great song1", "awesome song2", "cool song3"]'},
                      {"role": "assistant", "content": "great song1, awesome song2 and cool song3."}], "json"),
        ("rag_context", [{"role": "user", "content": "Who wrote it?",
                          "context": "The Llama 3 Herd of Models was written by the Llama team at Meta."}], "json"),
    ]


@needs_meta
@pytest.mark.parametrize("name", ["jeopardy", "brave_search", "code_interpreter", "wolfram_full", "json_custom",
                                  "function_tag", "python_list_e2e", "code_round_trip", "json_e2e", "rag_context"])
def test_tool_dialogs_equal_meta_chat_format(meta, name):
    """Every message kind of Llama 3.1's format, Meta's exact ids (llama-models' own ChatFormat)."""
    from llama_models.datatypes import ToolPromptFormat
    theirs = _meta_chat()
    _, messages, fmt = next(d for d in _meta_dialogs() if d[0] == name)
    ours = T.ChatFormat(meta, strip=False).encode_dialog_prompt(messages, tool_prompt_format=fmt)
    assert ours == theirs.encode_dialog_prompt(_to_meta(messages), ToolPromptFormat(fmt)).tokens
    for message in messages:  # message by message too
        assert T.ChatFormat(meta, strip=False).encode_message(message, fmt) == \
            theirs.encode_message(_to_meta([message])[0], ToolPromptFormat(fmt))[0]


@needs_meta
def test_tool_dialogs_equal_meta_prompt_docs(meta):
    """The same dialogs decode to the text of llama-models' prompt-format docs. The one
    difference, asserted: the docs (an earlier ChatFormat) show <|python_tag|> before
    every tool call; Meta's code writes it before code_interpreter calls only."""
    blocks = _doc_blocks("llama3_1/prompt_format.md", "Input Prompt Format") + \
        _doc_blocks("llama3_2/text_prompt_format.md", "Input Prompt Format")
    chat = T.ChatFormat(meta, strip=False)
    found = {}
    for name, messages, fmt in _meta_dialogs()[:7]:  # the seven dialogs of the docs
        text = meta.decode(chat.encode_dialog_prompt(messages, tool_prompt_format=fmt))
        if name in ("wolfram_full", "python_list_e2e"):  # a non-interpreter call in the history
            call = T.encode_tool_call(messages[2]["tool_calls"][0], fmt)
            assert text.count(f"<|end_header_id|>\n\n{call}") == 1
            text = text.replace(f"<|end_header_id|>\n\n{call}", f"<|end_header_id|>\n\n<|python_tag|>{call}")
        found[name] = text in blocks
    assert [name for name, ok in found.items() if not ok] == [] and len(found) == 7


def _meta_parse(text):
    from llama_models.datatypes import StopReason
    m = _meta_chat().decode_assistant_message_from_content(text, StopReason.out_of_tokens)
    return {"role": "assistant", "content": m.content, "stop_reason": m.stop_reason.value,
            "tool_calls": [{"tool_name": getattr(c.tool_name, "value", c.tool_name), "arguments": c.arguments}
                           for c in m.tool_calls]}


@needs_meta
def test_parse_like_meta_tool_utils(meta):
    """Generated assistant messages -> text or a tool call, as Meta's decode does: the model
    responses of its prompt docs, its test_tool_utils cases, and edge cases."""
    responses = _doc_blocks("llama3_1/prompt_format.md", "Model Response Format") + \
        _doc_blocks("llama3_2/text_prompt_format.md", "Model Response Format")
    assert len(responses) >= 10
    cases = responses + [
        '<function=getWeather>{"location":"New York","date":"2023-08-05"}',  # Meta's test_tool_utils
        '[get_boiling_point(liquid_name="water", celcius=True), get_melting_point(substance="ice", kelvin=False)]',
        "[calculate_volume(radius=5.2, height=10)]", "[initialize()]", "[]", '[get_boiling_point("water", True)]',
        '[get_boiling_point(liquid={"name":"water", "color":"translucent"}), '
        'convert_temperature(value=[100, 101], from_unit="C", to_unit="F")]',
        '{"func": get_boiling_point(liquid_name="water")}', '[(get_boiling_point(liquid_name="water"),)]',
        "<|python_tag|>347 * 582<|eom_id|>", "<|python_tag|>print(1)\n<|eot_id|>",
        '{"type": "function", "name": "brave_search", "parameters": {"q": "llamas"}}<|eom_id|>',
        '<|python_tag|>wolfram_alpha.call(query="2+2")<|eom_id|>', '{"a": 1}', "plain text, cut off",
        "<|start_header_id|>assistant<|end_header_id|>\n\n  hi  <|eot_id|>", "<function=f>{'a': 'b'}</function>",
    ]
    for text in cases:
        expected = _meta_parse(text)
        assert T.parse_assistant_message(text) == expected, text
        ids = meta.encode(text, allowed_special="all")  # the same, from generated ids
        assert T.ChatFormat(meta).decode_assistant_message(ids) == expected, text
    first = T.parse_assistant_message(responses[1] if "brave_search" in responses[1] else
                                      next(r for r in responses if "brave_search" in r))
    assert first["tool_calls"] == [{"tool_name": "brave_search", "arguments": {"query": "latest price of 1oz gold"}}]
    assert first["stop_reason"] == "end_of_message" and first["content"] == ""


@needs_meta
def test_tool_call_round_trip(meta):
    """encode a message with a tool call -> its ids after the header -> parse: the same call."""
    chat = T.ChatFormat(meta)
    for call, fmt in [({"tool_name": "code_interpreter", "arguments": {"code": "347 * 582"}}, "json"),
                      ({"tool_name": "brave_search", "arguments": {"query": "llama herd"}}, "json"),
                      ({"tool_name": "get_weather", "arguments": {"city": "Paris", "days": 3}}, "json"),
                      ({"tool_name": "get_weather", "arguments": {"city": "Paris"}}, "function_tag"),
                      ({"tool_name": "get_weather", "arguments": {"city": "Paris", "ok": True}}, "python_list")]:
        message = {"role": "assistant", "content": "", "tool_calls": [call], "stop_reason": "end_of_message"}
        ids = chat.encode_message(message, fmt)[4:]  # without the 4 header tokens
        assert chat.decode_assistant_message(ids) == message, (call, fmt)
    # Meta's test: <|python_tag|> opens a code_interpreter call, not a custom one.
    code = chat.encode_message({"role": "assistant", "content": "", "tool_calls": [
        {"tool_name": "code_interpreter", "arguments": {"code": "print('Hello, world!')"}}]}, "python_list")
    assert code[:5] == [128006, 78191, 128007, 271, meta.python_tag_id] and code[-1] == meta.eot_id
    custom = chat.encode_message({"role": "assistant", "content": "", "tool_calls": [
        {"tool_name": "custom_tool", "arguments": {"some_param": "value"}}]}, "python_list")
    assert custom[:5] == [128006, 78191, 128007, 271, meta.encode("[")[0]]


def test_system_prompt():
    # Meta's test_system_prompts (builtin tools) and the system prompts of its prompt docs.
    assert T.system_prompt(["code_interpreter", "brave_search", "wolfram_alpha"]) == \
        "Environment: ipython\nTools: brave_search, wolfram_alpha"
    assert T.system_prompt(["code_interpreter"]) == "Environment: ipython"
    assert T.system_prompt() == ""
    assert T.system_prompt(["brave_search", "wolfram_alpha"], today="21 September 2024",
                           instruction="You are a helpful assistant.") == (
        "Environment: ipython\nTools: brave_search, wolfram_alpha\nCutting Knowledge Date: December 2023\n"
        "Today Date: 21 September 2024\n\nYou are a helpful assistant.\n")
    assert T.system_prompt(["code_interpreter"], today="24 September 2024") == (
        "Environment: ipython\n\nCutting Knowledge Date: December 2023\nToday Date: 24 September 2024\n")
    assert T.system_prompt(today="1 January 2025") == "Cutting Knowledge Date: December 2023\nToday Date: 1 January 2025\n"
    with pytest.raises(ValueError, match="unknown built-in tool"):
        T.system_prompt(["python"])


@needs_meta
def test_tool_dialog_masks(meta):
    """SFT trains on what the assistant wrote -- <|python_tag|>, the call, <|eom_id|>, the
    answer, <|eot_id|> -- never on the tool's result or the RAG context; DPO masks headers
    and both end tokens, not <|python_tag|> (the decision to call)."""
    chat = T.ChatFormat(meta)
    dialog = [{"role": "system", "content": T.system_prompt(["code_interpreter"])},
              {"role": "user", "content": "What is 347 * 582?", "context": "Use the tool."},
              {"role": "assistant", "content": "", "stop_reason": "end_of_message",
               "tool_calls": [{"tool_name": "code_interpreter", "arguments": {"code": "347 * 582"}}]},
              {"role": "ipython", "content": "201954"},
              {"role": "assistant", "content": "201954"}]
    d = chat.encode_dialog(dialog)
    assert len(d.tokens) == len(d.assistant_mask) == len(d.format_mask)
    targets = [t for t, m in zip(d.tokens, d.assistant_mask) if m]
    assert targets == [meta.python_tag_id, *meta.encode("347 * 582"), meta.eom_id, *meta.encode("201954"), meta.eot_id]
    header = lambda role: [128006, *meta.encode(role), 128007, 271]  # noqa: E731
    formatted = [t for t, m in zip(d.tokens, d.format_mask) if m]
    assert formatted == [128000, *header("system"), 128009, *header("user"), 128009, *header("assistant"),
                         128008, *header("ipython"), 128009, *header("assistant"), 128009]
    context = meta.encode("\n\n") + meta.encode("Use the tool.")  # after the user's content, no loss, no format
    start = d.tokens.index(meta.encode("?")[0]) + 1
    assert d.tokens[start:start + len(context)] == context
    assert not any(d.assistant_mask[start:start + len(context)] + d.format_mask[start:start + len(context)])
    assert d.tokens == chat.encode_dialog_prompt(dialog)[:-4]


def test_bad_tool_messages(trained):
    chat = T.ChatFormat(trained)
    for bad, match in [({"role": "assistant", "content": "", "tool_calls": [{"tool_name": "x"}]}, "tool call"),
                       ({"role": "assistant", "content": "", "tool_calls": "x"}, "list"),
                       ({"role": "assistant", "content": "", "tool_calls": [
                           {"tool_name": "code_interpreter", "arguments": {"query": "1"}}]}, "'code'"),
                       ({"role": "user", "content": "a", "context": 3}, "context"),
                       ({"role": "assistant", "content": "a", "stop_reason": "eom"}, "stop_reason")]:
        with pytest.raises(ValueError, match=match):
            chat.encode_message(bad)
    with pytest.raises(ValueError, match="tool_prompt_format"):
        T.encode_tool_call({"tool_name": "f", "arguments": {}}, "xml")


# ----------------------------------------------------------------------------------------
# Command line (in-process)


def test_cli(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 50 + "日本語 🦙\n" * 20)
    out = tmp_path / "tok.model"
    T.main(["train", "--vocab-size", "600", "--input", str(corpus), "--out", str(out)])
    assert T.Tokenizer(out).n_words <= 600 and (tmp_path / "tok.model.json").exists()
    capsys.readouterr()
    T.main(["encode", "--tokenizer", str(out), "the lazy dog"])
    ids = capsys.readouterr().out.split()
    T.main(["decode", "--tokenizer", str(out), *ids])
    assert capsys.readouterr().out == "the lazy dog\n"
    T.main(["stats", "--tokenizer", str(out), "--input", str(corpus), "--out", str(tmp_path / "s.json")])
    assert "chars/token" in capsys.readouterr().out
    # --pieces: one token per line, its id and its text; a piece of a character as bytes
    T.main(["encode", "--tokenizer", str(out), "--pieces", "--bos", "the lazy dog 🐪"])
    lines = capsys.readouterr().out.splitlines()
    ids = [int(line.split()[0]) for line in lines]
    assert ids == T.Tokenizer(out).encode("the lazy dog 🐪", bos=True)
    assert lines[0].split(None, 1)[1] == "'<|begin_of_text|>'" and "' lazy'" in lines[2]
    pieces = [line.split(None, 1)[1] for line in lines[1:]]
    values = [ast.literal_eval(p) for p in pieces]  # str for whole characters, bytes for parts of one
    assert b"".join(v.encode() if isinstance(v, str) else v for v in values) == "the lazy dog 🐪".encode()
    assert any(isinstance(v, bytes) for v in values)
