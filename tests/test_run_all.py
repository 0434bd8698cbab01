"""run_all.py: the stage commands against the scripts they call (every flag parses with
the stage's own config; only paths and the seed are passed), the round logic on tiny
models (round r's data reaches round r+1; the on-policy pairs of a round are the latest
policy's samples), and the report and summary.json built from what the stages wrote."""
import json
import os
import random


import checkpoint
import common
import dpo
import longcontext
import model as M
import pretrain
import rejection
import reward
import run_all
import sample
import sft
import tasks
from tests.conftest import ROOT, tiny_args

CONFIGS = {"pretrain.py": pretrain.PretrainConfig, "sft.py": sft.SFTConfig, "reward.py": reward.RewardConfig,
           "dpo.py": dpo.DPOConfig, "longcontext.py": longcontext.LongContextConfig}
PATH_FLAGS = {"--data", "--out", "--init", "--tokenizer", "--reward", "--ckpt", "--add-data", "--seed"}


def test_stage_commands_parse_and_pass_only_paths():
    for name, cmd, _ in run_all.stages("out", rounds=3, seed=7):
        script = next(a for a in cmd if a.endswith(".py"))
        assert os.path.exists(os.path.join(ROOT, script)), (name, script)
        argv = cmd[cmd.index(script) + 1:]
        if script in CONFIGS:
            common.config_parser(CONFIGS[script]).parse_args(argv)  # exits 2 on an unknown flag
            flags = [a for a in argv if a.startswith("--")]
            assert set(flags) <= PATH_FLAGS, (name, flags)  # tuning lives in the stage's defaults
            assert argv[argv.index("--seed") + 1] == "7", name


def test_annotated_gives_every_sft_that_many_written_answers():
    for name, cmd, _ in run_all.stages("o", rounds=2, annotated=30):
        if name in ("sft", "round1/sft", "round2/sft"):
            argv = cmd[cmd.index("sft.py") + 1:]
            assert common.config_parser(sft.SFTConfig).parse_args(argv).n_train == 30, name
        else:
            assert "--n-train" not in cmd, name                         # tools, reward, DPO: unchanged
    assert all("--n-train" not in s.cmd for s in run_all.stages("o", rounds=2))  # default: sft.py's own


def test_retrieval_adds_its_flags_to_the_long_context_and_tool_stages_only():
    plain, preset = run_all.stages("o", rounds=1), run_all.stages("o", rounds=1, retrieval=True)
    for a, b in zip(plain, preset):
        assert b.cmd == a.cmd + run_all.RETRIEVAL.get(a.name, []), a.name
    cmd = next(st.cmd for st in preset if st.name == "longctx")
    lc = common.config_parser(longcontext.LongContextConfig).parse_args(cmd[cmd.index("longcontext.py") + 1:])
    assert lc.copy_steps == 4000 and lc.min_lr_ratio == 1 and lc.lengths == "256,512"
    assert args_of(preset, "tools")["--max-steps"] == "800"


def args_of(plan, name):
    cmd = next(s.cmd for s in plan if s.name == name)
    argv = cmd[next(i for i, a in enumerate(cmd) if a.endswith(".py")) + 1:]
    return {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}


def test_round_r_reads_what_earlier_rounds_wrote():
    plan = run_all.stages("o", rounds=3)
    names = [s.name for s in plan]
    assert names[:6] == ["data", "tokenizer", "pretrain", "longctx", "sft", "tools"] and names[-1] == "chat"
    assert args_of(plan, "tools")["--init"] == os.path.join("o", "sft", "final")  # §4.3.5: a branch off SFT
    assert args_of(plan, "longctx")["--init"] == os.path.join("o", "pretrain", "final")
    assert args_of(plan, "sft")["--init"] == os.path.join("o", "longctx", "final")  # §3.4.2: from the long context
    assert names[6:10] == ["round1/reward", "round1/rejection", "round1/sft", "round1/dpo"]
    j = os.path.join
    for r in (1, 2, 3):
        latest = j("o", "sft", "final") if r == 1 else j("o", f"round_{r - 1}", "dpo", "final")
        rm, rs = args_of(plan, f"round{r}/reward"), args_of(plan, f"round{r}/rejection")
        sf, dp = args_of(plan, f"round{r}/sft"), args_of(plan, f"round{r}/dpo")
        assert rm["--init"] == rs["--init"] == latest  # the latest policy, sampled and judged
        assert rs["--reward"] == j("o", f"round_{r}", "reward", "final")
        # §4.2.1: the reward model sees the on-policy pairs of every earlier round
        expect = [j("o", f"round_{q}", "rejection", "pairs.jsonl") for q in range(1, r)]
        assert (rm["--add-data"].split(",") if "--add-data" in rm else []) == expect
        # §4.1.3: SFT from the pre-trained (long-context) model on every rejection-sampled row so far
        assert sf["--init"] == j("o", "longctx", "final")
        assert sf["--add-data"].split(",") == [j("o", f"round_{q}", "rejection", "sft_rs.jsonl") for q in range(1, r + 1)]
        # §4.1.4: DPO from this round's SFT model on the on-policy pairs so far, the newest last
        assert dp["--init"] == j("o", f"round_{r}", "sft", "final")
        assert dp["--data"].split(",") == expect + [j("o", f"round_{r}", "rejection", "pairs.jsonl")]
    assert len({args_of(plan, f"round{r}/rejection")["--seed"] for r in (1, 2, 3)}) == 3  # new prompts each round
    assert args_of(plan, "chat")["--ckpt"] == j("o", "round_3", "dpo", "final")
    assert run_all.stages("o", rounds=0)[-1].cmd[3] == j("o", "sft", "final")


