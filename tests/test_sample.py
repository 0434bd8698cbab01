"""Tests of sample.py: KV-cache decoding equals full forwards (batch 1 and a left-padded
batch), greedy equals transformers' generate, top-k/top-p stay in the nucleus, seeds,
stop tokens, max_seq_len, K samples sharing one prefill (§4.2.2), chat and the CLI,
and clear errors on bad input. Tiny random models: the whole file runs in seconds."""
import base64
import io
import json

import pytest
import torch

import bench
import checkpoint
import model as M
from tests.conftest import tiny_args as conftest_tiny_args
import quantize as Q
import sample as S


def tiny_args(**kw):
    return conftest_tiny_args(**{'max_seq_len': 64, **kw})


def tiny_model(seed=0, **kw):
    m = M.Transformer(tiny_args(**kw)).eval()
    m.init_weights(seed=seed)
    with torch.no_grad():  # sharper logits than N(0, 0.02): no near-ties in argmax
        m.output.weight.mul_(20)
    return m


@torch.no_grad()
def greedy_full_forward(model, prompt, n):
    """The slow reference: a full forward over the whole sequence at every step."""
    tokens = list(prompt)
    for _ in range(n):
        tokens.append(int(model(torch.tensor([tokens]))[0, -1].argmax()))
    return tokens[len(prompt):]


PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [9], [10, 11, 12, 13], [300, 301, 302, 303, 304, 305, 306, 307, 308, 309, 310]]


# -----------------------------------------------------------------------------
# Correctness of decoding


@pytest.mark.parametrize("batch", ["single", "padded"])
def test_kv_cache_greedy_equals_full_forward(batch):
    model = tiny_model()
    prompts = PROMPTS[:1] if batch == "single" else PROMPTS
    out = S.generate(model, None, prompts, max_new_tokens=12, temperature=0)
    assert out == [greedy_full_forward(model, p, 12) for p in prompts]
    assert model.cache_len is None  # caches are freed after generate


def test_greedy_equals_transformers():
    pytest.importorskip("transformers")
    model = tiny_model(seed=3)
    hf = bench.hf_model_from(model)
    ours = S.generate(model, None, PROMPTS, max_new_tokens=10, temperature=0)
    assert ours == bench.hf_generate(hf, PROMPTS, 10)  # left-padded batch, same as ours


def test_sample_next_stays_in_nucleus():
    # probabilities 0.4, 0.3, 0.2, 0.06, 0.04 (then ~0): top_p=0.75 keeps the first three
    # (mass before them: 0, 0.4, 0.7 <= 0.75; before the fourth 0.9 > 0.75).
    probs = torch.tensor([0.4, 0.3, 0.2, 0.06, 0.04] + [1e-9] * 27)
    logits = probs.log().repeat(4000, 1)  # 4000 independent draws in one batch
    g = torch.Generator().manual_seed(0)
    draws = S.sample_next(logits, temperature=1.0, top_p=0.75, generator=g)
    assert set(draws.tolist()) <= {0, 1, 2}
    freq = torch.bincount(draws, minlength=3)[:3].float() / len(draws)
    assert torch.allclose(freq, torch.tensor([4, 3, 2]) / 9, atol=0.03), freq  # renormalized
    draws = S.sample_next(logits, temperature=1.0, top_p=1.0, top_k=2, generator=g)
    assert set(draws.tolist()) == {0, 1}
    freq = (draws == 0).float().mean()
    assert abs(freq - 4 / 7) < 0.03
    draws = S.sample_next(logits, temperature=1.0, top_p=0.01, generator=g)  # always >= 1 token
    assert set(draws.tolist()) == {0}
    draws = S.sample_next(logits, temperature=0.0, generator=g)
    assert set(draws.tolist()) == {0}


def test_same_seed_same_output():
    model = tiny_model()
    model.output.weight.data.div_(20)  # flat distribution: samples really vary
    kw = dict(max_new_tokens=16, temperature=1.0, top_p=0.9, top_k=50)
    a = S.generate(model, None, PROMPTS, seed=7, **kw)
    b = S.generate(model, None, PROMPTS, seed=7, **kw)
    c = S.generate(model, None, PROMPTS, seed=8, **kw)
    assert a == b and a != c


