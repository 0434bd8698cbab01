"""Inference-only weights (§6.2): matrices laid out for decoding, and int8 weight-only
quantization. Both rewrite a loaded model in place and leave its outputs as they were
(fusing) or within rounding (int8); sample.py's CLI applies them before generating.

    import quantize
    quantize.fuse_for_decoding(model)        # one wqkv and one w13 matmul per layer
    quantize.quantize_int8(model, ffn_only=True)  # §6.2's choice: FFN of the inner layers
    quantize.model_bytes(model)              # bytes every decoding step reads
"""
from __future__ import annotations

import torch

import model as M


# -----------------------------------------------------------------------------
# 3b. Decoding-ready matrices: fused, and stored the way the kernel is fastest
#
# A decoding step multiplies a few rows (the batch) by every matrix of the model, so
# on a CPU each matmul is a fixed library-call cost plus streaming the matrix from the
# cache hierarchy. Three changes that leave the arithmetic as it is:
# - fuse: wq|wk|wv -> one wqkv, w1|w3 -> one w13 (gpt-fast, vLLM and llama.cpp do the
#   same): 7 matmuls per layer become 4.
# - fp32: MKL's sgemm with a few rows reads the matrix faster as (in, out) than as
#   nn.Linear's (out, in), so fp32 matrices are stored input-major.
# - bf16: oneDNN's AMX kernel wants the matrix in its own blocked layout and, given an
#   nn.Linear weight, re-lays it out inside every call. Done once here instead
#   ("prepacking", what inductor's freezing and IPEX do).

PLAIN, INPUT_MAJOR, ONEDNN = "out_in", "in_out", "onednn"  # DecodeLinear layouts


def decoding_layout(weight: torch.Tensor) -> str:
    """The fastest layout measured for this weight's device and dtype (see above)."""
    if weight.device.type != "cpu":
        return PLAIN  # cuBLAS reads either layout at full speed
    if weight.dtype == torch.float32:
        return INPUT_MAJOR
    if weight.dtype == torch.bfloat16 and torch.backends.mkldnn.is_available():
        return ONEDNN
    return PLAIN


