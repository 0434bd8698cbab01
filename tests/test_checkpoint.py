"""Tests for checkpoint.py: every format loads, the Hugging Face permutation round-trips,
distributed checkpoints are atomic / pruned / resumable, checksums catch damage and
resume falls back to the previous intact checkpoint, nothing in a checkpoint can run
code (crafted pickles in every file kind), one-line errors for broken files, and the
averaging of §3.4.3 / §4.1.5."""
import json
import os
import pickle
import random
import shutil

import numpy as np
import pytest
import torch

import checkpoint
import parallel
from common import UsageError
from model import ModelArgs, Transformer, count_params

TINY = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, multiple_of=32,
            max_seq_len=128, rope_theta=500000.0)


def tiny_args(**kw):
    return ModelArgs(**{**TINY, **kw})


def build(args, seed=0):
    torch.manual_seed(seed)
    m = Transformer(args)
    m.init_weights(seed)
    return m.eval()


def _optimizer(m):
    return torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))


def _step(m, opt):
    tokens = torch.randint(0, 256, (2, 9))
    loss = torch.nn.functional.cross_entropy(m(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    opt.step()
    opt.zero_grad()


def _dcp_run(tmp_path, steps=(1, 2), keep=3):
    """A model + optimizer saved at each of `steps` under tmp_path/ckpt."""
    args = tiny_args()
    m = parallel.build_model(args, parallel.setup_distributed(), seed=1)
    opt = _optimizer(m)
    root = str(tmp_path / "ckpt")
    for s in steps:
        _step(m, opt)
        checkpoint.save_checkpoint(root, s, m, opt, model_args=args, extra={"s": s}, keep=keep)
    return args, m, opt, root


# ---------------------------------------------------------------------------
# A payload: unpickling it creates a marker file (it would run any code)


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_payload_runs_under_plain_pickle(tmp_path):
    """The control: the payload does run when unpickled freely, so the tests below can fail."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def _assert_refused(fn, marker, match="refusing to load"):
    with pytest.raises(UsageError, match=match):
        fn()
    assert not os.path.exists(marker), "the payload ran"


def test_payload_in_model_pt_and_meta_consolidated_does_not_run(tmp_path):
    args = tiny_args()
    m = build(args)
    marker = tmp_path / "ran"
    ours = tmp_path / "ours"
    ours.mkdir()
    torch.save({"model_args": vars(args).copy(), "model": m.state_dict(), "x": Payload(marker)}, ours / "model.pt")
    _assert_refused(lambda: checkpoint.load_model(str(ours)), marker)
    _assert_refused(lambda: checkpoint.load_model(str(ours / "model.pt")), marker)
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "params.json").write_text(json.dumps({k: v for k, v in vars(args).items() if v is not None}))
    torch.save(dict(m.state_dict(), evil=Payload(marker)), meta / "consolidated.00.pth")
    _assert_refused(lambda: checkpoint.load_model(str(meta)), marker)


def test_payload_in_rng_file_does_not_run(tmp_path):
    args, m, opt, root = _dcp_run(tmp_path, steps=(1,))
    path = checkpoint.latest_checkpoint(root)
    marker = tmp_path / "ran"
    torch.save({"python": Payload(marker)}, os.path.join(path, "rng", "rank_00000.pt"))
    checkpoint.write_checksums(path)  # a well-formed, "intact" malicious checkpoint
    assert checkpoint.latest_checkpoint(root) == path  # the resume path finds it ...
    _assert_refused(lambda: checkpoint.load_checkpoint(path, m, opt), marker)  # ... and refuses it
    assert "rank_00000.pt" in _message(lambda: checkpoint.load_checkpoint(path, m, opt))


def _message(fn):
    with pytest.raises(UsageError) as e:
        fn()
    return str(e.value)


def test_payload_in_dcp_metadata_does_not_run(tmp_path):
    args, m, opt, root = _dcp_run(tmp_path, steps=(1, 2))
    path = checkpoint.latest_checkpoint(root)
    marker = tmp_path / "ran"
    with open(os.path.join(path, ".metadata"), "wb") as f:
        pickle.dump(Payload(marker), f)
    checkpoint.write_checksums(path)
    match = r"refusing to load .*\.metadata: it asks to build (builtins|io)\.open"
    _assert_refused(lambda: checkpoint.load_checkpoint(path, m, opt), marker, match)
    _assert_refused(lambda: checkpoint.load_model(path), marker, match)
    _assert_refused(lambda: checkpoint.average_checkpoints([path, os.path.join(root, "step_00000001")],
                                                           model=m), marker, match)
    _assert_refused(lambda: checkpoint.average_checkpoints([os.path.join(root, "step_00000001"), path],
                                                           str(tmp_path / "avg")), marker, match)


def test_payload_in_dcp_shard_entry_does_not_run(tmp_path):
    """A non-tensor entry of a .distcp shard (the optimizer's lr) replaced by a payload."""
    import torch.distributed.checkpoint as dcp
    args, m, opt, root = _dcp_run(tmp_path, steps=(1,))
    path = checkpoint.latest_checkpoint(root)
    marker = tmp_path / "ran"
    state = checkpoint._state_dicts(m, opt)
    state["optim"]["param_groups"][0]["lr"] = Payload(marker)
    evil = tmp_path / "evil" / "step_00000001"
    dcp.save(state, checkpoint_id=str(evil), no_dist=True)
    for name in ("model_args.json", "state.json"):
        shutil.copy(os.path.join(path, name), evil / name)
    checkpoint.write_checksums(str(evil))
    assert not marker.exists()
    assert checkpoint.latest_checkpoint(str(tmp_path / "evil")) == str(evil)
    _assert_refused(lambda: checkpoint.load_checkpoint(str(evil), m, opt), marker,
                    r"refusing to load 'optim\.param_groups\.0\.lr'")
    # the real checkpoint's non-tensor entries (lr, betas, ...) still load
    state = checkpoint.load_checkpoint(path, m, opt)
    assert state == {"s": 1, "step": 1}
    assert opt.param_groups[0]["lr"] == 1e-3 and opt.param_groups[0]["betas"] == (0.9, 0.95)


def test_rng_state_is_plain_data_and_round_trips(tmp_path):
    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    np.random.standard_normal()  # leave a cached gaussian in numpy's state
    state = checkpoint._rng_state()
    torch.save(state, tmp_path / "rng.pt")
    want = (random.random(), np.random.standard_normal(), torch.rand(2))
    loaded = torch.load(tmp_path / "rng.pt", weights_only=True)  # tensors and containers only
    checkpoint._set_rng_state(loaded, "rng.pt")
    got = (random.random(), np.random.standard_normal(), torch.rand(2))
    assert got[0] == want[0] and got[1] == want[1] and torch.equal(got[2], want[2])


# ---------------------------------------------------------------------------
# Checksums and falling back to the previous intact checkpoint


def _zero_4k(file):
    with open(file, "r+b") as f:
        f.seek(min(1024, max(0, os.path.getsize(file) - 4096)))
        f.write(b"\0" * 4096)


def test_zeros_in_a_shard_are_detected_and_resume_falls_back(tmp_path, capsys):
    args, m, opt, root = _dcp_run(tmp_path, steps=(1, 2, 3))
    latest = os.path.join(root, "step_00000003")
    assert checkpoint.latest_checkpoint(root) == latest
    shard = sorted(f for f in os.listdir(latest) if f.endswith(".distcp"))[0]
    _zero_4k(os.path.join(latest, shard))
    capsys.readouterr()
    assert checkpoint.latest_checkpoint(root) == os.path.join(root, "step_00000002")
    out = capsys.readouterr().out
    assert f"skipping checkpoint {latest}: {shard}: sha256 mismatch" in out
    msg = _message(lambda: checkpoint.load_checkpoint(latest, m, opt))
    assert msg == (f"{latest} is corrupt ({shard}: sha256 mismatch); the previous intact checkpoint "
                   f"is {os.path.join(root, 'step_00000002')}")
    with pytest.raises(UsageError, match="is corrupt"):
        checkpoint.load_model(latest)
    # two damaged: the oldest intact one is used; a missing file is named as such
    os.remove(os.path.join(root, "step_00000002", "state.json"))
    os.remove(os.path.join(root, "step_00000002", "rng", "rank_00000.pt"))
    assert checkpoint.latest_checkpoint(root) == os.path.join(root, "step_00000001")
    (tmp_path / "ckpt" / "step_00000001" / "state.json").write_text("{")
    assert checkpoint.latest_checkpoint(root) is None
    assert "state.json: sha256 mismatch" in capsys.readouterr().out


def test_model_pt_checksum_and_verify_command(tmp_path, capsys):
    args = tiny_args()
    out = tmp_path / "m"
    checkpoint.save_model(build(args), args, str(out))
    assert checkpoint.main(["verify", str(out)]) == 0
    assert "OK (1 file(s)" in capsys.readouterr().out
    _zero_4k(out / "model.pt")
    assert checkpoint.main(["verify", str(out)]) == 2
    assert "model.pt: sha256 mismatch" in capsys.readouterr().err
    with pytest.raises(UsageError, match=r"is corrupt \(model\.pt: sha256 mismatch\)"):
        checkpoint.load_model(str(out))
    assert checkpoint.main(["verify", str(tmp_path)]) == 2  # no checksums.json
    with pytest.raises(SystemExit):
        checkpoint.main(["--help"])
    assert "average" in capsys.readouterr().out


def test_tokenizer_recorded_and_checked(tmp_path):
    tok_a, tok_b = tmp_path / "a.model", tmp_path / "b.model"
    tok_a.write_bytes(b"tokenizer A")
    tok_b.write_bytes(b"tokenizer B")
    args = tiny_args()
    out = str(tmp_path / "m")
    checkpoint.save_model(build(args), args, out, tokenizer_path=str(tok_a))
    checkpoint.check_tokenizer(out, str(tok_a))  # the same file: fine
    checkpoint.check_tokenizer(out, os.path.join(out, "tokenizer.model"))
    with pytest.raises(UsageError, match=r"b\.model is not the tokenizer .* was saved with"):
        checkpoint.check_tokenizer(out, str(tok_b))
    with pytest.raises(UsageError, match="is not the tokenizer"):
        checkpoint.load_model(out, tokenizer_path=str(tok_b))
    checkpoint.load_model(out, tokenizer_path=str(tok_a))


# ---------------------------------------------------------------------------
# load_model: one-line errors for broken checkpoints


def _saved(tmp_path, name="m"):
    args = tiny_args()
    out = tmp_path / name
    checkpoint.save_model(build(args), args, str(out))
    return out


def test_truncated_or_non_dict_model_pt(tmp_path):
    out = _saved(tmp_path)
    data = (out / "model.pt").read_bytes()
    (out / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match=r"model\.pt: sha256 mismatch"):
        checkpoint.load_model(str(out))
    os.remove(out / "checksums.json")  # no record: the file itself must still give a clear error
    with pytest.raises(UsageError, match=r"model\.pt: unreadable or truncated"):
        checkpoint.load_model(str(out))
    torch.save([1, 2, 3], out / "model.pt")
    with pytest.raises(UsageError, match=r"model\.pt: not a model checkpoint"):
        checkpoint.load_model(str(out))


@pytest.mark.parametrize("field, value, match", [
    ("n_heads", 0, "n_heads must be positive, got 0"),
    ("dim", "64", "field 'dim' must be int, got '64'"),
    ("norm_eps", None, "field 'norm_eps' must be float, got None"),
    ("use_scaled_rope", 1, "field 'use_scaled_rope' must be bool"),
])
def test_bad_model_args_in_a_file_are_named(tmp_path, field, value, match):
    out = _saved(tmp_path)
    ckpt = torch.load(out / "model.pt", weights_only=True)
    ckpt["model_args"][field] = value
    torch.save(ckpt, out / "model.pt")
    checkpoint.write_checksums(str(out), ["model.pt"])
    with pytest.raises(UsageError, match=match) as e:
        checkpoint.load_model(str(out))
    assert str(out / "model.pt") in str(e.value)
    # the same in a DCP folder's model_args.json and Meta's params.json
    meta = tmp_path / "meta"
    meta.mkdir()
    params = dict(TINY, **{field: value})
    (meta / "params.json").write_text(json.dumps(params))
    torch.save(build(tiny_args()).state_dict(), meta / "consolidated.00.pth")
    with pytest.raises(UsageError, match=match) as e:
        checkpoint.load_model(str(meta))
    assert "params.json" in str(e.value)


def test_hf_folder_with_a_missing_shard(tmp_path):
    from safetensors.torch import save_file
    args = tiny_args()
    hf_sd = checkpoint.to_hf_state_dict(build(args).state_dict(), args)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps(checkpoint.to_hf_config(args)))
    names = sorted(hf_sd)
    first = {k: hf_sd[k].contiguous() for k in names if "layers.1." not in k}
    second = {k: hf_sd[k].contiguous() for k in names if "layers.1." in k}
    save_file(first, str(hf / "model-00001-of-00002.safetensors"))
    save_file(second, str(hf / "model-00002-of-00002.safetensors"))
    index = {"weight_map": {**{k: "model-00001-of-00002.safetensors" for k in first},
                            **{k: "model-00002-of-00002.safetensors" for k in second}}}
    (hf / "model.safetensors.index.json").write_text(json.dumps(index))
    loaded, _ = checkpoint.load_model(str(hf))  # complete: loads
    os.remove(hf / "model-00002-of-00002.safetensors")
    msg = _message(lambda: checkpoint.load_model(str(hf)))
    assert "missing tensor(s) ['model.layers.1." in msg
    assert "the index expects them in ['model-00002-of-00002.safetensors']" in msg
    # without an index the missing tensors are still named
    os.remove(hf / "model.safetensors.index.json")
    assert "missing tensor(s) ['model.layers.1." in _message(lambda: checkpoint.load_model(str(hf)))


def test_checkpoint_shape_mismatch_is_named(tmp_path):
    out = _saved(tmp_path, "ok")
    ckpt = torch.load(out / "model.pt", weights_only=True)
    ckpt["model"]["layers.0.attention.wq.weight"] = torch.zeros(3, 3)
    torch.save(ckpt, out / "model.pt")
    os.remove(out / "checksums.json")
    with pytest.raises(UsageError, match=r"layers\.0\.attention\.wq\.weight: checkpoint \(3, 3\)"):
        checkpoint.load_model(str(out))
    (tmp_path / "junk").mkdir()
    with pytest.raises(UsageError, match="unknown checkpoint format"):
        checkpoint.load_model(str(tmp_path / "junk"))
    with pytest.raises(UsageError, match="checkpoint not found"):
        checkpoint.load_model(str(tmp_path / "nowhere"))


def test_bad_params_json(tmp_path):
    p = tmp_path / "params.json"
    p.write_text(json.dumps({"dim": 64, "n_heads": 4}))
    with pytest.raises(UsageError, match="missing required field.*n_layers"):
        checkpoint.args_from_params_json(str(p))
    p.write_text(json.dumps({"dim": 64, "n_heads": 4, "n_layers": 1, "vocab_size": 10, "colour": 1}))
    with pytest.raises(UsageError, match="unknown field.*colour"):
        checkpoint.args_from_params_json(str(p))
    p.write_text("{")
    with pytest.raises(UsageError, match="params.json: not valid JSON"):
        checkpoint.args_from_params_json(str(p))
    with pytest.raises(ValueError, match="not divisible"):
        ModelArgs(dim=65, n_heads=4)
    with pytest.raises(ValueError, match="unknown model name"):
        ModelArgs.from_name("llama9-1t")


# ---------------------------------------------------------------------------
# Formats: this project's, Meta's, Hugging Face's, DCP


def test_meta_params_json_loads(tmp_path):
    # Llama 3.1 8B's params.json, verbatim
    params = {"dim": 4096, "ffn_dim_multiplier": 1.3, "multiple_of": 1024, "n_heads": 32,
              "n_kv_heads": 8, "n_layers": 32, "norm_eps": 1e-05, "rope_theta": 500000.0,
              "use_scaled_rope": True, "vocab_size": 128256}
    p = tmp_path / "params.json"
    p.write_text(json.dumps(params))
    args = checkpoint.args_from_params_json(str(p))
    assert args.max_seq_len == 131072 and count_params(args) == 8_030_261_248


def test_hf_round_trip_identical():
    args = tiny_args(n_kv_heads=1)
    sd = build(args).state_dict()
    back = checkpoint.convert_hf_state_dict(checkpoint.to_hf_state_dict(sd, args), args)
    assert set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    # and the permutation is a real change (q rows reordered), not the identity
    hf = checkpoint.to_hf_state_dict(sd, args)
    assert not torch.equal(hf["model.layers.0.self_attn.q_proj.weight"], sd["layers.0.attention.wq.weight"])
    # config round trip
    back_args = checkpoint.args_from_hf_config(checkpoint.to_hf_config(args))
    assert back_args.ffn_hidden_dim == args.ffn_hidden_dim
    assert count_params(back_args) == count_params(args)
    for field in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "norm_eps", "rope_theta",
                  "use_scaled_rope", "max_seq_len", "tie_embeddings"):
        assert getattr(back_args, field) == getattr(args, field), field


@pytest.mark.parametrize("tied", [False, True])
def test_project_meta_and_hf_checkpoints_load(tmp_path, tied):
    args = tiny_args(tie_embeddings=tied)
    m = build(args)
    tokens = torch.randint(0, 256, (1, 16))
    with torch.no_grad():
        want = m(tokens)
    checkpoint.save_model(m, args, str(tmp_path / "ours"))
    meta = tmp_path / "meta"  # Meta's: params.json + consolidated.00.pth
    meta.mkdir()
    (meta / "params.json").write_text(json.dumps({k: v for k, v in vars(args).items() if v is not None}))
    torch.save(m.state_dict(), meta / "consolidated.00.pth")
    from safetensors.torch import save_file  # Hugging Face's: config.json + model.safetensors
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps(checkpoint.to_hf_config(args)))
    save_file({k: v.contiguous() for k, v in checkpoint.to_hf_state_dict(m.state_dict(), args).items()},
              str(hf / "model.safetensors"))
    for folder, fmt in (("ours", "project"), ("meta", "meta"), ("hf", "hf")):
        assert checkpoint.detect_format(str(tmp_path / folder)) == fmt
        loaded, largs = checkpoint.load_model(str(tmp_path / folder))
        assert (loaded.output.weight is loaded.tok_embeddings.weight) == args.tie_embeddings
        with torch.no_grad():
            got = loaded(tokens)
        assert (got - want).abs().max() < 1e-5, folder


