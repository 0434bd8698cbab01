"""Tests of eval.py: bits per byte equals the loss it is derived from, choice scores
equal transformers' LlamaForCausalLM and the naive one-forward-per-choice score, the
needle lands where the generator says, benchmark rows of every format are read and bad
ones reported with file and line, GSM8K answers are extracted, and the CLI writes
eval.json + eval.png. Tiny random models over the byte tokenizer: seconds."""
import json
import math
import random

import pytest
import torch
import torch.nn.functional as F

import checkpoint
import eval as E
import model as M
from tests.conftest import tiny_args


def tiny_model(seed=0, **kw):
    m = M.Transformer(tiny_args(**kw)).eval()
    m.init_weights(seed=seed)
    with torch.no_grad():  # sharper predictions than N(0, 0.02): scores differ visibly
        m.output.weight.mul_(10)
    return m


TEXT = "The quick brown fox jumps over the lazy dog. Zwölf Boxkämpfer jagen Viktor quer über den Sylter Deich."


# -----------------------------------------------------------------------------
# Bits per byte


@torch.no_grad()
def test_bits_per_byte_equals_the_loss_it_is_derived_from(tok):
    model = tiny_model()
    result = E.bits_per_byte(model, tok, [TEXT], seq_len=256)
    ids = torch.tensor([[tok.bos_id] + tok.encode(TEXT) + [tok.eos_id]])
    nll = F.cross_entropy(model(ids[:, :-1])[0], ids[0, 1:], reduction="none")  # (T,) nats
    n_bytes = len(TEXT.encode("utf-8"))  # the umlauts are 2 bytes each
    assert result["bytes"] == n_bytes
    # bits per byte: the text's tokens only (the final eos prediction is not text)
    assert result["bits_per_byte"] == pytest.approx(float(nll[:-1].sum()) / math.log(2) / n_bytes, rel=1e-5)
    assert result["loss"] == pytest.approx(float(nll.mean()), rel=1e-5)  # every target, as val_loss


@torch.no_grad()
def test_bits_per_byte_over_windows_and_documents(tok):
    """Two documents cut into windows of 32: each window is scored as pre-training's
    held-out windows are (document-masked), and every byte is counted once."""
    model = tiny_model(seed=1)
    texts = [TEXT, "def f(x):\n    return x * 2\n"]
    result = E.bits_per_byte(model, tok, texts, seq_len=32, batch_size=3)
    stream = sum(([tok.bos_id] + tok.encode(t) + [tok.eos_id] for t in texts), [])
    text_nll, total = 0.0, 0
    for s in range(0, len(stream) - 1, 32):
        window = torch.tensor([stream[s: s + 33]])
        batch = E.make_batch(window.numpy(), tok.bos_id, "cpu")
        nll = F.cross_entropy(model(batch["inputs"], doc_ids=batch["doc_ids"])[0], batch["targets"][0],
                              ignore_index=-100, reduction="none")
        is_text = (batch["targets"][0] >= 0) & (batch["targets"][0] < 256)  # bytes; not bos/eos, not masked
        text_nll += float(nll[is_text].sum())
        total += int(is_text.sum())
    assert result["bytes"] == sum(len(t.encode()) for t in texts) == total
    assert result["bits_per_byte"] == pytest.approx(text_nll / math.log(2) / total, rel=1e-5)


# -----------------------------------------------------------------------------
# Scoring choices: one shared prefill == one forward per choice == transformers


def items_of_every_shape(rng):
    """Questions with 2-4 choices and contexts of different lengths (left padding), a
    Winogrande-like pair whose contexts differ, and choices sharing their first tokens."""
    def ids(n):
        return [rng.randrange(0, 256) for _ in range(n)]
    bos = 256
    items = []
    for n_choices, ctx_len in ((4, 12), (2, 5), (3, 30), (2, 1)):
        ctx = [bos] + ids(ctx_len)
        items.append([(ctx, ids(rng.randrange(1, 6))) for _ in range(n_choices)])
    shared = [bos] + ids(9)
    items.append([(shared + ids(3), ids(4)), (shared + ids(2), ids(4))])  # contexts differ after 10 tokens
    common = ids(2)
    items.append([([bos] + ids(6), common + ids(2))] * 1 + [([bos] + ids(6), common + ids(3))])
    same_ctx = [bos] + ids(7)
    items.append([(same_ctx, common + [1, 2]), (same_ctx, common + [3])])  # choices share 2 tokens
    return items


