"""Tests of pretrain.py on CPU: the schedule, the packed batches, the config parser,
and the fault-tolerance promises of §3.3.4 -- a resumed run equals an uninterrupted
one (losses and weights), a 2-rank checkpoint resumes on 1 rank, a process killed
(SIGKILL) in the middle of a checkpoint save leaves the previous checkpoint valid,
and a NaN loss stops the run without writing anything.

Everything runs a tiny model (tiny-1m) on synthetic shards written here in data.py's
format, fp32 so that runs are bit-for-bit reproducible. Budget: ~2 minutes."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import checkpoint
import loader
import common
import pretrain
from tests.conftest import ROOT

VOCAB, BOS, EOS = 320, 256, 257  # 256 "byte" tokens + special ids, like a tiny tokenizer

# A run of 6 steps: 256 tokens/step = 8 rows of 32, micro-batches of 4 rows
# (1 rank: 2 accumulation steps; 2 ranks: 1 each).
COMMON = ["--model", "tiny-1m", "--seq-len", "32", "--batch-size", "4", "--tokens-per-step", "256",
          "--max-steps", "6", "--warmup-steps", "2", "--lr", "1e-2", "--dtype", "fp32",
          "--eval-every", "3", "--ckpt-every", "2", "--eval-tokens", "512", "--time-budget-min", "0",
          "--anneal-steps", "0"]


# -----------------------------------------------------------------------------
# fixtures: synthetic shards and the reference (uninterrupted) run


def write_shards(data_dir, n_train_docs=400, n_val_docs=40, seed=0):
    """data.py's format: uint32 shards, each document [bos] + tokens + [eos], an .idx
    of document starts, and meta.json. Documents are arithmetic sequences mod 256, so
    the loss has something to learn."""
    rng = np.random.default_rng(seed)
    os.makedirs(data_dir, exist_ok=True)
    tok_path = os.path.join(data_dir, "tokenizer.model")
    with open(tok_path, "w") as f:
        f.write("# placeholder tokenizer for tests\n")
    splits = {}
    for split, n_docs in (("train", n_train_docs), ("val", n_val_docs), ("anneal", n_val_docs)):
        tokens, starts = [], []
        for _ in range(n_docs):
            a, d, n = rng.integers(0, 256), rng.integers(1, 8), rng.integers(10, 120)
            d = 1 if split == "anneal" else d  # the "high-quality" split: counting by one
            starts.append(sum(len(t) for t in tokens))
            tokens.append(np.concatenate([[BOS], (a + d * np.arange(n)) % 256, [EOS]]))
        arr = np.concatenate(tokens).astype(np.uint32)
        name = f"{split}_000.bin"
        arr.tofile(os.path.join(data_dir, name))
        np.array(starts, dtype=np.uint64).tofile(os.path.join(data_dir, f"{split}_000.idx"))
        splits[split] = {"files": [name], "tokens": int(arr.size), "documents": n_docs}
    meta = {"tokenizer": tok_path, "vocab_size": VOCAB, "bos_id": BOS, "eos_id": EOS,
            "dtype": "uint32", "anneal": splits.pop("anneal"), "splits": splits}  # as data.py
    with open(os.path.join(data_dir, "meta.json"), "w") as f:
        json.dump(meta, f)
    return data_dir


def losses_of(out_dir):
    """step -> loss from log.jsonl (a step logged twice: the later record wins)."""
    losses = {}
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "loss" in r:
                losses[r["step"]] = r["loss"]
    return losses


def final_weights(out_dir):
    return torch.load(os.path.join(out_dir, "final", "model.pt"), map_location="cpu", weights_only=True)["model"]


def run_inprocess(data_dir, out_dir, *extra):
    return pretrain.main(COMMON + ["--data", data_dir, "--out", out_dir, *extra])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_shards(str(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    """The uninterrupted 6-step run every other run is compared with."""
    out = str(tmp_path_factory.mktemp("reference"))
    run_inprocess(data_dir, out)
    return out


# -----------------------------------------------------------------------------
# pieces


def test_lr_schedule():
    kw = dict(max_lr=1.0, warmup_steps=10, total_steps=110)
    assert pretrain.lr_at(0, **kw) == pytest.approx(0.1)  # warm-up: the first step moves
    assert pretrain.lr_at(9, **kw) == pytest.approx(1.0)
    assert pretrain.lr_at(10, **kw) == pytest.approx(1.0)  # cosine starts at the peak
    assert pretrain.lr_at(60, **kw) == pytest.approx(0.505)  # halfway: (1 + 0.01) / 2
    assert pretrain.lr_at(110, **kw) == pytest.approx(0.01)  # ends at 1% of the peak (§3.4.1)
    lrs = [pretrain.lr_at(s, **kw) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # monotone decay
    # annealing (§3.4.3): the last 10 steps go linearly to 0 from the cosine value
    ann = [pretrain.lr_at(s, **kw, anneal_steps=10) for s in range(100, 110)]
    assert ann[0] == pytest.approx(pretrain.lr_at(100, **kw) * 0.9)
    assert ann[-1] == 0.0 and all(a > b for a, b in zip(ann, ann[1:]))


def test_make_batch_doc_ids_and_boundary_mask():
    #            partial doc | doc 1                | doc 2
    row = np.array([[7, 8, EOS, BOS, 1, 2, EOS, BOS, 5]])
    b = loader.make_batch(row, BOS, "cpu")
    assert b["inputs"].tolist() == [[7, 8, EOS, BOS, 1, 2, EOS, BOS]]
    assert b["doc_ids"].tolist() == [[0, 0, 0, 1, 1, 1, 1, 2]]
    # eos -> bos (the prediction across a boundary) is ignored; the first real token
    # of a document (predicted from bos) is a target.
    assert b["targets"].tolist() == [[8, EOS, -100, 1, 2, EOS, -100, 5]]


def test_parse_config_kebab_case_and_bools(capsys):
    cfg = common.parse_config(pretrain.PretrainConfig, ["--max-steps", "7", "--lr", "0.5",
                                                         "--no-resume", "--seq-len-schedule", "0:16,5:32"])
    assert (cfg.max_steps, cfg.lr, cfg.resume, cfg.seq_len_schedule) == (7, 0.5, False, "0:16,5:32")
    assert "max_steps" in capsys.readouterr().out  # printed with the run
    with pytest.raises(SystemExit):
        common.parse_config(pretrain.PretrainConfig, ["--no-such-flag", "1"])


def test_loader_ranks_split_the_same_rows(data_dir):
    """Two ranks together read exactly the rows one rank reads (resharding-safe)."""
    cfg = common.parse_config(pretrain.PretrainConfig, COMMON[:8])  # seq 32, batch 4, 256 tok
    with open(os.path.join(data_dir, "meta.json")) as f:
        meta = json.load(f)
    stream = loader.TokenStream(data_dir, meta, "train")

    class D:  # the fields of parallel.Dist the loader reads
        def __init__(self, rank, world):
            self.rank, self.dp_rank, self.dp_size, self.tp_size, self.device = rank, rank, world, 1, torch.device("cpu")

    def rows(loader, step):
        return torch.cat([b["inputs"] for b in loader(step, 6)])

    one = loader.PackedLoader(cfg, stream, BOS, D(0, 1))
    two = [loader.PackedLoader(cfg, stream, BOS, D(r, 2)) for r in range(2)]
    for step in range(3):
        assert torch.equal(rows(one, step), torch.cat([rows(two[0], step), rows(two[1], step)]))
    assert one.state_dict() == {"seq_len": 32, "rows_done": 24, "anneal_rows_done": 0}
    # the schedule stages: a longer sequence length means fewer, longer rows
    cfg.seq_len_schedule = "0:32,1:64"
    grow = loader.PackedLoader(cfg, stream, BOS, D(0, 1), stage=lambda s, n: pretrain.stage_at(cfg, s, n))
    assert rows(grow, 0).shape == (8, 32) and rows(grow, 1).shape == (4, 64)


# -----------------------------------------------------------------------------
# fault tolerance (§3.3.4)


def test_resume_equals_uninterrupted(data_dir, reference, tmp_path):
    out = str(tmp_path / "resumed")
    run_inprocess(data_dir, out, "--stop-at-step", "3")  # "interrupted" after step 3
    assert sorted(losses_of(out)) == [1, 2, 3]
    run_inprocess(data_dir, out)  # resumes from step_00000003
    ref, got = losses_of(reference), losses_of(out)
    assert sorted(got) == list(range(1, 7))
    assert got == ref  # bit-for-bit the same losses
    ref_w, got_w = final_weights(reference), final_weights(out)
    assert ref_w.keys() == got_w.keys()
    for k in ref_w:
        assert torch.equal(ref_w[k], got_w[k]), k
    assert ref[6] < ref[1]  # and it learned something


def test_two_rank_checkpoint_resumes_on_one_rank(data_dir, reference, tmp_path):
    out = str(tmp_path / "two_ranks")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", "pretrain.py",
           *COMMON, "--data", data_dir, "--out", out, "--stop-at-step", "3"]
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt_dir = os.path.join(out, "checkpoints")
    assert os.path.basename(checkpoint.latest_checkpoint(ckpt_dir)) == "step_00000003"
    ref = losses_of(reference)
    two = losses_of(out)
    # 2 ranks see the same rows per step as 1 rank: same losses up to float order
    for s in (1, 2, 3):
        assert two[s] == pytest.approx(ref[s], rel=1e-4), (s, two, ref)
    run_inprocess(data_dir, out)  # 1 process resumes the 2-rank checkpoint
    got = losses_of(out)
    assert sorted(got) == list(range(1, 7))
    for s in (4, 5, 6):
        assert got[s] == pytest.approx(ref[s], rel=1e-3), (s, got, ref)
    ref_w, got_w = final_weights(reference), final_weights(out)
    for k in ref_w:
        torch.testing.assert_close(got_w[k], ref_w[k], rtol=1e-3, atol=1e-4)


def test_sigkill_during_checkpoint_save(data_dir, reference, tmp_path):
    """SIGKILL while step 4's checkpoint is being written (files on disk, not yet
    committed): step 2 stays the latest checkpoint, loads, and a resumed run
    continues from it to the same result as the uninterrupted run."""
    out = str(tmp_path / "killed")
    cmd = [sys.executable, os.path.join("tests", "pause_in_save.py"), "60", "4", *COMMON, "--data", data_dir,
           "--out", out]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen, deadline = [], time.time() + 120
    try:
        for line in proc.stdout:  # wait until the process is inside the save
            seen.append(line)
            if line.startswith("DEBUG: inside checkpoint save"):
                break
            assert time.time() < deadline, "".join(seen[-30:])
        else:
            pytest.fail("the run ended without pausing in a save:\n" + "".join(seen[-30:]))
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert "of step 4" in line, line

    ckpt_dir = os.path.join(out, "checkpoints")
    # the kill hit a save with every file written, only the commit (rename) missing
    temps = [d for d in os.listdir(ckpt_dir) if d.startswith("step_00000004.tmp")]
    assert temps and os.path.exists(os.path.join(ckpt_dir, temps[0], "state.json")), os.listdir(ckpt_dir)
    latest = checkpoint.latest_checkpoint(ckpt_dir)
    assert latest is not None and os.path.basename(latest) == "step_00000002", os.listdir(ckpt_dir)
    # the previous checkpoint loads (into a fresh model + optimizer)
    from model import ModelArgs, Transformer
    args = ModelArgs.from_name("tiny-1m", vocab_size=VOCAB)
    model = Transformer(args)
    state = checkpoint.load_checkpoint(latest, model, pretrain.build_optimizer(model, 1e-3))
    assert state["step"] == 2 and state["data"]["rows_done"] == 16

    run_inprocess(data_dir, out)  # resume, without the debug pause
    got, ref = losses_of(out), losses_of(reference)
    assert sorted(got) == list(range(1, 7))
    assert got == ref  # steps 3-4 were recomputed from step 2, identically
    assert os.path.basename(checkpoint.latest_checkpoint(ckpt_dir)) == "step_00000006"


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path, capsys):
    out = str(tmp_path / "nan")
    with pytest.raises(SystemExit) as e:
        run_inprocess(data_dir, out, "--debug-nan-at-step", "5")
    assert e.value.code == 3
    assert "non-finite loss at step 5" in capsys.readouterr().out
    ckpt_dir = os.path.join(out, "checkpoints")
    assert os.path.basename(checkpoint.latest_checkpoint(ckpt_dir)) == "step_00000004"
    assert not any("00000005" in d for d in os.listdir(ckpt_dir))
    assert sorted(losses_of(out)) == [1, 2, 3, 4]  # the NaN step is not logged either
    with open(os.path.join(out, "report.json")) as f:
        assert json.load(f)["status"] == "non-finite loss"


def test_anneal_averages_checkpoints(data_dir, tmp_path):
    """§3.4.3: the last steps take LR linearly to 0, draw some rows from the anneal
    split, and the exported model is the average of the annealing checkpoints."""
    out = str(tmp_path / "anneal")
    run_inprocess(data_dir, out, "--anneal-steps", "4", "--anneal-ckpt-every", "2", "--eval-every", "0")
    records = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    lrs = {r["step"]: r["lr"] for r in records if "lr" in r}
    assert lrs[6] == 0.0 and lrs[3] > lrs[4] > lrs[5] > 0  # linear to 0 over steps 3..6
    assert any("val_loss_avg" in r for r in records)
    with open(os.path.join(out, "checkpoints", "step_00000006", "state.json")) as f:
        data_state = json.load(f)["extra"]["data"]
    assert data_state["anneal_rows_done"] == 8  # 2 of the 8 rows in each of 4 steps
    from checkpoint import load_model
    a, _ = load_model(os.path.join(out, "checkpoints", "step_00000004"))
    b, _ = load_model(os.path.join(out, "checkpoints", "step_00000006"))
    final = final_weights(out)
    for k, v in a.state_dict().items():
        torch.testing.assert_close(final[k], (v + b.state_dict()[k]) / 2)
    # averaged into final/: the run keeps only --keep-checkpoints (2) of its checkpoints
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["step_00000004", "step_00000006"]


def test_finished_run_prunes_the_annealing_checkpoints(data_dir, tmp_path):
    out = str(tmp_path / "pruned")
    run_inprocess(data_dir, out, "--anneal-steps", "4", "--anneal-ckpt-every", "1", "--eval-every", "0",
                  "--keep-checkpoints", "1", "--ckpt-every", "1")
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["step_00000006"]


def test_schedule_stages():
    """§3.4.1-3.4.2: sequence-length and batch growth at given steps, and a final
    long-context stage (fewer, longer rows for the same tokens per step)."""
    cfg = pretrain.PretrainConfig(seq_len=128, tokens_per_step=4096, seq_len_schedule="0:64,10:128",
                                  batch_schedule="20:8192", long_context_steps=5, long_context_seq_len=512)
    assert pretrain.stage_at(cfg, 0, 100) == (64, 4096)
    assert pretrain.stage_at(cfg, 10, 100) == (128, 4096)
    assert pretrain.stage_at(cfg, 20, 100) == (128, 8192)
    assert pretrain.stage_at(cfg, 95, 100) == (512, 8192)
    assert pretrain.longest_seq_len(cfg) == 512


def test_missing_data_is_built_first(tmp_path, monkeypatch):
    """No meta.json in the default folder -> pretrain calls data.build(data_dir) first."""
    import data
    calls = []
    monkeypatch.setattr(data, "build", lambda out_dir, **kw: calls.append(out_dir) or write_shards(out_dir))

    class D:
        is_main, world_size = True, 1

    target = str(tmp_path / "fresh")
    monkeypatch.setattr(loader, "DEFAULT_DATA", target)  # only the default folder is built
    meta = loader.ensure_data(target, D())
    assert calls == [target] and meta["vocab_size"] == VOCAB
    loader.ensure_data(target, D())  # complete now: not built again
    assert calls == [target]


def test_time_budget_shortens_the_schedule(data_dir, tmp_path):
    """--time-budget-min: at the first timed step (step 2; step 1 is warm-up) the
    schedule is cut to fit (here: to one more step), recorded in the checkpoints, and
    the run ends with an export."""
    out = str(tmp_path / "budget")
    run_inprocess(data_dir, out, "--time-budget-min", "0.0001")
    assert sorted(losses_of(out)) == [1, 2, 3]
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    assert report["total_steps"] == 3 and report["status"] == "done"
    assert os.path.exists(os.path.join(out, "final", "model.pt"))


# -----------------------------------------------------------------------------
# hardening: the schedule, config validation, a user's data folder


def test_lr_never_negative_on_a_grid():
    """Annealing longer than the run (also after a time-budget shortening) anneals
    the whole run instead of driving the LR below 0."""
    for total in range(1, 25):
        for anneal in (0, 1, 3, 16, 40):
            for warmup in (0, 1, 5, 30):
                lrs = [pretrain.lr_at(s, max_lr=1.0, warmup_steps=warmup, total_steps=total,
                                      anneal_steps=anneal) for s in range(total)]
                assert min(lrs) >= 0.0, (total, anneal, warmup, lrs)
                if anneal:
                    assert lrs[-1] == 0.0  # the last annealing step reaches 0
    # an ordinary schedule is unchanged by the clip
    assert pretrain.lr_at(0, max_lr=1, warmup_steps=10, total_steps=100) == pytest.approx(0.1)
    assert pretrain.lr_at(10, max_lr=1, warmup_steps=10, total_steps=100) == pytest.approx(1.0)


@pytest.mark.parametrize("flag,value", [("--ckpt-every", "0"), ("--log-every", "0"), ("--max-steps", "0"),
                                        ("--keep-checkpoints", "0"), ("--warmup-steps", "-1"),
                                        ("--seq-len", "0"), ("--lr", "0"), ("--anneal-steps", "-2"),
                                        ("--cp", "0"), ("--pp", "0"), ("--pp-microbatches", "-1")])
def test_bad_config_values_name_the_flag(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        common.parse_config(pretrain.PretrainConfig, [flag, value])
    assert e.value.code == 2
    assert flag in capsys.readouterr().err
    cfg = pretrain.PretrainConfig(**{flag[2:].replace("-", "_"): type(getattr(pretrain.PretrainConfig(),
                                                                        flag[2:].replace("-", "_")))(float(value))})
    with pytest.raises(common.UsageError, match=flag):
        cfg.validate()  # what train() calls for configs built in code


def test_layout_flags_are_checked(data_dir, tmp_path, capsys):
    """--cp needs sequence lengths divisible by 2·cp, --pp-schedule a known schedule,
    and a layout needs its number of processes: one line each, exit code 2."""
    for extra, needle in ((["--cp", "3"], "divisible by 2·cp = 6"), (["--cp", "2", "--seq-len-schedule", "0:32,2:34"],
                                                                   "divisible by 2·cp = 4"),
                          (["--pp", "2", "--pp-schedule", "Zigzag"], "--pp-schedule: Unknown schedule name"),
                          (["--pp", "2"], "tp 1 x cp 1 x pp 2 needs 2 processes")):
        try:  # a bad flag value stops the parser (SystemExit 2), a bad layout main (returns 2)
            code = run_inprocess(data_dir, str(tmp_path / "x"), *extra)
        except SystemExit as e:
            code = e.code
        assert code == 2, extra
        assert needle in capsys.readouterr().err, extra
    help_text = subprocess.run([sys.executable, "pretrain.py", "--help"], cwd=ROOT, capture_output=True,
                               text=True, timeout=60).stdout
    for flag in ("--tp", "--cp", "--pp", "--pp-schedule", "--pp-microbatches", "--reshard-after-forward"):
        assert flag in help_text


def test_context_and_pipeline_parallel_run_resumes_on_one_rank(data_dir, reference, tmp_path):
    """torchrun 4 ranks: --cp 2 --pp 2 (every row split over 2 ranks, the layers over 2
    stages; pretrain.train through the pipeline schedule, evaluation too), stopped at
    step 3, then resumed by one process: the losses are the 1-process run's."""
    out = str(tmp_path / "cp2_pp2")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=4",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", "pretrain.py",
           *COMMON, "--data", data_dir, "--out", out, "--stop-at-step", "3", "--cp", "2", "--pp", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "layout TP 1 x CP 2 x PP 2 x DP 1 (1F1B)" in proc.stdout
    run_inprocess(data_dir, out)  # 1 process resumes the 4-rank checkpoint
    ref, got = losses_of(reference), losses_of(out)
    assert sorted(got) == list(range(1, 7))
    for s in range(1, 7):  # same rows, same micro-batches: equal up to float order
        assert got[s] == pytest.approx(ref[s], rel=1e-5), (s, got, ref)
    val = {}
    for path in (reference, out):
        with open(os.path.join(path, "log.jsonl")) as f:
            val[path] = [r["val_loss"] for r in map(json.loads, f) if r.get("step") == 3 and "val_loss" in r]
    assert val[out] and val[out][0] == pytest.approx(val[reference][0], rel=1e-5)  # evaluated through the stages


