"""Tests of sft.py: exactly which tokens of a rendered conversation carry loss (§4.1.3),
packing without attention across conversations (packed loss == separate losses),
the resumable loader, a tiny end-to-end SFT run (loss falls, accuracy is measured
before and after, report written, bad JSONL rows counted), and model averaging
(§4.1.5). A byte-level tokenizer and tiny models written here: well under a minute."""
import json
import os

import pytest
import torch
import torch.nn.functional as F

import checkpoint
import model as M
from tests.conftest import tiny_args
import sft
import tasks as T
from tokenizer import ChatFormat


def tiny_model(seed=0, **kw):
    m = M.Transformer(tiny_args(**kw))
    m.init_weights(seed=seed)
    return m


def msg(role, content):
    return {"role": role, "content": content}


# -----------------------------------------------------------------------------
# The loss mask


def test_loss_is_on_assistant_content_and_its_eot_only(tok):
    chat = ChatFormat(tok)
    messages = [msg("system", "Be brief."), msg("user", "What is 4 + 5?"), msg("assistant", "9"),
                msg("user", "And 2 + 2?"), msg("assistant", "4!")]
    tokens, targets = sft.render(chat, messages)
    assert len(tokens) == len(targets) and tokens == chat.encode_dialog(messages).tokens
    # (position, target) of every token that carries loss: the input token at i
    # predicts targets[i] = tokens[i + 1].
    carrying = [(i, t) for i, t in enumerate(targets) if t != -100]
    assert [t for _, t in carrying] == [ord("9"), tok.eot_id, ord("4"), ord("!"), tok.eot_id]
    assert all(tokens[i + 1] == t for i, t in carrying)
    # the tokens just before each target are the end of the assistant header "\n\n"
    # and the answer itself: the model predicts the answer from the header, then stops.
    i = carrying[0][0]  # byte tokens: "\n\n" is two tokens after <|end_header_id|>
    assert tokens[i - 2:i + 1] == [tok.special_tokens["<|end_header_id|>"], ord("\n"), ord("\n")]
    # nothing of the system and user turns, headers or bos carries loss
    text_with_loss = tok.decode([t for _, t in carrying if t < 256])
    assert text_with_loss == "94!"


# -----------------------------------------------------------------------------
# Packing


def test_packed_loss_equals_separate_losses(tok):
    chat = ChatFormat(tok)
    model = tiny_model().eval()
    with torch.no_grad():  # sharper attention and logits than the N(0, 0.02) init: context matters
        for layer in model.layers.values():
            layer.attention.wq.weight.mul_(10)
            layer.attention.wk.weight.mul_(10)
        model.output.weight.mul_(20)
    convs = [sft.render(chat, e["messages"]) for e in T.make_examples(5, seed=0)]
    packed = sft.pack_rows(convs, seq_len=128, pad_id=tok.pad_id)
    R, Tn = packed["inputs"].shape
    assert Tn == 128 and R < len(convs)  # several conversations share a row
    assert packed["n_tokens"] == sum(len(c[0]) for c in convs)
    with torch.no_grad():
        logits = model(packed["inputs"], doc_ids=packed["doc_ids"])
        packed_sum = F.cross_entropy(logits.flatten(0, 1), packed["targets"].flatten(), ignore_index=-100,
                                     reduction="sum")
        separate_sum = 0.0
        for tokens, targets in convs:
            out = model(torch.tensor([tokens]))
            separate_sum += F.cross_entropy(out[0], torch.tensor(targets), ignore_index=-100, reduction="sum")
    torch.testing.assert_close(packed_sum, separate_sum, rtol=1e-5, atol=1e-4)
    # and without doc_ids the conversations would see each other: a different loss
    with torch.no_grad():
        leaky = F.cross_entropy(model(packed["inputs"]).flatten(0, 1), packed["targets"].flatten(),
                                ignore_index=-100, reduction="sum")
    assert abs(float(leaky) - float(separate_sum)) > 1e-3


def test_pack_rows_layout():
    a, b, c = ([1] * 5, [-100] * 5), ([2] * 3, [-100, 7, -100]), ([3] * 6, [-100] * 6)
    p = sft.pack_rows([a, b, c], seq_len=10, pad_id=0)
    assert p["inputs"].tolist() == [[1] * 5 + [2] * 3 + [0] * 2, [3] * 6 + [0] * 4]
    assert p["doc_ids"].tolist() == [[0] * 5 + [1] * 3 + [2] * 2, [0] * 6 + [1] * 4]
    assert p["targets"][0].tolist() == [-100] * 6 + [7] + [-100] * 3
    with pytest.raises(ValueError, match="does not fit"):
        sft.pack_rows([([1] * 11, [-100] * 11)], seq_len=10, pad_id=0)


def test_loader_is_deterministic_and_resumable(tok):
    import parallel
    chat = ChatFormat(tok)
    rendered = [sft.render(chat, e["messages"]) for e in T.make_examples(30, seed=0)]
    cfg = sft.SFTConfig(seq_len=128, tokens_per_step=512, batch_size=2)
    dist = parallel.setup_distributed()
    first = sft.ConversationLoader(cfg, rendered, tok.pad_id, dist)
    steps = [first(s, 10) for s in range(6)]  # runs past one epoch of 30 conversations
    assert all(len(b) == 2 and b[0]["inputs"].shape == (2, 128) for b in steps)
    resumed = sft.ConversationLoader(cfg, rendered, tok.pad_id, dist)
    replay = sft.ConversationLoader(cfg, rendered, tok.pad_id, dist)
    [replay(s, 10) for s in range(3)]
    resumed.load_state_dict(replay.state_dict())
    for s in range(3, 6):
        got = resumed(s, 10)
        assert all(torch.equal(g["inputs"], w["inputs"]) for g, w in zip(got, steps[s]))


