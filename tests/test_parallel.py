"""Tests of parallel.py (and checkpoint.py's distributed save/load) on CPU with gloo, 2 ranks (§3.3).

One torch.multiprocessing spawn of 2 ranks (module-scoped fixture) runs every
multi-process check -- torch start-up costs ~3 s per process, so it is paid once:
  * a single-process reference: 10 AdamW steps with gradient clipping on a global
    batch of 4 rows, from build_model(seed=0) on one process (computed on each rank);
  * FSDP over 2 ranks (dp=2): same global batch split 2 rows per rank;
  * tensor parallel over 2 ranks (tp=2): full batch on both ranks;
  * for both layouts: the initial weights (meta build -> shard -> to_empty ->
    init_weights) gathered to full tensors, compared with a direct 1-process init;
  * a 2-rank FSDP checkpoint at step 5 (+ RNG draw after saving), resumed on 1 rank
    in the pytest process, and loaded into the TP layout on 2 ranks;
  * clip_grad_norm_ on DTensor + plain gradients; bf16 mixed precision under FSDP;
  * export from TP to model.pt, loaded back and re-sharded with parallelize();
  * tied embeddings (Llama 3.2) under FSDP (+ activation checkpointing) and TP.
Everything runs in fp32 on gloo; "equal" means 1e-5 relative for losses, bitwise for
weights that are only moved, never recomputed.
The ranks write their numbers to files; the assertions are in the test functions.
"""
import json
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

import checkpoint
import parallel
from model import ModelArgs, Transformer

TINY = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, multiple_of=32, max_seq_len=64)
STEPS, SAVE_AT, LR, MAX_NORM = 10, 5, 3e-3, 0.5
B, T = 4, 16  # global batch: 4 rows of 16 tokens (+1 for the targets)


def _batch(step):
    # two batches, alternating: enough to see the loss fall in 10 steps
    g = torch.Generator().manual_seed(1000 + step % 2)
    tokens = torch.randint(0, TINY["vocab_size"], (B, T + 1), generator=g)
    # packed rows: two documents per row, so the document mask (§3.2) is exercised too
    doc_ids = (torch.arange(T) >= torch.tensor([5, 9, 12, 3])[:, None]).long()  # (B, T)
    return tokens[:, :-1], tokens[:, 1:], doc_ids


def _optimizer(m):
    return torch.optim.AdamW(m.parameters(), lr=LR, weight_decay=0.1, betas=(0.9, 0.95))


