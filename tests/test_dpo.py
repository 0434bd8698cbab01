"""Tests of dpo.py (§4.1.4): dpo_loss against the closed form (values and autograd
gradients), ln 2 at step 0 when the policy is the reference, the masks (which tokens
count in the log-probs with and without masking the formatting tokens), sequence
log-probs against a plain forward, and a tiny end-to-end DPO run with bad lines in its
data (reported with line numbers and skipped). Tiny models, byte tokenizer: seconds."""
import json
import math

import pytest
import torch

import dpo as D
import checkpoint
import model as M
from tests.conftest import tiny_args


def tiny_model(seed=0):
    m = M.Transformer(tiny_args())
    m.init_weights(seed=seed)
    return m


PROMPT = [{"role": "user", "content": "Add 23 and 58."}]


# -----------------------------------------------------------------------------
# dpo_loss


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_dpo_loss_closed_form_values_and_gradients(beta):
    gen = torch.Generator().manual_seed(int(beta * 10))
    pc, pr, rc, rr = [-(torch.rand(32, generator=gen, dtype=torch.float64) * 40 + 1) for _ in range(4)]
    pc_, pr_ = pc.clone().requires_grad_(), pr.clone().requires_grad_()
    losses, chosen_rewards, rejected_rewards = D.dpo_loss(pc_, pr_, rc, rr, beta=beta)
    delta = (pc - rc) - (pr - rr)
    torch.testing.assert_close(losses, torch.log1p(torch.exp(-beta * delta)))  # -log σ(βΔ)
    torch.testing.assert_close(chosen_rewards, beta * (pc - rc))
    torch.testing.assert_close(rejected_rewards, beta * (pr - rr))
    assert losses.shape == (32,) and not chosen_rewards.requires_grad and not rejected_rewards.requires_grad
    losses.sum().backward()
    torch.testing.assert_close(pc_.grad, -beta * torch.sigmoid(-beta * delta))  # d/dπc
    torch.testing.assert_close(pr_.grad, beta * torch.sigmoid(-beta * delta))  # d/dπr
    # Large |βΔ| stays finite (logsigmoid, not log(sigmoid)).
    big = torch.tensor([1e4, -1e4])
    assert torch.isfinite(D.dpo_loss(big, -big, torch.zeros(2), torch.zeros(2), beta=beta)[0]).all()


def test_dpo_loss_is_ln2_when_policy_equals_reference():
    z = torch.full((5,), -7.0)
    losses, c, r = D.dpo_loss(z, z - 3, z, z - 3, beta=0.1)
    torch.testing.assert_close(losses, torch.full((5,), math.log(2)))
    assert c.abs().max() == 0 and r.abs().max() == 0


# -----------------------------------------------------------------------------
# The masks (§4.1.4) and the sequence log-probs


def test_masks_count_the_right_tokens(chat):
    eot = chat.tokenizer.eot_id
    prompt_len = len(chat.encode_dialog(PROMPT, add_generation_prompt=True).tokens)
    content = chat.tokenizer.encode("81")
    masked = D.encode_pair_response(chat, PROMPT, "81", mask_format_tokens=True)
    plain = D.encode_pair_response(chat, PROMPT, "81", mask_format_tokens=False)
    assert masked["tokens"] == plain["tokens"] and masked["tokens"][-1] == eot
    counted = lambda enc: [t for t, m in zip(enc["tokens"], enc["logp_mask"]) if m]  # noqa: E731
    assert counted(masked) == content  # the response content only: no header, no <|eot_id|>
    assert counted(plain) == content + [eot]  # the usual convention (TRL): every response token
    assert [t for t, m in zip(plain["tokens"], plain["nll_mask"]) if m] == content + [eot]  # SFT targets
    assert not any(masked["logp_mask"][:prompt_len]) and not any(plain["logp_mask"][:prompt_len])
    # A multi-turn prompt: earlier assistant turns never count.
    prompt2 = PROMPT + [{"role": "assistant", "content": "81"}, {"role": "user", "content": "And 1 more?"}]
    enc = D.encode_pair_response(chat, prompt2, "82", mask_format_tokens=False)
    assert counted(enc) == chat.tokenizer.encode("82") + [eot]