# -----------------------------------------------------------------------------
# End to end: a tiny SFT run


def test_tiny_sft_run_end_to_end(tmp_path, tok_path):
    init = str(tmp_path / "init")
    checkpoint.save_model(tiny_model(seed=1), tiny_args(), init, tokenizer_path=tok_path)
    # own data: generated "larger" conversations plus three bad rows
    rows = T.make_examples(300, seed=0, tasks="larger")
    train_path = str(tmp_path / "train.jsonl")
    T.write_jsonl(rows, train_path)
    with open(train_path, "a") as f:
        f.write(json.dumps({"messages": [msg("user", "x"), msg("robot", "y")]}) + "\n")  # unknown role
        f.write(json.dumps({"messages": [msg("user", ""), msg("assistant", "y")]}) + "\n")  # empty content
        f.write(json.dumps({"messages": [msg("user", "x" * 300), msg("assistant", "y")]}) + "\n")  # too long
    val_path = str(tmp_path / "val.jsonl")
    T.write_jsonl(T.make_examples(12, seed=0, tasks="larger", split="val"), val_path)
    out = str(tmp_path / "sft")
    report = sft.main(["--init", init, "--out", out, "--data", train_path, "--eval-data", val_path,
                       "--max-steps", "24", "--time-budget-min", "0", "--seq-len", "128",
                       "--tokens-per-step", "512", "--batch-size", "4", "--lr", "3e-3", "--warmup-steps", "3",
                       "--eval-every", "0", "--ckpt-every", "100", "--eval-max-new-tokens", "6",
                       "--dtype", "fp32", "--log-every", "4"])
    assert report["status"] == "done" and report["steps"] == 24
    assert report["last_loss"] < 0.6 * report["first_loss"]
    assert report["val_loss_after"] < report["val_loss_before"]
    assert set(report["accuracy_before"]) == {"overall", "larger"}
    assert 0.0 <= report["accuracy_after"]["overall"] <= 1.0
    assert report["skipped"]["train"] == {"skipped": 3, "by_kind": {"empty": 1, "role": 1, "too_long": 1}}
    assert report["train_conversations"] == 300
    on_disk = json.load(open(os.path.join(out, "report.json")))
    assert on_disk["accuracy_after"] == report["accuracy_after"]
    for name in ("report.png", "loss.png", "log.jsonl", "config.json", "final/model.pt", "final/tokenizer.model"):
        assert os.path.exists(os.path.join(out, name)), name
    records = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    assert records[0]["step"] == 0 and "accuracy" in records[0]  # before training
    # the exported model loads and differs from the initial one
    tuned, _ = checkpoint.load_model(os.path.join(out, "final"))
    start, _ = checkpoint.load_model(init)
    assert not torch.equal(tuned.output.weight, start.output.weight)


def test_a_small_set_is_not_trained_past_max_epochs(tmp_path, tok_path, tok):
    """20 conversations, --max-epochs 3: the run stops after 3 passes' worth of tokens,
    not at --max-steps (a memorized set samples one answer: nothing to reject from)."""
    init = str(tmp_path / "init")
    checkpoint.save_model(tiny_model(seed=1), tiny_args(), init, tokenizer_path=tok_path)
    rows = T.make_examples(20, seed=0, tasks="larger")
    train_path = str(tmp_path / "train.jsonl")
    T.write_jsonl(rows, train_path)
    n_tokens = sum(len(sft.render(ChatFormat(tok), r["messages"])[0]) for r in rows)
    common = ["--init", init, "--data", train_path, "--eval-data", train_path, "--time-budget-min", "0",
              "--seq-len", "128", "--tokens-per-step", "256", "--batch-size", "2", "--eval-every", "0",
              "--ckpt-every", "100", "--eval-max-new-tokens", "4", "--dtype", "fp32", "--max-steps", "40"]
    report = sft.main(common + ["--out", str(tmp_path / "a"), "--max-epochs", "3"])
    expected = -(-3 * n_tokens // 256)  # ceil(3 epochs of tokens / tokens per step)
    assert 1 < expected < 40
    assert report["steps"] == report["total_steps"] == expected
    report = sft.main(common + ["--out", str(tmp_path / "b"), "--max-epochs", "0"])  # 0: no cap
    assert report["steps"] == 40
    with pytest.raises(SystemExit):
        sft.main(common + ["--out", str(tmp_path / "c"), "--max-epochs", "-1"])


def test_no_usable_rows_is_one_line_and_exit_2(tmp_path, tok_path, capsys):
    init = str(tmp_path / "init")
    checkpoint.save_model(tiny_model(seed=1), tiny_args(), init, tokenizer_path=tok_path)
    train_path = str(tmp_path / "bad.jsonl")
    with open(train_path, "wb") as f:
        f.write(json.dumps({"messages": [msg("user", "x"), msg("robot", "y")]}).encode() + b"\n")  # unknown role
        f.write(b"\xff\xfe not utf-8\n")
        f.write(b"[" * 100_000 + b"\n")  # deeper than any JSON reader recurses
    capsys.readouterr()
    rc = sft.main(["--init", init, "--out", str(tmp_path / "sft"), "--data", train_path,
                   "--max-steps", "2", "--time-budget-min", "0", "--seq-len", "128"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert err.startswith("error: ") and f"{train_path}: no usable training conversations (3 rows skipped" in err