def _train_step(m, opt, step, rows=slice(None)):
    """One step on rows `rows` of the global batch; returns (loss, grad norm) as floats.
    The loss is the mean over this rank's rows; FSDP averages the gradients over
    ranks, so with equal row counts this is the global mean's gradient."""
    x, y, doc_ids = _batch(step)
    logits = m(x[rows], doc_ids=doc_ids[rows])
    y = y[rows]
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    loss.backward()
    norm = parallel.clip_grad_norm_(m.parameters(), MAX_NORM)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach(), float(norm)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor
    args = ModelArgs(**TINY)
    res = {}

    # --- single-process reference (each rank computes it; no communication)
    single = parallel.Dist(0, 0, 1, torch.device("cpu"), None, 1, 1, None)
    ref = parallel.build_model(args, single, seed=0)
    res["ref_init"] = {k: v.clone() for k, v in ref.state_dict().items()}
    opt = _optimizer(ref)
    res["ref_loss"], res["ref_norm"] = [], []
    for step in range(STEPS):
        if step == SAVE_AT:
            res["ref_sd_at_save"] = {k: v.clone() for k, v in ref.state_dict().items()}
        loss, norm = _train_step(ref, opt, step)
        res["ref_loss"].append(loss.item())
        res["ref_norm"].append(norm)

    # --- FSDP over dp=2
    d = parallel.setup_distributed(tp=1)
    assert (d.dp_size, d.tp_size) == (2, 1)
    m = parallel.build_model(args, d, seed=0)
    assert all(isinstance(p, DTensor) for p in m.parameters())
    res["fsdp_init"] = checkpoint.full_state_dict(m)  # rank 0 only; {} elsewhere
    opt = _optimizer(m)  # right after sharding: it holds the DTensor shards
    rows = slice(d.dp_rank * 2, d.dp_rank * 2 + 2)
    res["fsdp_loss"], res["fsdp_norm"] = [], []
    ckpt_root = os.path.join(out_dir, "ckpt")
    for step in range(STEPS):
        if step == SAVE_AT:
            torch.manual_seed(1234 + rank)
            checkpoint.save_checkpoint(ckpt_root, step, m, opt, model_args=args, extra={"data_position": 77})
            res["fsdp_sd_at_save"] = checkpoint.full_state_dict(m)
            res["rng_after_save"] = torch.rand(3)
        loss, norm = _train_step(m, opt, step, rows)
        dist.all_reduce(loss, op=dist.ReduceOp.AVG)  # global mean of the two halves
        res["fsdp_loss"].append(loss.item())
        res["fsdp_norm"].append(norm)

    # clip_grad_norm_ on sharded (DTensor) and plain gradients mixed
    for p in m.parameters():
        p.grad = torch.distributed.tensor.distribute_tensor(
            torch.full(p.shape, 0.5), p.device_mesh, p.placements)
    plain = torch.nn.Parameter(torch.zeros(3))
    plain.grad = torch.tensor([3.0, 4.0, 12.0])  # norm 13
    n_elements = sum(p.numel() for p in m.parameters())
    res["mixed_norm"] = float(parallel.clip_grad_norm_(list(m.parameters()) + [plain], 1e9))
    res["mixed_expected"] = math.sqrt(0.25 * n_elements + 169.0)

    # --- tensor parallel, tp=2 (same process group, a new mesh), with activation
    # checkpointing (its recomputation re-runs TP's collectives in backward)
    d = parallel.setup_distributed(tp=2)
    assert (d.dp_size, d.tp_size) == (1, 2)
    m = parallel.build_model(args, d, seed=0, activation_checkpointing=True)
    wq = m.layers["0"].attention.wq.weight
    res["tp_wq_local_shape"] = tuple(wq.to_local().shape)
    res["tp_init"] = checkpoint.full_state_dict(m)
    opt = _optimizer(m)
    res["tp_loss"], res["tp_norm"] = [], []
    for step in range(STEPS):
        loss, norm = _train_step(m, opt, step)  # every TP rank sees the whole batch
        res["tp_loss"].append(loss.item())
        res["tp_norm"].append(norm)

    checkpoint.export_model(m, args, os.path.join(out_dir, "export_tp"))
    res["tp_final"] = checkpoint.full_state_dict(m)

    # --- post-training's path: load a single-file checkpoint, then parallelize (FSDP
    # slices the loaded values); the sharded model computes the same loss
    loaded, _ = checkpoint.load_model(os.path.join(out_dir, "export_tp"))
    x, y, doc_ids = _batch(0)
    with torch.no_grad():
        res["loaded_loss"] = F.cross_entropy(loaded(x, doc_ids=doc_ids).flatten(0, 1), y.flatten()).item()
    d_fsdp = parallel.setup_distributed(tp=1)
    parallel.parallelize(loaded, d_fsdp)
    res["loaded_sharded_sd"] = checkpoint.full_state_dict(loaded)
    rows = slice(d_fsdp.dp_rank * 2, d_fsdp.dp_rank * 2 + 2)
    with torch.no_grad():
        loss = F.cross_entropy(loaded(x[rows], doc_ids=doc_ids[rows]).flatten(0, 1), y[rows].flatten())
    dist.all_reduce(loss, op=dist.ReduceOp.AVG)
    res["loaded_sharded_loss"] = loss.item()

    # --- the FSDP checkpoint loaded into the TP layout (DCP reshards): the next
    # step's loss is the FSDP run's
    m = parallel.build_model(args, d, seed=5)
    opt = _optimizer(m)
    res["tp_resumed_state"] = checkpoint.load_checkpoint(os.path.join(ckpt_root, f"step_{SAVE_AT:08d}"), m, opt)
    res["tp_resumed_loss"] = _train_step(m, opt, SAVE_AT)[0].item()

    # --- bf16 mixed precision under FSDP: bf16 compute, fp32 master weights and
    # fp32 (reduced) gradients
    d = parallel.setup_distributed(tp=1)
    m = parallel.build_model(args, d, seed=0, param_dtype="bf16")
    x, y, doc_ids = _batch(0)
    rows = slice(d.dp_rank * 2, d.dp_rank * 2 + 2)
    logits = m(x[rows], doc_ids=doc_ids[rows])
    loss = F.cross_entropy(logits.flatten(0, 1), y[rows].flatten())
    loss.backward()
    dist.all_reduce(loss.detach(), op=dist.ReduceOp.AVG)
    res["bf16_loss"] = loss.item()
    res["bf16_dtypes"] = sorted({str(p.dtype) for p in m.parameters()} | {str(p.grad.dtype) for p in m.parameters()})

    # --- tied embeddings (Llama 3.2 1B/3B): one matrix, in one FSDP group / one TP
    # sharding; init equals a direct init, and 3 steps match one process
    tied = ModelArgs(**dict(TINY, tie_embeddings=True))
    ref = parallel.build_model(tied, single, seed=0)
    opt = _optimizer(ref)
    res["tied_ref_loss"] = [_train_step(ref, opt, step)[0].item() for step in range(3)]
    for tp in (1, 2):
        d = parallel.setup_distributed(tp=tp)
        m = parallel.build_model(tied, d, seed=0, activation_checkpointing=(tp == 1))
        assert m.output.weight is m.tok_embeddings.weight
        res[f"tied_init_tp{tp}"] = checkpoint.full_state_dict(m)
        opt = _optimizer(m)
        rows = slice(d.dp_rank * 2, d.dp_rank * 2 + 2) if tp == 1 else slice(None)
        losses = []
        for step in range(3):
            loss, _ = _train_step(m, opt, step, rows)
            if tp == 1:
                dist.all_reduce(loss, op=dist.ReduceOp.AVG)
            losses.append(loss.item())
        res[f"tied_loss_tp{tp}"] = losses

    torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    parallel.teardown_distributed()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("parallel2"))
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    results = [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(2)]
    return out, results