def test_sequence_logps_against_a_plain_forward(chat):
    model = tiny_model().eval()
    seqs = [D.encode_pair_response(chat, PROMPT, r, m) for r in ("81", "The answer is 80.") for m in (True, False)]
    batch = D.collate_sequences(seqs, chat.tokenizer.pad_id, "cpu")  # right-padded
    with torch.no_grad():
        got = D.sequence_logps(D.token_logps(model, batch), batch["logp_mask"])
        for i, s in enumerate(seqs):  # one row at a time, no padding: sum log p(t_k | t_<k)
            logp = model(torch.tensor([s["tokens"]])).log_softmax(-1)[0]
            want = sum(logp[k - 1, s["tokens"][k]] for k in range(1, len(s["tokens"])) if s["logp_mask"][k])
            torch.testing.assert_close(got[i], want, atol=1e-5, rtol=1e-5)
        eot_logp = model(torch.tensor([seqs[1]["tokens"]])).log_softmax(-1)[0, -2, chat.tokenizer.eot_id]
    # Unmasked = masked + log p(<|eot_id|>): the only formatting token inside a response.
    torch.testing.assert_close(got[1] - got[0], eot_logp, atol=1e-5, rtol=1e-5)


def test_step_zero_loss_is_ln2(chat):
    """The reference log-probs are computed once, by the model that then trains: at step 0
    policy == reference, so the DPO part of the loss is ln 2 and every reward is 0."""
    model = tiny_model()
    rows = [{"prompt": [{"role": "user", "content": f"Add {i} and 1."}], "chosen": str(i + 1), "rejected": str(i)}
            for i in range(6)]
    pairs, _ = D.encode_pairs(chat, rows, True, 256)
    ref_c, ref_r = D.reference_logps(model, pairs, chat.tokenizer.pad_id, torch.device("cpu"), batch_size=4)
    batch = D.pair_batch(pairs, ref_c, ref_r, chat.tokenizer.pad_id, "cpu")  # another padding length
    loss, metrics = D.dpo_loss_fn(model, batch, beta=0.1, nll_coef=0.2)
    assert metrics["dpo_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert metrics["rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert loss.item() == pytest.approx(math.log(2) + 0.2 * metrics["nll"], abs=1e-5)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
                 "logps/chosen", "logps/rejected"):  # TRL's names
        assert name in metrics
    loss.backward()  # and the gradient flows to the policy
    assert model.layers["0"].attention.wq.weight.grad.abs().sum() > 0


# -----------------------------------------------------------------------------
# End to end


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tok_path):
    d = tmp_path_factory.mktemp("ckpt")
    args = tiny_args()
    checkpoint.save_model(tiny_model(), args, str(d), tokenizer_path=tok_path)
    return str(d)


def test_tiny_dpo_run_with_bad_lines(tmp_path, tiny_ckpt):
    rows = [{"prompt": [{"role": "user", "content": f"Add {i} and 1."}], "chosen": str(i + 1), "rejected": str(i)}
            for i in range(24)]
    lines = [json.dumps(r) for r in rows]
    lines.insert(2, json.dumps({"prompt": "Add 1 and 1.", "chosen": "2", "rejected": "2"}))  # line 3
    lines.insert(5, json.dumps({"prompt": "Add 1 and 1.", "chosen": "2"}))  # line 6: missing rejected
    lines.insert(7, json.dumps({"prompt": "Add 1 and 1.", "chosen": "", "rejected": "3"}))  # line 8: empty
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "val.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:6]) + "\n")
    cfg = D.DPOConfig(init=tiny_ckpt, out=str(tmp_path / "dpo"), data=str(tmp_path / "train.jsonl"),
                      eval_data=str(tmp_path / "val.jsonl"), n_eval_tasks=4, max_new_tokens=3, batch_size=4,
                      max_steps=0, epochs=1, lr=1e-3, warmup_steps=1, time_budget_min=0, eval_every=0, ckpt_every=100,
                      dtype="fp32", threads=torch.get_num_threads(), log_every=1)
    report = D.run_dpo(cfg)
    assert [s["line"] for s in report["skipped_lines"]] == [3, 6, 8]
    assert report["train_pairs"] == 24 and report["steps"] == 6  # max_steps 0 = one epoch: 24 pairs / 4
    assert report["eval_before"]["eval_rewards/margins"] == pytest.approx(0.0, abs=1e-5)
    assert report["eval_before"]["eval_loss"] == pytest.approx(
        math.log(2) + 0.2 * report["eval_before"]["eval_nll"], abs=1e-5)
    assert report["task_accuracy_before"]["n"] == 4 and report["task_accuracy_after"]["n"] == 4
    log = [json.loads(line) for line in open(tmp_path / "dpo" / "log.jsonl")]
    assert log[0]["dpo_loss"] == pytest.approx(math.log(2), abs=1e-5)  # step 1 sees policy == reference
    assert "rewards/accuracies" in log[0] and "eval_rewards/accuracies" in log[-1]
    assert (tmp_path / "dpo" / "final" / "model.pt").exists() and (tmp_path / "dpo" / "dpo.png").exists()
    checkpoint.load_model(str(tmp_path / "dpo" / "final"))  # the export loads like any checkpoint