# -----------------------------------------------------------------------------
# Two rounds on a tiny model, every stage in-process with its real command line


TINY = {  # run_all's commands + these flags: seconds instead of minutes
    "sft.py": "--max-steps 2 --n-train 40 --n-eval 6 --seq-len 128 --tokens-per-step 256 --batch-size 2 "
              "--eval-every 0 --ckpt-every 100 --eval-max-new-tokens 4 --warmup-steps 1",
    "reward.py": "--max-steps 2 --n-train 16 --n-eval 8 --batch-size 4 --eval-every 0 --ckpt-every 100 "
                 "--warmup-steps 1",
    # --pilot 1: every prompt from the round's seed, so the scripted sampler knows them all
    # (the focused rest is tested in test_rejection.py)
    "rejection.py": "--n-prompts 12 --pilot 1 --k 4 --max-new-tokens 4 --batch-prompts 4",
    "dpo.py": "--n-eval-tasks 4 --max-new-tokens 4 --batch-size 4 --max-steps 2 --eval-every 0 --ckpt-every 100 "
              "--warmup-steps 1",
}
COMMON = "--dtype fp32 --threads 1 --log-every 100"
MAINS = {"sft.py": sft.main, "reward.py": reward.main, "rejection.py": rejection.main, "dpo.py": dpo.main}


