"""Tests of scaling.py (§3.2.1): the fits recover known laws from synthetic points, the
grid rules, the parameter count of C = 6·N·D, and a tiny grid end to end (a byte
tokenizer and synthetic documents; every run goes through pretrain.py and sft.py)."""
import json
import math
import os

import numpy as np
import pytest
import torch

import model as M
import scaling
from common import UsageError
from tokenizer import Tokenizer


# -----------------------------------------------------------------------------
# The fits


def test_isoflops_parabola_recovers_its_vertex():
    # loss = 2.5 + 0.4·(log10 N - log10 3e5)² at sizes on both sides, unevenly spaced
    n = np.array([2e4, 6e4, 1.5e5, 4e5, 2e6, 5e6])
    fit = scaling.fit_isoflops(n, 2.5 + 0.4 * (np.log10(n) - math.log10(3e5)) ** 2)
    assert fit["params"] == pytest.approx(3e5, rel=1e-9)
    assert fit["loss"] == pytest.approx(2.5, abs=1e-9)
    assert fit["coeffs"][0] == pytest.approx(0.4, rel=1e-9)
    # with noise it is numpy's least-squares parabola, whose vertex is not the best point
    noisy = 2.5 + 0.4 * (np.log10(n) - math.log10(3e5)) ** 2 + np.array([0.02, -0.01, 0.015, -0.02, 0.01, 0.0])
    a, b, _ = np.polyfit(np.log10(n), noisy, 2)
    assert scaling.fit_isoflops(n, noisy)["params"] == pytest.approx(10 ** (-b / (2 * a)), rel=1e-9)
    assert not fit["edge"]
    # no minimum (a falling curve): the best measured point, not a maximum, and an edge
    falling = scaling.fit_isoflops(n, -np.log10(n))
    assert falling["params"] == pytest.approx(5e6) and falling["edge"]
    # a vertex beyond the smallest size (within half a decade) is kept, but marked an edge
    beyond = scaling.fit_isoflops(n, 2.5 + 0.4 * (np.log10(n) - math.log10(1e4)) ** 2)
    assert beyond["params"] == pytest.approx(1e4, rel=1e-9) and beyond["edge"]


def test_power_law_recovers_the_papers_law():
    C = np.array([6e18, 1e19, 3e19, 1e20, 1e21, 1e22])
    A, alpha = scaling.fit_power_law(C, 0.29 * C ** 0.53)
    assert alpha == pytest.approx(0.53, rel=1e-9) and A == pytest.approx(0.29, rel=1e-7)
    # the worked example of the docstring
    assert scaling.fit_power_law([1e20, 1e22], [2e10, 2e11]) == pytest.approx((2.0, 0.5), rel=1e-9)
    # multiplicative noise of a few percent moves α by little
    rng = np.random.default_rng(0)
    A, alpha = scaling.fit_power_law(C, 0.29 * C ** 0.53 * np.exp(0.03 * rng.standard_normal(len(C))))
    assert abs(alpha - 0.53) < 0.02


def test_sigmoid_fit_recovers_its_parameters():
    x = np.linspace(0.2, 2.0, 12)
    x0, k, floor = scaling.fit_sigmoid(x, scaling.sigmoid(x, 1.1, 6.0))
    assert x0 == pytest.approx(1.1, abs=1e-3) and k == pytest.approx(6.0, rel=1e-2) and floor == 0
    # accuracy that never falls below 15% (what formatting alone gets right): the floor is fitted
    y = scaling.sigmoid(x, 0.9, 4.0, 0.15)
    assert y.min() > 0.15 and y.max() < 1
    x0, k, floor = scaling.fit_sigmoid(x, y)
    assert floor == pytest.approx(0.15, abs=0.01) and x0 == pytest.approx(0.9, abs=0.02) and k == pytest.approx(4.0, rel=0.1)
    assert scaling.fit_sigmoid(x[:3], y[:3])[2] == 0  # three points: no floor fitted
    assert scaling.sigmoid(1.1, 1.1, 6.0) == pytest.approx(0.5)
    assert scaling.sigmoid(0.0, 1.1, 6.0) > 0.99 and scaling.sigmoid(3.0, 1.1, 6.0) < 0.01  # low loss, high accuracy