@torch.library.custom_op("llama3::onednn_linear", mutates_args=())
def onednn_linear(x: torch.Tensor, packed: torch.Tensor, out_features: int) -> torch.Tensor:
    """x (..., in) @ a oneDNN-prepacked (out, in) matrix -> (..., out). A custom op so
    that torch.compile calls it as one opaque kernel (inductor cannot lower the packed
    tensor itself); out_features tells the compiler the output shape."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")


@onednn_linear.register_fake
def _(x, packed, out_features):
    return x.new_empty(*x.shape[:-1], out_features)


class DecodeLinear(torch.nn.Module):
    """y = x · Wᵀ for W (out, in) -- nn.Linear's weight -- kept in `layout`:
    "out_in" as given (F.linear), "in_out" its contiguous transpose (x @ Wᵀ), or
    "onednn" prepacked for oneDNN (then W is held only in that opaque form: not a
    buffer, no state dict entry, no .to(); fuse after choosing device and dtype).
    `weight` is always the (out, in) matrix, so Int8Linear and code that reads
    .weight.shape see an nn.Linear."""

    def __init__(self, weight: torch.Tensor, layout: str):
        super().__init__()
        w = weight.detach()
        self.layout, self.in_features, self.out_features = layout, w.shape[1], w.shape[0]
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w.contiguous()) if layout == ONEDNN else None
        stored = None if layout == ONEDNN else (w.t() if layout == INPUT_MAJOR else w).contiguous()
        self.register_buffer("stored", stored)

    @property
    def weight(self) -> torch.Tensor:  # (out, in)
        if self.layout == ONEDNN:
            return self.packed.to_dense()
        return self.stored.t() if self.layout == INPUT_MAJOR else self.stored

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if self.layout == ONEDNN:
            return onednn_linear(x, self.packed, self.out_features)
        if self.layout == INPUT_MAJOR:
            return x @ self.stored
        return torch.nn.functional.linear(x, self.stored)


def _refuse_sharded(model: M.Transformer, what: str, advice: str) -> None:
    """The inference-only rewrites below work on whole matrices, not DTensor shards."""
    if any(hasattr(p, "to_local") for p in model.parameters()):
        raise ValueError(f"{what}: the model is sharded (tensor parallel); {advice}")


@torch.no_grad()
def fuse_for_decoding(model: M.Transformer) -> M.Transformer:
    """Inference only, in place: every layer's wq, wk, wv become one `wqkv` and w1, w3
    one `w13` (model.Attention / model.FeedForward use them when present), and every
    matrix is stored in decoding_layout (above). The separate matrices are dropped, so
    memory stays the same; the state dict changes (save the unfused model), and the
    device and dtype are fixed from here on (move or cast the model before).
    The logits are those of the unfused model up to float rounding (tested). Call it
    before quantize_int8, which then quantizes the fused matrices. Returns the model."""
    _refuse_sharded(model, "fuse_for_decoding", "the fused matrices would mix shards -- decode it unfused")
    if any(layer.attention.wqkv is not None for layer in model.layers.values()):
        return model  # already fused
    if any(isinstance(m, Int8Linear) for m in model.modules()):
        raise ValueError("fuse_for_decoding: the model is already quantized; fuse first, then quantize_int8")
    layout = decoding_layout(model.tok_embeddings.weight)

    def decode_linear(*linears):  # rows of each matrix, stacked: (sum of outs, in)
        return DecodeLinear(torch.cat([lin.weight for lin in linears]), layout)

    for layer in model.layers.values():
        attention, ffn = layer.attention, layer.feed_forward
        attention.wqkv = decode_linear(attention.wq, attention.wk, attention.wv)
        attention.wo = decode_linear(attention.wo)
        ffn.w13 = decode_linear(ffn.w1, ffn.w3)  # (2·hidden, dim): gate rows, then up rows
        ffn.w2 = decode_linear(ffn.w2)
        attention.wq = attention.wk = attention.wv = ffn.w1 = ffn.w3 = None
    if model.output.weight is not model.tok_embeddings.weight:  # a tied output stays shared
        model.output = decode_linear(model.output)
    return model


# -----------------------------------------------------------------------------
# 3c. Int8 weight-only quantization: fewer bytes per step (§6.2)
#
# §6.2 serves the 405B model with FP8 row-wise quantization of the feed-forward
# weights, because decoding is bound by the bytes each step must read. A CPU has no
# FP8 matmuls, so we do the same thing with int8: every row of a weight matrix gets one
# scale (its absolute max / 127) and 8-bit integers, a quarter of fp32's bytes.
# Activations stay in bf16 (PyTorch's CPU int8 kernel is fast for bf16 inputs only).
# The embedding table is not quantized: a step reads one row. It pays off most where
# the weights outgrow the CPU's last-level cache.


class Int8Linear(torch.nn.Module):
    """y = x · (q · s)ᵀ: q (out, in) int8, s (out,) one scale per output row.

    The int8 matrix is registered as `weight` (same shape as the nn.Linear it
    replaces), so code that reads layer.wk.weight.shape keeps working."""

    def __init__(self, linear: torch.nn.Linear, act_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        w = linear.weight.detach().float().contiguous()  # (out, in) (a view of an input-major DecodeLinear)
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (out,): row-wise, as §6.2
        self.register_buffer("weight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(act_dtype))
        self.in_features, self.out_features = w.shape[1], w.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        shape = x.shape
        if x.device.type == "cpu":  # fused int8-weight matmul (gpt-fast's int8 path on CPU)
            y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, shape[-1]), self.weight, self.scale.to(x.dtype))
            return y.view(*shape[:-1], self.out_features)
        # elsewhere: dequantize on the fly (correct; saves memory, not time)
        return torch.nn.functional.linear(x, self.weight.to(x.dtype)) * self.scale.to(x.dtype)


def quantize_int8(model: M.Transformer, ffn_only: bool = False,
                  act_dtype: torch.dtype = torch.bfloat16) -> M.Transformer:
    """Replace the model's matrices by Int8Linear, in place, for inference only.

    ffn_only=True is the paper's choice for the 405B model (§6.2): feed-forward weights
    of all but the first and last layers; attention and the output layer stay. The
    default quantizes every matrix but the embedding (the fastest here). The rest of
    the model is cast to act_dtype first. Returns the model."""
    _refuse_sharded(model, "quantize_int8", "quantize before sharding or decode without --quantize")
    model.to(act_dtype)
    n = model.args.n_layers
    targets = []  # (parent module, attribute name)
    for i, layer in enumerate(model.layers.values()):
        if ffn_only and i in (0, n - 1):
            continue  # §6.2: first and last Transformer layers are not quantized
        # the separate matrices, or the fused ones of fuse_for_decoding
        targets += [(layer.feed_forward, name) for name in ("w1", "w3", "w13", "w2")
                    if getattr(layer.feed_forward, name) is not None]
        if not ffn_only:
            targets += [(layer.attention, name) for name in ("wq", "wk", "wv", "wqkv", "wo")
                        if getattr(layer.attention, name) is not None]
    if not ffn_only and model.output.weight is not model.tok_embeddings.weight:
        targets.append((model, "output"))  # a tied output shares the embedding: keep it
    for parent, name in targets:
        setattr(parent, name, Int8Linear(getattr(parent, name), act_dtype))
    return model


# -----------------------------------------------------------------------------
# 3d. Bytes per decoding step: what bounds its speed


def model_bytes(model: M.Transformer) -> int:
    """Bytes of all weights (each read once per decoding step), int8 ones included;
    tied tensors counted once, the KV cache (not persistent) not at all."""
    seen, total = set(), 0
    for t in model.state_dict().values():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    # matrices prepacked for oneDNN live outside the state dict (DecodeLinear)
    return total + sum(m.packed.numel() * m.packed.element_size() for m in model.modules()
                       if isinstance(m, DecodeLinear) and m.packed is not None)


def decode_bandwidth(model: M.Transformer, stats: dict) -> float:
    """Memory bandwidth achieved while decoding, GB/s: every step reads all weights and
    the whole static KV cache (rows x layers x 2 x n_kv_heads x S x head_dim)."""
    a = model.args
    dtype_bytes = model.tok_embeddings.weight.element_size()
    cache_bytes = stats["rows"] * a.n_layers * 2 * a.n_kv_heads * stats["cache_len"] * a.head_dim * dtype_bytes
    if stats["decode_steps"] == 0 or stats["decode_s"] <= 0:
        return 0.0
    return (model_bytes(model) + cache_bytes) * stats["decode_steps"] / stats["decode_s"] / 1e9
