"""Tests of tools.py (§4.3.5): the calculator computes allowed expressions exactly and
refuses everything else with a clear message (attribute access, imports, names, loops,
huge exponents ...); the tool loop runs a call, sends the ipython result back and the
model uses it -- with a scripted model, in run_dialogs, in sample.py's chat (--tools)
and in the with/without-tool evaluation; the CLI. Runs in a few seconds."""
import io
import json
import math
import operator
import random
import re

import pytest
import torch

import sample as S
import tasks
import tools
from tokenizer import ChatFormat

# -----------------------------------------------------------------------------
# The calculator


@pytest.mark.parametrize("code, result", [
    ("347 * 582", "201954"), ("print(347 * 582)", "201954"), ("  2 ** 10\n", "1024"), ("7 // 2", "3"),
    ("-7 // 2", "-4"), ("7 % 3", "1"), ("7 / 2", "3.5"), ("0.1 + 0.2", "0.30000000000000004"),
    ("2 ** -1", "0.5"), ("(1 + 2) * -3", "-9"), ("sqrt(16)", "4.0"), ("factorial(20)", "2432902008176640000"),
    ("gcd(12, 18)", "6"), ("max(1, 2.5, -3)", "2.5"), ("round(pi, 3)", "3.142"), ("log(8, 2)", "3.0"),
    ("floor(2.7) + ceil(2.1)", "5"), ("abs(-3) + e * 0", "3.0"), ("10 ** 99", "1" + "0" * 99),
    ("factorial(69)", str(math.factorial(69))), ("123456789 * 987654321", "121932631112635269"),
])
def test_calculator_computes_exactly(code, result):
    assert tools.calculate(code) == result


def test_calculator_equals_python_arithmetic_on_random_expressions():
    """Random trees of + - * // % and small powers, built here and computed with Python's
    operator functions (no eval): the calculator's text is the exact integer."""
    rng = random.Random(0)
    ops = [("+", operator.add), ("-", operator.sub), ("*", operator.mul), ("//", operator.floordiv),
           ("%", operator.mod)]

    def tree(depth):
        if depth == 0 or rng.random() < 0.3:
            n = rng.randrange(1, 10 ** rng.randint(1, 6))
            return str(n), n
        if rng.random() < 0.1:
            text, value = tree(0)
            power = rng.randint(0, 3)
            return f"({text}) ** {power}", value ** power
        symbol, fn = rng.choice(ops)
        (lt, lv), (rt, rv) = tree(depth - 1), tree(depth - 1)
        if symbol in ("//", "%") and rv == 0:
            rt, rv = "1", 1
        return f"({lt} {symbol} {rt})", fn(lv, rv)

    for _ in range(300):
        text, value = tree(4)
        assert tools.calculate(text) == str(value), text