def _assert_close_rel(a, b, rel=1e-5):
    for i, (x, y) in enumerate(zip(a, b)):
        assert abs(x - y) <= rel * abs(y), f"step {i}: {x} vs {y} (relative {abs(x - y) / abs(y):.2e})"


def test_fsdp_two_ranks_matches_one_process(two_ranks):
    _, results = two_ranks
    for r in results:  # both ranks report the same (all-reduced) numbers
        assert len(r["fsdp_loss"]) == STEPS
        _assert_close_rel(r["fsdp_loss"], r["ref_loss"])
        _assert_close_rel(r["fsdp_norm"], r["ref_norm"])
    ref = results[0]["ref_loss"]
    assert ref[-1] < ref[0] - 0.05, "the reference run should learn something"
    assert min(results[0]["ref_norm"]) > MAX_NORM, "clipping should be active in the test"


def test_tensor_parallel_two_ranks_matches_one_process(two_ranks):
    _, results = two_ranks
    # wq (n_heads·hd, dim) = (64, 64) is split by rows over 2 ranks
    assert results[0]["tp_wq_local_shape"] == (32, 64)
    for r in results:
        _assert_close_rel(r["tp_loss"], r["ref_loss"])
        _assert_close_rel(r["tp_norm"], r["ref_norm"])


def test_meta_init_equals_direct_init(two_ranks):
    _, results = two_ranks
    direct = Transformer(ModelArgs(**TINY))
    direct.init_weights(0)
    expected = direct.state_dict()
    for layout in ("fsdp_init", "tp_init"):
        got = results[0][layout]
        assert set(got) == set(expected), layout
        for k, v in expected.items():
            assert torch.equal(got[k], v), f"{layout}: {k} differs from a direct init"
        assert results[1][layout] == {}  # full state dict only on rank 0
    # the 1-process reference (meta build + to_empty + init) too, and its RoPE table
    for k, v in expected.items():
        assert torch.equal(results[0]["ref_init"][k], v), k
    # to_empty leaves the RoPE buffer as garbage; build_model must have recomputed it
    single = parallel.Dist(0, 0, 1, torch.device("cpu"), None, 1, 1, None)
    built = parallel.build_model(ModelArgs(**TINY), single, seed=0)
    assert torch.equal(built.freqs_cis, direct.freqs_cis)


