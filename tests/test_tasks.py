"""Tests of tasks.py: deterministic generation, train/held-out disjointness, checkers
that accept right answers (plain and chatty) and reject corrupted ones, preference
pairs ranked edited > chosen > rejected, and the JSONL readers on files with every
kind of bad row (line numbers asserted, good rows all kept). Runs in about a second."""
import base64
import json
import os
import random

import pytest

import tasks as T


# -----------------------------------------------------------------------------
# Generation: determinism and splits


def test_make_examples_is_deterministic_and_balanced():
    a = T.make_examples(50, seed=0)
    assert a == T.make_examples(50, seed=0)
    assert a != T.make_examples(50, seed=1)
    assert [e["task"] for e in a[:len(T.DEFAULT_TASKS)]] == T.DEFAULT_TASKS  # the tasks take turns
    e = a[0]
    assert e["messages"][0]["role"] == "user" and e["messages"][1]["role"] == "assistant"
    assert e["meta"]["answer"] == e["messages"][1]["content"] and e["meta"]["task"] == e["task"]
    assert {x["task"] for x in T.make_examples(10, 0, tasks="sort,reverse")} == {"sort", "reverse"}
    with pytest.raises(ValueError, match="unknown task"):
        T.make_examples(3, 0, tasks=["nope"])


def test_train_and_held_out_prompts_are_disjoint():
    train = {e["messages"][0]["content"] for e in T.make_examples(3000, seed=0, split="train")}
    for seed in (0, 1):
        val = {e["messages"][0]["content"] for e in T.make_examples(300, seed=seed, split="val")}
        assert not train & val
        assert all(T.split_of(p) == "val" for p in val)
    assert all(T.split_of(p) == "train" for p in train)


@pytest.mark.parametrize("name", list(T.TASKS))
def test_checkers_accept_right_and_reject_corrupted_answers(name):
    task, rng = T.TASKS[name], random.Random(0)
    for e in T.make_examples(40, seed=3, tasks=[name]):
        prompt = next(m["content"] for m in e["messages"] if m["role"] == "user")
        answer, meta = e["messages"][-1]["content"], e["meta"]
        assert task.check(meta, answer) and T.check_response(e, answer)
        assert T.check_response(meta, f"The answer is {answer}.")  # chatty but right
        assert T.check_response(meta, " " + answer.upper() + ". ")  # case, spaces, full stop
        wrong = task.corrupt(rng, prompt, answer, meta)
        assert wrong != answer and not task.check(meta, wrong), (prompt, wrong)
        assert not T.check_response(meta, "")
        assert not T.check_response(meta, answer + " " + answer)


def test_check_examples():
    meta = {"task": "reverse", "answer": "t a c"}
    assert T.check_response(meta, "t a c") and T.check_response(meta, "Sure! Here it is: t, a, c")
    assert not T.check_response(meta, "x t a c") and not T.check_response(meta, "t c a")
    add = {"task": "add", "answer": "9"}
    assert T.check_response(add, "9") and not T.check_response(add, "19") and not T.check_response(add, "99")
    # own data without a task: the reference answer, normalized
    ex = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]}
    assert T.check_response(ex, "hello") and not T.check_response(ex, "bye")


def test_accuracy_per_task_and_overall():
    ex = T.make_examples(4, 0, tasks="add,larger")
    responses = [ex[0]["meta"]["answer"], "nonsense", ex[2]["meta"]["answer"], ex[3]["meta"]["answer"]]
    assert T.accuracy(ex, responses) == {"overall": 0.75, "add": 1.0, "larger": 0.5}


def test_preference_pairs_are_ranked_edited_chosen_rejected():
    pairs = T.make_preference_pairs(100, seed=0)
    assert pairs == T.make_preference_pairs(100, seed=0)
    for p in pairs:
        assert p["prompt"][-1]["role"] == "user" and len(p["prompt"]) == 1
        assert T.check_response(p["meta"], p["edited"]) and p["edited"] == p["meta"]["answer"]
        assert T.check_response(p["meta"], p["chosen"]) and p["chosen"] != p["edited"]
        assert not T.check_response(p["meta"], p["rejected"])
        # chosen and rejected share the template: they differ only in the answer
        template = next(t for t in T.CHATTY_TEMPLATES if t.format(p["edited"]) == p["chosen"])
        before, after = template.split("{}")
        assert p["rejected"].startswith(before) and p["rejected"].endswith(after)
    val = T.make_preference_pairs(50, 0, split="val", tasks="sort")
    assert {p["task"] for p in val} == {"sort"} and all(T.split_of(p["prompt"][0]["content"]) == "val" for p in val)
    half = T.make_preference_pairs(200, 0, edited_fraction=0.5)
    assert 50 < sum("edited" in p for p in half) < 150