def test_held_out_pairs_come_from_data_when_given(tmp_path, tiny_ckpt):
    """--data without --eval-data: every 20th row is held out (pairs of the same kind,
    e.g. on-policy ones), not tasks.py's generated pairs."""
    rows = [{"prompt": [{"role": "user", "content": f"Add {i} and 1."}], "chosen": str(i + 1), "rejected": str(i)}
            for i in range(40)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = D.DPOConfig(init=tiny_ckpt, out=str(tmp_path / "dpo"), data=str(tmp_path / "train.jsonl"),
                      n_eval_tasks=0, batch_size=8, max_steps=1, lr=1e-4, warmup_steps=1, time_budget_min=0,
                      eval_every=0, ckpt_every=100, dtype="fp32", threads=torch.get_num_threads(), log_every=1)
    report = D.run_dpo(cfg)
    assert report["eval_pairs"] == 2 and report["train_pairs"] == 38


def test_non_finite_loss_stops_with_one_line(tmp_path, tiny_ckpt, capsys):
    rows = [{"prompt": [{"role": "user", "content": f"Add {i} and 1."}], "chosen": str(i + 1), "rejected": str(i)}
            for i in range(16)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cfg = D.DPOConfig(init=tiny_ckpt, out=str(tmp_path / "dpo"), data=str(tmp_path / "train.jsonl"),
                      n_eval_tasks=0, batch_size=4, max_steps=3, lr=1e-4, warmup_steps=1, time_budget_min=0,
                      eval_every=0, ckpt_every=100, dtype="fp32", threads=torch.get_num_threads(), log_every=1,
                      debug_nan_at_step=2)
    with pytest.raises(SystemExit) as stop:
        D.run_dpo(cfg)
    assert stop.value.code == 3
    assert "STOPPED: non-finite loss at step 2" in capsys.readouterr().out
    assert json.load(open(tmp_path / "dpo" / "report.json"))["status"] == "non-finite loss"


def test_default_command_line_trains_epochs(tmp_path, tiny_ckpt):
    """`python dpo.py` with no --max-steps parses (0 = --epochs passes) and trains that many
    passes; a negative --max-steps or a zero --epochs is one line and exit code 2."""
    import common
    default = common.parse_config(D.DPOConfig, [], show=False)
    assert default.max_steps == 0 and default.epochs == 4 and default.lr == 3e-4
    for bad_flag in (["--max-steps", "-1"], ["--epochs", "0"]):
        with pytest.raises(SystemExit) as bad:
            common.parse_config(D.DPOConfig, bad_flag, show=False)
        assert bad.value.code == 2
    rows = [{"prompt": [{"role": "user", "content": f"Add {i} and 1."}], "chosen": str(i + 1), "rejected": str(i)}
            for i in range(20)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = D.main(["--init", tiny_ckpt, "--out", str(tmp_path / "dpo"), "--data", str(tmp_path / "train.jsonl"),
                     "--n-eval-tasks", "0", "--batch-size", "4", "--eval-every", "0", "--dtype", "fp32",
                     "--threads", "1", "--warmup-steps", "1", "--epochs", "2.5"])
    assert report["train_pairs"] == 19 and report["steps"] == 12  # 2.5 x 19 pairs / 4 per step, rounded up