# -----------------------------------------------------------------------------
# The dial, the grid rules


def test_flop_counting_params_are_the_built_models_matmuls():
    for name in ("small-15m", "dial-3"):
        args = M.ModelArgs.from_name(name)
        built = M.Transformer(args)
        matmul = sum(p.numel() for k, p in built.named_parameters() if not k.startswith("tok_embeddings"))
        assert scaling.matmul_params(args) == matmul  # the output layer is a matmul, the embedding a lookup
        no_tables = sum(p.numel() for k, p in built.named_parameters() if not k.startswith(("tok_embeddings", "output")))
        assert scaling.non_embedding_params(args) == no_tables
    assert scaling.matmul_params(M.ModelArgs.from_name("small-15m")) == 12_587_904  # 15.7M - 8192·384
    dial = [scaling.dial(w, 8192) for w in range(1, 17)]
    assert [a.dim for a in dial] == [16 * w for w in range(1, 17)] and {a.n_layers for a in dial} == {4}
    half = scaling.dial(0.5, 8192)  # the smallest size: width 8, 4 heads of 2 dimensions (a RoPE pair each)
    assert (half.dim, half.n_heads, half.n_kv_heads, half.head_dim) == (8, 4, 2, 2)
    assert scaling.matmul_params(half) == 69_448  # 65,536 of them the output layer
    assert M.Transformer(half)(torch.randint(0, 8192, (1, 5))).shape == (1, 5, 8192)


def test_dial_lists_and_names():
    assert scaling.parse_list("0.5,1-4", "--dial") == [0.5, 1, 2, 3, 4]
    assert scaling.parse_list("1e11,2.5e11", "--budgets") == [1e11, 2.5e11]
    assert scaling.parse_list("3-5", "--dial") == [3, 4, 5]
    assert [scaling.dial_name(w) for w in (0.5, 1.0, 4)] == ["dial-0.5", "dial-1", "dial-4"]
    with pytest.raises(UsageError, match="--dial"):
        scaling.parse_list("1-x", "--dial")


def test_resolve_fills_only_the_flags_left_at_their_defaults():
    cfg = scaling.resolve(scaling.parse_config(scaling.ScalingConfig, ["--sft-runs", "0", "--sizes", "4"]))
    assert (cfg.sft_runs, cfg.sizes, cfg.sft_steps, cfg.budgets) == (0, 4, 100, scaling.FULL["budgets"])
    quick = scaling.resolve(scaling.parse_config(scaling.ScalingConfig, ["--quick"]))
    assert (quick.sft_runs, quick.sizes, quick.speed_repeats) == (3, 3, 1)


def test_sizes_for_budget_centres_shifts_and_skips_repeated_data():
    n = {w: 1000 * w * w for w in range(1, 11)}  # N grows as w², as the dial's
    # 20 tokens per parameter: N ≈ sqrt(C / 120) = 16,000 at C = 3.072e10 -> w = 4 in the middle
    assert scaling.sizes_for_budget(3.072e10, list(n), n, 5, max_tokens=1e12) == [2, 3, 4, 5, 6]
    assert scaling.sizes_for_budget(1e6, list(n), n, 5, max_tokens=1e12) == [1, 2, 3, 4, 5]  # shifted at the end
    # at most 1e6 tokens: N >= C / 6e6 = 5,120 -> w >= 3
    assert scaling.sizes_for_budget(3.072e10, list(n), n, 5, max_tokens=1e6)[0] == 3