# -----------------------------------------------------------------------------
# JSONL readers


def _write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _byte_tokenizer(tmp_path):
    from tokenizer import Tokenizer
    path = tmp_path / "bytes.model"
    path.write_text("".join(f"{base64.b64encode(bytes([i])).decode()} {i}\n" for i in range(256)))
    return Tokenizer(str(path))


def msg(role, content):
    return {"role": role, "content": content}


def test_read_sft_jsonl_reports_bad_rows_with_line_numbers(tmp_path):
    good = {"messages": [msg("system", "be brief"), msg("user", "hi"), msg("assistant", "hello")], "id": 1}
    lines = [
        json.dumps(good),                                                            # 1 good
        '{"messages": [ {"role": "user", ',                                          # 2 malformed JSON
        json.dumps({"messages": [msg("user", "hi"), msg("bot", "hello")]}),          # 3 unknown role
        json.dumps({"messages": [msg("user", "  "), msg("assistant", "x")]}),        # 4 empty content
        "",                                                                          # 5 blank: not a row
        json.dumps({"conversation": []}),                                            # 6 missing field
        json.dumps({"messages": [msg("user", "hi")]}),                               # 7 no assistant turn
        json.dumps({"messages": [msg("user", "x" * 200), msg("assistant", "y")]}),   # 8 too long
        json.dumps({"messages": [msg("ipython", "42"), msg("assistant", "ok")]}),    # 9 good
        json.dumps([1, 2]),                                                          # 10 not an object
    ]
    path = _write_lines(tmp_path / "sft.jsonl", lines)
    rows, skipped = T.read_sft_jsonl(path, max_tokens=100, tokenizer=_byte_tokenizer(tmp_path))
    assert rows == [good, json.loads(lines[8])]
    assert [(s["line"], s["kind"]) for s in skipped] == [
        (2, "json"), (3, "role"), (4, "empty"), (6, "missing"), (7, "no_assistant"), (8, "too_long"), (10, "missing")]
    assert all(s["reason"].startswith(f"{path}:{s['line']}: ") for s in skipped)
    assert "'bot'" in skipped[1]["reason"]
    assert T.summarize_skipped(skipped) == {"skipped": 7, "by_kind": {
        "empty": 1, "json": 1, "missing": 2, "no_assistant": 1, "role": 1, "too_long": 1}}
    # without a tokenizer the length is not checked: the long row is kept
    rows, skipped = T.read_sft_jsonl(path)
    assert len(rows) == 3 and 8 not in [s["line"] for s in skipped]


def test_read_preference_jsonl_formats_and_bad_rows(tmp_path, capsys):
    lines = [
        json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5"}),                          # 1 good (str)
        json.dumps({"messages": [msg("user", "hi")], "chosen": "Hello!", "rejected": "Go away",
                    "edited": "Hello.", "task": "greet"}),                                       # 2 good, 3 ranked
        json.dumps({"chosen": [msg("user", "q"), msg("assistant", "a")],
                    "rejected": [msg("user", "q"), msg("assistant", "b")]}),                     # 3 good (HF style)
        json.dumps({"prompt": "x", "chosen": "same", "rejected": "same"}),                       # 4 chosen == rejected
        json.dumps({"prompt": "x", "chosen": "a", "rejected": "  "}),                            # 5 empty response
        json.dumps({"prompt": "x", "rejected": "b"}),                                            # 6 missing chosen
        json.dumps({"prompt": [msg("robot", "x")], "chosen": "a", "rejected": "b"}),             # 7 unknown role
        "{not json",                                                                             # 8 malformed
        json.dumps({"chosen": "a", "rejected": "b"}),                                            # 9 missing prompt
        json.dumps({"prompt": "x" * 300, "chosen": "a", "rejected": "b"}),                       # 10 too long
        json.dumps({"prompt": "x", "chosen": "a", "rejected": "b", "edited": "a"}),              # 11 edited == chosen
    ]
    path = _write_lines(tmp_path / "pref.jsonl", lines)
    rows, skipped = T.read_preference_jsonl(path, max_tokens=200, tokenizer=_byte_tokenizer(tmp_path), verbose=True)
    assert rows == [
        {"prompt": [msg("user", "2+2?")], "chosen": "4", "rejected": "5"},
        {"prompt": [msg("user", "hi")], "chosen": "Hello!", "rejected": "Go away", "edited": "Hello.", "task": "greet"},
        {"prompt": [msg("user", "q")], "chosen": "a", "rejected": "b"},
    ]
    assert [(s["line"], s["kind"]) for s in skipped] == [
        (4, "same"), (5, "empty"), (6, "missing"), (7, "role"), (8, "json"), (9, "missing"),
        (10, "too_long"), (11, "same")]
    out = capsys.readouterr().out
    assert f"{path}:7: unknown role 'robot'" in out and "3 rows read, 8 skipped" in out