def test_shared_prefill_scores_equal_scoring_each_choice_alone():
    model = tiny_model()
    items = items_of_every_shape(random.Random(0))
    shared = E.score_continuations(model, items, pad_id=0)
    for scores, requests in zip(shared, items):
        alone = [E.score_one(model, c, t) for c, t in requests]
        assert scores == pytest.approx(alone, abs=1e-4)
    # the same questions one at a time, and in the reverse order, give the same numbers
    flat = [x for scores in shared for x in scores]
    assert [x for it in items for x in E.score_continuations(model, [it])[0]] == pytest.approx(flat, abs=1e-4)
    reverse = E.score_continuations(model, items[::-1])[::-1]
    assert [x for scores in reverse for x in scores] == pytest.approx(flat, abs=1e-4)


def test_rows_that_fit_alone_are_scored_even_when_their_batch_would_not():
    """A long prompt with a short choice and a short prompt with a long one: left-padded
    together they need 253 + 5 cache slots > max_seq_len 256, yet each fits alone."""
    model = tiny_model()
    rng = random.Random(3)
    items = [[([256] + [rng.randrange(256) for _ in range(252)], [1, 2, 3])],
             [([256] + [rng.randrange(256) for _ in range(9)], [4, 5, 6, 7, 8])]]
    scores = E.score_continuations(model, items)
    assert [s[0] for s in scores] == pytest.approx([E.score_one(model, *it[0]) for it in items], abs=1e-4)


def test_choice_scores_equal_transformers():
    pytest.importorskip("transformers")
    import bench
    model = tiny_model(seed=2)
    hf = bench.hf_model_from(model)
    items = items_of_every_shape(random.Random(1))
    ours = E.score_continuations(model, items)
    for scores, requests in zip(ours, items):
        for score, (c, t) in zip(scores, requests):
            with torch.no_grad():
                logp = hf(torch.tensor([c + t])).logits[0, :-1].float().log_softmax(-1)
            ref = float(logp[len(c) - 1:].gather(-1, torch.tensor(t)[:, None]).sum())
            assert score == pytest.approx(ref, abs=1e-4)


def test_eval_choices_picks_the_likeliest_choice(tok):
    """acc counts the argmax of the summed score, acc_norm of the score per character."""
    model = tiny_model(seed=3)
    items = [{"requests": [("ab", " c"), ("ab", " dddddd")], "label": 0},
             {"requests": [("xy", " z"), ("xy", " zz")], "label": 1}]
    enc = [[(tok.encode(c, bos=True), tok.encode(t)) for c, t in it["requests"]] for it in items]
    scores = E.score_continuations(model, enc)
    result = E.eval_choices(model, tok, items, "t", batch_size=1)
    acc = sum(max(range(2), key=lambda k: s[k]) == it["label"] for s, it in zip(scores, items)) / 2
    acc_norm = sum(max(range(2), key=lambda k: s[k] / len(it["requests"][k][1])) == it["label"]
                   for s, it in zip(scores, items)) / 2
    assert (result["acc"], result["acc_norm"], result["n"]) == (acc, acc_norm, 2)


# -----------------------------------------------------------------------------
# The needle


@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
def test_needle_goes_where_the_generator_says(tok, depth):
    haystack = tok.encode("Some filler sentence here. Another one follows it.\n" * 20)
    ex = E.needle_example(haystack, tok, 300, depth, "48213", offset=7)
    needle = tok.encode(" " + E.NEEDLE.format(key="48213") + " ")
    ids = ex["ids"]
    assert ids[ex["needle_at"]: ex["needle_at"] + ex["needle_len"]] == needle
    assert len(ids) + len(ex["answer"]) == 300  # prompt + answer fill the length exactly
    assert ids[0] == tok.bos_id and tok.decode(ids[-len(tok.encode(E.QUESTION)):]) == E.QUESTION
    assert tok.decode(ex["answer"]) == " 48213"
    n = 300 - 1 - len(needle) - len(tok.encode("\n" + E.QUESTION)) - len(ex["answer"])
    assert ex["depth"] == (ex["needle_at"] - 1) / n
    assert depth - 64 / n <= ex["depth"] <= depth + 1e-9  # at or just before the asked depth
    if 0 < ex["needle_at"] - 1 < n:  # after a sentence end
        assert tok.decode([ids[ex["needle_at"] - 1]]) in (".", "\n")
    # the filler is the haystack, read cyclically from the offset
    assert ids[1: ex["needle_at"]] == [haystack[(7 + i) % len(haystack)] for i in range(ex["needle_at"] - 1)]


