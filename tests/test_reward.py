"""Tests of reward.py (§4.1.2, §4.2.2): the Bradley-Terry loss against its closed form,
accuracy/margin on a toy case, the three-way ranking as ordered pairs, the packed row
(prompt + shuffled responses in one sequence) scoring exactly like separate rows, bad
preference lines reported with line numbers, a tiny end-to-end reward-model training
(save, load) and which preference pairs are kept. Tiny models and a byte-level tokenizer: seconds."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import checkpoint
import model as M
from tests.conftest import tiny_args
import reward as R


def random_reward_model(seed=0):
    torch.manual_seed(seed)
    trunk = M.Transformer(tiny_args())
    trunk.init_weights(seed=seed)
    rm = R.RewardModel(trunk).eval()
    torch.nn.init.normal_(rm.value_head.weight, std=1.0)  # a non-zero head: scores differ
    return rm


PROMPT = [{"role": "user", "content": "Add 23 and 58."}]


# -----------------------------------------------------------------------------
# The loss and the metrics


def test_reward_loss_closed_form_and_gradient():
    gen = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(16, generator=gen) * 3, torch.randn(16, generator=gen) * 3
    chosen[:2], rejected[:2] = torch.tensor([50.0, -50.0]), torch.tensor([-50.0, 50.0])  # saturated: finite
    c, r = chosen.clone().double().requires_grad_(), rejected.clone().double().requires_grad_()
    loss = R.reward_loss(c, r)
    z = (chosen - rejected).double()
    assert loss.dim() == 0
    torch.testing.assert_close(loss, torch.log1p(torch.exp(-z)).mean())  # mean -log σ(z)
    loss.backward()
    torch.testing.assert_close(c.grad, -torch.sigmoid(-z) / len(z))
    torch.testing.assert_close(r.grad, torch.sigmoid(-z) / len(z))
    assert math.isclose(R.reward_loss(torch.zeros(3), torch.zeros(3)).item(), math.log(2), rel_tol=1e-6)
    assert math.isclose(R.reward_loss(torch.tensor([5.0]), torch.tensor([0.0])).item(), 0.0067153, rel_tol=1e-4)
    # no margin term (Llama 2 had one; §4.1.2 removed it)
    assert not torch.allclose(R.reward_loss(chosen, rejected), -F.logsigmoid(chosen - rejected - 1).mean())


def test_pairwise_metrics_toy_case():
    m = R.pairwise_metrics(torch.tensor([2.0, 1.0, 0.0, 3.0]), torch.tensor([0.0, 1.0, 1.0, -1.0]))
    assert m["accuracy"] == 0.5  # 2>0 yes, tie no, 0>1 no, 3>-1 yes
    assert m["margin"] == pytest.approx((2 + 0 - 1 + 4) / 4)


def test_three_way_ranking_gives_all_ordered_pairs():
    assert R.ranking_pairs(2) == [(0, 1)]
    assert R.ranking_pairs(3) == [(0, 1), (0, 2), (1, 2)]  # edited>chosen, edited>rejected, chosen>rejected
    assert R.ranked_responses({"chosen": "c", "rejected": "r"}) == ["c", "r"]
    assert R.ranked_responses({"chosen": "c", "rejected": "r", "edited": "e"}) == ["e", "c", "r"]


def test_shuffled_packed_row_keeps_the_ranking(chat):
    # Responses of distinct lengths: the slot a pair points at is recognizable by length.
    encoded, _ = R.encode_rows(chat, [{"prompt": PROMPT, "edited": "81", "chosen": "It is 81 ok",
                                       "rejected": "It is 80 or so, I think"}], 256)
    lengths_by_rank = [len(r) for r in encoded[0]["responses"]]
    import random
    for seed in range(6):
        packed, pairs = R.make_packed(encoded[0], random.Random(seed))
        seg = packed["segment"]
        slot_len = [seg.count(i) for i in range(3)]
        ranks = [lengths_by_rank.index(n) for n in slot_len]  # rank of the response in each slot
        assert sorted(ranks) == [0, 1, 2]
        assert [(ranks[a], ranks[b]) for a, b in pairs] == R.ranking_pairs(3)
    batch = R.preference_batch(encoded, chat.tokenizer.pad_id, "cpu", None)
    assert batch["pair_is_chosen_rejected"].tolist() == [False, False, True]


# -----------------------------------------------------------------------------
# The packed row (§4.1.2)


def test_packed_mask_example():
    mask = R.packed_attention_mask(torch.tensor([[-1, -1, 0, 1, 1, -2]]))[0].int().tolist()
    assert mask == [[1, 0, 0, 0, 0, 0],
                    [1, 1, 0, 0, 0, 0],
                    [1, 1, 1, 0, 0, 0],   # response 0: prompt + itself
                    [1, 1, 0, 1, 0, 0],   # response 1 does not see response 0
                    [1, 1, 0, 1, 1, 0],
                    [1, 1, 0, 0, 0, 1]]   # padding: prompt + itself (never an empty row)


def test_packed_row_scores_equal_separate_rows(chat):
    rm = random_reward_model()
    responses = ["81", "The answer is: 80.", "", "eighty-one, I believe"]
    with torch.no_grad():
        separate = []
        for r in responses:  # the reference: prompt + one response, plain causal row
            tokens = chat.encode_dialog(PROMPT + [{"role": "assistant", "content": r}]).tokens
            assert tokens[-1] == chat.tokenizer.eot_id  # scored at the <|eot_id|> closing the turn
            separate.append(rm(torch.tensor([tokens]))[0, -1].item())
        packed = R.score(rm, chat, PROMPT, responses)  # one row: prompt + 4 responses
    torch.testing.assert_close(torch.tensor(packed), torch.tensor(separate), atol=1e-5, rtol=1e-5)
    # In a padded batch of two packed rows (different prompts and lengths), the same.
    other = [{"role": "user", "content": "Which is larger: 47 or 82?"}]
    rows = [R.pack_row(*R.encode_responses(chat, PROMPT, responses)),
            R.pack_row(*R.encode_responses(chat, other, ["82", "47"]))]
    with torch.no_grad():
        scores = R.score_batch(rm, R.collate_packed(rows, chat.tokenizer.pad_id, "cpu"))
        other_separate = R.score(rm, chat, other, ["82"]) + R.score(rm, chat, other, ["47"])
    torch.testing.assert_close(scores[0], torch.tensor(separate), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores[1, :2], torch.tensor(other_separate), atol=1e-5, rtol=1e-5)
    many = R.score_prompts(rm, chat, [PROMPT, other], [responses, ["82", "47"]])  # rejection sampling's batch
    torch.testing.assert_close(torch.tensor(many[0]), torch.tensor(separate), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(many[1]), torch.tensor(other_separate), atol=1e-5, rtol=1e-5)


def test_score_splits_rows_longer_than_max_seq_len(chat):
    rm = random_reward_model()
    responses = ["x" * 60, "y" * 70, "z" * 50, "81"]  # prompt ~30 + 180 tokens > 128
    rm.args = tiny_args(max_seq_len=128)
    small = R.score(rm, chat, PROMPT, responses)
    rm.args = tiny_args()
    big = R.score(rm, chat, PROMPT, responses)
    torch.testing.assert_close(torch.tensor(small), torch.tensor(big), atol=1e-5, rtol=1e-5)


# -----------------------------------------------------------------------------
# Bad input: reported with line numbers, skipped


def test_bad_preference_rows_reported_with_line_numbers(tmp_path):
    import tasks
    good = {"prompt": PROMPT, "chosen": "81", "rejected": "80"}
    lines = [json.dumps(good),
             json.dumps({**good, "rejected": "81"}),  # 2: chosen == rejected
             json.dumps({"prompt": PROMPT, "chosen": "81"}),  # 3: missing rejected
             json.dumps({**good, "chosen": "  "}),  # 4: empty response
             "{not json",  # 5
             json.dumps({"chosen": "1", "rejected": "2"}),  # 6: no prompt
             json.dumps({**good, "edited": "81"})]  # 7: edited == chosen
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    rows, skipped = tasks.read_preference_jsonl(str(path), verbose=False)
    assert len(rows) == 1
    assert [s["line"] for s in skipped] == [2, 3, 4, 5, 6, 7]
    reasons = " | ".join(s["reason"] for s in skipped)
    assert "chosen == rejected" in reasons and "empty" in reasons and "missing" in reasons


# -----------------------------------------------------------------------------
# End to end: train a tiny reward model, save, load, rejection-sample


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tok_path):
    d = tmp_path_factory.mktemp("ckpt")
    args = tiny_args()
    m = M.Transformer(args)
    m.init_weights(seed=0)
    checkpoint.save_model(m, args, str(d), tokenizer_path=tok_path)
    return str(d)


def test_tiny_reward_model_learns_and_round_trips(tmp_path, tiny_ckpt, chat):
    # A preference anyone can learn: "yes" beats "no" whatever the prompt. Two bad lines
    # in the file must be skipped, not crash the run.
    rows = [{"prompt": [{"role": "user", "content": f"Question {i}?"}], "chosen": "yes", "rejected": "no"}
            for i in range(40)]
    rows[3] = {**rows[3], "edited": "yes!"}
    lines = [json.dumps(r) for r in rows] + [json.dumps({"prompt": "q", "chosen": "a", "rejected": "a"}), "oops"]
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "val.jsonl").write_text("\n".join(json.dumps({**r, "prompt": [{"role": "user", "content": f"Q{i}"}]})
                                                  for i, r in enumerate(rows[:8])) + "\n")
    cfg = R.RewardConfig(init=tiny_ckpt, out=str(tmp_path / "rm"), data=str(tmp_path / "train.jsonl"),
                         eval_data=str(tmp_path / "val.jsonl"), batch_size=8, max_steps=12, lr=3e-3,
                         warmup_steps=2, time_budget_min=0, eval_every=0, ckpt_every=100, dtype="fp32",
                         threads=torch.get_num_threads(), log_every=100)
    report = R.train_reward_model(cfg)
    assert report["first_loss"] == pytest.approx(math.log(2), abs=1e-6)  # zero head: every score 0
    assert report["after"]["val_accuracy"] == 1.0 and report["after"]["val_margin"] > 0
    assert [s["line"] for s in report["skipped_lines"]] == [41, 42]
    rm, _ = R.load_reward_model(report["final"])
    yes, no = R.score(rm, chat, [{"role": "user", "content": "Anything?"}], ["yes", "no"])
    assert yes > no
    for name in ("model.pt", "tokenizer.model", R.HEAD_FILE):
        assert (tmp_path / "rm" / "final" / name).exists()
    assert (tmp_path / "rm" / "accuracy.png").exists() and (tmp_path / "rm" / "report.json").exists()


# -----------------------------------------------------------------------------
# Which pairs are kept (§4.1.2: similar responses out; §4.2.1: clearly better only)


def test_similar_responses():
    assert R.similar_responses("7", "7.") and R.similar_responses(" The Answer is 9 ", "the answer is 9.")
    assert R.similar_responses("The cat sat on the mat.", "The cat sat on a mat.")  # 90% of characters
    assert not R.similar_responses("34", "43") and not R.similar_responses("9", "The answer is 9.")
    assert not R.similar_responses("The cat sat on the mat.", "A dog ran.")


def test_preference_filter_keeps_clearly_better_dissimilar_pairs(tmp_path):
    import tasks
    e = tasks.make_examples(1, seed=0, tasks="larger")[0]  # "Which is larger: x or y?"
    right, meta = e["meta"]["answer"], e["meta"]
    wrong = str(min(meta["x"], meta["y"]))
    prompt = e["messages"][:1]
    rows = {
        "checked": {"prompt": prompt, "chosen": right, "rejected": wrong, "meta": meta},
        # a checker sees through look-alike texts: one right, one wrong is a clear preference
        "checked_alike": {"prompt": prompt, "chosen": f"The answer is {right}.", "rejected": f"The answer is {wrong}.",
                          "meta": meta},
        "both_right": {"prompt": prompt, "chosen": right, "rejected": f"It is {right}", "meta": meta},
        "reversed": {"prompt": prompt, "chosen": wrong, "rejected": right, "meta": meta},
        "plain": {"prompt": prompt, "chosen": "Paris is the capital.", "rejected": "I do not know."},
        "similar": {"prompt": prompt, "chosen": "Paris is the capital.", "rejected": "paris is the capital"},
        "rated_better": {"prompt": prompt, "chosen": "yes", "rejected": "no", "rating": "Better"},
        "rated_slightly": {"prompt": prompt, "chosen": "yes", "rejected": "no", "rating": "slightly better"},
    }
    verdicts = {name: R.preference_verdict(row) for name, row in rows.items()}
    assert verdicts == {"checked": "kept", "checked_alike": "kept", "both_right": "unclear", "reversed": "unclear",
                        "plain": "kept", "similar": "similar", "rated_better": "kept", "rated_slightly": "unclear"}
    assert R.filter_preferences(list(rows.values())) == [rows[k] for k in ("checked", "checked_alike", "plain",
                                                                           "rated_better")]
    # the same filter on reading a file (the reward model's and DPO's data)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows.values()))
    cfg = R.RewardConfig(data=str(tmp_path / "p.jsonl"))
    kept, skipped = R.load_pairs(cfg, "train")
    assert [r["chosen"] for r in kept] == [rows[k]["chosen"] for k in ("checked", "checked_alike", "plain",
                                                                       "rated_better")] and not skipped
    # generated pairs pass it whole: right vs wrong answers, edited vs chosen differ in form
    generated = tasks.make_preference_pairs(200, seed=0, terse_fraction=0.5)
    assert R.filter_preferences(generated) == generated


def test_stopped_reward_run_resumes_exactly(tmp_path, tiny_ckpt):
    """A reward run stopped at step 3 (with its checkpoint) and started again ends where an
    uninterrupted run ends: the same value head, bit for bit. (It once failed to resume:
    the unused next-token head had no optimizer state in the checkpoint.)"""
    rows = [{"prompt": [{"role": "user", "content": f"Question {i}?"}], "chosen": "yes", "rejected": "no"}
            for i in range(24)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")

    def run(out, **kw):
        cfg = R.RewardConfig(init=tiny_ckpt, out=str(tmp_path / out), data=str(tmp_path / "train.jsonl"),
                             eval_data=str(tmp_path / "train.jsonl"), batch_size=4, max_steps=6, lr=3e-3,
                             warmup_steps=1, time_budget_min=0, eval_every=0, ckpt_every=100, dtype="fp32",
                             threads=1, log_every=100, **kw)
        return R.train_reward_model(cfg)

    whole = run("whole")
    assert run("parts", stop_at_step=3)["status"] == "stopped"  # a checkpoint at step 3, no final/
    assert not (tmp_path / "parts" / "final").exists()
    parts = run("parts")
    assert parts["steps"] == whole["steps"] == 6
    head = lambda d: torch.load(tmp_path / d / "final" / R.HEAD_FILE)["value_head"]  # noqa: E731
    for k, v in head("whole").items():
        assert torch.equal(v, head("parts")[k]), k
