"""
tools.py -- tool use (§4.3.5): a calculator that is safe to run on a model's output, the
loop that runs a model's tool calls, and the with/without-tool evaluation.

Stage of the paper: §4.3.5. Llama 3 is trained to call a search engine, a Python
interpreter and Wolfram Alpha; its single-step tool-use data are trajectories "system
prompt, user prompt, tool call, tool output, final answer", the calls really executed.
In Llama 3.1's format (tokenizer.ChatFormat) that is:

    system:    Environment: ipython                  <- turns the interpreter on
    user:      What is 347 * 582?
    assistant: <|python_tag|>347 * 582<|eom_id|>      <- a call; <|eom_id|>: "run it, I wait"
    ipython:   201954                                 <- the tool's output, sent back
    assistant: 201954<|eot_id|>                       <- the answer; <|eot_id|>: turn over

What is notable here
- `calculate(code)` is the interpreter we dare run on a model's text: the code is parsed
  with `ast` and only an allow-list is evaluated (numbers, + - * / // % **, parentheses,
  a few math functions and constants, an optional print(...)). Nothing is ever passed to
  eval/exec; names, attributes, imports, loops, comprehensions, strings and subscripts
  are refused, and every size is bounded before it is computed (code length, number of
  nodes, digits of every intermediate number, exponents, factorials) so that no call can
  take long or eat memory, with a deadline as a second guard. A bad call is not an
  exception: its result is "error: ..." in words the model (or a person) can act on.
- `run_dialogs(reply_fn, chat, dialogs)` is the tool loop: generate, parse the reply
  (ChatFormat.decode_assistant_message), run a call, append the ipython message and
  generate again, until the assistant ends its turn. Batched, with any generator
  (reply_fn), so that sample.py's chat (`--tools`), the evaluation below and tests with
  a scripted model all share it.
- `evaluate(model, tokenizer, examples)`: held-out accuracy with the tool (system prompt
  "Environment: ipython", calls executed) and without it (no system prompt: the model
  answers in its head; a call it makes anyway is not run), on tasks.py's calculator
  problems (3-digit products: no 15M model multiplies those in its head).

Reads:  a checkpoint (--ckpt for `eval`, --init for `learn`) and its tokenizer.
Writes: OUT/report.json (--out, default out/tools); `learn` also its SFT run in OUT/sft.

How to run
    python tools.py calc "347 * 582"                       # -> 201954
    python tools.py calc "__import__('os')"                # -> error: ... not allowed
    python tasks.py --tasks calculator,multiply --out out/tools_data   # see the SFT conversations
    python tools.py learn --init out/sft/final --out out/tools   # SFT on calls, then eval (run_all's stage)
    python sft.py --init out/pretrain/final --tasks calculator,multiply --out out/sft_tools
    python tools.py eval --ckpt out/sft_tools/final --n-eval 500
    python sample.py --ckpt out/sft_tools/final --chat --tools

Read next: tokenizer.py (ChatFormat: the format of calls and results), tasks.py (the
calculator task), sample.py (`chat(..., tools=True)`).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import sys
import time
from typing import Callable, Optional, Sequence

from common import UsageError, atomic_write_json, cli

# -----------------------------------------------------------------------------
# 1. The calculator: a restricted Python expression evaluator on `ast`

MAX_CODE_CHARS = 500      # a calculator call is one line, not a program
MAX_NODES = 200           # syntax-tree nodes: bounds the number of operations
MAX_DIGITS = 100          # every integer, intermediate ones included, has at most 100 digits
MAX_FACTORIAL = 69        # 69! has 99 digits; 70! has 101
MAX_SECONDS = 1.0         # a second guard; the bounds above keep real calls far below it

# Functions and constants a call may name: nothing else is reachable.
FUNCTIONS: dict[str, Callable] = {
    "abs": abs, "round": round, "min": min, "max": max, "sqrt": math.sqrt, "exp": math.exp,
    "log": math.log, "log10": math.log10, "log2": math.log2, "sin": math.sin, "cos": math.cos,
    "tan": math.tan, "floor": math.floor, "ceil": math.ceil, "factorial": math.factorial, "gcd": math.gcd,
}
CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}
OPERATORS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//",
             ast.Mod: "%", ast.Pow: "**"}

# Refusals with a reason, for the constructs a model (or an attacker) is likely to try.
REFUSED = {
    ast.Attribute: "attribute access (x.y) is not allowed",
    ast.Import: "imports are not allowed", ast.ImportFrom: "imports are not allowed",
    ast.For: "loops are not allowed", ast.While: "loops are not allowed",
    ast.AsyncFor: "loops are not allowed",
    ast.ListComp: "loops (comprehensions) are not allowed", ast.SetComp: "loops (comprehensions) are not allowed",
    ast.DictComp: "loops (comprehensions) are not allowed",
    ast.GeneratorExp: "loops (comprehensions) are not allowed",
    ast.Lambda: "lambda is not allowed", ast.Subscript: "indexing (x[i]) is not allowed",
    ast.FunctionDef: "defining functions is not allowed", ast.ClassDef: "defining classes is not allowed",
    ast.Assign: "assignments are not allowed", ast.AugAssign: "assignments are not allowed",
    ast.NamedExpr: "assignments are not allowed", ast.AnnAssign: "assignments are not allowed",
}


class CalculatorError(ValueError):
    """A call the calculator refuses or cannot compute; str(error) is the reason."""


def _digits(n: int) -> int:
    return len(str(abs(n))) if abs(n) < 10 ** (MAX_DIGITS + 1) else MAX_DIGITS + 1


def _checked(value):
    """Every intermediate value: an int of at most MAX_DIGITS digits or a finite float."""
    if isinstance(value, int) and _digits(value) > MAX_DIGITS:
        raise CalculatorError(f"the result has more than {MAX_DIGITS} digits")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("the result is not a finite number (overflow)")
    if isinstance(value, complex):  # (-8) ** 0.5
        raise CalculatorError("the result is a complex number: only real numbers")
    return value


def _power(base, exponent):
    """base ** exponent, refused BEFORE computing when the result would be too large:
    2 ** 100000 would have 30,103 digits; its size is known from a logarithm."""
    if base != 0 and abs(exponent) > 0:
        size = abs(exponent) * math.log10(abs(base)) if abs(base) != 1 else 0.0
        if exponent > 0 and size > MAX_DIGITS:
            raise CalculatorError(f"exponent too large: {base} ** {exponent} would have about "
                                  f"{size:,.0f} digits (limit {MAX_DIGITS})")
    if base == 0 and exponent < 0:
        raise CalculatorError("division by zero (0 to a negative power)")
    try:
        return base ** exponent
    except OverflowError:
        raise CalculatorError("the result is too large (overflow)") from None


def _evaluate(node: ast.AST, deadline: float):
    """Evaluate one node of the allow-list; anything else raises CalculatorError."""
    if time.perf_counter() > deadline:
        raise CalculatorError(f"took longer than {MAX_SECONDS:g} s")
    if type(node) in REFUSED:
        raise CalculatorError(REFUSED[type(node)])
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            kind = "strings are" if isinstance(node.value, (str, bytes)) else f"{node.value!r} is"
            raise CalculatorError(f"{kind} not allowed: only numbers")
        return _checked(node.value)
    if isinstance(node, ast.Name):
        if node.id in CONSTANTS:
            return CONSTANTS[node.id]
        hint = " (a function: call it)" if node.id in FUNCTIONS else ""
        raise CalculatorError(f"unknown name {node.id!r}{hint}; allowed: numbers, + - * / // % **, the "
                              f"constants {', '.join(CONSTANTS)} and the functions {', '.join(FUNCTIONS)}")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _evaluate(node.operand, deadline)
        return value if isinstance(node.op, ast.UAdd) else -value
    if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
        left, right = _evaluate(node.left, deadline), _evaluate(node.right, deadline)
        if isinstance(node.op, ast.Pow):
            return _checked(_power(left, right))
        try:
            if isinstance(node.op, ast.Add):
                return _checked(left + right)
            if isinstance(node.op, ast.Sub):
                return _checked(left - right)
            if isinstance(node.op, ast.Mult):  # operands have <= MAX_DIGITS digits: fast
                return _checked(left * right)
            if isinstance(node.op, ast.Div):
                return _checked(left / right)
            if isinstance(node.op, ast.FloorDiv):
                return _checked(left // right)
            return _checked(left % right)
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("the result is too large for a float (overflow)") from None
    if isinstance(node, ast.BinOp):
        symbol = {ast.LShift: "<<", ast.RShift: ">>", ast.BitOr: "|", ast.BitAnd: "&",
                  ast.BitXor: "^", ast.MatMult: "@"}.get(type(node.op), type(node.op).__name__)
        raise CalculatorError(f"operator {symbol} is not allowed (allowed: + - * / // % **)")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            if isinstance(node.func, ast.Name):
                raise CalculatorError(f"unknown function {node.func.id!r}; allowed: {', '.join(FUNCTIONS)}")
            return _evaluate(node.func, deadline)  # raises: attribute access, ...
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise CalculatorError(f"{node.func.id}() takes plain positional arguments only")
        args = [_evaluate(a, deadline) for a in node.args]
        if node.func.id == "round" and len(args) == 2 and not (isinstance(args[1], int) and abs(args[1]) <= MAX_DIGITS):
            raise CalculatorError(f"round(x, n) needs an integer n with |n| <= {MAX_DIGITS}")
        if node.func.id == "factorial" and not (len(args) == 1 and isinstance(args[0], int)
                                                and 0 <= args[0] <= MAX_FACTORIAL):
            raise CalculatorError(f"factorial(n) needs one integer 0 <= n <= {MAX_FACTORIAL} "
                                  f"(larger results have more than {MAX_DIGITS} digits)")
        try:
            return _checked(FUNCTIONS[node.func.id](*args))
        except (ValueError, TypeError, OverflowError) as e:
            raise CalculatorError(f"{node.func.id}(): {e}") from None
    if isinstance(node, (ast.Compare, ast.BoolOp, ast.IfExp)):
        raise CalculatorError("comparisons and conditions are not allowed: only arithmetic")
    raise CalculatorError(f"{type(node).__name__} is not allowed: only arithmetic on numbers")


def evaluate_expression(code: str):
    """Code -> its value (int or float), or CalculatorError with the reason.

    "347 * 582" -> 201954; "print(2 ** 10)" -> 1024; "sqrt(2) * 2" -> 2.8284271247461903;
    "x + 1" -> CalculatorError("unknown name 'x' ...")."""
    if not isinstance(code, str):
        raise CalculatorError(f"the code must be text, got {type(code).__name__}")
    if len(code) > MAX_CODE_CHARS:
        raise CalculatorError(f"the code is too long ({len(code)} characters, limit {MAX_CODE_CHARS})")
    try:
        tree = ast.parse(code.strip(), mode="exec")
    except SyntaxError as e:
        raise CalculatorError(f"syntax error: {e.msg} (column {e.offset})") from None
    except (ValueError, RecursionError, MemoryError) as e:  # null bytes, absurd nesting
        raise CalculatorError(f"cannot parse the code ({type(e).__name__})") from None
    n_nodes = sum(1 for _ in ast.walk(tree))
    if n_nodes > MAX_NODES:
        raise CalculatorError(f"the expression is too long ({n_nodes} syntax nodes, limit {MAX_NODES})")
    for node in ast.walk(tree):  # the clearest reason first: an import, a loop, x.y, ...
        if type(node) in REFUSED:
            raise CalculatorError(REFUSED[type(node)])
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Expr):
        raise CalculatorError(f"one expression only, got {len(tree.body)} statements" if tree.body
                              else "empty code: nothing to compute")
    expression = tree.body[0].value
    if (isinstance(expression, ast.Call) and isinstance(expression.func, ast.Name)
            and expression.func.id == "print" and len(expression.args) == 1 and not expression.keywords):
        expression = expression.args[0]  # print(x) is what a code interpreter's user writes
    return _evaluate(expression, time.perf_counter() + MAX_SECONDS)


def calculate(code: str) -> str:
    """The calculator as a tool: code -> the text of its result, or "error: ..." (never
    an exception), which becomes the ipython message the model reads.

    "347 * 582" -> "201954"; "0.1 + 0.2" -> "0.30000000000000004";
    "__import__('os').system('ls')" -> "error: attribute access (x.y) is not allowed"."""
    try:
        value = evaluate_expression(code)
    except CalculatorError as e:
        return f"error: {e}"
    return str(value) if isinstance(value, int) else repr(value)


# -----------------------------------------------------------------------------
# 2. The tool loop: run a call, send the result back, continue


def tool_result(message: dict) -> Optional[dict]:
    """An assistant message -> the ipython message answering its tool call, or None when
    it calls no tool. Only the code interpreter exists here (our calculator); a call of
    any other tool is answered with an error, as the executor would.
    {"role": "assistant", "tool_calls": [{"tool_name": "code_interpreter",
     "arguments": {"code": "347 * 582"}}], ...} -> {"role": "ipython", "content": "201954"}"""
    calls = message.get("tool_calls") or []
    if not calls or message.get("stop_reason") == "out_of_tokens":  # cut off: not a finished call
        return None
    results = []
    for call in calls:
        if call.get("tool_name") == "code_interpreter":
            results.append(calculate(call.get("arguments", {}).get("code")))
        else:
            results.append(f"error: tool {call.get('tool_name')!r} is not available "
                           f"(this environment has the code interpreter only)")
    return {"role": "ipython", "content": "\n".join(results)}


def run_dialogs(reply_fn: Callable[[list[list[int]]], list[list[int]]], chat, dialogs: list[list[dict]],
                *, tools: bool = True, max_calls: int = 3,
                on_message: Optional[Callable[[int, dict], None]] = None) -> list[list[dict]]:
    """Continue every dialog with the assistant's turn, running its tool calls.

    reply_fn(prompts) -> for each prompt (token ids ending in the assistant header), the
        generated ids, ending with the stop token when one was generated
        (sample.generate(..., include_stop=True)).
    tools=True: each reply is parsed (ChatFormat.decode_assistant_message); a tool call
        gets its result as an ipython message (tool_result) and the model goes on, at
        most max_calls times per dialog. tools=False: the reply is plain text, never run.
    on_message(i, message) is called for every ipython message (to show it).
    The dialogs are extended in place; returns the new messages of each."""
    new: list[list[dict]] = [[] for _ in dialogs]
    active = list(range(len(dialogs)))
    stops = set(chat.tokenizer.stop_tokens)
    for round_ in range(max_calls + 1):
        if not active:
            break
        replies = reply_fn([chat.encode_dialog_prompt(dialogs[i]) for i in active])
        still = []
        for i, ids in zip(active, replies):
            if tools:
                message = chat.decode_assistant_message(ids)
            else:  # the text without its stop token, as the model said it
                message = {"role": "assistant", "content": chat.tokenizer.decode(
                    ids[:-1] if ids and ids[-1] in stops else ids)}
            dialogs[i].append(message)
            new[i].append(message)
            result = tool_result(message) if tools and round_ < max_calls else None
            if result is not None:
                dialogs[i].append(result)
                new[i].append(result)
                if on_message is not None:
                    on_message(i, result)
                still.append(i)
        active = still
    return new


# -----------------------------------------------------------------------------
# 3. Evaluation: held-out accuracy with the tool and without it


def prompt_dialog(example: dict, with_tool: bool) -> list[dict]:
    """A task example -> the dialog the model answers: the user's question, after the
    system prompt that turns the interpreter on (tokenizer.system_prompt) when with_tool."""
    from tokenizer import system_prompt
    question = next(m for m in example["messages"] if m["role"] == "user")
    system = [{"role": "system", "content": system_prompt(["code_interpreter"])}] if with_tool else []
    return system + [{"role": "user", "content": question["content"]}]


def evaluate(model, tokenizer, examples: Sequence[dict], *, with_tool: bool = True, batch_size: int = 64,
             max_new_tokens: int = 32, max_calls: int = 2) -> dict:
    """Greedy answers to task examples, with the tool loop (with_tool) or without, scored
    by tasks.check_response on the last assistant message. -> {"accuracy", "called_tool"
    (share of dialogs where the model called a tool), "n", "transcripts" (the first 5)}."""
    import sample
    import tasks
    from tokenizer import ChatFormat
    chat = ChatFormat(tokenizer)

    def reply(prompts):
        return sample.generate(model, tokenizer, prompts, max_new_tokens, temperature=0.0, include_stop=True)

    right = called = 0
    transcripts = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start: start + batch_size]
        dialogs = [prompt_dialog(e, with_tool) for e in batch]
        run_dialogs(reply, chat, dialogs, tools=with_tool, max_calls=max_calls)
        for example, dialog in zip(batch, dialogs):
            answer = next(m for m in reversed(dialog) if m["role"] == "assistant")
            calls = any(m.get("tool_calls") or m["content"].startswith("<|python_tag|>")
                        for m in dialog if m["role"] == "assistant")
            ok = tasks.check_response(example, answer["content"])
            right, called = right + ok, called + calls
            if len(transcripts) < 5:
                transcripts.append({"dialog": dialog, "correct": ok})
    n = max(1, len(examples))
    return {"accuracy": right / n, "called_tool": called / n, "n": len(examples), "transcripts": transcripts}


def transcript(dialog: Sequence[dict]) -> str:
    """A dialog as the lines a chat shows: 'user> ...', 'assistant> <|python_tag|>...'."""
    from tokenizer import encode_tool_call
    lines = []
    for m in dialog:
        text = m["content"]
        if m.get("tool_calls"):
            tag = "<|python_tag|>" if m["tool_calls"][0]["tool_name"] == "code_interpreter" else ""
            text = tag + text + "".join(encode_tool_call(c) for c in m["tool_calls"])
        lines.append(f"{'ipython' if m['role'] == 'tool' else m['role']}> {text}")
    return "\n".join(lines)


def evaluate_checkpoint(ckpt: str, args, extra: Optional[dict] = None) -> dict:
    """`eval`: the same held-out problems with the tool and without it -> report.json
    {"with_tool": x, "without_tool": y, ...} in args.out, with transcripts."""
    import sample
    import tasks
    from common import set_threads
    if args.task not in tasks.TASKS:
        raise UsageError(f"--task {args.task!r}: unknown; known: {', '.join(tasks.TASKS)}")
    set_threads(args.threads, args.device or "cpu")
    try:
        model, tokenizer = sample.load_for_inference(ckpt, args.tokenizer, args.device)
    except (ValueError, FileNotFoundError, KeyError) as e:
        raise UsageError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    examples = tasks.make_examples(args.n_eval, args.seed, tasks=[args.task], split="val")
    report = {"ckpt": ckpt, "task": args.task, "n_eval": args.n_eval, "seed": args.seed, **(extra or {})}
    for key, with_tool in (("with_tool", True), ("without_tool", False)):
        t0 = time.time()
        result = evaluate(model, tokenizer, examples, with_tool=with_tool, batch_size=args.batch_size,
                          max_new_tokens=args.max_new_tokens)
        report[key] = result["accuracy"]
        report[f"{key}_called_tool"] = result["called_tool"]
        report[f"{key}_seconds"] = round(time.time() - t0, 1)
        report[f"{key}_transcripts"] = [{"text": transcript(t["dialog"]), "correct": t["correct"]}
                                        for t in result["transcripts"]]
        print(f"{key}: accuracy {result['accuracy']:.1%} on {len(examples)} held-out problems, "
              f"called a tool in {result['called_tool']:.1%}, {report[f'{key}_seconds']}s")
        print(report[f"{key}_transcripts"][0]["text"] if report[f"{key}_transcripts"] else "")
    path = os.path.join(args.out, "report.json")
    atomic_write_json(path, report)
    print(f"summary: {json.dumps({'tools': {'with_tool': report['with_tool'], 'without_tool': report['without_tool']}})}"
          f"; wrote {path}")
    return report


# The recipe of `learn` (run_all's tool stage), from a model that went through SFT on the
# default tasks: three calculator dialogs for one multiply question (the same problems
# answered in its head, so that "without the tool" is the model's own best answer).
# 100 steps teach the call's format but not copying the numbers into it; copying takes
# ~1,000 steps of 2K tokens, and when it comes varies with the seed: with the tool, seed 0's
# model went 89% -> 97% from 1,200 to 1,600 steps, seed 2's 65.5% -> 96% from 1,600 to
# 2,400 (docs/NOTES.md): ~7-8 minutes for the default model on 2 cores.
LEARN_TASKS = "calculator,calculator,calculator,multiply"
LEARN_STEPS, LEARN_TOKENS, LEARN_LR, LEARN_DIALOGS = 2400, 2048, 1e-3, 40000


def learn(args) -> dict | int:
    """`learn`: SFT on the calculator's tool-calling dialogs (sft.py, into OUT/sft), then
    evaluate_checkpoint on the result (OUT/report.json). run_all's tool stage."""
    import sft
    sft_out = os.path.join(args.out, "sft")
    argv = ["--init", args.init, "--out", sft_out, "--tasks", LEARN_TASKS, "--seed", str(args.seed),
            "--max-steps", str(args.max_steps), "--tokens-per-step", str(args.tokens_per_step),
            "--lr", str(args.lr), "--n-train", str(args.n_train), "--n-eval", "100", "--eval-every", "100000",
            "--threads", str(args.threads)] + (["--device", args.device] if args.device else []) \
        + (["--tokenizer", args.tokenizer] if args.tokenizer else [])
    record = sft.main(argv)
    if not isinstance(record, dict) or record.get("status") != "done":
        return record if isinstance(record, int) and record else 1
    extra = {"init": args.init, "sft_steps": record.get("steps"), "sft_seconds": record.get("train_seconds"),
             "sft_tasks": LEARN_TASKS, "sft_accuracy": (record.get("accuracy_after") or {}).get("overall")}
    return evaluate_checkpoint(os.path.join(sft_out, "final"), args, extra)