def test_dcp_checkpoint_loads_in_one_process(tmp_path):
    """A DCP folder written by plain dcp.save (no checksums.json) + model_args.json."""
    import torch.distributed.checkpoint as dcp
    args = tiny_args()
    m = build(args)
    out = tmp_path / "dcp"
    dcp.save({"model": m.state_dict()}, checkpoint_id=str(out), no_dist=True)
    (out / "model_args.json").write_text(json.dumps(vars(args)))
    loaded, _ = checkpoint.load_model(str(out))
    for k, v in m.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_checkpoint_atomic_keep_and_export(tmp_path):
    """Single process: temp folders are ignored, only the latest `keep` survive, and
    export writes a model.pt that load_model reads back exactly."""
    args = tiny_args()
    m = parallel.build_model(args, parallel.setup_distributed(), seed=1)
    opt = _optimizer(m)
    root = str(tmp_path / "ckpt")
    os.makedirs(os.path.join(root, "step_00000099.tmp-dead"))  # a killed save
    assert checkpoint.latest_checkpoint(root) is None
    for step in (1, 2, 3, 4):
        checkpoint.save_checkpoint(root, step, m, opt, model_args=args, extra={"s": step}, keep=2)
    assert sorted(os.listdir(root)) == ["step_00000003", "step_00000004"]
    assert checkpoint.latest_checkpoint(root).endswith("step_00000004")
    record = json.load(open(os.path.join(root, "step_00000004", "checksums.json")))["files"]
    assert {"state.json", "model_args.json", ".metadata", "rng/rank_00000.pt"} <= set(record)
    checkpoint.export_model(m, args, str(tmp_path / "export"))
    loaded, loaded_args = checkpoint.load_model(str(tmp_path / "export"))
    assert loaded_args == args
    for k, v in m.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