@pytest.mark.parametrize("code, message", [
    ("__import__('os').system('ls')", "attribute access"),
    ("().__class__.__bases__[0].__subclasses__()", "attribute access"),
    ("import os", "imports are not allowed"),
    ("from os import system", "imports are not allowed"),
    ("os", "unknown name 'os'"),
    ("x + 1", "unknown name 'x'"),
    ("sqrt", "a function: call it"),
    ("open('/etc/passwd')", "unknown function 'open'"),
    ("eval('1')", "unknown function 'eval'"),
    ("2 ** 100000", "exponent too large: 2 ** 100000 would have about 30,103 digits"),
    ("9 ** 9 ** 9", "exponent too large"),
    ("10 ** 99 * 10 ** 99", "more than 100 digits"),
    ("factorial(100000)", "factorial(n) needs one integer 0 <= n <= 69"),
    ("round(5, -10 ** 6)", "round(x, n) needs an integer n"),
    ("1 << 100000", "operator << is not allowed"),
    ("for i in range(10 ** 9): pass", "loops are not allowed"),
    ("while True: pass", "loops are not allowed"),
    ("[x for x in range(10 ** 9)]", "loops (comprehensions) are not allowed"),
    ("sum(x for x in range(10 ** 9))", "loops (comprehensions) are not allowed"),
    ("(lambda: 1)()", "lambda is not allowed"),
    ("'a' * 10 ** 9", "strings are not allowed"),
    ("[1, 2][0]", "indexing"),
    ("x = 3", "assignments are not allowed"),
    ("(x := 3)", "assignments are not allowed"),
    ("def f(): pass", "defining functions is not allowed"),
    ("1; 2", "one expression only, got 2 statements"),
    ("", "empty code"),
    ("1 +", "syntax error"),
    ("1 / 0", "division by zero"),
    ("5 % 0", "division by zero"),
    ("1e308 * 10", "not a finite number"),
    ("(-8) ** 0.5", "complex number"),
    ("exp(1000)", "exp(): math range error"),
    ("True + 1", "True is not allowed"),
    ("1 < 2", "comparisons"),
    ("max(*[1, 2])", "positional arguments only"),
    ("+".join(["1"] * 200), "too long"),
    ("1" * 600, "too long (600 characters"),
])
def test_calculator_refuses_with_a_clear_message(code, message):
    result = tools.calculate(code)
    assert result.startswith("error: ") and message in result, result
    with pytest.raises(tools.CalculatorError, match=re.escape(message)):
        tools.evaluate_expression(code)


def test_calculator_never_runs_code(monkeypatch):
    """The evaluator never reaches eval/exec (ast.parse only parses), not even for code it accepts."""
    import builtins
    monkeypatch.setattr(builtins, "eval", lambda *a, **k: pytest.fail("eval called"))
    monkeypatch.setattr(builtins, "exec", lambda *a, **k: pytest.fail("exec called"))
    assert tools.calculate("print(2 ** 10 + sqrt(4))") == "1026.0"
    assert tools.calculate("__import__('os')").startswith("error: unknown function '__import__'")


# -----------------------------------------------------------------------------
# The tool loop, with a scripted model


def call(code, stop="end_of_message"):
    return {"role": "assistant", "content": "", "stop_reason": stop,
            "tool_calls": [{"tool_name": "code_interpreter", "arguments": {"code": code}}]}


def test_tool_result():
    assert tools.tool_result(call("347 * 582")) == {"role": "ipython", "content": "201954"}
    assert tools.tool_result(call("x")) ["content"].startswith("error: unknown name 'x'")
    assert tools.tool_result(call("347 * 582", stop="out_of_tokens")) is None  # cut off: not run
    assert tools.tool_result({"role": "assistant", "content": "201954", "tool_calls": []}) is None
    search = {"role": "assistant", "content": "", "stop_reason": "end_of_message",
              "tool_calls": [{"tool_name": "brave_search", "arguments": {"query": "llamas"}}]}
    assert "tool 'brave_search' is not available" in tools.tool_result(search)["content"]


def scripted_reply(tokenizer):
    """A scripted 'model' that does what a trained one should: with "Environment: ipython"
    it calls the interpreter with the question's expression, then answers with the number
    the ipython message brought back; without the tool it guesses "0". Returns ids with
    the stop token, as generate(..., include_stop=True) does."""
    def reply_text(prompt_text):
        if prompt_text.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n") and \
                "<|start_header_id|>ipython<|end_header_id|>\n\n" in prompt_text:
            result = prompt_text.rsplit("<|start_header_id|>ipython<|end_header_id|>\n\n", 1)[1].split("<|eot_id|>")[0]
            return f"{result}<|eot_id|>"
        question = re.findall(r"What is (\d+) \* (\d+)\?", prompt_text)[-1]
        if "Environment: ipython" in prompt_text:
            return f"<|python_tag|>{question[0]} * {question[1]}<|eom_id|>"
        return "0<|eot_id|>"

    def reply(prompts):
        return [tokenizer.encode(reply_text(tokenizer.decode(p)), allowed_special="all") for p in prompts]
    return reply