def test_needle_fills_the_whole_context(tok):
    """Prompts of exactly max_seq_len tokens (answer included) are generated and scored."""
    model = tiny_model()  # max_seq_len 256
    r = E.needle_in_a_haystack(model, tok, tok.encode("Filler text. " * 50), [256], [0.0, 0.5, 1.0], trials=2)
    assert set(r["key_nll_by_length"]) == set(r["decoy_nll_by_length"]) == {"256"}


def test_says_key():
    assert E.says_key(" 48213.", "48213") and E.says_key("48213", "48213")
    assert not E.says_key(" 482130", "48213") and not E.says_key(" the 48213", "48213")


def test_needle_in_a_haystack_report_shape(tok):
    model = tiny_model()
    haystack = tok.encode("Filler text. " * 50)
    r = E.needle_in_a_haystack(model, tok, haystack, [160, 256], [0.0, 1.0], trials=2, batch_size=3)
    assert r["lengths"] == [160, 256] and len(r["accuracy"]) == 2 and len(r["accuracy"][0]) == 2
    assert set(r["by_length"]) == {"160", "256"} and all(0 <= v <= 1 for v in r["by_length"].values())
    # the key's log-loss per token, as the naive score of the one cell's prompt gives it
    one = E.needle_in_a_haystack(model, tok, haystack, [160], [0.0], trials=1)
    rng = random.Random("niah/0")
    ex = E.needle_example(haystack, tok, 160, 0.0, E.random_key(rng), rng.randrange(len(haystack)))
    expected = -E.score_one(model, ex["ids"], ex["answer"]) / len(ex["answer"])
    assert one["key_nll_by_length"]["160"] == pytest.approx(expected, abs=1e-3)
    decoy = E.decoy_for(ex["answer"], tok, random.Random("niah-decoy/0"))
    expected = -E.score_one(model, ex["ids"], decoy) / len(decoy)
    assert one["decoy_nll_by_length"]["160"] == pytest.approx(expected, abs=1e-3)


class Copier(torch.nn.Module):
    """A perfect induction head with nothing else: at position t it predicts the token
    at t + 1 - span (what followed this token's earlier occurrence in [bos] x x); before
    that, uniform."""
    def __init__(self, span, vocab=512):
        super().__init__()
        self.span, self.tok_embeddings = span, torch.nn.Embedding(vocab, 1)

    def forward(self, tokens):
        B, T = tokens.shape
        logits = torch.zeros(B, T, self.tok_embeddings.num_embeddings)
        t = torch.arange(self.span, T)
        logits[torch.arange(B)[:, None], t[None], tokens[:, t + 1 - self.span]] = 30.0
        return logits


def test_in_context_copying_tells_a_copier_from_a_model_that_does_not_copy(tok):
    texts = ["Some held-out text, long enough for several spans of it. " * 40]
    copier = E.in_context_copying(Copier(span=50), tok, texts, span=50, n=4)
    assert copier["first"] == pytest.approx(math.log(512), abs=1e-4)  # nothing to copy yet: uniform
    assert copier["repeat"] < 1e-6 and copier["accuracy"] == 1.0
    assert copier["gap"] == pytest.approx(math.log(512), abs=1e-4)
    off = E.in_context_copying(Copier(span=51), tok, texts, span=50, n=4)  # looks one token too far back
    assert off["accuracy"] < 0.2 and off["repeat"] > 5
    plain = E.in_context_copying(tiny_model(), tok, texts, span=50, n=4)  # random weights: no copying
    assert abs(plain["gap"]) < 0.2 and plain["accuracy"] < 0.2
    with pytest.raises(ValueError, match="needs"):
        E.in_context_copying(Copier(span=50), tok, ["short"], span=50, n=4)


# -----------------------------------------------------------------------------
# Benchmark files: the formats people have, bad rows with file and line

ROWS = {
    "hellaswag": {"ctx": "A man is sitting on a roof. he", "endings": ["starts pulling up roofing.", "is ugly.",
                                                                       "eats.", "flies."], "label": "0",
                  "activity_label": "Roof shingle removal"},
    "piqa": {"goal": "To open a jar", "sol1": "twist the lid", "sol2": "hit it", "label": 0},
    "winogrande": {"sentence": "The trophy did not fit in the case because the _ was too big.",
                   "option1": "trophy", "option2": "case", "answer": "1"},
    "arc": {"question": "Which is a mammal?", "choices": {"text": ["shark", "whale"], "label": ["A", "B"]},
            "answerKey": "B"},
    "mmlu": {"question": "2 + 2 =", "choices": ["3", "4", "5", "6"], "answer": 1, "subject": "math"},
    "generic": {"context": "The sky is", "choices": ["blue", "green"], "label": 0},
    "gsm8k": {"question": "Tom has 3 apples and buys 4. How many?", "answer": "3 + 4 = 7\n#### 7"},
}


