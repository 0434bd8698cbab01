"""
dedup.py — de-duplication of web documents (§3.1.1 "De-duplication"), stages 2-4 of
the data pipeline in data.py.

Stage of the paper: §3.1.1 names three levels of de-duplication, applied in this order:

    2. dedup_urls        URL level: "we keep the most recent version for pages
                         corresponding to each URL" (plus the PII/safety domain block list)
    3. dedup_documents   document level: exact duplicates by hash, then "global MinHash"
                         near duplicates: shingles -> MinHash signatures -> LSH bands ->
                         verified pairs -> union-find clusters -> first document kept
    4. dedup_lines       line level, ccNet-style: "remove lines that appeared more than
                         6 times in each bucket of 30M documents" (menus, cookie banners)

Each stage takes a list of documents (dicts with "id" and "text"; "url"/"timestamp"
for stage 2, "is_code" for stage 4, as corpus.make_doc and data.extract_text give them)
and returns (kept, dropped) with dropped = [(id, reason, detail)], so the stages can be
run one by one in a class or a notebook. Each is built on an index that documents can
stream through (UrlIndex, DocumentIndex, LineIndex: add or count every document, then
ask which go); data.py's streaming build uses the indexes directly, so its memory is
the indexes', not the corpus's:

    import corpus, dedup
    docs = [corpus.make_doc("a", "the same text", "demo", url="https://x.org/p"),
            corpus.make_doc("b", "the same text", "demo", url="https://x.org/p/")]
    docs, dropped = dedup.dedup_urls(docs)         # -> [b]; a is an older version of the URL
    docs, dropped = dedup.dedup_documents(docs)    # exact + near duplicates
    docs, dropped = dedup.dedup_lines(docs)        # boilerplate lines

The MinHash pieces are usable on their own (exercise 7 re-implements two of them):
    sigs = dedup.minhash_signatures(texts)         # (D, 120) uint32
    dedup.jaccard(a, b)                            # exact Jaccard of two texts' shingles
    dedup.lsh_candidate_probability(0.8)           # 0.998 with 20 bands x 6 rows

The idea before the fast code: a document is the set of its 5-word shingles; the
signature entry k is min over shingles of h_k(shingle); two signatures agree in entry
k with probability = Jaccard similarity. minhash_signatures does exactly that, for many
documents and all K hash functions at once in numpy (the words of a text hashed from one
prefix sum over its bytes, the K hashes as one int64 multiply-add).

Also here: repetition_stats, the Gopher statistics of n-grams repeated inside one
document, which data.py's heuristic filters (stage 5) use.

Run:    python data.py                       # the whole pipeline, these stages included
        python bench.py --only minhash        # MinHash docs/s on 4 KB documents
        python -m pytest -q tests/test_dedup.py

Read next: data.py stage 5 (heuristic filters), which runs on what survives here.
"""

from __future__ import annotations

import hashlib
import re
import time
import zlib
from datetime import datetime, timezone

import numpy as np

from common import pmap, split_even

# A word is a run of \w characters: shingles here, and the stop-word counts, n-gram
# statistics and classifier features of data.py, all split text the same way.
WORD_RE = re.compile(r"\w+")


# ----------------------------------------------------------------------------
# Stage 2: URL de-duplication (§3.1.1: "we keep the most recent version for pages
# corresponding to each URL") + the PII/safety domain block list

def _normalize_url(url: str) -> str:
    """'HTTPS://Example.com/page/#top' -> 'https://example.com/page': scheme and host
    lower-cased, fragment and trailing slash dropped (the path keeps its case)."""
    url = url.strip().split("#", 1)[0]
    m = re.match(r"^([a-zA-Z][\w+.-]*://)?([^/?]*)(.*)$", url)
    scheme, host, rest = (m.group(1) or "").lower(), m.group(2).lower(), m.group(3)
    return scheme + host + (rest.rstrip("/") if rest not in ("", "/") else "")