def test_clip_grad_norm_mixed_dtensor_and_plain(two_ranks):
    _, results = two_ranks
    for r in results:
        assert r["mixed_norm"] == pytest.approx(r["mixed_expected"], rel=1e-6)


def test_resume_two_rank_checkpoint_on_one_rank(two_ranks):
    out, results = two_ranks
    root = os.path.join(out, "ckpt")
    path = checkpoint.latest_checkpoint(root)
    assert path is not None and path.endswith(f"step_{SAVE_AT:08d}")
    assert not [d for d in os.listdir(root) if ".tmp-" in d], "temp folder left behind"
    args = ModelArgs(**TINY)
    with open(os.path.join(path, "model_args.json")) as f:
        assert ModelArgs(**json.load(f)) == args
    one = parallel.Dist(0, 0, 1, torch.device("cpu"), None, 1, 1, None)
    m = parallel.build_model(args, one, seed=123)  # different init: must be overwritten
    opt = _optimizer(m)
    state = checkpoint.load_checkpoint(path, m, opt)
    assert state == {"data_position": 77, "step": SAVE_AT}
    # weights: exactly the 2-rank run's at that step (and close to the 1-process run's)
    for k, v in results[0]["fsdp_sd_at_save"].items():
        assert torch.equal(m.state_dict()[k], v), k
        torch.testing.assert_close(v, results[0]["ref_sd_at_save"][k], rtol=1e-4, atol=1e-5)
    # RNG state of rank 0 restored
    assert torch.equal(torch.rand(3), results[0]["rng_after_save"])
    # continuing on one process reproduces the 2-rank run's remaining losses
    losses = [_train_step(m, opt, step)[0].item() for step in range(SAVE_AT, STEPS)]
    _assert_close_rel(losses, results[0]["fsdp_loss"][SAVE_AT:])
    # the DCP folder is also readable by checkpoint.load_model (key prefix "model.")
    loaded, loaded_args = checkpoint.load_model(path)
    assert loaded_args == args
    for k, v in results[0]["fsdp_sd_at_save"].items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_fsdp_checkpoint_loads_into_tensor_parallel_layout(two_ranks):
    _, results = two_ranks
    for r in results:
        assert r["tp_resumed_state"] == {"data_position": 77, "step": SAVE_AT}
        _assert_close_rel([r["tp_resumed_loss"]], [r["fsdp_loss"][SAVE_AT]])


def test_export_from_tensor_parallel(two_ranks):
    out, results = two_ranks
    loaded, args = checkpoint.load_model(os.path.join(out, "export_tp"))
    assert args == ModelArgs(**TINY)
    for k, v in results[0]["tp_final"].items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_tied_embeddings_fsdp_and_tp(two_ranks):
    _, results = two_ranks
    tied = ModelArgs(**dict(TINY, tie_embeddings=True))
    direct = Transformer(tied)
    direct.init_weights(0)
    for tp in (1, 2):
        got = results[0][f"tied_init_tp{tp}"]
        for k, v in direct.state_dict().items():
            assert torch.equal(got[k], v), f"tp={tp}: {k}"
        assert torch.equal(got["output.weight"], got["tok_embeddings.weight"])
        for r in results:
            _assert_close_rel(r[f"tied_loss_tp{tp}"], r["tied_ref_loss"])


def test_bf16_mixed_precision_fsdp(two_ranks):
    _, results = two_ranks
    for r in results:
        assert r["bf16_dtypes"] == ["torch.float32"]  # master weights and gradients
        assert r["bf16_loss"] == pytest.approx(r["ref_loss"][0], rel=2e-2)
        assert r["bf16_loss"] != r["ref_loss"][0]  # ... but the compute was bf16


def test_parallelize_a_loaded_model(two_ranks):
    """Post-training loads a checkpoint on every rank, then shards it."""
    _, results = two_ranks
    for k, v in results[0]["tp_final"].items():
        assert torch.equal(results[0]["loaded_sharded_sd"][k], v), k
    for r in results:
        _assert_close_rel([r["loaded_sharded_loss"]], [r["loaded_loss"]])