def test_run_dialogs_calls_the_tool_and_uses_its_result(tok):
    chat = ChatFormat(tok)
    examples = tasks.make_examples(3, 0, tasks=["calculator"], split="val")
    dialogs = [tools.prompt_dialog(e, with_tool=True) for e in examples]
    shown = []
    new = tools.run_dialogs(scripted_reply(tok), chat, dialogs, on_message=lambda i, m: shown.append((i, m)))
    for example, dialog, added in zip(examples, dialogs, new):
        a, b = example["meta"]["a"], example["meta"]["b"]
        assert [m["role"] for m in dialog] == ["system", "user", "assistant", "ipython", "assistant"]
        assert dialog[2]["tool_calls"] == [{"tool_name": "code_interpreter", "arguments": {"code": f"{a} * {b}"}}]
        assert dialog[2]["stop_reason"] == "end_of_message"
        assert dialog[3] == {"role": "ipython", "content": str(a * b)} and added == dialog[2:]
        assert dialog[4]["content"] == str(a * b) and dialog[4]["stop_reason"] == "end_of_turn"
        assert tasks.check_response(example, dialog[4]["content"])
    assert [i for i, _ in shown] == [0, 1, 2]
    # Without the tool the reply is plain text and nothing is run.
    plain = [tools.prompt_dialog(e, with_tool=False) for e in examples]
    tools.run_dialogs(scripted_reply(tok), chat, plain, tools=False)
    assert all(d[-1] == {"role": "assistant", "content": "0"} and len(d) == 2 for d in plain)


def test_run_dialogs_stops_after_max_calls(tok):
    chat = ChatFormat(tok)
    always_call = lambda prompts: [tok.encode("<|python_tag|>1 + 1<|eom_id|>", allowed_special="all")] * len(prompts)  # noqa: E731
    dialog = [{"role": "system", "content": "Environment: ipython"}, {"role": "user", "content": "again?"}]
    tools.run_dialogs(always_call, chat, [dialog], max_calls=2)
    assert [m["role"] for m in dialog] == ["system", "user"] + ["assistant", "ipython"] * 2 + ["assistant"]


def fake_generate(tok):
    """sample.generate with the scripted model, streaming through on_token like the real one."""
    reply = scripted_reply(tok)
    stops = set(tok.stop_tokens)

    def generate(model, tokenizer, prompts, *args, include_stop=False, on_token=None, **kwargs):
        out = []
        for ids in reply(prompts):
            for t in ids:
                if on_token is not None:
                    on_token(torch.tensor([t]))
            out.append(ids if include_stop else [t for t in ids if t not in stops])
        return out
    return generate


def test_chat_with_tools_runs_the_call_and_shows_it(tok, monkeypatch):
    from conftest import tiny_args
    import model as M
    monkeypatch.setattr(S, "generate", fake_generate(tok))
    lines = iter(["What is 347 * 582?"])

    def fake_input(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError

    out = io.StringIO()
    dialog = S.chat(M.Transformer(tiny_args()), tok, tools=True, input_fn=fake_input, out=out)
    text = out.getvalue()
    assert "assistant> <|python_tag|>347 * 582\nipython> 201954\nassistant> 201954\n" in text
    assert dialog[0] == {"role": "system", "content": "Environment: ipython"}
    assert [m["role"] for m in dialog] == ["system", "user", "assistant", "ipython", "assistant"]
    assert dialog[-1]["content"] == "201954"
    # Off (the default): no system prompt, the model answers in its head, nothing is run.
    lines = iter(["What is 347 * 582?"])
    out = io.StringIO()
    dialog = S.chat(M.Transformer(tiny_args()), tok, system="be brief", input_fn=fake_input, out=out)
    assert dialog == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "What is 347 * 582?"},
                      {"role": "assistant", "content": "0"}]
    assert "ipython>" not in out.getvalue()


