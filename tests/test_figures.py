"""Tests for figures.py: every figure is drawn (small PNGs), the attention probabilities
it shows are the ones the model uses, the 405B schedules are the paper's, the committed
figures exist and docs/TEACHING.md shows them, and bad flags exit with code 2."""
import os
import struct

import pytest
import torch

import checkpoint
import figures
import model as M
import pretrain
from conftest import ROOT, tiny_args


def png_size(path):
    """(width, height) from a PNG's IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_static_figures_are_small_pngs(tmp_path, capsys):
    only = [f for f in figures.FIGURES if f != "attention"]
    assert figures.main(["--out", str(tmp_path), "--only", ",".join(only)]) == 0
    for name in only:
        path = tmp_path / f"{name}.png"
        width, height = png_size(path)
        assert 300 < width < 1400 and 200 < height < 1000, (name, width, height)
        assert path.stat().st_size < 150_000, f"{name}.png is {path.stat().st_size:,} bytes"
    assert "wrote" in capsys.readouterr().out


def test_attention_probs_are_what_the_model_attends_with():
    torch.manual_seed(0)
    model = M.Transformer(tiny_args(n_layers=2, max_seq_len=32)).eval()
    model.init_weights()
    tokens = torch.randint(0, 512, (1, 12))
    seen = []  # (v, output) of each layer's real attention
    for block in model.layers.values():
        original = block.attention._attend
        block.attention._attend = lambda q, k, v, mask, doc_ids, f=original: seen.append((v, f(q, k, v, mask, doc_ids))) \
            or seen[-1][1]
    with torch.no_grad():
        expected_logits = model(tokens)
    seen.clear()
    probs = figures.attention_probs(model, tokens)
    assert len(probs) == 2 and probs[0].shape == (4, 12, 12)
    for p, (v, out) in zip(probs, seen):
        assert torch.allclose(p.sum(-1), torch.ones(4, 12), atol=1e-5)
        assert (p.triu(1) == 0).all(), "a query attends to a later key"
        v_all = v[0].repeat_interleave(p.shape[0] // v.shape[1], dim=0)  # (H, T, hd)
        torch.testing.assert_close(p @ v_all, out[0], atol=1e-5, rtol=1e-5)
    assert all("_attend" not in block.attention.__dict__ for block in model.layers.values()), "wrapper left behind"
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), expected_logits)


def test_tiny_model_learns():
    _, losses = figures.train_tiny_model(steps=40, seed=0, chars=20_000)
    assert losses[0] > 5.0 and sum(losses[-5:]) / 5 < losses[0] - 1.5, losses[::10]


def test_attention_figure_from_a_checkpoint(tmp_path, tok_path):
    args = tiny_args(n_layers=5, max_seq_len=64)
    model = M.Transformer(args)
    model.init_weights()
    checkpoint.save_model(model, args, str(tmp_path / "ckpt"), tokenizer_path=tok_path)
    assert figures.main(["--out", str(tmp_path), "--only", "attention", "--ckpt", str(tmp_path / "ckpt"),
                         "--text", "hello"]) == 0
    width, _ = png_size(tmp_path / "attention.png")
    assert width > 500
    assert figures.main(["--out", str(tmp_path), "--only", "attention", "--ckpt", str(tmp_path / "ckpt"),
                         "--layers", "0,9"]) == 2


def test_405b_schedules_are_the_papers():
    cfg, total = figures.batch_schedule_405b()
    step_8m, step_16m = sorted(s for s, _ in pretrain.parse_schedule(cfg.batch_schedule, 0))[1:]
    M4, M8, M16 = (n * 2**20 for n in (4, 8, 16))
    assert pretrain.stage_at(cfg, 0, total) == pretrain.stage_at(cfg, step_8m - 1, total) == (4096, M4)  # §3.4.1
    assert pretrain.stage_at(cfg, step_8m, total) == pretrain.stage_at(cfg, step_16m - 1, total) == (8192, M8)
    assert pretrain.stage_at(cfg, step_16m, total) == (8192, M16)
    assert 252e6 <= step_8m * M4 < 252e6 + M4  # 8M tokens per step once 252M tokens are seen
    seen_at_16m = step_8m * M4 + (step_16m - step_8m) * M8
    assert 2.87e12 <= seen_at_16m < 2.87e12 + M8  # 16M once 2.87T are seen
    assert abs(seen_at_16m + (total - step_16m) * M16 - 15.6e12) < M16  # 15.6T in all
    assert pretrain.stage_at(cfg, total - cfg.long_context_steps, total) == (131072, M16)  # §3.4.2, one stage
    lr = lambda s: pretrain.lr_at(s, **figures.SCHEDULE_405B)  # noqa: E731
    assert lr(7999) == pytest.approx(8e-5) and lr(0) == pytest.approx(1e-8)  # warm-up over 8,000 steps
    assert lr(1_200_000 - 4) == pytest.approx(8e-7, rel=1e-3) and lr(1_199_999) == 0.0  # cosine to 8e-7, then 0


def test_bad_flags_exit_2(tmp_path, capsys):
    assert figures.main(["--out", str(tmp_path), "--only", "nope"]) == 2
    assert figures.main(["--out", str(tmp_path), "--only", "attention", "--ckpt", str(tmp_path / "missing")]) == 2
    assert figures.main(["--out", str(tmp_path), "--train-steps", "0"]) == 2
    assert "error: --train-steps" in capsys.readouterr().err


def test_committed_figures_are_shown_in_teaching():
    teaching = open(os.path.join(ROOT, "docs", "TEACHING.md"), encoding="utf-8").read()
    for name in figures.FIGURES:
        path = os.path.join(ROOT, "docs", "figures", f"{name}.png")
        assert os.path.exists(path), f"docs/figures/{name}.png missing: python figures.py --out docs/figures"
        assert os.path.getsize(path) < 150_000
        assert f"figures/{name}.png" in teaching, f"docs/TEACHING.md does not show {name}.png"