def _timestamp_key(ts):
    """Comparable time for a timestamp string (ISO 8601, WARC-Date, or Unix seconds);
    unparsable or missing timestamps count as oldest."""
    if ts is None:
        return float("-inf")
    try:
        return float(ts)
    except (TypeError, ValueError):
        pass
    try:
        dt = datetime.fromisoformat(str(ts).strip().replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        return dt.timestamp()
    except ValueError:
        return float("-inf")


class UrlIndex:
    """Stage 2 as an index that documents stream through: add(i, doc) in reading order,
    then `drops` = {i: (reason, detail)}. Holds one entry per distinct URL."""

    def __init__(self, blocked_domains=()):
        self.blocked = {d.lower().strip() for d in blocked_domains if d.strip()}
        self.best = {}                            # url -> (time, i, id) of the newest version
        self.drops = {}

    def add(self, i, doc):
        if not doc.get("url"):
            return
        url = _normalize_url(doc["url"])
        host = re.sub(r"^[a-z][\w+.-]*://", "", url).split("/")[0].split(":")[0]
        parts = host.split(".")
        if self.blocked and any(".".join(parts[k:]) in self.blocked for k in range(len(parts))):
            self.drops[i] = ("blocked_domain", host)
            return
        when, old = _timestamp_key(doc.get("timestamp")), self.best.get(url)
        if old is None or when >= old[0]:         # ties: the later one read wins
            if old is not None:
                self.drops[old[1]] = ("older_url_version", doc["id"])
            self.best[url] = (when, i, doc["id"])
        else:
            self.drops[i] = ("older_url_version", old[2])


def dedup_urls(docs, blocked_domains=()):
    """Stage 2. Keep the newest document per normalized URL (ties: the later one read);
    drop URLs whose host (or a parent domain) is on the block list."""
    index = UrlIndex(blocked_domains)
    for i, doc in enumerate(docs):
        index.add(i, doc)
    return ([d for i, d in enumerate(docs) if i not in index.drops],
            [(docs[i]["id"], *index.drops[i]) for i in sorted(index.drops)])


# ----------------------------------------------------------------------------
# Stage 3: document de-duplication (§3.1.1 "global MinHash ... near duplicate")
#
# MinHash (Broder 1997): the probability that two documents have the same minimum hash
# over their shingle sets equals their Jaccard similarity, so the fraction of equal
# entries in two signatures of K hashes estimates it (std sqrt(J(1-J)/K) ~ 0.04).
# LSH: cut a signature into `bands` bands of `rows` rows; two documents become a
# candidate pair when any band is identical: P = 1 - (1 - J^rows)^bands.
#   FineWeb uses 5-word shingles and 14 bands x 8 rows (threshold ~0.72), which finds
#   only 92% of pairs at J = 0.8. We want >= 95% recall at 0.8, so we use
#   20 bands x 6 rows (120 hashes): P(0.8) = 0.998, P(0.5) = 0.27, P(0.3) = 0.014, and
#   then verify each candidate with its signature estimate >= 0.7 (drops the extra
#   false candidates; misses a J = 0.8 pair with probability ~0.3%).

NGRAM = 5                    # word shingles (FineWeb, Gopher's MassiveWeb de-dup)
BANDS, ROWS = 20, 6
NEAR_DUP_THRESHOLD = 0.7     # estimated Jaccard needed to join a candidate pair
_WORD_HASH_CACHE: dict = {}
_ROLL = np.uint64(0x9E3779B97F4A7C15)    # odd 64-bit multiplier for rolling n-gram hashes


def hash_words(words) -> np.ndarray:
    """['the', 'cat'] -> (2,) uint64 deterministic 32-bit ids (CRC-32, cached), kept in
    uint64 for the wrapping arithmetic below. data.py's n-gram statistics, KL buckets and
    classifier features hash their words with it too."""
    cache = _WORD_HASH_CACHE
    if len(cache) > 2_000_000:
        cache.clear()
    vals = list(map(cache.get, words))
    if None in vals:
        for i, v in enumerate(vals):
            if v is None:
                vals[i] = cache[words[i]] = zlib.crc32(words[i].encode("utf-8", "surrogatepass"))
    return np.array(vals, dtype=np.uint64)


def ngram_hashes(word_ids: np.ndarray, n: int) -> np.ndarray:
    """Rolling hash of every n consecutive word ids: (W,) -> (W-n+1,) uint64.
    h = ((w0*R + w1)*R + w2)... mod 2^64 (numpy uint64 arithmetic wraps), in place."""
    count = len(word_ids) - n + 1
    h = word_ids[:count].copy()
    for k in range(1, n):
        h *= _ROLL
        h += word_ids[k:k + count]
    return h


# Words of a text hashed without a Python loop (MinHash shingles, ~5x faster than
# WORD_RE + a dict of CRC-32s): a word is a run of ASCII letters, digits, "_" or any
# non-ASCII byte (so "café" and "日本語" are words, as with \w+; non-ASCII punctuation
# such as "—" becomes a word too). Its hash is the polynomial sum (byte_j + 1) * P^j,
# from one prefix sum over the whole text: word = (H[end] - H[start]) * P^-start.
_WORD_BYTE = np.zeros(256, bool)
_WORD_BYTE[np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_", np.uint8)] = True
_WORD_BYTE[0x80:] = True
_P = 0x100000001B3                       # FNV-1's 64-bit prime (odd: invertible mod 2^64)
_POWERS: dict = {}                       # "n" -> length; "p", "q" -> P^j, P^-j for j < n


def _powers(n):
    if n > _POWERS.get("n", 0):
        m = max(n, 1 << 16, 2 * _POWERS.get("n", 0))
        p, q = np.full(m, _P, np.uint64), np.full(m, pow(_P, -1, 2**64), np.uint64)
        p[0] = q[0] = 1
        _POWERS.update(n=m, p=np.multiply.accumulate(p), q=np.multiply.accumulate(q))
    return _POWERS["p"], _POWERS["q"]


def text_word_hashes(text: str) -> np.ndarray:
    """'The cat, the CAT' -> (4,) uint64, equal for equal lower-cased words."""
    b = np.frombuffer(text.lower().encode("utf-8", "surrogatepass"), np.uint8)
    p, q = _powers(len(b) + 1)
    w = _WORD_BYTE[b]
    edges = np.flatnonzero(w[1:] != w[:-1]) + 1            # where word-ness flips
    if len(b) and w[0]:
        edges = np.concatenate(([0], edges))
    if len(b) and w[-1]:
        edges = np.concatenate((edges, [len(b)]))
    h = np.zeros(len(b) + 1, np.uint64)
    np.cumsum(p[:len(b)] * (b + np.uint64(1)), out=h[1:])
    return (h[edges[1::2]] - h[edges[0::2]]) * q[edges[0::2]]


def shingle_hashes(text: str, n: int = NGRAM) -> np.ndarray:
    """Lower-cased words -> 32-bit hashes of their n-word shingles, uint64 array.
    Documents shorter than n words are one shingle."""
    ids = text_word_hashes(text)
    if len(ids) < n:
        h = np.array([zlib.crc32(ids.tobytes())], dtype=np.uint64)
    else:
        h = ngram_hashes(ids, n)
    return (h >> np.uint64(32)) ^ (h & np.uint64(0xFFFFFFFF))


def minhash_params(num_perm: int, seed: int = 0):
    """Multiply-add-shift hash functions h_i(x) = ((a_i x + b_i) mod 2^64) >> 32 on 32-bit
    x (Dietzfelbinger: 2-universal), one per signature entry. Returns (a, b), (K,) uint64."""
    rng = np.random.default_rng(seed + 0x5EED)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    return a, b


_SIGN = np.uint64(1 << 63)


def minhash_signatures(texts, num_perm=BANDS * ROWS, seed=0, n=NGRAM, batch_rows=8192):
    """Texts -> (D, num_perm) uint32 MinHash signatures: entry k of a document is
    min over its shingles x of h_k(x). The naive form is one line per document,
        ((x[:, None] * a + b).min(axis=0) >> 32)          # (S, K) -> (K,)
    this one computes the same numbers faster: the shingles of many documents are
    stacked and hashed by all K functions at once as a (K, rows) array, reduced per
    document with np.minimum.reduceat along its contiguous last axis. The arithmetic is
    int64 (numpy's uint64 multiply is not vectorized, int64's is; the bits are the same)
    with 2^63 added to b, which turns the unsigned order into the signed one."""
    a, b = minhash_params(num_perm, seed)
    a_signed, b_signed = a.view(np.int64)[:, None], (b + _SIGN).view(np.int64)[:, None]
    sigs = np.empty((len(texts), num_perm), dtype=np.uint32)
    buf = np.empty(num_perm * batch_rows, np.int64)

    def hashed(x):                           # (rows,) -> (K, rows): a*x + b + 2^63, wrapping
        out = buf[:num_perm * len(x)].reshape(num_perm, len(x))
        np.multiply(a_signed, x.view(np.int64), out=out)
        out += b_signed
        return out                           # the min of these has the min top 32 bits:
                                             # shift after the reduction, not before

    def unsigned_top32(m):                   # signed minima -> h_k values
        return (m.view(np.uint64) + _SIGN) >> np.uint64(32)

    pending, pending_idx, rows = [], [], 0

    def flush():
        nonlocal pending, pending_idx, rows
        if not pending:
            return
        starts = np.cumsum([0] + [len(p) for p in pending[:-1]])
        sigs[pending_idx] = unsigned_top32(np.minimum.reduceat(hashed(np.concatenate(pending)), starts, axis=1)).T
        pending, pending_idx, rows = [], [], 0

    for i, text in enumerate(texts):
        x = shingle_hashes(text, n)
        if len(x) > batch_rows:              # big document: running minimum over slices
            m = np.full(num_perm, np.iinfo(np.int64).max, dtype=np.int64)
            for s in range(0, len(x), batch_rows):
                np.minimum(m, hashed(x[s:s + batch_rows]).min(axis=1), out=m)
            sigs[i] = unsigned_top32(m)
            continue
        if rows + len(x) > batch_rows:
            flush()
        pending.append(x)
        pending_idx.append(i)
        rows += len(x)
    flush()
    return sigs


def _minhash_worker(args):
    texts, num_perm, seed, n = args
    return minhash_signatures(texts, num_perm, seed, n)


def jaccard(a_text: str, b_text: str, n: int = NGRAM) -> float:
    """Exact Jaccard similarity of two documents' shingle sets (for tests and teaching)."""
    a, b = set(shingle_hashes(a_text, n).tolist()), set(shingle_hashes(b_text, n).tolist())
    return len(a & b) / max(1, len(a | b))


def lsh_candidate_probability(similarity, bands=BANDS, rows=ROWS):
    """P(a pair with Jaccard s shares at least one band) = 1 - (1 - s^rows)^bands."""
    return 1.0 - (1.0 - similarity ** rows) ** bands


def minhash_config(bands=BANDS, rows=ROWS, threshold=NEAR_DUP_THRESHOLD) -> dict:
    """The document de-dup parameters and their LSH candidate probabilities at a few
    Jaccard similarities, as data.py's report.json records them."""
    return {"ngram": NGRAM, "bands": bands, "rows": rows, "num_perm": bands * rows,
            "verify_threshold": threshold,
            "candidate_probability": {str(s): round(lsh_candidate_probability(s, bands, rows), 4)
                                      for s in (0.3, 0.5, 0.7, 0.8, 0.9)}}


def lsh_pairs(sigs: np.ndarray, bands=BANDS, rows=ROWS, threshold=NEAR_DUP_THRESHOLD):
    """Candidate pairs from identical bands, verified by signature agreement >= threshold.
    Returns a sorted list of (i, j), i < j."""
    rng = np.random.default_rng(1234)
    mult = rng.integers(1, 2**63, size=rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    pairs = set()
    for band in range(bands):
        block = sigs[:, band * rows:(band + 1) * rows].astype(np.uint64)
        keys = (block * mult[None, :]).sum(axis=1, dtype=np.uint64)   # band -> one 64-bit key
        order = np.argsort(keys, kind="stable")
        sk = keys[order]
        boundaries = np.flatnonzero(np.diff(sk)) + 1
        for group in np.split(order, boundaries):
            if len(group) < 2:
                continue
            group = np.sort(group)
            if len(group) > 64:             # huge bucket: compare to its first member only
                cand = [(int(group[0]), int(j)) for j in group[1:]]
            else:
                cand = [(int(group[x]), int(group[y])) for x in range(len(group)) for y in range(x + 1, len(group))]
            for i, j in cand:
                if (i, j) not in pairs and np.mean(sigs[i] == sigs[j]) >= threshold:
                    pairs.add((i, j))
    return sorted(pairs)


def _union_find_roots(n, pairs):
    """Union-find with the smallest index as root: the first document read is kept."""
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return [find(i) for i in range(n)]


def exact_key(text) -> bytes:
    """128-bit hash of the lower-cased, whitespace-normalized text."""
    return hashlib.blake2b(" ".join(text.lower().split()).encode("utf-8", "surrogatepass"), digest_size=16).digest()


class DocumentIndex:
    """Stage 3 as an index: add(i, id, text, signature) in reading order (signatures
    come from minhash_signatures, computed in batches, in parallel), then drops(skip)
    = {i: (reason, id of the document kept)}, documents in `skip` (dropped before)
    left out. Holds 16 bytes of exact key + 480 bytes of signature per document."""

    def __init__(self, bands=BANDS, rows=ROWS, threshold=NEAR_DUP_THRESHOLD):
        self.bands, self.rows, self.threshold = bands, rows, threshold
        self.seq, self.ids, self.keys, self.sigs = [], [], [], []

    def add(self, i, doc_id, text, signature):
        self.seq.append(i)
        self.ids.append(doc_id)
        self.keys.append(exact_key(text))
        self.sigs.append(signature)

    def drops(self, skip=(), stats=None):
        out, seen, kept = {}, {}, []
        for k, key in enumerate(self.keys):       # exact: a 128-bit hash, no MinHash needed
            if self.seq[k] in skip:
                continue
            if key in seen:
                out[self.seq[k]] = ("exact_duplicate", self.ids[seen[key]])
            else:
                seen[key] = k
                kept.append(k)
        sigs = np.array([self.sigs[k] for k in kept], np.uint32).reshape(len(kept), self.bands * self.rows)
        pairs = lsh_pairs(sigs, self.bands, self.rows, self.threshold)
        roots = _union_find_roots(len(kept), pairs)
        for k, root in zip(kept, roots):          # near: all but the first of each cluster
            if kept[root] != k:
                out[self.seq[k]] = ("near_duplicate", self.ids[kept[root]])
        if stats is not None:
            stats["verified_pairs"] = len(pairs)
        return out


def dedup_documents(docs, bands=BANDS, rows=ROWS, threshold=NEAR_DUP_THRESHOLD, seed=0,
                    workers=1, stats=None):
    """Stage 3. Exact duplicates (hash of lower-cased, whitespace-normalized text), then
    near duplicates: MinHash signatures -> LSH bands -> verified pairs -> union-find
    clusters -> the first document of each cluster is kept. Returns (kept, dropped)."""
    t0 = time.time()                          # signatures in `workers` processes
    texts = [d["text"] for d in docs]
    chunks = split_even(texts, workers) if len(texts) > 200 else [texts]
    parts = pmap(_minhash_worker, [(c, bands * rows, seed, NGRAM) for c in chunks], workers)
    sigs = np.concatenate(parts) if parts else np.zeros((0, bands * rows), np.uint32)
    index = DocumentIndex(bands, rows, threshold)
    for i, (doc, sig) in enumerate(zip(docs, sigs)):
        index.add(i, doc["id"], doc["text"], sig)
    drops = index.drops(stats=stats)
    if stats is not None:
        stats.update({"minhash_seconds": time.time() - t0, "minhash_docs": len(docs),
                      "minhash_mb": sum(map(len, texts)) / 1e6})
    return ([d for i, d in enumerate(docs) if i not in drops],
            [(docs[i]["id"], *drops[i]) for i in sorted(drops)])


# ----------------------------------------------------------------------------
# Stage 4: line de-duplication (§3.1.1, ccNet): "remove lines that appeared more than
# 6 times in each bucket of 30M documents" — navigation menus, cookie warnings, ...

LINE_MAX_REPEATS = 6
LINE_BUCKET_DOCS = 30_000_000


def _line_hash(line) -> int:
    """ccNet's normalization (lower case, digits -> 0, whitespace collapsed), hashed to
    64 bits; 0 for a blank line."""
    key = " ".join(re.sub(r"\d", "0", line.lower()).split())
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
                          "little") | 1 if key else 0


class LineIndex:
    """Stage 4 counts as an index: count(bucket, text) for every document, then
    clean(bucket, text). Per bucket, the distinct line hashes (sorted uint64) and their
    counts (int64): 16 bytes per distinct line, merged every million lines."""

    def __init__(self, max_repeats=LINE_MAX_REPEATS):
        self.max_repeats = max_repeats
        self.keys, self.counts, self.pending, self.n_pending = {}, {}, {}, 0

    def count(self, bucket, text):
        pending = self.pending.setdefault(bucket, [])
        pending.append(np.array([h for h in map(_line_hash, text.split("\n")) if h], np.uint64))
        self.n_pending += len(pending[-1])
        if self.n_pending > 1_000_000:
            self._merge(bucket)

    def _merge(self, bucket):
        """Pending hashes into the sorted (keys, counts): found keys add their counts,
        new keys are inserted in order (memory: the index twice, for a moment)."""
        new = np.concatenate(self.pending.pop(bucket, []) or [np.zeros(0, np.uint64)])
        self.n_pending = sum(len(a) for p in self.pending.values() for a in p)
        new, new_counts = np.unique(new, return_counts=True)
        keys = self.keys.get(bucket, np.zeros(0, np.uint64))
        counts = self.counts.get(bucket, np.zeros(0, np.int64))
        at = np.searchsorted(keys, new)
        found = keys[np.minimum(at, len(keys) - 1)] == new if len(keys) else np.zeros(len(new), bool)
        counts[at[found]] += new_counts[found]
        self.keys[bucket] = np.insert(keys, at[~found], new[~found])
        self.counts[bucket] = np.insert(counts, at[~found], new_counts[~found])

    def clean(self, bucket, text):
        """(text without its lines seen more than max_repeats times, lines removed)."""
        if bucket in self.pending:
            self._merge(bucket)
        keys, counts = self.keys.get(bucket), self.counts.get(bucket)
        lines = text.split("\n")
        hashes = np.array([_line_hash(ln) for ln in lines], np.uint64)
        if keys is None or not len(keys):
            return text, 0
        at = np.minimum(np.searchsorted(keys, hashes), len(keys) - 1)
        seen = np.where(keys[at] == hashes, counts[at], 0)
        keep = seen <= self.max_repeats
        if keep.all():
            return text, 0
        return "\n".join(ln for ln, k in zip(lines, keep) if k).strip("\n"), int((~keep).sum())


def dedup_lines(docs, max_repeats=LINE_MAX_REPEATS, bucket_size=LINE_BUCKET_DOCS, stats=None):
    """Stage 4. Count every normalized line in each bucket of `bucket_size` documents;
    delete lines counted more than `max_repeats` times. Code documents are exempt (the
    paper's code goes through its own pipeline; here `return None` and `else:` would be
    deleted and programs broken). Returns (kept, dropped); dropped = emptied documents."""
    index = LineIndex(max_repeats)
    for i, doc in enumerate(docs):
        if not doc.get("is_code"):
            index.count(i // bucket_size, doc["text"])
    kept, dropped, removed_lines = [], [], 0
    for i, doc in enumerate(docs):
        text, removed = (doc["text"], 0) if doc.get("is_code") else index.clean(i // bucket_size, doc["text"])
        removed_lines += removed
        if not text.strip():
            dropped.append((doc["id"], "empty_after_line_dedup", None))
        else:
            kept.append(dict(doc, text=text) if removed else doc)
    if stats is not None:
        stats["lines_removed"] = removed_lines
    return kept, dropped


# ----------------------------------------------------------------------------
# Repetition inside one document (data.py's stage 5, Gopher's repetition rules: lines,
# paragraphs and n-grams that a document repeats), with the hashing of stage 3

def duplicate_fractions(items):
    """datatrove's find_duplicates: (#repeated items, #chars in repeated items)."""
    seen, dup, dup_chars = set(), 0, 0
    for x in items:
        if x in seen:
            dup += 1
            dup_chars += len(x)
        else:
            seen.add(x)
    return dup, dup_chars


def repetition_stats(words, top_ns=(2, 3, 4), dup_ns=(5, 6, 7, 8, 9, 10)):
    """Gopher repetition n-gram statistics of a list of words:
    top_ngram[n] = chars in all occurrences of the most common n-gram / all word chars,
    dup_ngram[n] = chars covered by repeated (non-first) occurrences of any n-gram."""
    out_top, out_dup = {}, {}
    if not words:
        return out_top, out_dup
    ids = hash_words([w.lower() for w in words])
    lens = np.array([len(w) for w in words], dtype=np.int64)
    total = max(1, int(lens.sum()))
    cum = np.concatenate([[0], np.cumsum(lens)])
    for n in sorted(set(top_ns) | set(dup_ns)):
        if len(ids) < n:
            out_top[n] = out_dup[n] = 0.0
            continue
        h = ngram_hashes(ids, n)
        uniq, first, inv, counts = np.unique(h, return_index=True, return_inverse=True, return_counts=True)
        if n in top_ns:
            k = int(np.argmax(counts))
            start = int(first[k])
            out_top[n] = float((cum[start + n] - cum[start]) * counts[k] / total) if counts[k] > 1 else 0.0
        if n in dup_ns:
            repeat = (counts[inv] > 1) & (np.arange(len(h)) != first[inv])
            delta = np.zeros(len(ids) + 1, dtype=np.int64)   # cover words [i, i+n) of repeats
            np.add.at(delta, np.flatnonzero(repeat), 1)
            np.add.at(delta, np.flatnonzero(repeat) + n, -1)
            covered = np.cumsum(delta)[:len(ids)] > 0
            out_dup[n] = float(lens[covered].sum() / total)
    return out_top, out_dup
