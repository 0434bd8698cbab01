"""
run_all.py -- the whole paper in one command, on a laptop CPU, with a report.

Stages, in the paper's order (each is one of the project's scripts, run as a child
process with its output streamed):
  data       §3.1    data.py       curate the built-in corpus, train the BPE, write shards
  tokenizer  §3.2    tokenizer.py  characters per token, ours vs Meta's (if installed)
  pretrain   §3.4    pretrain.py   torchrun, 2 ranks (FSDP2), a few minutes
  sft        §4.1.3  sft.py        supervised fine-tuning on the built-in tasks
  tools      §4.3.5  tools.py      tool use: SFT on calculator calls, accuracy with/without the tool
  reward     §4.1.2  reward.py     the reward model on preference pairs
  rejection  §4.2.2  reward.py     best-of-K rejection sampling with the reward model
  dpo        §4.1.4  dpo.py        direct preference optimization from the SFT model
  chat       §6      sample.py     a short scripted chat with the final model

It stops at the first failing stage (with that stage's exit code and the tail of its
output) and can resume from a named stage: every stage reads only files that earlier
stages wrote under --out. At the end it writes OUT/REPORT.md: for each stage its key
numbers, read from the JSON records the stages wrote, and their PNG plots, and
OUT/summary.json (the tool stage's {"tools": {"with_tool": x, "without_tool": y}}).

Reads: nothing but the built-in data. Writes: out/ (or --out), OUT/REPORT.md.
Run:   python run_all.py                     # everything, ~11-20 minutes on 2 CPU cores
       python run_all.py --from sft          # resume at a stage
       python run_all.py --only report       # just rewrite REPORT.md
Next:  REPORT.md in the output folder; README.md for each stage's own options.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import subprocess
import sys
import time

PY = sys.executable
# Prompts in the format of tasks.py's default tasks (what SFT and DPO taught); /reset
# between them because the tasks were single-turn conversations.
CHAT_SCRIPT = ["Largest of: 3 9 2 5", "/reset", "Find the digit: k 7 b q", "/reset",
               "Last of: 4 8 1 6", "/reset", "Which is larger: 34 or 17?", "/exit"]


def stages(out: str) -> list[tuple[str, list[str], str]]:
    """(name, command, what it does) -- the whole pipeline as data."""
    d = lambda *p: os.path.join(out, *p)  # noqa: E731
    torchrun = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return [
        ("data", [PY, "data.py", "--out", d("data")], "curation (§3.1) + tokenizer training + shards"),
        ("tokenizer", [PY, "tokenizer.py", "stats", "--tokenizer", d("data", "tokenizer.model"), "META",
                       "--out", d("tokenizer", "stats.json")], "characters per token (§3.2)"),
        ("pretrain", torchrun + ["pretrain.py", "--data", d("data"), "--out", d("pretrain")],
         "FSDP2 pre-training on 2 ranks (§3.4)"),
        ("sft", [PY, "sft.py", "--init", d("pretrain", "final"), "--out", d("sft"),
                 "--tokenizer", d("data", "tokenizer.model")], "supervised fine-tuning (§4.1.3)"),
        tool_stage(out),
        ("reward", [PY, "reward.py", "--init", d("sft", "final"), "--out", d("reward")],
         "reward model (§4.1.2)"),
        ("rejection", [PY, "rejection.py", "--init", d("sft", "final"),
                       "--reward", d("reward", "final"), "--out", d("rejection")],
         "rejection sampling, best of K (§4.2.2); the policy's own correct vs wrong samples -> DPO pairs"),
        ("dpo", [PY, "dpo.py", "--init", d("sft", "final"), "--data", d("rejection", "pairs.jsonl"),
                 "--out", d("dpo")],
         "direct preference optimization (§4.1.4)"),
        ("chat", [PY, "sample.py", "--ckpt", d("dpo", "final"), "--chat", "--temperature", "0"],
         "a scripted chat with the final model (§6)"),
    ]


def tool_stage(out: str) -> tuple[str, list[str], str]:
    """§4.3.5 tool use, a branch off the SFT model that no later stage reads: tools.py
    learn teaches the model to call the code interpreter (a safe calculator) on 3-digit
    products (~2 minutes of SFT), then measures held-out accuracy with the tool and
    without it (OUT/tools/report.json; tool_report puts it in REPORT.md/summary.json)."""
    return ("tools", [PY, "tools.py", "learn", "--init", os.path.join(out, "sft", "final"),
                      "--out", os.path.join(out, "tools")],
            "tool use (§4.3.5): SFT on calls of the calculator, accuracy with vs without it")


def tool_report(out: str) -> tuple[list[str], dict]:
    """The tool stage's REPORT.md lines (accuracies, one transcript) and its summary.json
    entry {"tools": {"with_tool": x, "without_tool": y}} ({} if the stage did not run)."""
    record = _load(os.path.join(out, "tools", "report.json"))
    if not record or "with_tool" not in record:
        return [], {}
    lines = [f"Held-out 3-digit products ({record['n_eval']}), greedy, after {record.get('sft_steps')} steps of "
             f"SFT on calculator dialogs ({record.get('sft_seconds') or 0:.0f}s):", "",
             "| | accuracy | called the tool |", "|---|---|---|",
             f"| with the tool | {record['with_tool']:.1%} | {record['with_tool_called_tool']:.1%} |",
             f"| without it | {record['without_tool']:.1%} | {record['without_tool_called_tool']:.1%} |", ""]
    for key in ("with_tool", "without_tool"):
        if record.get(f"{key}_transcripts"):
            lines += [f"{key.replace('_', ' ')}:", "```", record[f"{key}_transcripts"][0]["text"], "```", ""]
    return lines, {"tools": {"with_tool": record["with_tool"], "without_tool": record["without_tool"]}}


def _resolve(cmd: list[str]) -> list[str]:
    """Fill in Meta's tokenizer path for the comparison, or drop the placeholder."""
    if "META" not in cmd:
        return cmd
    try:
        from tokenizer import meta_tokenizer_path
        meta = meta_tokenizer_path()
    except Exception:
        meta = None
    return [meta if c == "META" else c for c in cmd if c != "META" or meta]


