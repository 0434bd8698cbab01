"""Tests of bench.py's table logic (no timing asserts): the spread of each row, the flags
for impossible or implausible values and a busy machine, `+compile` rows only with
--compile, and a smoke run of the decoding benchmark on a tiny model."""
import bench
from test_sample import tiny_model


def test_row_shows_the_spread_and_flags_impossible_mfu():
    ours = {"mfu": 2.017, "range": {"mfu": [1.9, 2.1]}}
    ref = {"mfu": 0.40, "range": {"mfu": [0.39, 0.41]}}
    r = bench.row("train step", "MFU", ours, ref, "transformers", "mfu", ".1%")
    assert r["ours"] == "201.7% (190.0%-210.0%)" and r["ref"] == "40.0% (39.0%-41.0%)"
    assert any("impossible MFU 202%" in f for f in r["flags"])
    assert not any(f.startswith("ref") for f in r["flags"])


def test_row_flags_implausible_ratio_and_noisy_runs():
    ours = {"tokens_per_s": 30.0, "range": {"tokens_per_s": [10.0, 40.0]}}
    ref = {"tokens_per_s": 1000.0}
    r = bench.row("decode", "tokens/s", ours, ref, "transformers", "tokens_per_s", ".0f")
    assert r["speedup"] == "0.03"
    assert any("ratio 0.03" in f for f in r["flags"])
    assert any("ours: runs spread 4.0x" in f for f in r["flags"])
    fine = bench.row("decode", "tokens/s", {"tokens_per_s": 500.0, "range": {"tokens_per_s": [480.0, 520.0]}},
                     ref, "transformers", "tokens_per_s", ".0f")
    assert fine["flags"] == [] and fine["ours"] == "500 (480-520)"
    missing = bench.row("decode", "tokens/s", {"missing": "no transformers"}, None, "(none)", "tokens_per_s")
    assert missing["ours"] == "missing" and missing["flags"] == []


def test_machine_load():
    line, busy = bench.machine_load(0.1, 2.2, cores=2, threads=2)
    assert not busy and "0.10 at start, 2.20 at end, on 2 cores" in line
    line, busy = bench.machine_load(3.9, 4.0, cores=2, threads=2)
    assert busy and line.startswith("WARNING: busy machine")
    assert bench.machine_load(0.1, 4.0, cores=2, threads=2)[1]  # others joined during the run


def test_print_table_marks_flagged_rows(capsys):
    rows = [bench.row("train", "MFU", {"mfu": 1.5}, {"mfu": 0.4}, "transformers", "mfu", ".1%"),
            bench.row("encode", "MB/s", {"encode_mb_s": 2.0}, {"encode_mb_s": 2.5}, "HF", "encode_mb_s", ".2f")]
    bench.print_table(rows)
    out = capsys.readouterr().out
    assert "! train (MFU): ours: impossible MFU 150%" in out
    marked = [line.split()[1] for line in out.splitlines()[2:4] if line.rstrip().endswith("| ! |")]
    assert marked == ["train"]  # the data rows: only the flagged one carries "!"


def test_compile_rows_only_with_compile(monkeypatch, tmp_path):
    calls = []

    def fake_run(fn_name, **kw):
        calls.append((fn_name, kw.get("dtype"), kw.get("compile", False)))
        return {"tokens_per_s": 100.0}

    monkeypatch.setattr(bench, "run_isolated", fake_run)
    assert bench.main(["--only", "decode", "--out", str(tmp_path / "a.json")]) == 0
    assert {c for _, _, c in calls} == {False} and len(calls) == 2 * (3 + 2)  # 3 ours + 2 refs per batch
    calls.clear()
    assert bench.main(["--only", "decode", "--compile", "--out", str(tmp_path / "b.json")]) == 0
    ours = [(d, c) for name, d, c in calls if name == "decode"]
    assert ("bf16", True) in ours and ("int8", True) in ours


def test_benchmark_decoding_smoke():
    model = tiny_model()
    r = bench.benchmark_decoding(model, model.args.vocab_size, batch_size=2, new_tokens=8, prompt_len=4, repeats=2)
    assert r["tokens_per_s"] > 0 and r["batch_size"] == 2 and r["bandwidth_gb_s"] > 0
    lo, hi = r["range"]["tokens_per_s"]
    assert lo <= r["tokens_per_s"] <= hi and r["n_runs"] == 2