# ---------------------------------------------------------------------------
# Averaging: §3.4.3 (annealing checkpoints, into the live model) and §4.1.5 (files)


def test_average_of_two_checkpoints_is_the_elementwise_mean(tmp_path, capsys):
    a, b = build(tiny_args(), seed=1), build(tiny_args(), seed=2)
    tok = tmp_path / "tok.model"
    tok.write_bytes(b"a tokenizer")
    checkpoint.save_model(a, tiny_args(), str(tmp_path / "a"), tokenizer_path=str(tok))
    checkpoint.save_model(b, tiny_args(), str(tmp_path / "b"), tokenizer_path=str(tok))
    out = str(tmp_path / "avg")
    assert checkpoint.main(["average", str(tmp_path / "a"), str(tmp_path / "b"), "--out", out]) == 0
    avg, args = checkpoint.load_model(out)
    assert args == tiny_args() and os.path.exists(os.path.join(out, "tokenizer.model"))
    sa, sb = a.state_dict(), b.state_dict()
    for k, v in avg.state_dict().items():
        torch.testing.assert_close(v, (sa[k] + sb[k]) / 2)
    other = tmp_path / "other.model"
    other.write_bytes(b"another tokenizer")
    assert checkpoint.main(["average", str(tmp_path / "a"), str(tmp_path / "b"), "--out", out,
                            "--tokenizer", str(other)]) == 2
    assert "is not the tokenizer" in capsys.readouterr().err