def test_incomplete_data_folder_is_left_untouched(tmp_path, capsys):
    """A --data folder without meta.json (an interrupted build) is an error (exit 2),
    not rebuilt over the user's files."""
    data = tmp_path / "mydata"
    data.mkdir()
    (data / "train_000.bin").write_bytes(b"\x01\x02\x03\x04")
    (data / "documents.jsonl").write_text('{"text": "mine"}\n')
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in data.iterdir()}
    rc = run_inprocess(str(data), str(tmp_path / "out"))
    assert rc == 2
    err = capsys.readouterr().err
    assert "incomplete data folder" in err and "python data.py --out" in err and len(err.splitlines()) == 1
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in data.iterdir()}
    assert after == before


def test_finished_run_reads_only_done_runs(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    assert common.finished_run(str(out)) is None
    (out / "report.json").write_text(json.dumps({"status": "done", "steps": 6}))
    assert common.finished_run(str(out)) is None  # no final/ yet
    (out / "final").mkdir()
    assert common.finished_run(str(out)) == {"status": "done", "steps": 6}
    (out / "report.json").write_text(json.dumps({"status": "stopped"}))
    assert common.finished_run(str(out)) is None
    (out / "report.json").write_text("{not json")
    assert common.finished_run(str(out)) is None


def test_rerunning_a_finished_run_keeps_its_report(data_dir, tmp_path, capsys):
    out = str(tmp_path / "run")
    assert run_inprocess(data_dir, out) == 0
    with open(os.path.join(out, "report.json")) as f:
        report = json.load(f)
    assert report["status"] == "done" and report["last_loss"] is not None
    capsys.readouterr()
    assert run_inprocess(data_dir, out) == 0
    assert "finished run" in capsys.readouterr().out
    with open(os.path.join(out, "report.json")) as f:
        assert json.load(f) == report
    # asked for the same folder with another setting: refused by name, the record kept
    assert run_inprocess(data_dir, out, "--lr", "0.0123") == 2
    err = capsys.readouterr().err
    assert "finished run with other settings" in err and "lr" in err and "0.0123" in err, err
    with open(os.path.join(out, "report.json")) as f:
        assert json.load(f) == report
    assert run_inprocess(data_dir, out, "--threads", "1") == 0  # how to run, not what: still the same run


# -----------------------------------------------------------------------------
# one run per output folder, and ranks that die with torchrun


def test_second_run_on_the_same_folder_refuses(data_dir, tmp_path, capsys):
    out = str(tmp_path / "locked")
    holder = subprocess.Popen([sys.executable, "-c", "import common, sys, time; common.OutputLock(sys.argv[1])"
                               ".acquire(); print('locked', flush=True); time.sleep(60)", out],
                              cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        assert pretrain.main(COMMON + ["--data", data_dir, "--out", out]) == 2
        err = capsys.readouterr().err
        assert f"in use by another run (pid {holder.pid})" in err and "Traceback" not in err
        assert not os.path.exists(os.path.join(out, "checkpoints"))  # nothing written
    finally:
        holder.kill()
        holder.wait()
    run_inprocess(data_dir, out, "--max-steps", "2")  # the holder is gone: the folder is free
    assert os.path.exists(os.path.join(out, "final", "model.pt"))


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_ranks_die_with_a_killed_torchrun(data_dir, tmp_path):
    out = str(tmp_path / "orphans")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", "pretrain.py", *COMMON,
           "--max-steps", "100000", "--ckpt-every", "1", "--eval-every", "0", "--data", data_dir, "--out", out]
    agent = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = os.path.join(out, "log.jsonl")
    deadline = time.time() + 180
    while time.time() < deadline and not (os.path.exists(log) and os.path.getsize(log) > 0):
        time.sleep(0.5)
    ranks = _children(agent.pid)
    assert len(ranks) == 2 and os.path.getsize(log) > 0, "the run did not start"
    agent.kill()  # SIGKILL: torchrun gets no chance to stop its ranks itself
    agent.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(os.path.exists(f"/proc/{r}") and
                                         open(f"/proc/{r}/stat").read().split()[2] != "Z" for r in ranks):
        time.sleep(0.2)
    alive = [r for r in ranks if os.path.exists(f"/proc/{r}") and open(f"/proc/{r}/stat").read().split()[2] != "Z"]
    for r in alive:
        os.kill(r, signal.SIGKILL)
    assert not alive, f"ranks {alive} kept running after torchrun was killed"
    time.sleep(1)
    ckpts = sorted(os.listdir(os.path.join(out, "checkpoints")))
    time.sleep(2)
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ckpts  # nothing written after


# -----------------------------------------------------------------------------
# SIGINT / SIGTERM under torchrun: save at the current step on every rank, exit
# 130 / 143, and the resumed run equals the uninterrupted one


def _torchrun(data_dir, out, *extra, log_dir=None):
    logs = ["--log-dir", log_dir, "--redirects", "3"] if log_dir else []  # each rank's stdout/stderr to a file
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", *logs,
            "--master_addr=127.0.0.1", f"--master_port={free_port()}", "pretrain.py", *COMMON,
            "--max-steps", "150", "--ckpt-every", "1000", "--eval-every", "0", "--data", data_dir, "--out", out,
            *extra]


