"""rejection.py (§4.2.2): which signal picks what (the checker filters, the reward model
chooses among the samples that pass), the on-policy pair of a prompt, and the rates the
report gives, on a scripted sampler (a random tiny model is almost never right)."""
import random

import pytest

import checkpoint
import model as M
import rejection
import sample
import tasks
from tests.conftest import tiny_args


def test_pick_checker_filters_reward_model_chooses():
    assert rejection.pick([0.1, 0.9, 0.5], [True, False, True]) == (1, 2)  # the RM's favourite is wrong
    assert rejection.pick([0.1, 0.9, 0.5], [False, True, True]) == (1, 1)
    assert rejection.pick([0.1, 0.9, 0.5], [False, False, False]) == (1, None)  # nothing passes: no SFT row
    assert rejection.pick([0.1, 0.9, 0.5], None) == (1, 1)  # no checker: the reward model alone


def test_on_policy_pair_rejects_the_most_frequent_wrong_answer():
    e = tasks.make_examples(1, seed=0, tasks="max")[0]
    right = e["meta"]["answer"]
    a, b = [str(d) for d in range(10) if str(d) != right][:2]
    texts, scores = [b, right, a, a, right, "", b], [5.0, 0.1, -1.0, -2.0, 0.3, 9.0, 4.0]
    correct = [tasks.check_response(e, t) for t in texts]
    pair = rejection.on_policy_pair(e["messages"][:1], e, texts, scores, correct)
    assert pair["chosen"] == right and pair["rejected"] == b  # b and a twice each: the tie goes to the score
    assert pair["prompt"] == e["messages"][:1] and pair["meta"] == e["meta"]
    assert rejection.on_policy_pair(e["messages"][:1], e, [right, right], [0, 0], [True, True]) is None
    texts = [b, right, f" {a}\n", a]  # answers count alike whatever their whitespace: a twice beats b once
    pair = rejection.on_policy_pair(e["messages"][:1], e, texts, [5.0, 0.1, -2.0, -1.0],
                                    [tasks.check_response(e, t) for t in texts])
    assert pair["rejected"] == a


def test_edited_pair_where_every_sample_fails():
    """§4.2.1's edit: no correct sample -> the reference answer is chosen against the most
    frequent wrong one, marked edited; without --edit, or without a reference, no pair."""
    e = tasks.make_examples(1, seed=3, tasks="larger")[0]
    x, y = e["meta"]["x"], e["meta"]["y"]
    guess, small = "98" if max(x, y) != 98 else "97", str(min(x, y))
    texts = [guess, small, guess, ""]
    correct = [tasks.check_response(e, t) for t in texts]
    assert not any(correct)
    assert rejection.on_policy_pair(e["messages"][:1], e, texts, [0.0] * 4, correct) is None
    pair = rejection.on_policy_pair(e["messages"][:1], e, texts, [0.0, 1.0, 0.0, 0.0], correct, edit=True)
    assert pair["chosen"] == e["messages"][-1]["content"] == str(max(x, y)) and pair["rejected"] == guess
    assert pair["meta"]["edited"] is True and pair["meta"]["x"] == x
    prompt_only = {"prompt": e["messages"][:1], "task": "larger", "meta": e["meta"]}
    assert rejection.on_policy_pair(e["messages"][:1], prompt_only, texts, [0.0] * 4, correct, edit=True) is None
    assert rejection.on_policy_pair(e["messages"][:1], e, [""], [0.0], [False], edit=True) is None  # nothing to reject


@pytest.fixture(scope="module")
def tiny_policy(tok_path):
    m = M.Transformer(tiny_args())
    m.init_weights(seed=0)
    return m.eval()


def test_rejection_sample_on_scripted_samples(monkeypatch, tiny_policy, tok):
    """K=4 samples per prompt: [wrong, right, wrong, wrong] for most prompts, all wrong
    for 'count'. A reward model that always prefers the first sample picks the wrong
    one; with the checker the pick is right wherever a right sample exists."""
    examples = tasks.make_examples(20, seed=5)
    by_prompt = {e["messages"][0]["content"]: e for e in examples}

    def scripted_generate(model, tokenizer, prompts, num_samples=1, stats=None, **kw):
        stats.update(prefill_s=0.0, decode_s=0.0, new_tokens=0)
        out = []
        for p in prompts:
            e = by_prompt[tokenizer.decode(p).split("<|end_header_id|>\n\n")[1].split("<|eot_id|>")[0]]
            wrong = tasks.TASKS[e["task"]].corrupt(random.Random(0), "", e["meta"]["answer"], e["meta"])
            texts = [wrong] * 4 if e["task"] == "count" else [wrong, e["meta"]["answer"], wrong, wrong]
            out += [tokenizer.encode(t, bos=False) for t in texts[:num_samples]]
        return out

    class FirstIsBest:  # stands in for a reward model: score 1 for sample 0, else 0
        pass

    monkeypatch.setattr(sample, "generate", scripted_generate)
    monkeypatch.setattr(rejection.R, "score_prompts", lambda rm, chat, prompts, texts: [
        [1.0] + [0.0] * (len(t) - 1) for t in texts])
    sft_rows, pairs, report = rejection.rejection_sample(tiny_policy, FirstIsBest(), tok, examples, k=4,
                                                         batch_prompts=3, log_every=0)
    n_count = sum(e["task"] == "count" for e in examples)
    assert report["checked"] == 20 and report["rm_pick_correct"] == 0.0
    assert report["pick_correct"] == report["oracle_correct"] == pytest.approx(1 - n_count / 20)
    assert report["random_correct"] == pytest.approx(0.25 * (1 - n_count / 20))
    assert report["rm_accuracy_on_samples"] == 0.0  # a wrong sample always scores above the right one
    assert report["per_task"]["count"] == {"prompts": n_count, "rm_pick_correct": 0.0, "pick_correct": 0.0,
                                           "random_correct": 0.0, "oracle_correct": 0.0}
    assert len(sft_rows) == len(pairs) == 20 - n_count  # only prompts with a right sample give data
    for row in sft_rows:
        assert tasks.check_response(row["meta"], row["messages"][-1]["content"]) and row["meta"]["pass_rate"] == 0.25
    for pair in pairs:
        assert pair["chosen"] == pair["meta"]["answer"] and not tasks.check_response(pair["meta"], pair["rejected"])
        assert "edited" not in pair["meta"]
    assert report["edited_pairs"] == 0
    # With the edit (§4.2.1) the all-wrong count prompts give pairs too, the reference answer chosen.
    _, pairs, report = rejection.rejection_sample(tiny_policy, FirstIsBest(), tok, examples, k=4, batch_prompts=3,
                                                  log_every=0, edit=True)
    edited = [p for p in pairs if p["meta"].get("edited")]
    assert len(pairs) == 20 and report["edited_pairs"] == len(edited) == n_count > 0
    assert all(p["task"] == "count" and p["chosen"] == p["meta"]["answer"] for p in edited)