# -----------------------------------------------------------------------------
# 4. Command line


@cli
def main(argv=None):
    parser = argparse.ArgumentParser(description="Tool use (§4.3.5): the calculator, and held-out accuracy "
                                                 "with the tool vs without it.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("calc", help="run the calculator on CODE and print the result (or the error)")
    p.add_argument("code", help='e.g. "347 * 582"')
    evaluator = sub.add_parser("eval", help="held-out calculator problems, with the tool and without it")
    evaluator.add_argument("--ckpt", required=True, help="the model (any format checkpoint.load_model reads)")
    learner = sub.add_parser("learn", help="SFT on the calculator's tool-calling dialogs (sft.py), then eval "
                                           "(run_all's tool stage)")
    learner.add_argument("--init", default="out/sft/final", help="the model to teach (after SFT on the default tasks)")
    learner.add_argument("--max-steps", type=int, default=LEARN_STEPS, help="SFT optimizer steps")
    learner.add_argument("--tokens-per-step", type=int, default=LEARN_TOKENS, help="SFT tokens per step")
    learner.add_argument("--lr", type=float, default=LEARN_LR, help="SFT peak learning rate")
    learner.add_argument("--n-train", type=int, default=LEARN_DIALOGS, help="generated training dialogs")
    for p, n_eval in ((evaluator, 500), (learner, 200)):
        p.add_argument("--tokenizer", default=None, help="tokenizer.model (default: the one next to the model)")
        p.add_argument("--n-eval", type=int, default=n_eval, help="held-out problems (tasks.py's val split)")
        p.add_argument("--seed", type=int, default=0, help="which problems (tasks.make_examples seed); SFT's seed")
        p.add_argument("--task", default="calculator", help="the tasks.py task whose problems are asked")
        p.add_argument("--batch-size", type=int, default=64, help="dialogs per generate() call")
        p.add_argument("--max-new-tokens", type=int, default=32, help="per assistant message")
        p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
        p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = the cores rule)")
        p.add_argument("--out", default="out/tools", help="folder for report.json (learn: and sft/)")
    args = parser.parse_args(argv)
    if args.command == "calc":
        print(calculate(args.code))
        return 0

    if args.n_eval < 1 or args.batch_size < 1 or args.max_new_tokens < 1:
        raise UsageError("--n-eval, --batch-size and --max-new-tokens must be >= 1")
    if args.command == "learn":
        return learn(args)
    return evaluate_checkpoint(args.ckpt, args)


if __name__ == "__main__":
    rc = main()
    sys.exit(rc if isinstance(rc, int) else 0)
