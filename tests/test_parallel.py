"""Tests of parallel.py (and checkpoint.py's distributed save/load) on CPU with gloo (§3.3.2).

One torch.multiprocessing spawn of 2 ranks (module-scoped fixture) runs most
multi-process checks -- torch start-up costs ~3 s per process, so it is paid once:
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
  * tied embeddings (Llama 3.2) under FSDP (+ activation checkpointing) and TP;
  * context parallel 2 and pipeline parallel 2 (1F1B and interleaved, whose 4 stages
    of a 2-layer model include an embedding-only and an output-only stage): 10
    steps each; the gradients of a CP 2 step (document mask, uneven ignored
    targets over the CP ranks) against one process's;
  * a PP 2 checkpoint resumed on 1 rank (in the pytest process) and on TP 2, and
    the FSDP checkpoint resumed as PP 2 (interleaved).
A spawn of 8 ranks runs FSDP 2 x TP 2 x PP 2, FSDP 2 x TP 2 x CP 2 and FSDP 2 x CP 2 x
PP 2 (interleaved) (processes may outnumber the cores).
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
import pretrain
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
    # one ignored target per row (as at a document boundary): the same count in every
    # FSDP half of the batch, 3 vs 1 over the CP ranks' halves of the rows (T=16, CP 2:
    # rank 0 holds positions 0-3 and 12-15)
    targets = tokens[:, 1:].clone()
    targets[torch.arange(B), (3 + 5 * torch.arange(B)) % T] = -100
    return tokens[:, :-1], targets, doc_ids


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


def _layout_step(m, opt, step, d, *, update=True):
    """One step of pretrain.train's kind in any layout: this rank's rows of the global
    batch (its dp slice; under CP its share of every row), the loss through the
    pipeline schedule or lm_loss, clipping over the pipeline stages, AdamW. Returns
    (loss averaged over ranks, grad norm) as floats."""
    x, y, doc_ids = _batch(step)
    per = B // d.dp_size
    rows = slice(d.dp_rank * per, d.dp_rank * per + per)
    batch = parallel.context_parallel_batch({"inputs": x[rows], "targets": y[rows], "doc_ids": doc_ids[rows]}, d)
    pipeline = getattr(m, "pipeline", None)
    if pipeline is not None:
        loss = pipeline.step(batch, grad_scale=1.0)  # forward and backward, the loss on every rank
    else:
        loss = pretrain.lm_loss(m, batch)
        loss.backward()
    if not update:
        return loss
    norm = parallel.clip_grad_norm_(m.parameters(), MAX_NORM, pp_group=d.group("pp") if pipeline else None)
    opt.step()
    opt.zero_grad(set_to_none=True)
    loss = loss.detach()
    if d.world_size > 1:
        torch.distributed.all_reduce(loss, op=torch.distributed.ReduceOp.AVG)
    return loss.item(), float(norm)


def _train_layout(res, name, d, args, *, steps=STEPS, save_at=None, ckpt=None, **build):
    m = parallel.build_model(args, d, seed=0, **build)
    opt = _optimizer(m)
    res[f"{name}_loss"], res[f"{name}_norm"] = [], []
    for step in range(steps):
        if step == save_at:
            checkpoint.save_checkpoint(ckpt, step, m, opt, model_args=args, extra={"data_position": 78})
        loss, norm = _layout_step(m, opt, step, d)
        res[f"{name}_loss"].append(loss)
        res[f"{name}_norm"].append(norm)
    return m, opt


def _resume_layout(res, name, d, args, path, **build):
    """Load a checkpoint into a fresh model of layout d (built from another seed): the
    loss of the next step."""
    m = parallel.build_model(args, d, seed=7, **build)
    opt = _optimizer(m)
    res[f"{name}_state"] = checkpoint.load_checkpoint(path, m, opt)
    res[f"{name}_loss"] = _layout_step(m, opt, res[f"{name}_state"]["step"], d)[0]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_env(rank, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def _worker(rank, world, port, out_dir):
    _rank_env(rank, world, port)
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

    # --- FSDP over dp=2, resharding after forward (ZeRO-3; every other layout here keeps
    # the gathered weights, the default)
    d = parallel.setup_distributed(tp=1)
    assert (d.dp_size, d.tp_size) == (2, 1)
    m = parallel.build_model(args, d, seed=0, reshard_after_forward=True)
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

    # --- context parallel 2: every row split over the two ranks, keys and values
    # all-gathered; pipeline parallel 2, 1F1B and interleaved (stages 0 and 2 on rank 0,
    # 1 and 3 on rank 1: [embedding], [layer 1] and [layer 0], [norm + output])
    d = parallel.setup_distributed(cp=2)
    assert (d.dp_size, d.cp_size, d.cp_rank, d.dp_rank) == (1, 2, rank, 0)
    _train_layout(res, "cp2", d, args)
    m = parallel.build_model(args, d, seed=0)  # one CP step's gradients, gathered whole
    _layout_step(m, None, 0, d, update=False)
    res["cp2_grads"] = {k: p.grad.full_tensor() for k, p in m.named_parameters()}
    ref = parallel.build_model(args, single, seed=0)
    x, y, doc_ids = _batch(0)
    pretrain.lm_loss(ref, {"inputs": x, "targets": y, "doc_ids": doc_ids}).backward()
    res["ref_grads"] = {k: p.grad.clone() for k, p in ref.named_parameters()}
    d = parallel.setup_distributed(pp=2)
    pp_root = os.path.join(out_dir, "ckpt_pp")
    m, _ = _train_layout(res, "pp2", d, args, save_at=SAVE_AT, ckpt=pp_root)
    res["pp2_layers"] = sorted(m.layers)
    checkpoint.export_model(m, args, os.path.join(out_dir, "export_pp"))  # the stages gathered on rank 0
    m, _ = _train_layout(res, "pp2_interleaved", d, args, pp_schedule="Interleaved1F1B")
    res["pp2_interleaved_stages"] = [(s, sorted(st.layers), st.tok_embeddings is not None, st.output is not None)
                                     for s, st in zip(m.pipeline.stage_ids, m.pipeline.stages)]
    # checkpoints across layouts: the FSDP one into PP 2 (interleaved), the PP 2 one
    # into TP 2 (and, in the pytest process, into 1 rank)
    _resume_layout(res, "pp2_from_fsdp", d, args, os.path.join(ckpt_root, f"step_{SAVE_AT:08d}"),
                   pp_schedule="Interleaved1F1B")
    d = parallel.setup_distributed(tp=2)
    _resume_layout(res, "tp2_from_pp", d, args, os.path.join(pp_root, f"step_{SAVE_AT:08d}"))

    torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    parallel.teardown_distributed()


def _spawn(worker, world, out, *args):
    mp.spawn(worker, args=(world, _free_port(), out, *args), nprocs=world, join=True)
    return [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(world)]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("parallel2"))
    return out, _spawn(_worker, 2, out)


# The layouts of 8 ranks: (name, mesh degrees, build_model options), FSDP 2 in each.
# One launch for all three: starting 8 processes costs more than their 30 steps.
LAYOUTS_8 = [("fsdp2_tp2_pp2", dict(tp=2, pp=2), {}),
             ("fsdp2_tp2_cp2", dict(tp=2, cp=2), {}),
             ("fsdp2_cp2_pp2_interleaved", dict(cp=2, pp=2), dict(pp_schedule="Interleaved1F1B", pp_microbatches=2))]


def _layouts_worker(rank, world, port, out_dir):
    _rank_env(rank, world, port)
    res = {}
    for name, degrees, build in LAYOUTS_8:
        d = parallel.setup_distributed(**degrees)
        _train_layout(res, name, d, ModelArgs(**TINY), **build)
    torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
    parallel.teardown_distributed()


@pytest.fixture(scope="module")
def reference():
    """The single-process run every layout is held to (losses and grad norms)."""
    single = parallel.Dist(0, 0, 1, torch.device("cpu"), None, 1, 1, None)
    res = {}
    m, _ = _train_layout(res, "ref", single, ModelArgs(**TINY))
    res["ref_final"] = m.state_dict()
    return res


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


# -----------------------------------------------------------------------------
# context and pipeline parallel (§3.3.2)


def test_context_and_pipeline_parallel_two_ranks_match_one_process(two_ranks, reference):
    _, results = two_ranks
    _assert_close_rel(reference["ref_loss"], results[0]["ref_loss"])  # the same run as _train_step's
    for r in results:
        for name in ("cp2", "pp2", "pp2_interleaved"):
            assert len(r[f"{name}_loss"]) == STEPS
            _assert_close_rel(r[f"{name}_loss"], r["ref_loss"])
            _assert_close_rel(r[f"{name}_norm"], r["ref_norm"])
    # §3.3.2's balancing: 2 layers over 2 stages -> 1 + 1; over 4 (interleaved): the
    # first stage holds only the embedding, the last only norm + output
    assert results[0]["pp2_layers"] == ["0"] and results[1]["pp2_layers"] == ["1"]
    assert results[0]["pp2_interleaved_stages"] == [(0, [], True, False), (2, ["1"], False, False)]
    assert results[1]["pp2_interleaved_stages"] == [(1, ["0"], False, False), (3, [], False, True)]


def test_context_parallel_gradients_equal_one_process(two_ranks):
    """One CP 2 step with two documents per row and the ignored targets spread 3:1
    over the two ranks: every parameter's gradient equals one process's."""
    _, results = two_ranks
    got, ref = results[0]["cp2_grads"], results[0]["ref_grads"]
    assert set(got) == set(ref)
    for k, g in ref.items():
        torch.testing.assert_close(got[k], g, rtol=1e-5, atol=1e-8, msg=k)


def test_layouts_of_8_ranks_match_one_process(tmp_path, reference):
    """FSDP 2 x TP 2 x PP 2, FSDP 2 x TP 2 x CP 2, FSDP 2 x CP 2 x PP 2 (interleaved)."""
    results = _spawn(_layouts_worker, 8, str(tmp_path))
    for r in results:
        for name, _, _ in LAYOUTS_8:
            _assert_close_rel(r[f"{name}_loss"], reference["ref_loss"])
            _assert_close_rel(r[f"{name}_norm"], reference["ref_norm"])


def test_pipeline_checkpoint_resumes_on_one_rank_and_across_layouts(two_ranks, reference):
    out, results = two_ranks
    exported, _ = checkpoint.load_model(os.path.join(out, "export_pp"))  # both stages' weights
    assert set(exported.state_dict()) == set(reference["ref_final"])
    for k, v in reference["ref_final"].items():
        torch.testing.assert_close(exported.state_dict()[k], v, rtol=1e-4, atol=1e-5, msg=k)
    path = os.path.join(out, "ckpt_pp", f"step_{SAVE_AT:08d}")
    args = ModelArgs(**TINY)
    one = parallel.Dist(0, 0, 1, torch.device("cpu"), None, 1, 1, None)
    m = parallel.build_model(args, one, seed=123)
    opt = _optimizer(m)
    assert checkpoint.load_checkpoint(path, m, opt) == {"data_position": 78, "step": SAVE_AT}
    losses = [_train_step(m, opt, step)[0].item() for step in range(SAVE_AT, STEPS)]
    _assert_close_rel(losses, results[0]["pp2_loss"][SAVE_AT:])
    for r in results:
        _assert_close_rel([r["tp2_from_pp_loss"]], [r["pp2_loss"][SAVE_AT]])
        _assert_close_rel([r["pp2_from_fsdp_loss"]], [r["fsdp_loss"][SAVE_AT]])


def test_pipeline_layers_balance_first_and_last_stage():
    assert parallel.pipeline_layers(126, 16) == [7] + [8] * 14 + [7]  # 405B, PP 16 (§3.3.2)
    assert parallel.pipeline_layers(32, 4) == [7, 9, 9, 7]
    assert parallel.pipeline_layers(2, 4) == [0, 1, 1, 0]
    assert parallel.pipeline_layers(5, 2, balance=False) == [3, 2]
    assert parallel.context_parallel_indices(8, 2, 0).tolist() == [0, 1, 6, 7]
    assert parallel.context_parallel_indices(8, 2, 1).tolist() == [2, 3, 4, 5]
    with pytest.raises(ValueError, match="cannot fill"):
        parallel.pipeline_layers(1, 4)
    # tied embeddings (Llama 3.2) would span the first and the last stage: refused
    two_stages = parallel.Dist(0, 0, 2, torch.device("cpu"), "gloo", 1, 1, None, pp_size=2)
    with pytest.raises(ValueError, match="untied embeddings"):
        parallel.build_model(ModelArgs(**dict(TINY, tie_embeddings=True)), two_stages)
