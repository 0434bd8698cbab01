"""Tests of longcontext.py: a training row is exactly its length, holds the needle before
every question and ends with the answer; the data folder is what pretrain.py reads; the
stages train in order, each from the last one's weights, at their own LR schedules; bad
flags are one-line errors. (The stage itself runs in run_all.py; its numbers are in
docs/NOTES.md.)"""
import json
import random

import numpy as np
import pytest

import eval as E
import longcontext as LC


def test_training_document_has_the_needle_then_its_answers(tok):
    filler = tok.encode("Some filler sentence here. Another one follows it.\n" * 20)
    for seed in range(20):  # depths anywhere, the needle last included
        rng = random.Random(seed)
        ids = LC.training_document(filler[:300], tok, 300, rng, queries=3, spans=2)
        assert len(ids) == 300 and ids[0] == tok.bos_id and ids[-1] == tok.eos_id
        text = tok.decode(ids[1:-1])
        key = text.split("The pass key is ")[1][:5]
        assert text.endswith(f"{E.QUESTION} {key}")  # the last question, answered, at the very end
        assert text.count(f"{E.QUESTION} {key}") == 3  # every answer is the needle's key
        assert text.index(E.NEEDLE.format(key=key)) < text.index(E.QUESTION)


def test_copy_document_repeats_a_span_at_a_place_and_distance_that_vary():
    filler = list(range(1000, 1400))  # distinct tokens: where each one came from is known
    starts, distances = set(), set()
    for seed in range(50):
        ids = LC.copy_document(filler, 1, 2, 256, random.Random(seed))
        assert len(ids) == 256 and ids[0] == 1 and ids[-1] == 2 and ids.count(1) == 1
        body = ids[1:-1]
        twice = [i for i, t in enumerate(body) if body.count(t) == 2]  # both readings of x
        length = len(twice) // 2
        first, second = twice[:length], twice[length:]
        assert 24 <= length <= 127 and first == list(range(first[0], first[0] + length))
        assert second == list(range(second[0], second[0] + length))
        assert body[first[0]: first[0] + length] == body[second[0]: second[0] + length]
        assert len(set(body)) == len(body) - length  # only x repeats
        # the rest is the filler in order: the row reads as running text, x once more
        assert body[:second[0]] + body[second[0] + length:] == filler[:len(body) - length]
        starts.add(first[0])
        distances.add(second[0] - first[0])
    assert len(starts) > 20 and len(distances) > 20  # a position rule cannot copy it


def data_folder(tmp_path, tok):
    """A data.py-like folder of 20 documents (~8.5K tokens) and a held-out split."""
    src = tmp_path / "data"
    src.mkdir()
    docs = [[tok.bos_id] + tok.encode(f"Document {i}. " * 30) + [tok.eos_id] for i in range(20)]
    train = np.array(sum(docs, []), dtype=np.uint32)
    train.tofile(src / "train_000.bin")
    train[:1000].tofile(src / "val_000.bin")
    meta = {"tokenizer": tok.model_path, "vocab_size": 512, "bos_id": tok.bos_id, "eos_id": tok.eos_id, "dtype": "uint32",
            "splits": {"train": {"files": ["train_000.bin"], "tokens": len(train)},
                       "val": {"files": ["val_000.bin"], "tokens": 1000}}}
    (src / "meta.json").write_text(json.dumps(meta))
    return src


def test_data_folder_reads_as_pretrain_data(tmp_path, tok):
    src = data_folder(tmp_path, tok)
    out = tmp_path / "lc"
    record = LC.write_long_context_data(str(src), str(out), seq_len=256, n_docs=5)
    rows = np.fromfile(out / "train_000.bin", dtype=np.uint32).reshape(5, 256)
    assert (rows[:, 0] == tok.bos_id).all() and (rows[:, -1] == tok.eos_id).all()
    assert ((rows == tok.bos_id).sum(1) == 1).all()  # no document break inside a row: the needle stays visible
    assert record["splits"]["train"]["tokens"] == 5 * 256
    assert (out / "val_000.bin").read_bytes() == (src / "val_000.bin").read_bytes()  # the same held-out text
    record = LC.write_long_context_data(str(src), str(out / "copy"), seq_len=256, n_docs=3, kind="copy")
    assert record["long_context"]["kind"] == "copy" and record["splits"]["train"]["tokens"] == 3 * 256


def test_stages_train_in_order_and_only_the_copying_stage_forces_a_constant_lr(tmp_path, tok, monkeypatch):
    """run_stage's pretrain.py commands (torchrun and eval.py replaced by fakes): the
    copying stage first at its own length and LR, kept constant; each needle stage from
    the previous one's weights with --min-lr-ratio as given."""
    src, calls = data_folder(tmp_path, tok), []
    fake = {"niah": {"by_length": {}, "key_nll_by_length": {}, "decoy_nll_by_length": {}},
            "bpb": {"loss": 5.0, "bits_per_byte": 2.0}, "copy": {"first": 5.0, "repeat": 4.0, "accuracy": 0.2},
            "rope_theta": 500000.0, "use_scaled_rope": False}
    monkeypatch.setattr(LC, "measure", lambda cfg, ckpt, name: fake)
    monkeypatch.setattr(LC, "plot_before_after", lambda before, after, path: path)
    monkeypatch.setattr(LC.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    cfg = LC.LongContextConfig(init="INIT", data=str(src), out=str(tmp_path / "lc"), lengths="256,512", steps=2,
                               min_lr_ratio=0.5, copy_steps=3, copy_len=128, copy_lr=3e-3, docs_per_stage=4)
    record = LC.run_stage(cfg)
    at = [[a.endswith("pretrain.py") for a in cmd].index(True) + 1 for cmd in calls]  # torchrun ... pretrain.py FLAGS
    flags = [dict(zip(cmd[i::2], cmd[i + 1::2])) for cmd, i in zip(calls, at)]
    assert [f["--seq-len"] for f in flags] == ["128", "256", "512"]
    assert [f["--min-lr-ratio"] for f in flags] == ["1", "0.5", "0.5"]
    assert [f["--lr"] for f in flags] == ["0.003", "0.0003", "0.0003"]
    assert [f["--max-steps"] for f in flags] == ["3", "2", "2"]
    assert flags[0]["--init"] == "INIT" and flags[1]["--init"] == flags[0]["--out"] + "/final"
    assert flags[2]["--init"] == flags[1]["--out"] + "/final"
    assert [s["kind"] for s in record["stages"]] == ["copy", "needle", "needle"]


@pytest.mark.parametrize("argv, message", [(["--lengths", "512,abc"], "--lengths"),
                                           (["--eval-lengths", "64"], "--eval-lengths"),
                                           (["--rope-scaling", "x"], "--rope-scaling"),
                                           (["--steps", "0"], "--steps"),
                                           (["--copy-len", "64"], "--copy-len")])
def test_bad_flags_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        LC.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