def test_generated_files_round_trip_through_the_readers(tmp_path):
    report = T.main(["--out", str(tmp_path), "--n-train", "40", "--n-eval", "10", "--seed", "1"])
    assert report["files"]["sft_val.jsonl"]["rows"] == 10
    assert sorted(os.listdir(tmp_path)) == ["pref_train.jsonl", "pref_val.jsonl", "report.json",
                                           "sft_train.jsonl", "sft_val.jsonl"]  # no temporary files left
    rows, skipped = T.read_sft_jsonl(tmp_path / "sft_train.jsonl")
    assert rows == T.make_examples(40, 1) and skipped == []
    pairs, skipped = T.read_preference_jsonl(tmp_path / "pref_val.jsonl")
    assert skipped == [] and [p["chosen"] for p in pairs] == [p["chosen"] for p in T.make_preference_pairs(10, 1, "val")]


def test_terse_pairs_are_bare_answers_in_the_policys_form():
    plain = T.make_preference_pairs(200, 0)
    mixed = T.make_preference_pairs(200, 0, terse_fraction=0.5)
    assert T.make_preference_pairs(200, 0, terse_fraction=0.0) == plain  # default rows unchanged
    terse = [r for r in mixed if "edited" not in r]
    assert 60 <= len(terse) <= 140
    for r in terse:
        assert r["chosen"] == r["meta"]["answer"] and T.check_response(r, r["chosen"])
        assert not T.check_response(r, r["rejected"]) and r["rejected"] != r["chosen"]
        assert not any(t.split("{")[0] and r["rejected"].startswith(t.split("{")[0]) for t in T.CHATTY_TEMPLATES)


@pytest.mark.parametrize("name", ["max", "last", "first", "larger"])
def test_wrong_answers_include_numbers_not_in_the_prompt(name):
    """The policy's commonest mistake is a number that is nowhere in the prompt; the
    corrupter makes both kinds (in the prompt and not), about half each."""
    import random
    rng = random.Random(0)
    inside = outside = 0
    for e in T.make_examples(200, 0, tasks=[name]):
        meta = e["meta"]
        wrong = T.TASKS[name].corrupt(rng, e["messages"][0]["content"], meta["answer"], meta)
        assert not T.check_response(e, wrong)
        values = meta.get("items") or [meta["x"], meta["y"]]
        if int(wrong) in values:
            inside += 1
        else:
            outside += 1
    assert 60 <= inside <= 140 and 60 <= outside <= 140


def test_readers_survive_lines_that_break_json_loads(tmp_path):
    """Invalid UTF-8, a 5,000-digit integer and 100k nested brackets each become a
    located 'json' skip (file:line: reason); the good rows around them are kept."""
    good = {"messages": [msg("user", "hi"), msg("assistant", "hello")]}
    pair = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
    bad = [b'{"messages": "\xff\xfe"}', b'{"n": ' + b"9" * 5000 + b"}", b"[" * 100_000 + b"]" * 100_000]
    for name, row, reader in (("sft.jsonl", good, T.read_sft_jsonl), ("pref.jsonl", pair, T.read_preference_jsonl)):
        path = tmp_path / name
        path.write_bytes(b"\n".join([json.dumps(row).encode()] + bad + [json.dumps(row).encode()]) + b"\n")
        rows, skipped = reader(str(path))
        assert rows == [reader(str(_write_lines(tmp_path / ("one_" + name), [json.dumps(row)])))[0][0]] * 2
        assert [(s["line"], s["kind"]) for s in skipped] == [(2, "json"), (3, "json"), (4, "json")]
        assert skipped[0]["reason"].startswith(f"{path}:2: invalid UTF-8")
        assert skipped[1]["reason"].startswith(f"{path}:3: invalid JSON")
        assert skipped[2]["reason"] == f"{path}:4: nested deeper than 64 levels"


