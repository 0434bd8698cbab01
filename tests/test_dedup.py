"""
Tests for dedup.py (§3.1.1 de-duplication, stages 2-4 of the data pipeline).

URL level: the newest version of a normalized URL is kept, blocked domains are dropped.
Document level: MinHash estimates of Jaccard similarity are unbiased and within +-0.05
for most pairs, LSH + verification finds >= 95% of pairs at Jaccard >= 0.8 and joins no
unrelated pair; exact and near duplicates on hand-made documents; parallel == serial.
Line level: boilerplate lines repeated > 6 times per bucket go, content and code stay.
The hand-made documents are shared with tests/test_data.py.

Run: python -m pytest -q tests/test_dedup.py
"""

import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import corpus as C  # noqa: E402
import dedup as DD  # noqa: E402
from test_data import CODE, PROSE, annotated, docs_of, ids  # noqa: E402

# ----------------------------------------------------------------------------
# Stage 2: URLs

def test_url_dedup_keeps_most_recent_and_blocks_domains():
    docs = [C.make_doc("old", "a", "t", "https://Example.com/page/", "2023-01-01T00:00:00Z"),
            C.make_doc("new", "b", "t", "https://example.com/page#top", "2024-06-01T00:00:00Z"),
            C.make_doc("older", "c", "t", "https://example.com/page", "1600000000"),
            C.make_doc("other", "d", "t", "https://example.com/other", None),
            C.make_doc("adult", "e", "t", "http://www.bad-site.com/x", None),
            C.make_doc("nourl", "f", "t")]
    kept, dropped = DD.dedup_urls(docs, blocked_domains=["bad-site.com"])
    assert ids(kept) == ["new", "other", "nourl"]
    assert dict((i, r) for i, r, _ in dropped) == {"old": "older_url_version", "older": "older_url_version",
                                                   "adult": "blocked_domain"}


def test_docstring_example_keeps_the_later_copy_of_a_url():
    docs = [C.make_doc("a", "the same text", "demo", url="https://x.org/p"),
            C.make_doc("b", "the same text", "demo", url="https://x.org/p/")]
    kept, dropped = DD.dedup_urls(docs)
    assert ids(kept) == ["b"] and dropped == [("a", "older_url_version", "b")]


# ----------------------------------------------------------------------------
# Stage 3: MinHash

def _words_doc(rng, vocab, n):
    return [rng.choice(vocab) for _ in range(n)]


def _mutate(words, rng, vocab, rate):
    return [rng.choice(vocab) if rng.random() < rate else w for w in words]


def test_minhash_jaccard_estimates_and_lsh_recall():
    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(5000)]
    pairs, truth = [], []
    for k in range(120):                              # pairs from near-identical to unrelated
        base = _words_doc(rng, vocab, 400)
        other = _mutate(base, rng, vocab, [0.01, 0.02, 0.035, 0.08, 0.2][k % 5]) if k < 100 else _words_doc(rng, vocab, 400)
        pairs.append((" ".join(base), " ".join(other)))
        truth.append(DD.jaccard(*pairs[-1]))
    sigs = DD.minhash_signatures([t for p in pairs for t in p])
    est = np.array([np.mean(sigs[2 * i] == sigs[2 * i + 1]) for i in range(len(pairs))])
    truth, err = np.array(truth), np.abs(est - truth)
    # An estimate from K = 120 hashes has std sqrt(J(1-J)/K): 0.046 at J = 0.5, 0.037 at
    # J = 0.8, so +-0.05 holds for most pairs, not all; the estimator must be unbiased.
    assert err.mean() <= 0.03 and abs((est - truth).mean()) <= 0.01
    assert (err <= 0.05).mean() >= 0.8 and err.max() <= 0.12
    assert (err[truth >= 0.9] <= 0.05).all()
    # recall at >= 0.8: 200 more pairs with J in [0.8, 0.97] must be joined by LSH +
    # verification; unrelated pairs (J < 0.3) and documents of different pairs never
    for k in range(200):
        base = _words_doc(rng, vocab, 300)
        pairs.append((" ".join(base), " ".join(_mutate(base, rng, vocab, rng.uniform(0.005, 0.03)))))
        truth = np.append(truth, DD.jaccard(*pairs[-1]))
    sigs = DD.minhash_signatures([t for p in pairs for t in p])
    found = set(DD.lsh_pairs(sigs))
    near = [i for i in range(len(pairs)) if truth[i] >= 0.8]
    assert len(near) >= 150
    recall = np.mean([(2 * i, 2 * i + 1) in found for i in near])
    assert recall >= 0.95, recall
    unrelated = [i for i in range(len(pairs)) if truth[i] < 0.3]
    assert len(unrelated) >= 40 and not any((2 * i, 2 * i + 1) in found for i in unrelated)
    assert not any(j != i + 1 or i % 2 for i, j in found)      # no pair across groups
    assert DD.lsh_candidate_probability(0.8) > 0.99 and DD.lsh_candidate_probability(0.3) < 0.02
    config = DD.minhash_config()                              # what report.json records
    assert config["num_perm"] == 120 and config["candidate_probability"]["0.8"] == round(DD.lsh_candidate_probability(0.8), 4)


def test_dedup_documents_exact_and_near():
    near = PROSE[0].replace("long rains", "long storms")      # J ~ 0.87 with the original
    docs = docs_of(*PROSE, PROSE[2], "  " + PROSE[3].upper() + "\n", near, CODE)
    kept, dropped = DD.dedup_documents(docs)
    reasons = {i: (r, dup) for i, r, dup in dropped}
    assert reasons == {"d6": ("exact_duplicate", "d2"), "d7": ("exact_duplicate", "d3"),
                       "d8": ("near_duplicate", "d0")}
    assert ids(kept) == ["d0", "d1", "d2", "d3", "d4", "d5", "d9"]


def test_dedup_parallel_equals_serial():
    rng = random.Random(2)
    vocab = [f"v{i}" for i in range(3000)]
    texts = [" ".join(_words_doc(rng, vocab, 300)) for _ in range(250)]
    texts += [" ".join(_mutate(t.split(), rng, vocab, 0.01)) for t in texts[:30]]
    docs = docs_of(*texts)
    serial, _ = DD.dedup_documents(docs, workers=1)
    parallel, _ = DD.dedup_documents(docs, workers=2)
    assert ids(serial) == ids(parallel) and len(serial) == 250


# ----------------------------------------------------------------------------
# Stage 4: lines

def test_line_dedup_removes_boilerplate_keeps_content_and_code():
    nav = "Home | Products | About us | Contact"
    cookie = "We use cookies to give you the best experience on our website."
    pages = [f"{nav}\n{p}\n{cookie}" for p in PROSE] + [f"{nav}\nNews item {i}: the market opens at {i} am.\n{cookie}"
                                                        for i in range(3)]
    code_docs = [CODE] * 8                                    # 8 copies: still > 6, but exempt
    kept, dropped = DD.dedup_lines(annotated(*pages, *code_docs))
    assert dropped == []
    for d in kept[:len(PROSE)]:
        assert nav not in d["text"] and cookie not in d["text"]
    assert [d["text"] for d in kept[:len(PROSE)]] == PROSE
    assert "News item 2: the market opens at 2 am." in kept[8]["text"]   # digits normalized: 3 < 7 copies
    assert all(d["text"] == CODE for d in kept[len(pages):])
    # a bucket smaller than the repeats: nothing reaches 7 copies
    kept, _ = DD.dedup_lines(annotated(*pages), bucket_size=4)
    assert nav in kept[0]["text"]