def test_evaluate_with_and_without_the_tool(tok, monkeypatch):
    monkeypatch.setattr(S, "generate", fake_generate(tok))
    examples = tasks.make_examples(10, 0, tasks=["calculator"], split="val")
    with_tool = tools.evaluate(None, tok, examples, with_tool=True, batch_size=4)
    without = tools.evaluate(None, tok, examples, with_tool=False, batch_size=4)
    assert with_tool["accuracy"] == 1.0 and with_tool["called_tool"] == 1.0 and with_tool["n"] == 10
    assert without["accuracy"] == 0.0 and without["called_tool"] == 0.0
    assert "ipython> " in tools.transcript(with_tool["transcripts"][0]["dialog"])


# -----------------------------------------------------------------------------
# Command line


def test_cli(capsys, tmp_path):
    assert tools.main(["calc", "347 * 582"]) == 0
    assert capsys.readouterr().out.strip() == "201954"
    assert tools.main(["calc", "import os"]) == 0
    assert capsys.readouterr().out.strip() == "error: imports are not allowed"
    assert tools.main(["eval", "--ckpt", str(tmp_path / "missing")]) == 2
    assert "error:" in capsys.readouterr().err
    assert tools.main(["eval", "--ckpt", str(tmp_path), "--n-eval", "0"]) == 2


def test_cli_eval_writes_report(tmp_path, tok_path, tok, monkeypatch, capsys):
    from conftest import tiny_args
    import checkpoint
    import model as M
    ckpt = tmp_path / "ckpt"
    checkpoint.save_model(M.Transformer(tiny_args()), tiny_args(), str(ckpt), tokenizer_path=tok_path)
    monkeypatch.setattr(S, "generate", fake_generate(tok))
    report = tools.main(["eval", "--ckpt", str(ckpt), "--n-eval", "6", "--out", str(tmp_path / "out")])
    assert report["with_tool"] == 1.0 and report["without_tool"] == 0.0
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["with_tool"] == 1.0 and "ipython> " in saved["with_tool_transcripts"][0]["text"]
    assert '"tools": {"with_tool": 1.0, "without_tool": 0.0}' in capsys.readouterr().out


def test_learn_teaches_then_evaluates(tmp_path, tok_path):
    """`learn` (run_all's tool stage) on a tiny model: SFT on calculator dialogs into
    OUT/sft (the weights change), then report.json with both accuracies."""
    from conftest import tiny_args
    import checkpoint
    import model as M
    torch.manual_seed(0)
    init, out = str(tmp_path / "init"), str(tmp_path / "tools")
    checkpoint.save_model(M.Transformer(tiny_args()), tiny_args(), init, tokenizer_path=tok_path)
    report = tools.main(["learn", "--init", init, "--out", out, "--max-steps", "3", "--tokens-per-step", "512",
                         "--n-train", "40", "--n-eval", "4", "--max-new-tokens", "4", "--threads", "1"])
    assert report["sft_steps"] == 3 and report["sft_tasks"] == tools.LEARN_TASKS and report["init"] == init
    assert 0.0 <= report["with_tool"] <= 1.0 and 0.0 <= report["without_tool"] <= 1.0 and report["n_eval"] == 4
    saved = json.loads(open(f"{out}/report.json").read())
    assert saved["with_tool"] == report["with_tool"] and saved["ckpt"] == f"{out}/sft/final"
    sft_record = json.loads(open(f"{out}/sft/report.json").read())
    assert sft_record["steps"] == 3 and sft_record["train_conversations"] == 40
    assert json.loads(open(f"{out}/sft/config.json").read())["tasks"] == tools.LEARN_TASKS
    tuned, _ = checkpoint.load_model(f"{out}/sft/final")
    start, _ = checkpoint.load_model(init)
    assert not torch.equal(tuned.output.weight, start.output.weight)
    assert tools.main(["learn", "--init", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