def test_the_parabola_is_fitted_around_the_best_size():
    runs = [{"model": f"dial-{w}", "val_loss": v} for w, v in zip((0.5, 1, 2, 3, 4), (6.0, 5.7, 6.1, 6.3, 7.0))]
    assert [r["model"] for r in scaling.around_best(runs, 3)] == ["dial-0.5", "dial-1", "dial-2"]
    runs[4]["val_loss"] = 5.0  # the best at the large end: the window shifts inwards
    assert [r["model"] for r in scaling.around_best(runs, 3)] == ["dial-2", "dial-3", "dial-4"]
    assert scaling.around_best(runs, 0) == runs and scaling.around_best(runs, 9) == runs
    # A curve that is a parabola near its minimum (1.1e5) and flattens far above it, as
    # barely trained sizes do: the three around the best recover the vertex, all five do not.
    n = [7e4, 1.5e5, 3e5, 5e5, 7e5]
    loss = [5.7 + 2 * (math.log10(x) - math.log10(1.1e5)) ** 2 for x in n[:3]] + [6.3, 6.4]
    near = scaling.around_best([{"params": x, "val_loss": v} for x, v in zip(n, loss)], 3)
    assert scaling.fit_isoflops([r["params"] for r in near], [r["val_loss"] for r in near])["params"] == \
        pytest.approx(1.1e5, rel=1e-6)
    assert not 0.8 < scaling.fit_isoflops(n, loss)["params"] / 1.1e5 < 1.25
    for bad in (1, 2, -1):
        with pytest.raises(UsageError, match="--fit-sizes"):
            scaling.ScalingConfig(fit_sizes=bad).validate()


def test_batch_grows_as_the_square_root_of_the_budget():
    cfg = scaling.ScalingConfig(tokens_per_step=2048, seq_len=256)
    assert [scaling.batch_for(cfg, C) for C in (1e9, 2.5e10, 1e11, 4e11, 1.6e12, 1e14)] == [
        256, 256, 512, 1024, 2048, 2048]  # at least one row, at most --tokens-per-step


def test_pick_evenly_spans_the_losses():
    runs = [{"val_loss": v} for v in (5.0, 3.0, 4.0, 6.0, 3.5)]
    assert [r["val_loss"] for r in scaling.pick_evenly(runs, 3)] == [3.0, 4.0, 6.0]
    assert len(scaling.pick_evenly(runs, 9)) == 5


def test_bytes_per_token_of_a_byte_tokenizer(tok_path):
    table = scaling.bytes_per_token_table(tok_path, 512)
    assert table[:256].tolist() == [1] * 256 and table[256:].sum() == 0  # special tokens: no text


# -----------------------------------------------------------------------------
# A tiny grid end to end


def write_byte_shards(data_dir, tok_path, seed=0):
    """data.py's layout over the byte tokenizer: sentences of a small grammar, so a
    small model learns something in a few steps."""
    tok = Tokenizer(tok_path)
    rng = np.random.default_rng(seed)
    words = ["the", "model", "reads", "a", "token", "and", "predicts", "next", "one", "loss", "falls"]
    splits = {}
    for split, n_docs in (("train", 300), ("val", 30)):
        docs = [tok.encode(" ".join(rng.choice(words, rng.integers(8, 40))) + ".", bos=True, eos=True)
                for _ in range(n_docs)]
        arr = np.concatenate([np.array(d, dtype=np.uint32) for d in docs])
        arr.tofile(os.path.join(data_dir, f"{split}_000.bin"))
        starts = np.cumsum([0] + [len(d) for d in docs[:-1]]).astype(np.uint64)
        starts.tofile(os.path.join(data_dir, f"{split}_000.idx"))
        splits[split] = {"files": [f"{split}_000.bin"], "tokens": int(arr.size), "documents": n_docs}
    meta = {"tokenizer": tok_path, "vocab_size": tok.n_words, "bos_id": tok.bos_id, "eos_id": tok.eos_id,
            "dtype": "uint32", "splits": splits}
    with open(os.path.join(data_dir, "meta.json"), "w") as f:
        json.dump(meta, f)
    return data_dir