def test_two_rounds_on_a_tiny_model(tmp_path, tok_path, monkeypatch):
    out = str(tmp_path / "out")
    init = os.path.join(out, "longctx", "final")
    m = M.Transformer(tiny_args())
    m.init_weights(seed=0)
    checkpoint.save_model(m, tiny_args(), init, tokenizer_path=tok_path)
    os.makedirs(os.path.join(out, "pretrain"))
    with open(os.path.join(out, "pretrain", "report.json"), "w") as f:
        json.dump({"val_loss": 6.0, "steps": 1}, f)
    with open(os.path.join(out, "longctx", "report.json"), "w") as f:
        json.dump({"before": {"niah": {"256": 0.1, "1024": 0.0}, "short_loss": 6.1, "bits_per_byte": 2.4,
                              "copy": {"first": 5.6, "repeat": 5.5, "accuracy": 0.05}},
                   "after": {"niah": {"256": 0.9, "1024": 0.8}, "short_loss": 6.2, "bits_per_byte": 2.45,
                             "copy": {"first": 5.6, "repeat": 1.2, "accuracy": 0.7}},
                   "stages": [{"kind": "copy", "seq_len": 128, "steps": 4000, "copy": {"accuracy": 0.6}},
                              {"kind": "needle", "seq_len": 256}], "seconds": 1.0}, f)

    # A random tiny model is never right: the sampler is scripted. Every policy answers
    # each prompt [right, its own wrong answer, its own wrong answer, right]; the wrong
    # answer depends on WHICH policy samples (recognised by its embedding weights), so
    # the pairs show whose samples they are.
    policies = {}  # fingerprint -> checkpoint path
    examples = [e for r in (1, 2) for e in tasks.make_examples(12, 1000 * 3 + r)]  # the rounds' prompts (seed 3)

    def fingerprint(model):
        return round(float(model.tok_embeddings.weight.double().abs().sum()), 3)

    def who(model):
        for path in [os.path.join(out, "sft", "final")] + [os.path.join(out, f"round_{r}", "dpo", "final")
                                                            for r in (1, 2)]:
            if path not in policies.values() and os.path.exists(os.path.join(path, "model.pt")):
                policies[fingerprint(checkpoint.load_model(path)[0])] = path
        return policies[fingerprint(model)]

    def wrong_answer(example, path):
        return tasks.TASKS[example["task"]].corrupt(random.Random(path), example["messages"][0]["content"],
                                                    example["meta"]["answer"], example["meta"])

    def scripted_generate(model, tokenizer, prompts, num_samples=1, stats=None, **kw):
        stats.update(prefill_s=0.0, decode_s=0.0, new_tokens=0)
        path, result = who(model), []
        for p in prompts:
            user = tokenizer.decode(p).split("<|end_header_id|>\n\n")[1].split("<|eot_id|>")[0]
            meta = next(e["meta"] for e in examples if e["messages"][0]["content"] == user)
            example = {"task": meta["task"], "meta": meta, "messages": [{"role": "user", "content": user}]}
            right, wrong = meta["answer"], wrong_answer(example, path)
            result += [tokenizer.encode(t, bos=False) for t in [right, wrong, wrong, right][:num_samples]]
        return result

    monkeypatch.setattr(sample, "generate", scripted_generate)
    plan = run_all.stages(out, rounds=2, seed=3)
    for stage in plan:
        script = next((a for a in stage.cmd if a.endswith(".py")), None)
        if script not in MAINS:
            continue  # data, tokenizer, pretrain (done above), chat
        argv = stage.cmd[stage.cmd.index(script) + 1:] + (TINY[script] + " " + COMMON).split()
        if script == "rejection.py":
            argv = [a for a in argv if a not in ("--dtype", "fp32", "--log-every", "100")]
        result = MAINS[script](argv)
        assert isinstance(result, dict), (stage.name, result)

    j = lambda *p: os.path.join(out, *p)  # noqa: E731
    read = lambda *p: [json.loads(line) for line in open(j(*p))]  # noqa: E731
    for r, sampled in ((1, j("sft", "final")), (2, j("round_1", "dpo", "final"))):
        pairs = read(f"round_{r}", "rejection", "pairs.jsonl")
        assert len(pairs) == 12  # every prompt had a right and a wrong sample
        for pair in pairs:  # the rejected answer is the one THIS round's sampled policy gives
            example = {"task": pair["task"], "meta": pair["meta"], "messages": pair["prompt"]}
            assert pair["rejected"] == wrong_answer(example, sampled)
            assert pair["chosen"] == pair["meta"]["answer"]
        assert len(read(f"round_{r}", "rejection", "sft_rs.jsonl")) == 12
    assert len(policies) == 2  # two different policies were sampled
    report = lambda *p: json.load(open(j(*p, "report.json")))  # noqa: E731
    assert report("round_1", "reward")["added_pairs"] == 0
    assert report("round_2", "reward")["added_pairs"] == 11  # round 1's 12 pairs, every 20th held out
    assert report("sft")["train_conversations"] == 40
    assert report("round_1", "sft")["train_conversations"] == 40 + 12
    assert report("round_2", "sft")["train_conversations"] == 40 + 12 + 12  # rounds 1 and 2's picks
    assert report("round_1", "dpo")["train_pairs"] + report("round_1", "dpo")["eval_pairs"] == 12
    assert report("round_2", "dpo")["train_pairs"] + report("round_2", "dpo")["eval_pairs"] == 24  # rounds 1 + 2

    os.makedirs(j("tools"))
    with open(j("tools", "report.json"), "w") as f:
        json.dump({"n_eval": 200, "sft_steps": 100, "sft_seconds": 95.0, "with_tool": 0.93, "without_tool": 0.005,
                   "with_tool_called_tool": 1.0, "without_tool_called_tool": 0.0,
                   "with_tool_transcripts": [{"text": "user> What is 347 * 582?\nipython> 201954"}]}, f)
    with open(j("round_2", "rejection", "report.json")) as f:  # as the default (--pilot 0.25) writes it
        rs2 = json.load(f)
    with open(j("round_2", "rejection", "report.json"), "w") as f:
        json.dump({**rs2, "pilot": {"prompts": 3, "pick_correct": 1.0, "random_correct": 0.25}}, f)
    timings = {s.name: {"seconds": 1.0, "status": "ok"} for s in plan}
    s = run_all.finish(out, 2, 3, timings)
    assert [rd["rs_pilot_random_correct"] for rd in s["rounds"]] == [None, 0.25]
    assert s["seed"] == 3 and s["pretrain"] == {"val_loss": 6.0, "bits_per_byte": 2.4} and len(s["rounds"]) == 2
    # the long-context stage: needle accuracy per length before/after, short-context loss
    assert s["niah"] == {"before": {"256": 0.1, "1024": 0.0}, "after": {"256": 0.9, "1024": 0.8}}
    assert s["longctx"] == {"context": 256, "short_loss_before": 6.1, "short_loss_after": 6.2, "copy_before": 0.05, "copy_after": 0.7}
    assert s["tools"] == {"with_tool": 0.93, "without_tool": 0.005}
    for rd in s["rounds"]:
        assert rd["rs_pick_correct"] == rd["rs_oracle_correct"] == 1.0  # the checker keeps a right sample
        assert rd["rs_random_correct"] == 0.5
        for key in ("rm_pairwise_accuracy", "rm_pick_correct", "sft_accuracy", "dpo_accuracy"):
            assert 0.0 <= rd[key] <= 1.0, key
    assert s["final_accuracy"] == s["rounds"][-1]["dpo_accuracy"]
    assert json.load(open(j("summary.json"))) == s
    text = open(j("REPORT.md")).read()
    assert str(tmp_path) not in text and "/work" not in text  # no absolute paths
    assert "| round 2 rejection sampling (§4.2.2) | pick 100.0% vs random 50.0% |" in text
    assert "the first 3 evenly over the tasks (there the pick is correct 100.0%, a random sample 25.0%)" in text
    # judged at the length the stage grew to (256; 1,024 is past it, not the verdict's)
    assert "| long context (§3.4.2) | needle at 256 tokens 10.0% -> 90.0% | >= 90% after | as expected" in text
    assert "| after | 90.0% | 80.0% |" in text
    assert "next token copied 5.0% -> 70.0%" in text
    assert "an induction head first: 4,000 steps of copy rows of 128 tokens in 0 s (a repeated span copied 60.0%" in text
    assert "context grown to 256 tokens" in text
    tools = text[text.index("## Tool use"):text.index("## Round 1")]
    assert "| with the tool | 93.0% | 100.0% |" in tools and "| without it | 0.5% | 0.0% |" in tools
    assert "ipython> 201954" in tools and "after 100 steps" in tools
    assert "| tool use (§4.3.5) | with the tool 93.0%, without 0.5% | >= 90% with, near 0% without | as expected |" in text
    # every verdict is one of three, a "below" one with its reason (which rows are below
    # depends on the tiny reward model's 2 steps: test_verdicts_* checks that part)
    table = text[text.index("| stage | key number |"):].split("\n\n")[0].splitlines()[2:]
    verdicts = [row.rsplit("|", 2)[-2].strip() for row in table]
    assert "as expected" in verdicts and all(v in ("as expected", "not run") or v.startswith("below expectation: ")
                                             for v in verdicts), verdicts
    assert os.path.exists(j("accuracy.png")) and os.path.exists(j("rejection.png"))
    assert "{" not in text.split("## Time per stage")[0]  # no JSON dumps


