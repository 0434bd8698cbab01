"""Tests of quantize.py: fused decoding matrices and int8 weight-only quantization (§6.2)
keep the model's outputs (exactly, or within rounding). Tiny random models."""
import pytest
import torch

import quantize as Q
import sample as S
from test_sample import PROMPTS, greedy_full_forward, tiny_model




def test_int8_linear_is_rowwise_quantized_linear():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48, bias=False)
    with torch.no_grad():
        lin.weight[3] *= 50  # one row with a much larger range: row-wise scales keep the others precise
    q = Q.Int8Linear(lin, act_dtype=torch.float32)
    assert q.weight.dtype == torch.int8 and q.weight.shape == lin.weight.shape and q.scale.shape == (48,)
    deq = q.weight.float() * q.scale[:, None]
    err = (deq - lin.weight).abs()
    assert (err <= q.scale[:, None] / 2 + 1e-7).all()  # rounding: at most half a step per row
    assert err[torch.arange(48) != 3].max() < lin.weight.abs().max() / 127 / 20  # other rows unharmed
    x = torch.randn(2, 5, 64).bfloat16()
    q_bf16 = Q.Int8Linear(lin, act_dtype=torch.bfloat16)
    y = q_bf16(x)  # the fused CPU kernel
    assert y.shape == (2, 5, 48) and y.dtype == torch.bfloat16
    ref = torch.nn.functional.linear(x.float(), deq)
    assert (y.float() - ref).abs().max() < 0.02 * ref.abs().max()