def test_average_refuses_mismatched_checkpoints(tmp_path):
    checkpoint.save_model(build(tiny_args()), tiny_args(), str(tmp_path / "a"))
    checkpoint.save_model(build(tiny_args(n_layers=3)), tiny_args(n_layers=3), str(tmp_path / "b"))
    with pytest.raises(UsageError, match="n_layers: 2 vs 3"):
        checkpoint.average_checkpoints([str(tmp_path / "a"), str(tmp_path / "b")], str(tmp_path / "avg"))
    with pytest.raises(UsageError, match="at least two"):
        checkpoint.average_checkpoints([str(tmp_path / "a")], str(tmp_path / "avg"))
    assert not os.path.exists(tmp_path / "avg")


def test_average_dcp_checkpoints_into_the_model(tmp_path):
    args, m, opt, root = _dcp_run(tmp_path, steps=(1, 2, 3))
    paths = [os.path.join(root, f"step_{s:08d}") for s in (2, 3)]
    sds = [checkpoint.load_model(p)[0].state_dict() for p in paths]
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    checkpoint.average_checkpoints(paths, model=m)
    assert torch.equal(torch.rand(3), before)  # weights only: the RNG is not touched
    for k, v in m.state_dict().items():
        torch.testing.assert_close(v, (sds[0][k] + sds[1][k]) / 2)