@pytest.fixture(scope="module")
def two_rank_reference(data_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("two_rank_reference") / "run")
    proc = subprocess.run(_torchrun(data_dir, out), cwd=ROOT, env=child_env(), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_saves_exits_and_resumes_exactly(data_dir, two_rank_reference, tmp_path, signum):
    out = str(tmp_path / "interrupted")
    # A new session: SIGINT goes to the whole group, as a terminal's Ctrl-C does;
    # SIGTERM to torchrun alone, as a scheduler sends it (torchrun forwards it).
    log_dir = str(tmp_path / "rank_logs")
    agent = subprocess.Popen(_torchrun(data_dir, out, log_dir=log_dir), cwd=ROOT, env=child_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    log = os.path.join(out, "log.jsonl")
    deadline = time.time() + 180
    while time.time() < deadline and agent.poll() is None:
        if os.path.exists(log) and sum(1 for _ in open(log)) >= 5:
            break
        time.sleep(0.05)
    if signum == signal.SIGINT:
        os.killpg(agent.pid, signal.SIGINT)
    else:
        agent.send_signal(signal.SIGTERM)
    _, agent_err = agent.communicate(timeout=120)
    code, name = 128 + signum, signal.Signals(signum).name
    steps = set()
    for rank in (0, 1):  # what each rank itself wrote on stderr (torchrun's own summary aside)
        [path] = [os.path.join(d, f) for d, _, files in os.walk(log_dir) for f in files
                  if f == "stderr.log" and os.path.basename(d) == str(rank)]
        err = open(path).read().strip().splitlines()
        assert len(err) <= 5 and not any("Traceback" in line for line in err), (rank, err, agent_err[-2000:])
        [line] = [line for line in err if line.startswith(f"[rank {rank}]")]
        assert line.startswith(f"[rank {rank}] {name}: interrupted at step ") and line.endswith(f"(exit {code})")
        steps.add(int(line.split("interrupted at step ")[1].split(",")[0]))
    assert len(steps) == 1  # both ranks stopped at the same step
    step = steps.pop()
    assert 5 <= step < 150
    assert f"exitcode: {code}" in agent_err or f"exitcode  : {code}" in agent_err or "got signal" in agent_err
    assert os.path.basename(checkpoint.latest_checkpoint(os.path.join(out, "checkpoints"))) == f"step_{step:08d}"
    assert not os.path.exists(os.path.join(out, "final"))
    proc = subprocess.run(_torchrun(data_dir, out), cwd=ROOT, env=child_env(), capture_output=True, text=True,
                          timeout=300)  # the same command resumes
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert losses_of(out) == losses_of(two_rank_reference)
    ref_w, got_w = final_weights(two_rank_reference), final_weights(out)
    assert all(torch.equal(got_w[k], ref_w[k]) for k in ref_w)


def test_init_continues_from_a_checkpoint_with_new_rope(data_dir, reference, tmp_path):
    """--init starts from a checkpoint's weights (the long-context stage: longer rows,
    RoPE θ and the 3.1 scaling changed), not from random ones."""
    out = str(tmp_path / "longer")
    assert run_inprocess(data_dir, out, "--init", os.path.join(reference, "final"), "--seq-len", "64",
                         "--rope-theta", "10000", "--rope-scaling", "2:32", "--max-steps", "2") == 0
    first_random, last_reference = losses_of(reference)[1], losses_of(reference)[6]
    assert losses_of(out)[1] < (first_random + last_reference) / 2  # starts where the reference ended
    _, args = checkpoint.load_model(os.path.join(out, "final"))
    assert (args.rope_theta, args.use_scaled_rope, args.rope_scale_factor, args.rope_original_max_seq_len) == \
        (10000.0, True, 2.0, 32)
    with pytest.raises(SystemExit):
        common.parse_config(pretrain.PretrainConfig, ["--rope-scaling", "fast"])
# -----------------------------------------------------------------------------
# the time budget: re-estimated during the run, warm-up and compilation left out


def test_time_budget_fits_the_remaining_time_and_grows_back():
    class OneRank:
        world_size, device = 1, torch.device("cpu")
    cfg = pretrain.PretrainConfig(time_budget_min=1.0, max_steps=1000)
    # 60 s budget (57 s: 5% kept for the end), 10 s gone, 0.5 s/step, no evaluation yet
    # (15% of a step kept for it): 47 / 0.575
    assert pretrain.fit_time_budget(cfg, 4, 1000, 0.5, 0.0, 10.0, OneRank()) == 4 + 81
    # measured evaluation/checkpoint seconds per step replace the 15% guess: 47 / 0.6
    assert pretrain.fit_time_budget(cfg, 4, 86, 0.5, 0.1, 10.0, OneRank()) == 4 + 78
    # the steps got faster (a busy machine calmed down): the run grows back, up to --max-steps
    assert pretrain.fit_time_budget(cfg, 40, 90, 0.1, 0.0, 30.0, OneRank()) == 40 + 234
    assert pretrain.fit_time_budget(cfg, 40, 90, 0.001, 0.0, 30.0, OneRank()) == 1000
    # out of time: one more step, never fewer
    assert pretrain.fit_time_budget(cfg, 40, 90, 0.5, 0.0, 70.0, OneRank()) == 41


def test_eta_leaves_out_warm_up_and_says_compiling():
    # with --compile the first two steps compile: "compiling", not an ETA from a 30 s step
    assert pretrain.timed_steps([30.0, 4.0], compile=True) == []
    assert pretrain.eta_record([], 100, 0.0, compile=True) == {"eta": "compiling"}
    assert pretrain.eta_record([], 100, 0.0, compile=False) == {"eta": "warm-up"}
    assert pretrain.timed_steps([30.0, 4.0, 0.5, 0.3], compile=True) == [0.5, 0.3]
    assert pretrain.timed_steps([30.0, 0.5, 0.3], compile=False) == [0.5, 0.3]
    assert pretrain.timed_steps([9.0] + [1.0] * 30 + [0.5] * 20, compile=False) == [0.5] * 20  # the recent speed
    # 10 steps left at 0.4 s/step + 0.1 s/step of evaluation and checkpoints
    assert pretrain.eta_record([0.5, 0.3], 10, 0.1, compile=True) == {"eta_s": 5.0}


def test_first_step_is_warm_up_in_the_log(reference):
    records = [json.loads(line) for line in open(os.path.join(reference, "log.jsonl"))]
    steps = [r for r in records if "loss" in r]
    assert steps[0]["eta"] == "warm-up" and "eta_s" not in steps[0]  # not an estimate from the slow first step
    assert all("eta_s" in r for r in steps[1:])
    assert steps[-1]["eta_s"] == 0.0