def test_stop_tokens():
    model = tiny_model()
    free = S.generate(model, None, PROMPTS, max_new_tokens=12, temperature=0)
    stop = free[0][4]  # the 5th token of row 0
    out = S.generate(model, None, PROMPTS, max_new_tokens=12, temperature=0, stop_tokens=[stop])
    out_incl = S.generate(model, None, PROMPTS, max_new_tokens=12, temperature=0, stop_tokens=[stop],
                          include_stop=True)
    for row, full, incl in zip(out, free, out_incl):
        cut = full.index(stop) if stop in full else len(full)
        assert row == full[:cut]  # Meta's convention: up to, excluding, the stop token
        assert incl == full[:cut + 1]
    assert out[0] == free[0][:4]
    # every row stops: decoding ends early (one step per token, not max_new_tokens)
    stats = {}
    firsts = {r[0] for r in free}
    S.generate(model, None, PROMPTS, max_new_tokens=12, temperature=0, stop_tokens=firsts, stats=stats)
    assert stats["decode_steps"] == 0


def test_max_seq_len():
    model = tiny_model()  # max_seq_len 64
    out = S.generate(model, None, [list(range(60)), [1, 2]], max_new_tokens=20, temperature=0)
    assert [len(r) for r in out] == [4, 4]  # longest prompt + new tokens == 64
    assert out[0] == greedy_full_forward(model, list(range(60)), 4)
    with pytest.raises(ValueError, match="64 tokens leaves no room.*max_seq_len is 64"):
        S.generate(model, None, [list(range(64))], max_new_tokens=5)
    assert S.generate(model, None, [[1]], max_new_tokens=0) == [[]]


def test_num_samples_share_one_prefill():
    model = tiny_model()
    seen = []  # (rows, tokens) of every call through the model's embedding
    model.tok_embeddings.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape)))
    single = S.generate(model, None, PROMPTS, max_new_tokens=6, temperature=0)
    seen.clear()
    K = 3
    many = S.generate(model, None, PROMPTS, max_new_tokens=6, temperature=0, num_samples=K)
    P = max(len(p) for p in PROMPTS)
    assert seen[0] == (len(PROMPTS), P)  # prefill: B rows, not B·K
    assert all(s == (len(PROMPTS) * K, 1) for s in seen[1:])  # decode: B·K rows, 1 token
    assert len(many) == len(PROMPTS) * K
    assert many == [row for row in single for _ in range(K)]  # prompt-major order
    # with sampling, the K samples of a prompt differ but each starts from its prompt
    model.output.weight.data.div_(20)
    samples = S.generate(model, None, PROMPTS[:1], max_new_tokens=8, temperature=1.0, top_p=1.0,
                         num_samples=4, seed=0)
    assert len({tuple(s) for s in samples}) > 1


# -----------------------------------------------------------------------------
# Bad input


def test_bad_input(tok):
    model = tiny_model()
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        S.generate(model, None, [[1, 2], []])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        S.generate(model, None, [[1, 512]])
    with pytest.raises(TypeError):
        S.generate(model, None, [1, 2, 3])
    with pytest.raises(ValueError, match="top_p"):
        S.generate(model, None, [[1]], top_p=0.0)
    small = tiny_model(vocab_size=300)
    with pytest.raises(ValueError, match="512 tokens but the model's vocab_size is 300"):
        S.generate(small, tok, [[1]])
    with pytest.raises(ValueError, match="mismatch"):
        S.check_vocab(tiny_model(vocab_size=1024), tok)