def test_quantize_int8_model():
    model = tiny_model(seed=5)
    reference = tiny_model(seed=5)
    fp32_bytes = Q.model_bytes(reference)
    Q.quantize_int8(model)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears == []  # every matrix but the embedding is int8 now
    assert model.tok_embeddings.weight.dtype == torch.bfloat16
    # bytes per step: matrices 4x smaller than fp32 (the embedding 2x: bf16)
    emb = model.tok_embeddings.weight.numel()
    assert Q.model_bytes(model) < (fp32_bytes - 4 * emb) / 4 * 1.1 + 2 * emb
    tokens = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        ref, q = reference(tokens), model(tokens)
    assert (q - ref).abs().max() < 0.1 * ref.abs().max()  # close to the unquantized logits
    assert (q.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.85
    # decoding through the cache is consistent with the quantized model's full forward
    out = S.generate(model, None, PROMPTS, max_new_tokens=8, temperature=0)
    assert out == [greedy_full_forward(model, p, 8) for p in PROMPTS]


def test_quantize_int8_ffn_only_is_the_papers_choice():
    model = Q.quantize_int8(tiny_model(n_layers=4), ffn_only=True)
    kinds = [[type(getattr(layer.feed_forward, n)).__name__ for n in ("w1", "w2", "w3")]
             for layer in model.layers.values()]
    assert kinds[0] == kinds[3] == ["Linear"] * 3  # §6.2: first and last layers stay
    assert kinds[1] == kinds[2] == ["Int8Linear"] * 3
    assert all(isinstance(layer.attention.wq, torch.nn.Linear) for layer in model.layers.values())
    assert isinstance(model.output, torch.nn.Linear)


def test_compiled_decoding_equals_eager():
    """--compile (the fused decoding step; CUDA graphs on GPU) gives the same greedy tokens
    as eager decoding, on a left-padded batch, also for the int8 model (the fast CPU path)."""
    model = tiny_model(seed=7)
    eager = S.generate(model, None, PROMPTS, max_new_tokens=8, temperature=0)
    assert S.generate(model, None, PROMPTS, max_new_tokens=8, temperature=0, compile=True) == eager
    Q.quantize_int8(model)
    eager = S.generate(model, None, PROMPTS, max_new_tokens=8, temperature=0)
    torch._dynamo.reset()  # a new graph for the quantized model (its modules changed)
    assert S.generate(model, None, PROMPTS, max_new_tokens=8, temperature=0, compile=True) == eager


def test_fuse_for_decoding_keeps_the_model():
    """fuse_for_decoding (wqkv, w13; fp32 matrices stored input-major on CPU) changes no
    logit beyond float rounding and no greedy token, eager or compiled, and no byte."""
    reference, model = tiny_model(seed=11), tiny_model(seed=11)
    n_bytes = Q.model_bytes(model)
    Q.fuse_for_decoding(model)
    layer = model.layers["0"]
    assert layer.attention.wq is None and layer.feed_forward.w1 is None
    wqkv = layer.attention.wqkv
    assert wqkv.layout == Q.INPUT_MAJOR and wqkv.stored.shape == (64, 64 + 2 * 32)  # (in, out)
    assert torch.equal(wqkv.weight[:64], reference.layers["0"].attention.wq.weight)  # rows of wq first
    assert Q.model_bytes(model) == n_bytes  # the separate matrices are gone, not kept beside
    tokens = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        assert (model(tokens) - reference(tokens)).abs().max() < 1e-4
    eager = S.generate(reference, None, PROMPTS, max_new_tokens=10, temperature=0)
    assert S.generate(model, None, PROMPTS, max_new_tokens=10, temperature=0) == eager
    torch._dynamo.reset()
    assert S.generate(model, None, PROMPTS, max_new_tokens=10, temperature=0, compile=True) == eager
    assert Q.fuse_for_decoding(model) is model  # a second call changes nothing
    with pytest.raises(ValueError, match="fuse first"):
        Q.fuse_for_decoding(Q.quantize_int8(tiny_model()))


def test_fuse_for_decoding_bf16_prepacked():
    """bf16 on CPU: matrices prepacked for oneDNN (opaque; .weight unpacks them exactly),
    called through a custom op that torch.compile keeps whole."""
    reference = tiny_model(seed=13).bfloat16()
    model = Q.fuse_for_decoding(tiny_model(seed=13).bfloat16())
    w13 = model.layers["1"].feed_forward.w13
    if not torch.backends.mkldnn.is_available():
        assert w13.layout == Q.PLAIN
    else:
        assert w13.layout == Q.ONEDNN and w13.stored is None and w13.packed.is_mkldnn
        ffn = reference.layers["1"].feed_forward
        assert torch.equal(w13.weight, torch.cat([ffn.w1.weight, ffn.w3.weight]))
        assert Q.model_bytes(model) == Q.model_bytes(reference)
    tokens = torch.tensor([PROMPTS[3]])
    with torch.no_grad():
        ref, out = reference(tokens), model(tokens)
    assert (out - ref).abs().max() < 0.02 * ref.abs().max()  # bf16 rounding, nothing more
    eager = S.generate(reference, None, PROMPTS, max_new_tokens=8, temperature=0)
    assert S.generate(model, None, PROMPTS, max_new_tokens=8, temperature=0) == eager
    torch._dynamo.reset()
    assert S.generate(model, None, PROMPTS, max_new_tokens=8, temperature=0, compile=True) == eager


def test_fused_then_int8_equals_int8():
    """Row-wise scales make quantizing the fused matrices the same as quantizing the
    separate ones: stacking rows stacks their scales."""
    fused = Q.quantize_int8(Q.fuse_for_decoding(tiny_model(seed=12)))
    plain = Q.quantize_int8(tiny_model(seed=12))
    assert isinstance(fused.layers["1"].attention.wqkv, Q.Int8Linear)
    assert torch.equal(fused.layers["1"].feed_forward.w13.weight[:fused.layers["1"].feed_forward.w2.in_features],
                       plain.layers["1"].feed_forward.w1.weight)
    tokens = torch.tensor([PROMPTS[3]])
    with torch.no_grad():
        assert (fused(tokens).float() - plain(tokens).float()).abs().max() < 0.05
    assert S.generate(fused, None, PROMPTS, max_new_tokens=8, temperature=0) == \
        S.generate(plain, None, PROMPTS, max_new_tokens=8, temperature=0)