def test_main_exits_2_on_a_bad_flag_value(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        T.main(["--n-eval", "many"])
    assert e.value.code == 2


# -----------------------------------------------------------------------------
# The tool-use tasks (§4.3.5): calculator (with the code interpreter) and multiply


def test_calculator_conversations_call_the_tool():
    import tools
    for e in T.make_examples(20, 0, tasks="calculator,multiply"):
        a, b = e["meta"]["a"], e["meta"]["b"]
        assert 100 <= a < 1000 and 100 <= b < 1000 and e["meta"]["answer"] == str(a * b)
        question = {"role": "user", "content": f"What is {a} * {b}?"}
        if e["task"] == "multiply":  # answered in its head: no tool, no system prompt
            assert e["messages"] == [question, {"role": "assistant", "content": str(a * b)}]
            continue
        system, user, call, result, answer = e["messages"]
        assert system == {"role": "system", "content": "Environment: ipython"} and user == question
        assert call == {"role": "assistant", "content": "", "stop_reason": "end_of_message",
                        "tool_calls": [{"tool_name": "code_interpreter", "arguments": {"code": f"{a} * {b}"}}]}
        assert result == {"role": "ipython", "content": str(a * b)} == tools.tool_result(call)  # really run
        assert answer == {"role": "assistant", "content": str(a * b)}
        assert T.check_response(e, answer["content"]) and not T.check_response(e, str(a * b + 1))
        assert T.solve(user["content"]) == {"task": "multiply", "answer": str(a * b)}


def test_calculator_split_is_held_out_and_renders_with_the_call_as_target(tok):
    def questions(n, split):
        return {next(m["content"] for m in e["messages"] if m["role"] == "user")
                for e in T.make_examples(n, 0, tasks="calculator,multiply", split=split)}
    train, val = questions(4000, "train"), questions(200, "val")
    assert len(val) == 200 and not train & val and all(T.split_of(q) == "val" for q in val)
    # SFT trains on the call (with <|python_tag|> and <|eom_id|>) and on the answer, not on the result.
    import sft
    from tokenizer import ChatFormat
    e = T.make_examples(1, 0, tasks="calculator")[0]
    tokens, targets = sft.render(ChatFormat(tok), e["messages"])
    trained = tok.decode([t for t in targets if t != -100])
    code, answer = e["messages"][2]["tool_calls"][0]["arguments"]["code"], e["meta"]["answer"]
    assert trained == f"<|python_tag|>{code}<|eom_id|>{answer}<|eot_id|>"


def test_tool_rows_in_jsonl(tmp_path):
    report = T.main(["--out", str(tmp_path), "--n-train", "10", "--n-eval", "4", "--tasks", "calculator,multiply"])
    assert report["files"]["sft_train.jsonl"]["per_task"] == {"calculator": 5, "multiply": 5}
    rows, skipped = T.read_sft_jsonl(tmp_path / "sft_train.jsonl")
    assert rows == T.make_examples(10, 0, tasks="calculator,multiply") and skipped == []
    pairs, skipped = T.read_preference_jsonl(tmp_path / "pref_train.jsonl")
    assert skipped == [] and len(pairs) == 10
    tool_pair = next(p for p in pairs if p["task"] == "calculator")
    assert [m["role"] for m in tool_pair["prompt"]] == ["system", "user", "assistant", "ipython"]
    assert T.check_response(tool_pair, tool_pair["chosen"]) and not T.check_response(tool_pair, tool_pair["rejected"])
    call = {"role": "assistant", "content": "", "tool_calls": [{"tool_name": "code_interpreter", "arguments": {}}]}
    lines = [json.dumps({"messages": [msg("user", "q"), call]}),                               # 1 call without code
             json.dumps({"messages": [msg("user", "q"), {**call, "tool_calls": "x"}]}),        # 2 not a list
             json.dumps({"messages": [msg("user", "q"), msg("assistant", "")]}),              # 3 empty, no call
             json.dumps({"messages": [msg("user", "q"), {**call, "tool_calls": [              # 4 good
                 {"tool_name": "code_interpreter", "arguments": {"code": "1 + 1"}}]}, msg("tool", "2")]})]
    rows, skipped = T.read_sft_jsonl(_write_lines(tmp_path / "tools.jsonl", lines))
    assert [(s["line"], s["kind"]) for s in skipped] == [(1, "tool"), (2, "tool"), (3, "empty")]
    assert "needs a str argument 'code'" in skipped[0]["reason"] and len(rows) == 1