def test_cli_unknown_format_exit_2(tmp_path, capsys):
    (tmp_path / "junk.txt").write_text("hi")
    assert S.main(["--ckpt", str(tmp_path), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "unknown checkpoint format" in err and "Traceback" not in err
    assert S.main(["--ckpt", str(tmp_path / "missing"), "--prompt", "x"]) == 2


def test_cli_vocab_mismatch(tmp_path, tok_path, capsys):
    args = tiny_args(vocab_size=300)
    checkpoint.save_model(M.Transformer(args), args, str(tmp_path), tokenizer_path=tok_path)
    assert S.main(["--ckpt", str(tmp_path), "--prompt", "x"]) == 2
    assert "512 tokens but the model's vocab_size is 300" in capsys.readouterr().err


# -----------------------------------------------------------------------------
# Streaming, chat, the command line


def test_text_stream_multibyte(tok):
    out = io.StringIO()
    stream = S.TextStream(tok, out, stop_tokens={tok.eot_id})
    ids = tok.encode("é€ ok")  # byte tokens: é and € are 2 and 3 tokens each
    printed = []
    for t in ids + [tok.eot_id, 65]:
        stream(torch.tensor([t]))
        printed.append(out.getvalue())
    assert "\ufffd" not in "".join(printed)  # never prints half a character
    assert stream.finish() == "é€ ok" and out.getvalue() == "é€ ok\n"


def test_chat_loop(tok):
    model = tiny_model(max_seq_len=256)  # room for the whole dialog (byte tokens are many)
    lines = iter(["hello", "again", "/reset", "fresh"])

    def fake_input(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError

    prompts = []
    real_generate = S.generate

    def spy(model_, tokenizer, prompt_tokens, *a, **kw):
        prompts.append(prompt_tokens[0])
        return real_generate(model_, tokenizer, prompt_tokens, *a, **kw)

    S.generate = spy
    try:
        out = io.StringIO()
        dialog = S.chat(model, tok, system="be brief", max_new_tokens=5, temperature=0, input_fn=fake_input, out=out)
    finally:
        S.generate = real_generate
    from tokenizer import ChatFormat
    fmt = ChatFormat(tok)
    assert [m["role"] for m in dialog] == ["system", "user", "assistant"]  # after /reset
    assert dialog[1]["content"] == "fresh"
    # the second turn's prompt holds the first exchange (history kept across turns)
    first_reply = fmt.encode_dialog_prompt([{"role": "system", "content": "be brief"},
                                            {"role": "user", "content": "hello"}])
    assert prompts[1][: len(first_reply)] == first_reply
    assert prompts[2] == fmt.encode_dialog_prompt(dialog[:2])
    assert out.getvalue().count("assistant> ") == 3 and "(dialog reset)" in out.getvalue()
    # the streamed text is the reply, which is what generate returns
    expected = tok.decode(real_generate(model, tok, [prompts[2]], 5, temperature=0)[0])
    assert dialog[2]["content"] == expected


@pytest.mark.parametrize("fmt", ["project", "hf"])
def test_cli_prompt_and_prompts(tmp_path, tok_path, tok, capsys, fmt):
    args = tiny_args()
    model = tiny_model()
    ckpt = tmp_path / "ckpt"
    if fmt == "project":
        checkpoint.save_model(model, args, str(ckpt), tokenizer_path=tok_path)
    else:
        from safetensors.torch import save_file
        ckpt.mkdir()
        (ckpt / "config.json").write_text(json.dumps(checkpoint.to_hf_config(args)))
        save_file({k: v.contiguous() for k, v in checkpoint.to_hf_state_dict(model.state_dict(), args).items()},
                  str(ckpt / "model.safetensors"))
    common = ["--ckpt", str(ckpt), "--tokenizer", tok_path, "--temperature", "0", "--max-new-tokens", "6"]
    assert S.main(common + ["--prompt", "abc"]) == 0
    text = capsys.readouterr().out
    expected = tok.decode(S.generate(model, tok, [tok.encode("abc", bos=True)], 6, temperature=0)[0])
    assert "abc" + expected in text and "tokens/s" in text
    (tmp_path / "p.txt").write_text("one\ntwo\n\nthree\n")
    assert S.main(common + ["--prompts", str(tmp_path / "p.txt"), "--batch-size", "2",
                            "--out", str(tmp_path / "c")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "c" / "completions.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["one", "two", "three"]
    alone = S.generate(model, tok, [tok.encode("three", bos=True)], 6, temperature=0)
    assert rows[2]["completion"] == tok.decode(alone[0])  # batching changes nothing


@pytest.mark.parametrize("nproc,pp", [(2, 1), (2, 2), (4, 2)])
def test_torchrun_tensor_and_pipeline_parallel_equal_one_process(tmp_path, tok_path, nproc, pp):
    """torchrun --nproc_per_node=N sample.py --pp P: tensor parallel (P 1), two pipeline
    stages (§6.1), and two stages of 2 TP ranks each (gloo on CPU) give the same
    greedy completions as one process, for a left-padded batch."""
    import os
    import subprocess
    import sys
    args = tiny_args(n_layers=3)  # stages of 2 and 1 layers
    checkpoint.save_model(tiny_model(n_layers=3), args, str(tmp_path / "ckpt"), tokenizer_path=tok_path)
    (tmp_path / "p.txt").write_text("hello\nab\nxyz w\n")
    common = ["--ckpt", str(tmp_path / "ckpt"), "--prompts", str(tmp_path / "p.txt"), "--temperature", "0",
              "--max-new-tokens", "8", "--batch-size", "3"]
    assert S.main(common + ["--out", str(tmp_path / "one")]) == 0
    root = os.path.dirname(os.path.abspath(S.__file__))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                          "--standalone", "sample.py", *common, "--pp", str(pp),
                          "--out", str(tmp_path / "tp")], cwd=root, env=env,
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "tp" / "completions.jsonl").read_text() == \
        (tmp_path / "one" / "completions.jsonl").read_text()


# -----------------------------------------------------------------------------
# Int8 weight-only quantization (§6.2's row-wise idea, in int8 on CPU)


def test_cli_quantize(tmp_path, tok_path, tok, capsys):
    args = tiny_args()
    model = tiny_model()
    checkpoint.save_model(model, args, str(tmp_path / "ckpt"), tokenizer_path=tok_path)
    common = ["--ckpt", str(tmp_path / "ckpt"), "--temperature", "0", "--max-new-tokens", "6"]
    assert S.main(common + ["--prompt", "abc", "--quantize", "int8"]) == 0
    text = capsys.readouterr().out
    expected = tok.decode(S.generate(Q.quantize_int8(tiny_model()), tok, [tok.encode("abc", bos=True)], 6,
                                     temperature=0)[0])
    assert "abc" + expected in text and "bfloat16" in text


# -----------------------------------------------------------------------------
# Errors a user can cause: one line on stderr, exit code 2, no traceback


@pytest.fixture
def saved(tmp_path, tok_path):
    ckpt = tmp_path / "ckpt"
    checkpoint.save_model(tiny_model(), tiny_args(), str(ckpt), tokenizer_path=tok_path)
    return ckpt


def _exit_2(capsys, argv, *needles):
    assert S.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.mark.parametrize("flag,value,needle", [
    ("--max-new-tokens", "0", "--max-new-tokens must be >= 1"),
    ("--temperature", "nan", "--temperature must be a finite number"),
    ("--temperature", "-1", "--temperature must be a finite number"),
    ("--batch-size", "0", "--batch-size must be >= 1"),
    ("--num-samples", "0", "--num-samples must be >= 1"),
    ("--top-p", "0", "--top-p must be in (0, 1]"),
    ("--top-k", "-2", "--top-k must be >= 0"),
])
def test_cli_bad_flag_exit_2(saved, capsys, flag, value, needle):
    _exit_2(capsys, ["--ckpt", str(saved), "--prompt", "x", flag, value], needle)


def test_cli_bad_prompts_file_names_the_line(saved, tmp_path, capsys):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": 5}\n')
    _exit_2(capsys, ["--ckpt", str(saved), "--prompts", str(bad)], f"{bad}:2", "must be a string")
    bad.write_text('{"text": "x"}\n')
    _exit_2(capsys, ["--ckpt", str(saved), "--prompts", str(bad)], f"{bad}:1")
    bad.write_text('{"prompt": "fine"}\n' + "{" * 10 + '"prompt": ' + "[" * 100_000 + "\n")  # no RecursionError
    _exit_2(capsys, ["--ckpt", str(saved), "--prompts", str(bad)], f"{bad}:2", "nested deeper")


def test_cli_truncated_checkpoint_exit_2(saved, capsys):
    pt = saved / "model.pt"
    data = pt.read_bytes()
    pt.write_bytes(data[: len(data) // 2])
    _exit_2(capsys, ["--ckpt", str(saved), "--prompt", "x"])


def test_cli_non_dict_checkpoint_exit_2(saved, capsys):
    torch.save([1, 2, 3], str(saved / "model.pt"))
    _exit_2(capsys, ["--ckpt", str(saved), "--prompt", "x"])


@pytest.mark.parametrize("field,value", [("n_heads", 0), ("dim", "64")])
def test_cli_bad_config_exit_2(saved, capsys, field, value):
    blob = torch.load(str(saved / "model.pt"), weights_only=True)
    config = next(v for v in blob.values() if isinstance(v, dict) and "dim" in v)
    config[field] = value
    torch.save(blob, str(saved / "model.pt"))
    (saved / "checksums.json").unlink()  # else the hash check answers first
    _exit_2(capsys, ["--ckpt", str(saved), "--prompt", "x"], field)


def test_cli_other_tokenizer_of_the_same_size_exit_2(saved, tmp_path, capsys):
    # Same 512 ids, another mapping: the recorded tokenizer's hash tells them apart.
    other = tmp_path / "other.model"
    other.write_text("".join(f"{base64.b64encode(bytes([255 - i])).decode()} {i}\n" for i in range(256)))
    _exit_2(capsys, ["--ckpt", str(saved), "--tokenizer", str(other), "--prompt", "x"])


def test_chat_help_and_ctrl_c(tok, monkeypatch):
    """/help is answered locally; Ctrl-C in a reply returns to the prompt with the partial
    reply kept; Ctrl-C at the prompt leaves cleanly."""
    model = tiny_model(max_seq_len=256)
    lines = iter(["/help", "hello", "/system be kind", "again"])
    sent = []

    def fake_input(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise KeyboardInterrupt

    real_generate = S.generate

    def interrupting(model_, tokenizer, prompt_tokens, *a, on_token=None, **kw):
        sent.append(prompt_tokens[0])
        calls = [0]

        def hook(t):
            on_token(t)
            calls[0] += 1
            if calls[0] == 2 and len(sent) == 1:  # the first reply is cut after 2 tokens
                raise KeyboardInterrupt

        return real_generate(model_, tokenizer, prompt_tokens, *a, on_token=hook, **kw)

    monkeypatch.setattr(S, "generate", interrupting)
    out = io.StringIO()
    dialog = S.chat(model, tok, max_new_tokens=5, temperature=0, input_fn=fake_input, out=out)
    text = out.getvalue()
    assert text.count(S.CHAT_HELP) == 2 and "(stopped)" in text
    assert len(sent) == 2  # /help and /system never reached the model
    assert [m["role"] for m in dialog] == ["system", "user", "assistant"]
    assert dialog[0]["content"] == "be kind" and dialog[1]["content"] == "again"


def test_cli_chat_template_and_empty_note(tmp_path, tok_path, tok, capsys, monkeypatch):
    args = tiny_args()
    ckpt = tmp_path / "ckpt"
    model = tiny_model()
    checkpoint.save_model(model, args, str(ckpt), tokenizer_path=tok_path)
    seen = []
    real_generate = S.generate

    def spy(model_, tokenizer, prompt_tokens, *a, **kw):
        seen.append(list(prompt_tokens[0]))
        return real_generate(model_, tokenizer, prompt_tokens, *a, **kw)

    monkeypatch.setattr(S, "generate", spy)
    argv = ["--ckpt", str(ckpt), "--temperature", "0", "--max-new-tokens", "3", "--prompt", "hi"]
    assert S.main(argv + ["--chat-template", "--system", "sys"]) == 0
    from tokenizer import ChatFormat
    assert seen[-1] == ChatFormat(tok).encode_dialog_prompt(
        [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}])
    capsys.readouterr()
    # A model whose every step says <|eot_id|>: the user is told why nothing came out.
    monkeypatch.setattr(S, "generate", lambda *a, **kw: [[]])
    assert S.main(argv) == 0
    assert S.EMPTY_COMPLETION in capsys.readouterr().err