def test_chat_transcript_shows_what_was_typed(tmp_path):
    os.makedirs(tmp_path / "logs")
    (tmp_path / "logs" / "chat.log").write_text(
        "commands: /reset /exit\nuser> assistant> 9\nuser> (dialog reset)\nuser> assistant> 3\n"
        "user> (dialog reset)\nuser> assistant> 6\nuser> (dialog reset)\nuser> assistant> 17\nuser> ")
    lines = run_all.chat_transcript(str(tmp_path))
    assert lines[1:4] == ["user> Largest of: 3 9 2 5", "assistant> 9", "user> /reset"]
    assert "answered 2 of the 4 task prompts correctly" in "\n".join(lines)  # 9 and 6 right; 3 and 17 wrong


def test_verdicts_say_why_a_stage_is_below_expectation(tmp_path):
    s = {"seed": 0, "minutes": 1.0, "pretrain": {"val_loss": 7.0, "bits_per_byte": None}, "sft_accuracy": 0.5,
         "rounds": [{"round": 1, "rm_pairwise_accuracy": 0.9, "rm_pick_correct": 0.5, "rs_pick_correct": 0.9,
                     "rs_random_correct": 0.5, "rs_oracle_correct": 0.9, "sft_accuracy": 0.55, "dpo_accuracy": 0.6}],
         "final_accuracy": 0.6}
    rows = {stage: (ok, why) for stage, _, _, ok, why in run_all.verdicts(s, str(tmp_path))}
    assert rows["pre-training (§3.4)"][0] is False  # 7.0 > 6.5
    assert rows["round 1 reward model's own pick"][0] is False  # 50% is not above random
    assert rows["round 1 rejection sampling (§4.2.2)"][0] is True
    assert rows["round 1 DPO (§4.1.4)"][0] is True
    assert rows["all rounds"][0] is False  # 60% < 55% + 10 points
    assert rows["data (§3.1)"][0] is None  # no record: not run
    for copied, why in ((0.2, "does not copy by content yet (repeated span copied 20.0%)"),
                        (0.7, "copies a repeated span (70.0%) but rarely finds the key 1024 tokens back")):
        s.update(niah={"before": {"1024": 0.0}, "after": {"1024": 0.1}}, longctx={"copy_after": copied})
        rows = {stage: (ok, why) for stage, _, _, ok, why in run_all.verdicts(s, str(tmp_path))}
        assert rows["long context (§3.4.2)"][0] is False and why in rows["long context (§3.4.2)"][1]