@pytest.mark.parametrize("fmt", list(ROWS))
def test_every_format_is_read(fmt):
    item, name = E.parse_row(ROWS[fmt])
    assert name == fmt
    if fmt == "gsm8k":
        assert item == {"prompt": "Question: Tom has 3 apples and buys 4. How many?\nAnswer:", "answer": 7.0}
        return
    contexts, continuations = zip(*item["requests"])
    if fmt == "winogrande":  # the option goes into the context, the rest is scored
        assert contexts[0].endswith("the trophy") and continuations == (" was too big.",) * 2
        assert item["label"] == 0
    elif fmt == "mmlu":
        assert continuations == (" A", " B", " C", " D") and item["label"] == 1 and "\nB. 4\n" in contexts[0]
    else:
        assert item["label"] == {"hellaswag": 0, "piqa": 0, "arc": 1, "generic": 0}[fmt]
        assert all(c.startswith(" ") for c in continuations)
    if fmt == "hellaswag":
        assert contexts[0] == "Roof shingle removal: A man is sitting on a roof. he"


def test_bad_rows_are_reported_with_file_and_line(tmp_path):
    path = tmp_path / "hellaswag_val.jsonl"
    lines = [json.dumps(ROWS["hellaswag"]),
             "{not json",
             json.dumps({**ROWS["hellaswag"], "label": 7}),  # no such choice
             "",
             json.dumps({"foo": 1}),  # no known format
             json.dumps(ROWS["gsm8k"]),  # another kind than the file's
             json.dumps({**ROWS["hellaswag"], "endings": ["only one"]}),
             json.dumps(ROWS["hellaswag"])]
    path.write_text("\n".join(lines) + "\n")
    items, skipped, kind = E.read_benchmark(str(path))
    assert kind == "choice" and [it["line"] for it in items] == [1, 8]
    assert [s.split(": ")[0] for s in skipped] == [f"{path}:{n}" for n in (2, 3, 5, 6, 7)]
    assert "invalid JSON" in skipped[0] and "label 7" in skipped[1] and "unknown format" in skipped[2]


def test_a_file_without_usable_rows_is_a_usage_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"foo": 1}\n')
    with pytest.raises(E.UsageError, match="bad.jsonl: no usable rows"):
        E.read_benchmark(str(path))


def test_gsm8k_final_answer():
    assert E.final_answer(" 3 + 4 = 7 apples.\n#### 7") == 7.0
    assert E.final_answer(" She pays $1,250.50 in total.") == 1250.5
    assert E.final_answer(" 12 then 13\n\nQuestion: 99") == 13.0
    assert E.final_answer("no number") is None


# -----------------------------------------------------------------------------
# The command line


def test_cli_writes_eval_json_and_png(tmp_path, tok_path, capsys):
    model = tiny_model()
    ckpt = tmp_path / "ckpt"
    checkpoint.save_model(model, model.args, str(ckpt), tokenizer_path=tok_path)
    text = tmp_path / "held_out.txt"
    text.write_text(TEXT * 10)
    bench_file = tmp_path / "piqa.jsonl"
    bench_file.write_text(json.dumps(ROWS["piqa"]) + "\n{broken\n" + json.dumps(ROWS["piqa"]) + "\n")
    out = tmp_path / "eval"
    assert E.main(["--ckpt", str(ckpt), "--out", str(out), "--text", str(text), "--tasks",
                   f"bpb,niah,{bench_file}", "--niah-lengths", "128,256", "--niah-trials", "1",
                   "--seq-len", "64"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert result["bpb"]["bits_per_byte"] > 0 and set(result["niah"]["by_length"]) == {"128", "256"}
    assert result["benchmarks"]["piqa"]["n"] == 2 and result["benchmarks"]["piqa"]["skipped"] == 1
    assert (out / "eval.png").exists()
    assert f"{bench_file}:2" in capsys.readouterr().out  # the bad row, with its line


def test_cli_errors_exit_2(tmp_path, tok_path, capsys):
    model = tiny_model()
    ckpt = tmp_path / "ckpt"
    checkpoint.save_model(model, model.args, str(ckpt), tokenizer_path=tok_path)
    assert E.main(["--ckpt", str(ckpt), "--tasks", "niah", "--niah-lengths", "512", "--out", str(tmp_path)]) == 2
    assert "--max-seq-len 512" in capsys.readouterr().err  # the model's context is 256
    assert E.main(["--ckpt", str(ckpt), "--tasks", "nonsense", "--out", str(tmp_path)]) == 2
    assert E.main(["--ckpt", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