def test_tiny_grid_writes_scaling_json_and_the_figures(tmp_path, tok_path):
    data = write_byte_shards(str(tmp_path), tok_path)
    out = str(tmp_path / "scaling")
    argv = ["--quick", "--data", data, "--out", out, "--budgets", "2e8,6e8", "--sizes", "3", "--dial", "1-4",
            "--seq-len", "64", "--tokens-per-step", "256", "--sft-runs", "2", "--sft-steps", "3",
            "--n-eval", "8", "--speed-dial", "1-2", "--speed-ranks", "1", "--speed-steps", "3",
            "--default-minutes", "1", "--threads", "1", "--device", "cpu"]
    torch.manual_seed(0)
    assert scaling.main(argv) == 0
    record = json.load(open(os.path.join(out, "scaling.json")))
    runs = record["runs"]
    assert len(runs) >= 2 * 3 + 1  # every size of both budgets, and the extrapolated run
    for r in runs:
        assert set(r) >= {"params", "tokens", "flops", "seconds", "val_loss", "bits_per_byte"}
        assert r["flops"] == 6 * r["params"] * r["tokens"]
        assert r["flops"] == pytest.approx(r["budget"], rel=0.5)  # whole steps of the budget
        assert 0 < r["val_loss"] < math.log(512) + 1
        assert r["bits_per_byte"] == pytest.approx(r["val_loss"] / math.log(2) / record["bytes_per_token"])
    assert set(record["fit"]) >= {"alpha", "A"} and math.isfinite(record["fit"]["alpha"])
    x = record["extrapolation"]
    assert set(x) >= {"flops", "params", "predicted_loss", "measured_loss"}
    assert x["flops"] == pytest.approx(4 * 6e8)
    d = record["default_budget"]
    assert set(d) >= {"flops", "optimal_params", "default_model_params"}
    assert d["default_model"] in ("dial-1", "dial-2")
    assert len(record["tasks"]) == 2 and all(0 <= t["accuracy"] <= 1 for t in record["tasks"])
    for png in ("isoflops.png", "optimal_tokens.png", "loss_to_accuracy.png"):
        assert os.path.getsize(os.path.join(out, png)) > 1000
    # a second run reads every finished run back instead of training it again
    before = {r["name"]: r["val_loss"] for r in runs}
    assert scaling.main(argv) == 0
    again = json.load(open(os.path.join(out, "scaling.json")))
    assert {r["name"]: r["val_loss"] for r in again["runs"]} == before


def test_runs_trained_two_at_a_time_equal_runs_trained_in_this_process(tmp_path, tok_path):
    data = write_byte_shards(str(tmp_path), tok_path)
    todo = [(1, 2e8, 256, "C2e8_dial-1"), (2, 2e8, 256, "C2e8_dial-2")]  # (w, flops, tokens/step, name)
    runs = {}
    for jobs in (1, 2):
        cfg = scaling.ScalingConfig(data=data, out=str(tmp_path / f"jobs{jobs}"), seq_len=64, tokens_per_step=256,
                                    jobs=jobs, threads=1, device="cpu")
        runs[jobs] = scaling.pretrain_runs(cfg, todo, 512)
    assert [r["name"] for r in runs[2]] == ["C2e8_dial-1", "C2e8_dial-2"]  # todo's order, whichever ends first
    assert all(os.path.exists(os.path.join(tmp_path, "jobs2", "runs", r["name"], "stdout.log")) for r in runs[2])
    assert [r["val_loss"] for r in runs[2]] == [r["val_loss"] for r in runs[1]]  # same seed, data, threads
    assert runs[1][0]["val_loss"] != runs[1][1]["val_loss"]
    assert scaling.jobs_for(scaling.ScalingConfig(jobs=3)) == 3
    assert scaling.jobs_for(scaling.ScalingConfig(device="cuda")) == 1  # a GPU trains one run at a time


def test_bad_flags_are_one_line_errors(capsys):
    assert scaling.main(["--budgets", "1e11,abc"]) == 2
    assert "--budgets" in capsys.readouterr().err
    for bad in (["--extrapolate", "0.5"], ["--jobs", "-1"], ["--dtype", "fp16"], ["--sft-runs", "-2"],
                ["--speed-repeats", "0"]):
        with pytest.raises(SystemExit) as e:
            scaling.main(bad)
        assert e.value.code == 2