def test_focus_gives_the_failed_tasks_the_prompts():
    """§4.3.3: prompts in proportion to a random sample's failure rate, with a floor."""
    assert rejection.focus({"a": {"random_correct": 1.0}, "b": {"random_correct": 0.0}}, 105) == {"a": 5, "b": 100}
    counts = rejection.focus({"a": {"random_correct": 0.5}, "b": {"random_correct": 0.5},
                              "c": {"random_correct": 0.5}}, 10)
    assert sum(counts.values()) == 10 and sorted(counts.values()) == [3, 3, 4]
    counts = rejection.focus({"a": {"random_correct": 0.9}, "b": {"random_correct": 0.6}}, 1000, floor=0.2)
    assert counts == {"a": 333, "b": 667}  # 0.1 -> the floor 0.2, against 0.4


def test_pilot_then_focused_prompts(monkeypatch, tiny_policy, tok):
    """`then` gets the pilot's per-task rates and its examples are sampled too; the report
    covers all prompts and keeps the pilot's rates apart."""
    pilot_ex, more_ex = tasks.make_examples(10, seed=1), tasks.make_examples(6, seed=2, tasks="count")
    answer = {e["messages"][0]["content"]: e["meta"]["answer"] for e in pilot_ex + more_ex}

    def right_unless_count(model, tokenizer, prompts, num_samples=1, stats=None, **kw):
        stats.update(prefill_s=0.0, decode_s=0.0, new_tokens=0)
        users = [tokenizer.decode(p).split("<|end_header_id|>\n\n")[1].split("<|eot_id|>")[0] for p in prompts]
        return [tokenizer.encode("x" if u.startswith("How many") else answer[u], bos=False)
                for u in users for _ in range(num_samples)]

    seen = []
    monkeypatch.setattr(sample, "generate", right_unless_count)
    _, _, report = rejection.rejection_sample(tiny_policy, None, tok, pilot_ex, k=2, batch_prompts=4, log_every=0,
                                              then=lambda per_task: seen.append(per_task) or more_ex)
    assert seen[0]["count"]["random_correct"] == 0.0 and seen[0]["digit"]["random_correct"] == 1.0
    assert report["prompts"] == report["checked"] == 16 and report["per_task"]["count"]["prompts"] == 8
    assert report["pilot"]["prompts"] == 10 and report["pilot"]["random_correct"] == pytest.approx(0.8)
    assert report["random_correct"] == pytest.approx(8 / 16)


def test_cli_writes_rows_pairs_and_report(tmp_path, tok_path, tiny_policy):
    """rejection.py from the command line on a tiny policy and reward model; a bad flag
    is one line and exit code 2."""
    import reward
    ckpt = str(tmp_path / "policy")
    checkpoint.save_model(tiny_policy, tiny_args(), ckpt, tokenizer_path=tok_path)
    rm = reward.RewardModel(M.Transformer(tiny_args()))
    rm.trunk.init_weights(seed=1)
    reward.save_reward_model(rm, tiny_args(), str(tmp_path / "rm"), tokenizer_path=tok_path)
    out = tmp_path / "rejection"
    report = rejection.main(["--init", ckpt, "--reward", str(tmp_path / "rm"), "--n-prompts", "8", "--k", "2",
                             "--max-new-tokens", "4", "--out", str(out), "--threads", "1"])
    assert report["prompts"] == 8 and report["k"] == 2 and report["checked"] == 8
    assert report["pilot"]["prompts"] == 5  # a quarter, but at least one prompt per task
    assert 0 <= report["random_correct"] <= report["oracle_correct"] == report["pick_correct"] <= 1
    assert (out / "sft_rs.jsonl").exists() and (out / "pairs.jsonl").exists() and (out / "report.json").exists()
    with pytest.raises(SystemExit) as bad:
        rejection.main(["--k", "0"])
    assert bad.value.code == 2
    with pytest.raises(SystemExit) as bad:
        rejection.main(["--pilot", "0"])
    assert bad.value.code == 2