def run_stage(name: str, cmd: list[str], out: str) -> tuple[int, float]:
    log_path = os.path.join(out, "logs", f"{name}.log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    print(f"\n{'=' * 78}\n[{name}] {' '.join(shlex.quote(c) for c in cmd)}\n{'=' * 78}", flush=True)
    t0 = time.time()
    stdin = subprocess.PIPE if name == "chat" else subprocess.DEVNULL
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=stdin, text=True,
                                bufsize=1, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if name == "chat":
            proc.stdin.write("\n".join(CHAT_SCRIPT) + "\n")
            proc.stdin.close()
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        code = proc.wait()
    return code, time.time() - t0


# -----------------------------------------------------------------------------
# REPORT.md: key numbers of every stage, read from the records the stages wrote


def _load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _fmt(v):
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _flat(record, keep: tuple[str, ...], prefix="") -> list[tuple[str, object]]:
    """Pick the scalar fields whose (dotted) name contains one of `keep`."""
    rows = []
    if isinstance(record, dict):
        for k, v in record.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                rows += _flat(v, keep, key + ".")
            elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v) and len(v) <= 8:
                for i, x in enumerate(v):  # e.g. one record per tokenizer compared
                    rows += _flat(x, keep, f"{key}[{i}].")
            elif isinstance(v, (int, float, str)) and any(s in key for s in keep):
                rows.append((key, v))
    return rows


SECTIONS = {  # stage -> (record files, fields worth showing)
    "data": (["data/report.json", "data/meta.json"], ("docs_in", "docs_out", "chars_in", "chars_out", "tokens",
                                                        "documents", "achieved", "target")),
    "tokenizer": (["tokenizer/stats.json"], ("n_words", "chars_per_token", "tokenizer")),
    "pretrain": (["pretrain/report.json"], ("loss", "steps", "tokens", "seconds", "mfu", "parameters",
                                            "world_size")),
    "sft": (["sft/report.json"], ("accuracy", "loss", "steps", "seconds", "tokens")),
    "tools": ([], ()),  # tool_report
    "reward": (["reward/report.json"], ("accuracy", "margin", "loss", "steps", "seconds")),
    "rejection": (["rejection/report.json"], ("correct", "rate", "k", "prompts", "seconds")),
    "dpo": (["dpo/report.json"], ("accuracy", "rewards/", "logps/", "loss", "steps", "seconds")),
    "chat": ([], ()),
}


