"""Shared test setup: the repository root on sys.path (the project is flat files),
and a modest thread count so parallel test processes share 2 cores politely."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


# -----------------------------------------------------------------------------
# Shared by the post-training and sampling tests: a tiny model and a byte tokenizer


def tiny_args(**kw):
    """A 2-layer GQA model over the byte tokenizer's 512 ids."""
    import model as M
    base = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, multiple_of=32, max_seq_len=256)
    return M.ModelArgs(**{**base, **kw})


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory):
    """A byte-level tokenizer with only the 256 single bytes: 256 + 256 specials = 512."""
    import base64
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    path.write_text("".join(f"{base64.b64encode(bytes([i])).decode()} {i}\n" for i in range(256)))
    return str(path)


@pytest.fixture(scope="module")
def tok(tok_path):
    from tokenizer import Tokenizer
    return Tokenizer(tok_path)


@pytest.fixture(scope="module")
def chat(tok):
    from tokenizer import ChatFormat
    return ChatFormat(tok)