def write_report(out: str, timings: dict):
    lines = ["# Llama 3 herd, end to end on this machine", "",
             f"Written by run_all.py on {time.strftime('%Y-%m-%d %H:%M')}. Every number below was read "
             "from the JSON record that the stage itself wrote; plots are the stages' own PNGs.", ""]
    if timings:
        lines += ["| stage | seconds | status |", "|---|---|---|"]
        lines += [f"| {k} | {v['seconds']:.0f} | {v['status']} |" for k, v in timings.items()]
        lines.append("")
    for name, (files, keep) in SECTIONS.items():
        lines += [f"## {name}", ""]
        found = False
        for rel in files:
            record = _load(os.path.join(out, rel))
            if record is None:
                continue
            found = True
            rows = _flat(record, keep)[:60]
            lines += [f"From `{rel}`:", "", "| field | value |", "|---|---|"]
            lines += [f"| {k} | {_fmt(v)} |" for k, v in rows]
            lines.append("")
        for png in sorted(glob.glob(os.path.join(out, name, "*.png"))):
            lines += [f"![{name}]({os.path.relpath(png, out)})", ""]
            found = True
        log = os.path.join(out, "logs", f"{name}.log")
        if name == "chat" and os.path.exists(log):
            with open(log) as f:
                lines += ["Typed in (one line per turn): " + " | ".join(f"`{c}`" for c in CHAT_SCRIPT), "",
                          "```", f.read()[-3000:].strip(), "```", ""]
            found = True
        if name == "tools":
            tool_lines, summary = tool_report(out)
            lines += tool_lines
            found = bool(tool_lines)
        if not found:
            lines += ["(no record: stage not run)", ""]
    path = os.path.join(out, "REPORT.md")
    with open(path + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)
    summary_path = os.path.join(out, "summary.json")
    with open(summary_path + ".tmp", "w") as f:
        json.dump({**(_load(summary_path) or {}), **tool_report(out)[1]}, f, indent=1)
    os.replace(summary_path + ".tmp", summary_path)
    print(f"wrote {path}, {summary_path}")


def main(argv=None) -> int:
    names = [s[0] for s in stages("out")]
    p = argparse.ArgumentParser(description="Every stage of the paper, in order, then REPORT.md.")
    p.add_argument("--out", default="out", help="output folder of every stage")
    p.add_argument("--from", dest="start", default=None, choices=names, help="resume at this stage")
    p.add_argument("--only", nargs="*", default=None, help=f"run just these stages ({', '.join(names)}, report)")
    cli = p.parse_args(argv)
    os.chdir(os.path.dirname(os.path.abspath(__file__)))
    plan = stages(cli.out)
    if cli.start:
        plan = plan[names.index(cli.start):]
    if cli.only is not None:
        plan = [s for s in plan if s[0] in cli.only]
    timings_path = os.path.join(cli.out, "logs", "timings.json")
    timings = _load(timings_path) or {}
    t_all = time.time()
    for name, cmd, what in plan:
        code, seconds = run_stage(name, _resolve(cmd), cli.out)
        timings[name] = {"seconds": seconds, "status": "ok" if code == 0 else f"failed ({code})", "what": what}
        os.makedirs(os.path.dirname(timings_path), exist_ok=True)
        with open(timings_path, "w") as f:
            json.dump(timings, f, indent=1)
        if code != 0:
            print(f"\n[{name}] FAILED with exit code {code} after {seconds:.0f}s; see {cli.out}/logs/{name}.log.\n"
                  f"Fix it, then resume with: python run_all.py --from {name}", file=sys.stderr)
            write_report(cli.out, timings)
            return code
        print(f"[{name}] done in {seconds:.0f}s", flush=True)
    write_report(cli.out, timings)
    print(f"all stages done in {(time.time() - t_all) / 60:.1f} minutes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
