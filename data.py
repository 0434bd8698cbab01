"""
data.py — the Llama 3 pre-training data pipeline (§3.1), from raw text to token shards.

Stage of the paper: §3.1.1 web data curation, §3.1.2 the data mix, §3.1.3 annealing data.
Every step of §3.1.1 is one small function, in the paper's order, each callable on a
list of documents (plain dicts with a "text" field) so a class can run them one by one;
the three de-duplication stages are their own chapter, dedup.py:

    1. extract_text       HTML -> text (corpus.html_to_text: page chrome out by landmarks,
                          main content and link density; code blocks, math and alt text
                          kept; markdown markers out, identifiers untouched), plus
                          language ID and code detection
    2. dedup_urls         URL de-duplication, keeping the most recent version of a page
    3. dedup_documents    exact (hash) + near-duplicate (MinHash + LSH + union-find)
    4. dedup_lines        ccNet-style: drop lines seen more than 6 times in a bucket
    5. heuristic_filter   duplicated n-gram coverage, Gopher quality/repetition rules on
                          the prose lines, dirty-word counting, token-distribution KL
                          divergence; filter_rates measures each rule on good text and junk
    6. quality_filter     fastText-style linear classifier (hashed unigrams + bigrams)
    7. classify_domains   general / code / math / multilingual, then mix_domains samples
                          the §3.1.2 mix (50/17/25/8) and select_anneal picks §3.1.3 data
    8. write_shards       uint32 token shards with BOS/EOS document boundaries + index

Reads:  documents from corpus.py: without --data its built-in corpus (the standard
        library's source and docstrings, pydoc topics, numpy/torch docstrings); with
        --data, .txt/.md, JSONL, HTML and WARC(.gz) files and folders. Unreadable
        records are skipped and counted (report.json "read" stage, "read_issues").
Writes: out/data/{train,val,anneal}_NNN.bin (raw uint32 ids) + .idx (uint64 document
        starts), meta.json (what pretrain.py reads), tokenizer.model (trained here when
        missing), documents.jsonl (kept documents with quality score and domain, and
        their input id, location and metadata), dropped.jsonl (every document that
        left: id, stage, reason, detail, location, metadata), report.json + report.png
        (per stage: documents/characters in and out, why documents left; each heuristic
        rule's rate on held-out good text and planted junk), timings.json (seconds, MB/s).

Memory: build() streams. Documents pass through in 8 MB chunks and wait on disk between
passes (OUT/.work/); what stays in memory is the de-duplication indexes and a few
numbers per document, so a 200 MB input needs about as much as a 5 MB one.

In Python (each stage returns (kept, dropped); dropped = [(id, reason, detail)]):
        import corpus, data, dedup
        docs = [corpus.make_doc("a", "<nav>Home</nav><p>Some text.</p>", "demo", kind="html")]
        docs, dropped = data.extract_text(docs)        # -> text 'Some text.', lang, is_code
        docs, dropped = dedup.dedup_documents(docs)    # ... and so on, stage by stage

Run:    python data.py                                   # built-in corpus -> out/data
        python data.py --data crawl.warc.gz my_jsonl/ --out out/mydata
        python -m pytest -q tests/test_data.py tests/test_dedup.py

Thresholds: the paper names its filters but rarely their numbers, so this file takes
published ones and says where each comes from: Gopher (Rae et al. 2021, App. A), C4
(Raffel et al. 2020), FineWeb (Penedo et al. 2024), ccNet (Wenzek et al. 2020), Codex /
The Stack (Chen et al. 2021; Kocetkov et al. 2022), Muennighoff et al. 2023 (repeats).

Determinism: same input + seed -> byte-identical shards, meta.json, documents.jsonl,
dropped.jsonl and report.json, whatever the number of workers or the chunk size
(wall-clock numbers live only in timings.json). Every output file is written
under a temporary name and renamed when complete; meta.json is written last, so a
half-finished run never looks finished to pretrain.py.

Read next: pretrain.py (reads the shards via load_shards / read_meta).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import shutil
import time
from collections import Counter

import numpy as np

from common import UsageError, OutputLock, atomic_write_json, cli, pmap, print0, split_even
from corpus import (DocumentSpill, ReadLog, Report, TooComplex, builtin_corpus, html_to_text, iter_inputs, make_doc,
                    planted_junk, plot_report, quality_training_data, stable_hash, strip_markdown, total_chars,
                    write_shards)
from corpus import load_index, load_shards, read_meta  # noqa: F401 -- the shard format, for pretrain.py's readers
from dedup import (LINE_BUCKET_DOCS, LINE_MAX_REPEATS, WORD_RE, DocumentIndex, LineIndex, UrlIndex,
                   duplicate_fractions, hash_words, minhash_config, minhash_signatures, ngram_hashes, repetition_stats)

DEFAULT_OUT = os.path.join("out", "data")
# §3.1.2: "roughly 50% of tokens corresponding to general knowledge, 25% of mathematical
# and reasoning tokens, 17% code tokens, and 8% multilingual tokens".
PAPER_MIX = {"general": 0.50, "code": 0.17, "math": 0.25, "multilingual": 0.08}


# ----------------------------------------------------------------------------
# Stage 1: text extraction (§3.1.1 "HTML parser ... keeps math and code ... alt text,
# removes markdown markers"), then language ID and code detection for later stages

# The HTML parser and the markdown rules are format machinery: corpus.html_to_text (page
# chrome out by landmarks, main content and link density; code, math and alt text kept)
# and corpus.strip_markdown (markers out, identifiers and code untouched).
EXTRACT_MAX_CHARS = 10_000_000   # per-document guards of extract_text: larger documents
EXTRACT_MAX_SECONDS = 10.0       # or slower HTML are skipped (and counted), never hang a run


# Language ID (§3.1.1 multilingual uses fastText's 176-language model; offline we use
# the two signals such models mostly rely on: the script, and function-word counts).
_SCRIPTS = [("zh", re.compile(r"[\u4e00-\u9fff]")), ("ja", re.compile(r"[\u3040-\u30ff]")),
            ("ko", re.compile(r"[\uac00-\ud7af]")), ("ru", re.compile(r"[\u0400-\u04ff]")),
            ("el", re.compile(r"[\u0370-\u03ff]")), ("ar", re.compile(r"[\u0600-\u06ff]")),
            ("he", re.compile(r"[\u0590-\u05ff]")), ("hi", re.compile(r"[\u0900-\u097f]")),
            ("th", re.compile(r"[\u0e00-\u0e7f]"))]
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")
_STOPWORDS = {
    "en": "the and of to is in that it for with as are this be on not or by an was from".split(),
    "fr": "le la les des et est une dans que pour qui pas sur du au avec ce sont il elle".split(),
    "de": "der die das und ist nicht ein eine mit zu den von sich auf für dem auch werden".split(),
    "es": "el los las y que en un una es por con para del se al como más pero su".split(),
    "it": "il di che è e la per un una non sono del della con gli nel anche".split(),
    "pt": "o os as e que de não um uma para com é do da em no na se".split(),
    "nl": "de het een en van is dat niet op te met voor zijn ook aan er".split(),
}
_STOP_LOOKUP = {lang: set(ws) for lang, ws in _STOPWORDS.items()}


def detect_language(text: str) -> str:
    """'The cat sat on the mat' -> 'en'; 'Le chat est sur la table' -> 'fr'; '日本語' -> 'ja'."""
    sample = text[:20000]
    latin = len(_LATIN.findall(sample))
    counts = {lang: len(rx.findall(sample)) for lang, rx in _SCRIPTS}
    lang, n = max(counts.items(), key=lambda kv: kv[1])
    if n > latin:
        if lang == "zh" and counts["ja"] > 0.1 * n:       # kanji + kana -> Japanese
            lang = "ja"
        return lang
    words = WORD_RE.findall(sample.lower())
    hits = {lang: sum(w in s for w in words) for lang, s in _STOP_LOOKUP.items()}
    best = max(hits, key=lambda k: (hits[k], k == "en"))
    return best if hits[best] > hits["en"] and hits[best] >= 3 else "en"


# A line "looks like code" if it starts with a keyword of a common language, opens or
# closes a block, or is an assignment / call / comment. Prose rarely does any of these.
_CODE_LINE = re.compile(
    r"^\s*(def |class |import |from \S+ import|return\b|elif |else:|try:|except\b|finally:|"
    r"raise |yield |with .*:$|for .*:$|while .*:$|if .*:$|@\w|#include|#define|function\b|"
    r"var |let |const |public |private |static |void |int |fn |func |package |[{}]|//|/\*|\*/|"
    r"#!|[\w.\[\]'\"]+\s*[-+*/|&]?=\s*\S|[\w.]+\(.*\)\s*;?$)"
    r"|[;{]\s*$")


# ...and what the heuristic filters leave out of "prose": code and comment lines, lines
# without a letter ('-----', '[[1, 2],', '}'), and interactive sessions (from a '>>> ',
# '$ ' or 'In [1]:' prompt to the next blank line: the commands and their output).
_NOT_PROSE = re.compile(_CODE_LINE.pattern + r"|^\s*#|^[^A-Za-z\u00c0-\uffff]*$")
_SESSION = re.compile(r"^\s*(>>> |\$ |In \[\d+\]:)")


def prose_of(text: str) -> str:
    """The prose lines of a text (blank lines kept): 'See:\n>>> f(1)\n2\n\nDone.' ->
    'See:\n\nDone.'"""
    out, session = [], False
    for line in text.split("\n"):
        session = bool(line.strip()) and (session or _SESSION.match(line) is not None)
        if not line.strip() or not (session or _NOT_PROSE.search(line)):
            out.append(line)
    return "\n".join(out)


def looks_like_code(text: str, min_fraction=0.35) -> bool:
    """True when >= `min_fraction` of the non-blank lines look like code (measured on the
    stdlib: source files 0.5-0.9, pydoc topics / docstring prose below 0.2)."""
    lines = [ln for ln in text[:50000].split("\n") if ln.strip()]
    if len(lines) < 3:
        return False
    return sum(1 for ln in lines if _CODE_LINE.search(ln)) >= min_fraction * len(lines)


def extract_text(docs, max_chars=EXTRACT_MAX_CHARS, max_seconds=EXTRACT_MAX_SECONDS):
    """Stage 1. HTML -> text, markdown markers stripped; every document also gets `lang`
    and `is_code`, which later stages need (the paper's multilingual and code data go
    through their own filters, §3.1.1). A document over max_chars, or whose HTML takes
    over max_seconds to parse, is dropped as too_large / too_complex (with its id in
    the report). Returns (kept, dropped)."""
    kept, dropped = [], []
    for doc in docs:
        text = doc["text"]
        if len(text) > max_chars:
            dropped.append((doc["id"], "too_large", f"{len(text)} chars > {max_chars}"))
            continue
        if doc.get("kind") == "html":
            try:
                text = html_to_text(text, max_seconds)
            except TooComplex as e:
                dropped.append((doc["id"], "too_complex", str(e)))
                continue
        elif doc.get("kind") == "markdown":
            text = strip_markdown(text).strip()
        if not text.strip():
            dropped.append((doc["id"], "empty_after_extraction", None))
            continue
        new = dict(doc, text=text, kind="text")
        new["is_code"] = looks_like_code(text)
        new["lang"] = "code" if new["is_code"] else detect_language(text)
        kept.append(new)
    return kept, dropped


# Stages 2-4, de-duplication of URLs, documents and lines (§3.1.1): dedup.py.


# ----------------------------------------------------------------------------
# Stage 5: heuristic filters (§3.1.1)
# Gopher quality + repetition rules (Rae et al. 2021, App. A, Table A1), the same values
# FineWeb and datatrove use; duplicated n-gram coverage is the paper's named filter for
# "repeated content such as logging or error messages".

GOPHER_QUALITY = {"min_words": 50, "max_words": 100_000, "min_mean_word_len": 3,
                  "max_mean_word_len": 10, "max_symbol_word_ratio": 0.1,
                  "max_bullet_lines": 0.9, "max_ellipsis_lines": 0.3,
                  "min_alpha_words": 0.8, "min_stop_words": 2}
GOPHER_STOP_WORDS = {"the", "be", "to", "of", "and", "that", "have", "with"}
# Duplicated n-gram coverage: Gopher's limits doubled (0.15 -> 0.30 for 5-grams...).
# Reference documentation repeats its phrasing by design ("If True, ..."): with Gopher's
# own limits this one rule dropped 18% of the characters of held-out documentation.
GOPHER_REPETITION = {"dup_line_frac": 0.30, "dup_para_frac": 0.30,
                     "dup_line_char_frac": 0.20, "dup_para_char_frac": 0.20,
                     "top_ngram": {2: 0.20, 3: 0.18, 4: 0.16},
                     "dup_ngram": {5: 0.30, 6: 0.28, 7: 0.26, 8: 0.24, 9: 0.22, 10: 0.20}}
# Code (Codex, Chen et al. 2021; The Stack / StarCoder): auto-generated or data files.
CODE_RULES = {"max_line_length": 1000, "max_mean_line_length": 100, "min_alnum_frac": 0.25}
# Dirty words: a small, mild default (adult-site vocabulary that block lists miss);
# override with --dirty-words FILE (one word per line). C4 drops a page with any word of
# its list; we count, as §3.1.1 says, and drop above a ratio.
DEFAULT_DIRTY_WORDS = ("porn", "porno", "xxx", "nsfw", "hentai", "camgirl", "camgirls", "sexcam", "milf")
DIRTY_MAX_RATIO = 0.005      # > 0.5% of words dirty (and at least 3) -> drop
DIRTY_MIN_COUNT = 3
# KL divergence: "documents with excessive numbers of outlier tokens compared to the
# training corpus distribution". No number in the paper: we drop documents whose KL is
# an outlier of the corpus's own KL distribution, median + 6 MAD, and at least 3 nats.
# Below KL_MIN_DOCS text documents there is no corpus distribution to speak of (every
# document is its own topic) and the KL filter is skipped.
KL_BUCKETS = 1 << 16
KL_MAD_K = 6.0
KL_MIN = 3.0
KL_MIN_DOCS = 50

_filter_globals = {}


def _set_filter_globals(dirty):
    _filter_globals["dirty"] = frozenset(dirty)


def heuristic_checks(text, is_code=False, lang="en", dirty=frozenset()):
    """Every rule a document fails, as (reason, detail), cheapest rules first (a
    generator: heuristic_reason stops at the first one, filter_rates runs them all).
    English text: Gopher quality + repetition, dirty words. Other languages: language-
    agnostic rules only (no English stop words, no word-length rule for CJK). Code: the
    Codex/The Stack rules."""
    if is_code:
        lines = text.split("\n")
        longest = max(len(ln) for ln in lines)
        if longest > CODE_RULES["max_line_length"]:
            yield "code_long_line", longest
        mean = sum(len(ln) for ln in lines) / len(lines)
        if mean > CODE_RULES["max_mean_line_length"]:
            yield "code_mean_line_length", round(mean, 1)
        alnum = sum(c.isalnum() for c in text) / max(1, len(text))
        if alnum < CODE_RULES["min_alnum_frac"]:
            yield "code_alnum_fraction", round(alnum, 3)
        return
    g, r = GOPHER_QUALITY, GOPHER_REPETITION
    words = text.split()
    cjk = lang in ("zh", "ja", "ko", "th")
    # Code-aware: the symbol, line, alphabetic-word and repetition rules look only at the
    # prose lines. Gopher's rules were made for web prose; the code samples, doctests and
    # '-----' underlines of technical text are not the junk they were meant to catch.
    prose = prose_of(text)
    if cjk and len(text) < 200:
        yield "too_short", len(text)
    if not cjk and not g["min_words"] <= len(words) <= g["max_words"]:
        yield "gopher_word_count", len(words)
    mean_len = sum(map(len, words)) / max(1, len(words))
    if not cjk and not g["min_mean_word_len"] <= mean_len <= g["max_mean_word_len"]:
        yield "gopher_mean_word_length", round(mean_len, 2)
    prose_words = prose.split()
    n_words = max(1, len(prose_words))
    symbols = prose.count("#") + prose.count("...") + prose.count("\u2026")
    if symbols / n_words > g["max_symbol_word_ratio"]:
        yield "gopher_symbol_ratio", round(symbols / n_words, 3)
    lines = [ln.strip() for ln in prose.split("\n") if ln.strip()]
    bullets = sum(ln.startswith(("-", "*", "\u2022", "\u2023", "\u25aa", "\u25e6", "\u2043")) for ln in lines)
    if lines and bullets / len(lines) > g["max_bullet_lines"]:
        yield "gopher_bullet_lines", round(bullets / len(lines), 3)
    ellipsis = sum(ln.endswith(("...", "\u2026")) for ln in lines)
    if lines and ellipsis / len(lines) > g["max_ellipsis_lines"]:
        yield "gopher_ellipsis_lines", round(ellipsis / len(lines), 3)
    alpha = sum(any(c.isalpha() for c in w) for w in prose_words) / n_words
    if not cjk and prose_words and alpha < g["min_alpha_words"]:
        yield "gopher_alpha_words", round(alpha, 3)
    stop = len(GOPHER_STOP_WORDS & set(WORD_RE.findall(text.lower()))) if lang == "en" else None
    if stop is not None and stop < g["min_stop_words"]:
        yield "gopher_stop_words", stop
    if "lorem ipsum" in text.lower():                  # C4: placeholder text
        yield "c4_lorem_ipsum", None
    # Repetition: lines, paragraphs, then n-grams (cheapest first)
    dup, dup_chars = duplicate_fractions(lines)
    if lines and dup / len(lines) > r["dup_line_frac"]:
        yield "dup_line_fraction", round(dup / len(lines), 3)
    if lines and dup_chars / max(1, len(prose)) > r["dup_line_char_frac"]:
        yield "dup_line_char_fraction", round(dup_chars / len(prose), 3)
    paras = [p.strip() for p in re.split(r"\n\s*\n", prose) if p.strip()]
    dup, dup_chars = duplicate_fractions(paras)
    if paras and dup / len(paras) > r["dup_para_frac"]:
        yield "dup_paragraph_fraction", round(dup / len(paras), 3)
    if paras and dup_chars / max(1, len(prose)) > r["dup_para_char_frac"]:
        yield "dup_paragraph_char_fraction", round(dup_chars / len(prose), 3)
    if not cjk:
        top, dupn = repetition_stats(prose_words, r["top_ngram"], r["dup_ngram"])
        for n, limit in r["top_ngram"].items():
            if top.get(n, 0) > limit:
                yield f"top_{n}gram_coverage", round(top[n], 3)
                break
        for n, limit in r["dup_ngram"].items():
            if dupn.get(n, 0) > limit:
                yield f"dup_{n}gram_coverage", round(dupn[n], 3)
                break
    if dirty:
        lw = WORD_RE.findall(text.lower())
        n_dirty = sum(w in dirty for w in lw)
        if n_dirty >= DIRTY_MIN_COUNT and n_dirty / max(1, len(lw)) > DIRTY_MAX_RATIO:
            yield "dirty_words", n_dirty


def heuristic_reason(text, is_code=False, lang="en", dirty=frozenset()):
    """The first rule a document fails, as (reason, detail), or (None, None)."""
    return next(heuristic_checks(text, is_code, lang, dirty), (None, None))


def filter_rates(good, junk, dirty_words=DEFAULT_DIRTY_WORDS):
    """Each heuristic rule on its own, over annotated documents (extract_text's output):
    {rule: {"good_docs": share of the good documents it drops, "good_chars": share of
    their characters, "junk": share of the junk it catches}}, and "any" for all rules
    together. The n-gram rules count as two: top_ngram_coverage, dup_ngram_coverage."""
    dirty = frozenset(dirty_words)

    def fails(doc):
        return {re.sub(r"_\d+gram", "_ngram", reason) for reason, _ in
                heuristic_checks(doc["text"], bool(doc.get("is_code")), doc.get("lang", "en"), dirty)}

    good_fails, junk_fails = [fails(d) for d in good], [fails(d) for d in junk]
    chars = [len(d["text"]) for d in good]
    rules = sorted(set().union(*good_fails, *junk_fails)) + ["any"]
    out = {}
    for rule in rules:
        hit = [bool(f) if rule == "any" else rule in f for f in good_fails]
        out[rule] = {"good_docs": round(sum(hit) / max(1, len(good)), 4),
                     "good_chars": round(sum(c for c, h in zip(chars, hit) if h) / max(1, sum(chars)), 4),
                     "junk": round(sum(bool(f) if rule == "any" else rule in f for f in junk_fails)
                                   / max(1, len(junk)), 4)}
    return out


def _word_bucket_counts(text):
    """Word distribution of a document as (bucket ids, counts) over KL_BUCKETS buckets."""
    ids = hash_words(WORD_RE.findall(text.lower())) % np.uint64(KL_BUCKETS)
    return np.unique(ids.astype(np.int64), return_counts=True)


def _heuristic_worker(items):
    dirty = _filter_globals.get("dirty", frozenset())
    out = []
    for text, is_code, lang in items:
        reason, detail = heuristic_reason(text, is_code, lang, dirty)
        out.append((reason, detail, None if (reason or is_code) else _word_bucket_counts(text)))
    return out


def corpus_counts(bucket_counts, total=None):
    """Sum of documents' (bucket ids, counts) into the corpus's (KL_BUCKETS,) counts."""
    total = np.zeros(KL_BUCKETS, dtype=np.float64) if total is None else total
    for ids, counts in bucket_counts:
        np.add.at(total, ids, counts)
    return total


def kl_divergence(ids, counts, total):
    """KL(doc || corpus) in nats of one document's word distribution, against the corpus
    of all the *other* documents (leave-one-out, add-one smoothed):
    KL = sum_t p(t) log(p(t) / q(t)), p = doc frequencies, q = corpus frequencies."""
    n = counts.sum()
    p = counts / n
    q = (total[ids] - counts + 1.0) / (total.sum() - n + KL_BUCKETS)
    return float(np.sum(p * np.log(p / q)))


def kl_divergences(bucket_counts):
    """kl_divergence of each document against the corpus the documents make."""
    total = corpus_counts(bucket_counts)
    return [kl_divergence(ids, counts, total) for ids, counts in bucket_counts]


def kl_limit(kl, kl_mad_k=KL_MAD_K, kl_min=KL_MIN):
    """The outlier threshold: median + k * MAD of the corpus's own KLs, at least kl_min."""
    med = float(np.median(kl))
    return max(kl_min, med + kl_mad_k * float(np.median(np.abs(np.array(kl) - med))))


def heuristic_filter(docs, dirty_words=DEFAULT_DIRTY_WORDS, workers=1, stats=None,
                     kl_mad_k=KL_MAD_K, kl_min=KL_MIN):
    """Stage 5. Gopher/C4/code rules and dirty words per document (in parallel), then the
    token-distribution KL divergence of every surviving text document against the rest of
    the corpus. Returns (kept, dropped)."""
    items = [(d["text"], bool(d.get("is_code")), d.get("lang", "en")) for d in docs]
    chunks = split_even(items, workers * 4, lambda x: len(x[0])) if len(items) > 200 else [items]
    results = [r for part in pmap(_heuristic_worker, chunks, workers, _set_filter_globals, (dirty_words,))
               for r in part]
    kept, dropped = [], []
    text_idx = [i for i, (reason, _, bc) in enumerate(results) if reason is None and bc is not None]
    kl = kl_divergences([results[i][2] for i in text_idx]) if len(text_idx) >= KL_MIN_DOCS else []
    limit = kl_limit(kl, kl_mad_k, kl_min) if kl else float("inf")
    kl_of = dict(zip(text_idx, kl))
    for i, doc in enumerate(docs):
        reason, detail, _ = results[i]
        if reason is None and i in kl_of and kl_of[i] > limit:
            reason, detail = "kl_divergence", round(kl_of[i], 3)
        if reason:
            dropped.append((doc["id"], reason, detail))
        else:
            kept.append(dict(doc, kl=round(kl_of[i], 4)) if i in kl_of else doc)
    if stats is not None:
        stats.update(_kl_stats(kl, limit))
    return kept, dropped


def _kl_stats(kl, limit):
    if not len(kl):
        return {"kl_skipped": f"fewer than {KL_MIN_DOCS} text documents"}
    return {"kl_threshold_nats": round(limit, 4), "kl_median_nats": round(float(np.median(kl)), 4)}


# ----------------------------------------------------------------------------
# Stage 6: model-based quality filter (§3.1.1 "fastText ... trained to recognize if a
# given text would be referenced by Wikipedia")
#
# fastText's classifier is a linear model over the mean of hashed word and word-bigram
# features; with no hidden layer that is logistic regression on a hashed bag of n-grams,
# trained here with numpy. The paper's labels (Wikipedia references, Llama 2 judgements)
# are not available offline, so the pipeline names its own:
#   good = reference text that certainly is good: pydoc topics, stdlib docstrings and
#          stdlib source, cut into 40-400-word pieces;
#   bad  = junk generated deterministically from the same words: word salad (shuffled
#          words keep the unigrams, so the model must learn bigrams), gibberish, log
#          dumps, navigation/cookie boilerplate, and keyword spam.
# Both come from corpus.quality_training_data.

FEATURE_DIM = 1 << 18
QUALITY_THRESHOLD = 0.5


# The ~100 most frequent English function words. Word-class trigrams over text where
# every other word becomes "W" ('of the W', 'W is a') describe syntax, not topic, so
# they carry what the classifier learns from Python's docs over to any English text.
FUNCTION_WORDS = frozenset("""the of and to a in is it that for on with as was be by this are or
from at an not but have has had they you he she we his her their its which who what when where
there can will would should could may might must do does did if then than so no all any some
one two more most other such only also into over after before about between through up out
these those them been being were our your my me him us each very just how why while because
""".split())


def hashed_features(text, dim=FEATURE_DIM):
    """'the cat sat' -> unigram ids {the, cat, sat} + bigram ids {the_cat, cat_sat} +
    word-class trigram ids {the_W_W} hashed into `dim` buckets; values are counts,
    L2-normalized. Returns (ids, values)."""
    words = WORD_RE.findall(text.lower()[:200000])
    ids = hash_words(words)
    if len(ids) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    bigrams = (ngram_hashes(ids, 2) + np.uint64(0x51ED)) if len(ids) > 1 else ids[:0]
    classes = hash_words([w if w in FUNCTION_WORDS else ("N" if w[0].isdigit() else "W") for w in words])
    trigrams = (ngram_hashes(classes, 3) + np.uint64(0x7A1)) if len(ids) > 2 else ids[:0]
    feats = (np.concatenate([ids, bigrams, trigrams]) % np.uint64(dim)).astype(np.int64)
    u, c = np.unique(feats, return_counts=True)
    v = c.astype(np.float32)
    return u, v / np.linalg.norm(v)


class QualityClassifier:
    """Logistic regression on hashed features; fit with Adam on the full batch."""

    def __init__(self, dim=FEATURE_DIM):
        self.dim, self.w, self.b = dim, np.zeros(dim, np.float64), 0.0

    @staticmethod
    def _stack(feats):
        rows = np.concatenate([np.full(len(f[0]), i) for i, f in enumerate(feats)]) if feats else np.zeros(0, int)
        cols = np.concatenate([f[0] for f in feats]) if feats else np.zeros(0, int)
        vals = np.concatenate([f[1] for f in feats]).astype(np.float64) if feats else np.zeros(0)
        return rows, cols, vals

    def _logits(self, rows, cols, vals, n):
        return np.bincount(rows, weights=vals * self.w[cols], minlength=n) + self.b

    def fit(self, texts, labels, epochs=150, lr=0.05, l2=1e-5):
        feats = [hashed_features(t, self.dim) for t in texts]
        rows, cols, vals = self._stack(feats)
        y = np.asarray(labels, np.float64)
        n = len(y)
        m, v, mb, vb = np.zeros(self.dim), np.zeros(self.dim), 0.0, 0.0
        for step in range(1, epochs + 1):
            p = 1.0 / (1.0 + np.exp(-self._logits(rows, cols, vals, n)))
            err = (p - y) / n                                  # d(mean log-loss)/d logit
            gw = np.bincount(cols, weights=vals * err[rows], minlength=self.dim) + l2 * self.w
            gb = err.sum()
            m = 0.9 * m + 0.1 * gw                             # Adam (beta 0.9, 0.999)
            v = 0.999 * v + 0.001 * gw * gw
            mb, vb = 0.9 * mb + 0.1 * gb, 0.999 * vb + 0.001 * gb * gb
            c1, c2 = 1 - 0.9 ** step, 1 - 0.999 ** step
            self.w -= lr * (m / c1) / (np.sqrt(v / c2) + 1e-8)
            self.b -= lr * (mb / c1) / (math.sqrt(vb / c2) + 1e-8)
        return self

    def predict(self, texts):
        """P(good) for each text."""
        if not texts:
            return np.zeros(0)
        feats = [hashed_features(t, self.dim) for t in texts]
        rows, cols, vals = self._stack(feats)
        return 1.0 / (1.0 + np.exp(-self._logits(rows, cols, vals, len(texts))))


_CLASSIFIERS = {}             # seed -> (classifier, stats): training is deterministic


def train_quality_classifier(seed=0, stats=None):
    """Fit the classifier; 10% of the examples are held out to report its accuracy.
    Cached per seed within a process (the same seed always gives the same model)."""
    if seed not in _CLASSIFIERS:
        texts, labels = quality_training_data(seed, is_code=looks_like_code)
        cut = len(texts) // 10
        clf = QualityClassifier().fit(texts[cut:], labels[cut:])
        acc = float(np.mean((clf.predict(texts[:cut]) > 0.5) == np.array(labels[:cut])))
        _CLASSIFIERS[seed] = (clf, {"classifier_examples": len(texts), "classifier_holdout_accuracy": round(acc, 4)})
    clf, info = _CLASSIFIERS[seed]
    if stats is not None:
        stats.update(info)
    return clf


def quality_filter(docs, classifier=None, threshold=QUALITY_THRESHOLD, seed=0, stats=None):
    """Stage 6. Score every document with P(good); drop those below `threshold`.
    The score is kept on each document (documents.jsonl, annealing selection).
    Non-English documents are scored but never dropped: the classifier learned English
    (the paper ranks multilingual quality with separate per-language models, §3.1.1)."""
    clf = classifier or train_quality_classifier(seed, stats)
    scores = clf.predict([d["text"] for d in docs])
    kept, dropped = [], []
    for doc, s in zip(docs, scores):
        s = round(float(s), 4)
        if _low_quality(s, doc.get("lang", "en"), threshold):
            dropped.append((doc["id"], "low_quality_score", s))
        else:
            kept.append(dict(doc, quality=s))
    if stats is not None and len(scores):
        stats["quality_score_quantiles"] = _quantiles(scores)
    return kept, dropped


def _low_quality(score, lang, threshold):
    return score < threshold and lang in ("en", "code")


def _quantiles(scores):
    return {q: round(float(np.quantile(scores, q)), 4) for q in (0.01, 0.1, 0.5, 0.9)}


# ----------------------------------------------------------------------------
# Stage 7: domains, the data mix (§3.1.2) and annealing data (§3.1.3)
#
# The paper's knowledge classifier and code/reasoning classifiers are models trained on
# Llama 2 annotations; offline we use transparent rules: language ID (multilingual),
# the code-line detector (code), and the density of math notation/vocabulary (math).

_MATH_TOKEN = re.compile(
    r"\\(frac|sum|int|sqrt|alpha|beta|gamma|delta|theta|lambda|sigma|mu|pi|infty|cdot|leq|geq|"
    r"partial|mathbf|mathrm|left|right|begin|end|prod|log|exp)\b|[∑∫√≤≥±×÷πθλσμ∞∂]|"
    r"\b(theorem|lemma|proof|equation|integral|derivative|matrix|matrices|eigenvalues?|"
    r"polynomials?|probability|variance|logarithm|gradient|vector|vectors|algebra|"
    r"prime|modulo|denominator|numerator|inequality|coefficients?|determinant|"
    r"distribution|sine|cosine|tangent|exponential|radians|factorial)\b", re.I)
MATH_MIN_DENSITY = 0.02       # math tokens per word


def classify_domain(doc) -> str:
    """'multilingual' if the language is not English, else 'code' if it looks like code,
    else 'math' if >= 2% of words are math notation/vocabulary, else 'general'."""
    lang = doc.get("lang") or detect_language(doc["text"])
    is_code = doc.get("is_code") if "is_code" in doc else looks_like_code(doc["text"])
    if is_code:
        return "code"
    if lang != "en":
        return "multilingual"
    sample = doc["text"][:100000]
    n_words = max(1, len(sample.split()))
    if len(_MATH_TOKEN.findall(sample)) / n_words >= MATH_MIN_DENSITY:
        return "math"
    return "general"


def classify_domains(docs):
    """Stage 7a. Adds `domain` to every document; drops nothing. Returns (docs, [])."""
    return [dict(d, domain=classify_domain(d)) for d in docs], []


def assign_splits(docs, val_fraction=0.02, seed=0):
    """A document goes to validation when a hash of (seed, id) falls below val_fraction:
    the split does not depend on input order or the other documents. At least one
    validation document whenever there are two or more documents."""
    is_val = _val_flags([stable_hash(seed, "split", d["id"]) / 2**64 for d in docs], val_fraction)
    return [dict(d, split="val" if v else "train") for d, v in zip(docs, is_val)]


def _val_flags(keys, val_fraction):
    is_val = np.asarray(keys) < val_fraction
    if len(keys) >= 2 and not is_val.any():
        is_val[int(np.argmin(keys))] = True
    if len(keys) >= 2 and is_val.all():
        is_val[int(np.argmax(keys))] = False
    return is_val


def mix_weights(available, targets=PAPER_MIX, max_repeat=2.0, min_keep=0.5):
    """Sampling weight (expected copies per document) per domain.

    `available`: characters per domain. Targets are renormalized over the domains that
    are present (the built-in corpus has no multilingual text; keeping 8% for it would
    shrink everything else for nothing). We keep the corpus size: find a scale L with
    sum_d clip(target_d * L, min_keep * avail_d, max_repeat * avail_d) = sum_d avail_d,
    so scarce domains are up-sampled (at most `max_repeat` epochs; Muennighoff et al.
    2023: up to ~4 epochs of repeated data are almost as good as new data) and abundant
    ones down-sampled (never below `min_keep`: the mix must not throw most data away).
    Returns ({domain: weight}, {domain: renormalized target})."""
    present = {d: c for d, c in available.items() if c > 0 and targets.get(d, 0) > 0}
    if not present:
        return {d: 1.0 for d in available}, {}
    z = sum(targets[d] for d in present)
    share = {d: targets[d] / z for d in present}
    budget = sum(present.values())

    def total(scale):
        return sum(min(max(share[d] * scale, min_keep * present[d]), max_repeat * present[d]) for d in present)

    lo, hi = 0.0, budget / min(share.values()) * max_repeat + 1.0
    for _ in range(100):                                       # bisection on the scale
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid) < budget else (lo, mid)
    weights = {d: min(max(share[d] * hi, min_keep * present[d]), max_repeat * present[d]) / present[d]
               for d in present}
    for d in available:
        weights.setdefault(d, 1.0 if d not in targets else 0.0)
    return weights, share


def mix_domains(docs, targets=PAPER_MIX, max_repeat=2.0, min_keep=0.5, seed=0, stats=None):
    """Stage 7b. Give every training document a number of copies: floor(w) + Bernoulli
    of the rest with a per-document seeded draw (deterministic, order-independent).
    Returns (documents drawn at least once, with `repeats`; dropped = drawn zero times)."""
    available = Counter()
    for d in docs:
        available[d["domain"]] += len(d["text"])
    weights, share = mix_weights(dict(available), targets, max_repeat, min_keep)
    out, dropped, achieved = [], [], Counter()
    for d in docs:
        repeats = _copies(d["id"], weights.get(d["domain"], 1.0), seed)
        achieved[d["domain"]] += repeats * len(d["text"])
        if repeats == 0:
            dropped.append((d["id"], "mix_downsampled", d["domain"]))
        else:
            out.append(dict(d, repeats=repeats))
    if stats is not None:
        stats["mix"] = _mix_record(available, achieved, weights, share, targets, max_repeat, min_keep)
    return out, dropped


def _copies(doc_id, weight, seed):
    """floor(w) + 1 with probability w - floor(w), drawn from a hash of (seed, id)."""
    frac = stable_hash(seed, "mix", doc_id) / 2**64
    return int(math.floor(weight)) + (1 if frac < weight - math.floor(weight) else 0)


def _mix_record(available, achieved, weights, share, targets, max_repeat, min_keep):
    tot_av, tot_ach = sum(available.values()) or 1, sum(achieved.values()) or 1
    return {
        "paper_target": dict(targets),
        "target_over_present_domains": {d: round(v, 4) for d, v in sorted(share.items())},
        "available_share": {d: round(v / tot_av, 4) for d, v in sorted(available.items())},
        "achieved_share": {d: round(achieved[d] / tot_ach, 4) for d in sorted(available)},
        "weights": {d: round(v, 4) for d, v in sorted(weights.items())},
        "max_repeat": max_repeat, "min_keep": min_keep, "unit": "characters",
        "chars_before_mix": int(sum(available.values())), "chars_after_mix": int(sum(achieved.values()))}


def select_anneal(docs, fraction=0.1, domains=("code", "math"), key="id"):
    """§3.1.3: annealing uses small amounts of high-quality code and math. We take the top
    `fraction` of the training documents of those domains by quality score (ties broken
    by id). They stay in the main training data too. Returns the set of their d[key]."""
    pool = [d for d in docs if d.get("split") == "train" and d.get("domain") in domains]
    pool.sort(key=lambda d: (-d.get("quality", 0.0), d["id"]))
    return {d[key] for d in pool[:int(math.ceil(fraction * len(pool)))]} if pool else set()


# ----------------------------------------------------------------------------
# Stage 8: tokenization into shards (what pretrain.py reads; the format and
# write_shards / read_meta / load_shards / load_index are in corpus.py)

_tok_globals = {}


def _tok_init(path):
    import tokenizer as tokenizer_module                       # lazy: data.py imports without it
    _tok_globals["tok"] = tokenizer_module.Tokenizer(path)


def _tok_worker(texts):
    tok = _tok_globals["tok"]
    return [np.asarray(tok.encode(t, bos=True, eos=True), dtype=np.uint32) for t in texts]


def tokenize_texts(texts, tokenizer_path, workers=1):
    """Texts -> list of uint32 arrays [bos, ..., eos], in order (parallel over workers)."""
    chunks = split_even(texts, workers * 4) if len(texts) > 50 else [texts]
    return [a for part in pmap(_tok_worker, chunks, workers, _tok_init, (tokenizer_path,)) for a in part]


# ----------------------------------------------------------------------------
# The whole pipeline, streaming: documents flow through in chunks of CHUNK_CHARS, so
# memory holds one chunk plus the indexes that need every document (URLs, exact keys
# and MinHash signatures, line counts, a few numbers per document), never the corpus.
# Five passes; between them the surviving documents wait on disk (OUT/.work/):
#   1. read -> stage 1 (extract) -> MinHash signature        -> URL and document indexes
#   2. stages 2-3 decided by the indexes                      -> line counts (stage 4)
#   3. stage 4 (lines) -> stage 5 rules                       -> corpus word counts (KL)
#   4. KL divergence, quality score, domain of each document  -> stages 5-7 decided
#   5. tokenize -> documents.jsonl, shards (train copies shuffled, val, anneal)
# Every dropped document is logged with its id, location and metadata (dropped.jsonl).

CHUNK_CHARS = 8_000_000


def _chunks(docs, size=None):
    """Documents -> lists of about `size` (default CHUNK_CHARS) characters."""
    size, chunk, n = size or CHUNK_CHARS, [], 0
    for d in docs:
        chunk.append(d)
        n += len(d["text"])
        if n >= size:
            yield chunk
            chunk, n = [], 0
    if chunk:
        yield chunk


def _paired(docs_in, kept, dropped):
    """A stage's dropped (id, reason, detail), each with its document (stages drop in order)."""
    kept_seq = {d["seq"] for d in kept}
    lost = [d for d in docs_in if d["seq"] not in kept_seq]
    return [(d, reason, detail) for d, (_, reason, detail) in zip(lost, dropped)]


def _pass1_worker(docs):
    """Stage 1 and the MinHash signatures stage 3 needs, for one part of a chunk."""
    kept, dropped = extract_text(docs)
    t0 = time.time()
    return kept, dropped, minhash_signatures([d["text"] for d in kept]), time.time() - t0


def _pass4_init(total, seed):
    _filter_globals.update(total=total, clf=train_quality_classifier(seed))


def _pass4_worker(docs):
    """KL divergence (text documents), quality score and domain of each document."""
    total, clf = _filter_globals["total"], _filter_globals["clf"]
    kl = [None if d["is_code"] or total is None else kl_divergence(*_word_bucket_counts(d["text"]), total)
          for d in docs]
    return list(zip(kl, (round(float(q), 4) for q in clf.predict([d["text"] for d in docs])),
                    map(classify_domain, docs)))


def filter_calibration(dirty_words=DEFAULT_DIRTY_WORDS, seed=0):
    """filter_rates on held-out good text, the built-in documentation (pydoc topics and
    standard-library docstrings, every 3rd module), and on planted junk made from it."""
    good = extract_text(builtin_corpus(["pydoc-topics", "stdlib-docs"], every=3))[0]
    kinds, texts = planted_junk([d["text"] for d in good], 100, seed, looks_like_code)
    junk = extract_text([make_doc(f"planted:{k}:{i}", t, k) for i, (k, t) in enumerate(zip(kinds, texts))])[0]
    by_kind = {k: filter_rates([], [d for d in junk if d["source"] == k], dirty_words)["any"]["junk"]
               for k in sorted(set(kinds))}
    return {"good_text": "built-in corpus: pydoc-topics + stdlib-docs, every 3rd module", "good_docs": len(good),
            "junk_docs": len(junk), "junk_caught_by_kind": by_kind, "rates": filter_rates(good, junk, dirty_words)}


def _read_word_file(path):
    """One word (or domain) per line; '#' starts a comment line."""
    try:
        with open(path, encoding="utf-8") as f:
            return [ln.strip().lower() for ln in f if ln.strip() and not ln.startswith("#")]
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read a word list ({e})") from None


def _parse_mix(text):
    """'general=0.5,code=0.17' -> {"general": 0.5, "code": 0.17}."""
    mix = {}
    for kv in text.split(","):
        key, sep, value = kv.partition("=")
        try:
            mix[key.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or mix[key.strip()] < 0:
            raise UsageError(f"--mix: {kv!r} is not DOMAIN=WEIGHT (e.g. general=0.5,code=0.17)")
    return mix


def build(out_dir=DEFAULT_OUT, inputs=None, tokenizer_path=None, vocab_size=8192, seed=0,
          workers=None, val_fraction=0.02, shard_tokens=1 << 24, dirty_words=None,
          blocked_domains=(), quality_threshold=QUALITY_THRESHOLD, mix=None, mix_max_repeat=2.0,
          mix_min_keep=0.5, anneal_fraction=0.1, line_bucket=LINE_BUCKET_DOCS, max_doc_mb=10.0,
          tokenizer_sample_mb=6.0, plot=True):
    """Run stages 1-8 and write everything to out_dir. Returns meta.json's dict.
    Holds common.OutputLock on out_dir: a second build into the same folder refuses
    (UsageError naming the holder's pid) instead of interleaving shards."""
    args = dict(locals())
    with OutputLock(out_dir):
        work = os.path.join(out_dir, ".work")
        try:
            return _build(**args)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _build(out_dir, inputs, tokenizer_path, vocab_size, seed, workers, val_fraction, shard_tokens,
           dirty_words, blocked_domains, quality_threshold, mix, mix_max_repeat, mix_min_keep,
           anneal_fraction, line_bucket, max_doc_mb, tokenizer_sample_mb, plot):
    t_start = time.time()
    workers = workers or max(1, min(2, os.cpu_count() or 1))
    work = os.path.join(out_dir, ".work")
    os.makedirs(work, exist_ok=True)
    if os.path.exists(os.path.join(out_dir, "meta.json")):
        os.remove(os.path.join(out_dir, "meta.json"))         # no stale "finished" marker
    tokenizer_path = os.path.abspath(tokenizer_path or os.path.join(out_dir, "tokenizer.model"))
    dirty = tuple(dirty_words) if dirty_words is not None else DEFAULT_DIRTY_WORDS
    print0(f"[data] out={out_dir} seed={seed} workers={workers} input={inputs or 'built-in corpus'}")
    report, read_issues = Report(work), []

    def on_skip(location, reason, detail):                    # bad input records
        if len(read_issues) < 200:
            read_issues.append({"location": location, "reason": reason, "detail": detail})
        report.tally("read", 0, 0, 0, 0, [(location, reason, detail)])

    def split_work(chunk):
        return split_even(chunk, workers, lambda d: len(d["text"])) if len(chunk) > 1 else [chunk]

    # -- pass 1: read, stage 1 (extract), MinHash signatures -> URL and document indexes
    log = ReadLog(on_skip)
    source = iter_inputs(inputs, max_doc_mb, log) if inputs else builtin_corpus(workers=workers)
    urls, documents = UrlIndex(blocked_domains), DocumentIndex()
    n_read, seconds, minhash = 0, Counter(), Counter()
    t0 = time.time()
    with DocumentSpill(os.path.join(work, "extracted.jsonl"), "w") as spill:
        for chunk in _chunks(source):
            seconds["read"] += time.time() - t0
            for d in chunk:
                d["seq"], n_read = n_read, n_read + 1
            report.tally("read", 0, total_chars(chunk), len(chunk), total_chars(chunk))
            t0 = time.time()
            parts = split_work(chunk)
            for part, (kept, dropped, sigs, sig_seconds) in zip(parts, pmap(_pass1_worker, parts, workers)):
                report.tally("extract", len(part), total_chars(part), len(kept), total_chars(kept),
                             _paired(part, kept, dropped))
                minhash.update(docs=len(kept), chars=total_chars(kept), seconds=sig_seconds)
                for d, sig in zip(kept, sigs):
                    urls.add(d["seq"], d)
                    documents.add(d["seq"], d["id"], d["text"], sig)
                    spill.write(d)
            seconds["extract"] += time.time() - t0
            t0 = time.time()
    report.stages["read"]["docs_in"] = log.records if inputs else n_read
    report.close("read", seconds["read"])
    report.close("extract", seconds["extract"])

    # -- pass 2: stages 2-3 as the indexes decide -> line counts per bucket (stage 4)
    t0 = time.time()
    dd_stats = {}
    url_drops = urls.drops
    doc_drops = documents.drops(url_drops, dd_stats)
    memory = {"url_index_entries": len(urls.best),            # 16-byte key + 120 x uint32 per document
              "document_index_mb": round(len(documents.seq) * (16 + 4 * 120) / 1e6, 1)}
    del urls, documents
    lines, n_kept = LineIndex(), 0
    for d in DocumentSpill(os.path.join(work, "extracted.jsonl")):
        n = len(d["text"])
        for stage, drops in (("url_dedup", url_drops), ("doc_dedup", doc_drops)):
            gone = d["seq"] in drops
            report.tally(stage, 1, n, 1 - gone, 0 if gone else n, [(d, *drops[d["seq"]])] if gone else ())
            if gone:
                break
        else:
            if not d["is_code"]:
                lines.count(n_kept // line_bucket, d["text"])
            n_kept += 1
    report.close("url_dedup", 0.0)
    report.close("doc_dedup", time.time() - t0, {"verified_pairs": dd_stats.get("verified_pairs", 0)})

    # -- pass 3: stage 4 (lines), stage 5 rules -> the corpus's word counts (for KL)
    t0, t_rules = time.time(), 0.0
    total, n_text, removed_lines, n_kept = np.zeros(KL_BUCKETS), 0, 0, 0

    def survivors():
        nonlocal removed_lines, n_kept
        for d in DocumentSpill(os.path.join(work, "extracted.jsonl")):
            if d["seq"] in url_drops or d["seq"] in doc_drops:
                continue
            n, bucket, n_kept = len(d["text"]), n_kept // line_bucket, n_kept + 1
            text, removed = (d["text"], 0) if d["is_code"] else lines.clean(bucket, d["text"])
            removed_lines += removed
            report.tally("line_dedup", 1, n, bool(text.strip()), len(text) if text.strip() else 0,
                         () if text.strip() else [(d, "empty_after_line_dedup", None)])
            if text.strip():
                yield dict(d, text=text)

    with DocumentSpill(os.path.join(work, "filtered.jsonl"), "w") as spill:
        for chunk in _chunks(survivors()):
            t1 = time.time()
            items = [(d["text"], d["is_code"], d["lang"]) for d in chunk]
            results = [r for part in pmap(_heuristic_worker, split_even(items, workers * 2, lambda x: len(x[0])),
                                          workers, _set_filter_globals, (dirty,)) for r in part]
            t_rules += time.time() - t1
            dropped = [(d, reason, detail) for d, (reason, detail, _) in zip(chunk, results) if reason]
            kept = [d for d, (reason, _, _) in zip(chunk, results) if not reason]
            report.tally("heuristic_filter", len(chunk), total_chars(chunk), len(kept), total_chars(kept), dropped)
            for d, (reason, _, counts) in zip(chunk, results):
                if not reason:
                    spill.write(d)
                    if counts is not None:
                        corpus_counts([counts], total)
                        n_text += 1
    report.close("line_dedup", time.time() - t0 - t_rules, {"lines_removed": removed_lines})
    memory["line_index_mb"] = round(sum(k.nbytes for k in lines.keys.values()) * 2 / 1e6, 1)

    # -- pass 4: KL divergence, quality score, domain -> stages 5-7 decided
    t0 = time.time()
    quality_stats = {}
    train_quality_classifier(seed, quality_stats)
    use_total = total if n_text >= KL_MIN_DOCS else None
    facts = []                                             # per document: a few numbers only
    for chunk in _chunks(DocumentSpill(os.path.join(work, "filtered.jsonl"))):
        scored = pmap(_pass4_worker, split_work(chunk), workers, _pass4_init, (use_total, seed))
        for d, (kl, q, domain) in zip(chunk, (r for part in scored for r in part)):
            facts.append({"seq": d["seq"], "id": d["id"], "chars": len(d["text"]), "kl": kl, "quality": q,
                          "domain": domain, "lang": d["lang"]})
    kls = [f["kl"] for f in facts if f["kl"] is not None]
    limit = kl_limit(kls) if kls else float("inf")
    report.extra["heuristic_filter"] = _kl_stats(kls, limit)
    report.timings["heuristic_filter"] = t_rules
    for f in facts:
        f["fate"] = ("kl_divergence", round(f["kl"], 3)) if f["kl"] is not None and f["kl"] > limit else \
            ("low_quality_score", f["quality"]) if _low_quality(f["quality"], f["lang"], quality_threshold) else None
    kept = [f for f in facts if f["fate"] is None]
    for f, is_val in zip(kept, _val_flags([stable_hash(seed, "split", f["id"]) / 2**64 for f in kept], val_fraction)):
        f["split"] = "val" if is_val else "train"
    train = [f for f in kept if f["split"] == "train"]
    available = Counter()
    for f in train:
        available[f["domain"]] += f["chars"]
    weights, share = mix_weights(dict(available), mix or PAPER_MIX, mix_max_repeat, mix_min_keep)
    achieved = Counter()
    for f in kept:
        f["repeats"] = _copies(f["id"], weights.get(f["domain"], 1.0), seed) if f["split"] == "train" else 1
        achieved[f["domain"]] += f["repeats"] * f["chars"] if f["split"] == "train" else 0
    report.extra["mix"] = {"mix": _mix_record(available, achieved, weights, share, mix or PAPER_MIX,
                                              mix_max_repeat, mix_min_keep)}
    anneal = select_anneal(kept, anneal_fraction, key="seq")
    if not kept:
        raise UsageError("no documents survived curation; see the report above")
    fate = {f["seq"]: f for f in facts}
    scores = [f["quality"] for f in facts if f["fate"] is None or f["fate"][0] != "kl_divergence"]
    report.extra["quality_filter"] = dict(quality_stats, quality_score_quantiles=_quantiles(scores))
    report.timings["quality_filter"] = time.time() - t0

    # -- the tokenizer, trained when missing on a sample of curated training text
    import tokenizer as tokenizer_module
    t0 = time.time()
    if not os.path.exists(tokenizer_path):
        sample, size = [], 0
        for f in sorted(train or kept, key=lambda f: stable_hash(seed, "tok", f["id"])):
            sample.append(f["seq"])                          # many documents, not a few big ones
            size += min(f["chars"], 20000)
            if size >= tokenizer_sample_mb * 1e6:
                break
        texts = {d["seq"]: d["text"][:20000] for d in DocumentSpill(os.path.join(work, "filtered.jsonl"))
                 if d["seq"] in set(sample)}
        # Every 2- and 3-digit string a token, as in Llama 3's vocabulary (§3.2; tokenizer.NUMBER_TOKENS),
        # where the vocabulary has room for them (not the tests' 520-token ones).
        numbers = vocab_size >= 4096
        print0(f"[data] training a {vocab_size}-token BPE tokenizer on {size / 1e6:.1f} MB -> {tokenizer_path}"
               + (" (every 1-3 digit number one token)" if numbers else ""))
        tokenizer_module.train_tokenizer([texts[s] for s in sample], vocab_size, tokenizer_path, number_tokens=numbers)
        del texts
    report.timings["tokenizer_training"] = round(time.time() - t0, 3)
    tok = tokenizer_module.Tokenizer(tokenizer_path)

    # -- pass 5: stages 5-7 applied, tokens -> a token file, documents.jsonl
    t0 = time.time()
    where, n_tok, n_doc_chars = {}, 0, 0                     # seq -> (offset, length) in tokens.bin
    with open(os.path.join(work, "tokens.bin"), "wb") as tokens_file, \
            open(os.path.join(work, "documents.jsonl"), "wb") as documents_file:
        for chunk in _chunks(DocumentSpill(os.path.join(work, "filtered.jsonl"))):
            stay = []
            for d in chunk:
                f, n = fate[d["seq"]], len(d["text"])
                if f["fate"] is not None and f["fate"][0] == "kl_divergence":
                    report.tally("heuristic_filter", 0, 0, -1, -n, [(d, *f["fate"])])
                    continue
                report.tally("quality_filter", 1, n, f["fate"] is None, n if f["fate"] is None else 0,
                             [(d, *f["fate"])] if f["fate"] else ())
                if f["fate"] is None:
                    report.tally("domains", 1, n, 1, n)
                    if f["split"] == "train":
                        report.tally("mix", 1, n, f["repeats"] > 0, f["repeats"] * n,
                                     [(d, "mix_downsampled", f["domain"])] if f["repeats"] == 0 else ())
                    stay.append(d)
            for d, ids in zip(stay, tokenize_texts([d["text"] for d in stay], tokenizer_path, workers)):
                f = fate[d["seq"]]
                where[d["seq"]] = (n_tok, len(ids))
                tokens_file.write(ids.tobytes())
                n_tok += len(ids)
                n_doc_chars += len(d["text"])
                row = {"id": d["id"], "source": d["source"], "url": d.get("url"), "timestamp": d.get("timestamp"),
                       "lang": d["lang"], "domain": f["domain"], "quality": f["quality"],
                       "kl": None if f["kl"] is None else round(f["kl"], 4), "split": f["split"],
                       "repeats": f["repeats"], "anneal": d["seq"] in anneal, "tokens": len(ids), "text": d["text"]}
                row.update({k: d[k] for k in ("location", "metadata") if k in d})
                documents_file.write(json.dumps(row, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n")
    for name in ("heuristic_filter", "quality_filter", "domains", "mix"):
        report.close(name, 0.0, report.extra.get(name) if name != "mix" else None)

    # -- shards: training copies shuffled apart (order by hash of (id, copy number)), val, anneal
    def tokens_of(seqs):
        with open(os.path.join(work, "tokens.bin"), "rb") as f:
            for s in seqs:
                offset, length = where[s]
                f.seek(4 * offset)
                yield np.frombuffer(f.read(4 * length), np.uint32)

    kept = [f for f in kept if f["seq"] in where]
    order = sorted((stable_hash(seed, "order", f["id"], k), f["seq"]) for f in kept if f["split"] == "train"
                   for k in range(1, f["repeats"] + 1))
    splits = {"train": write_shards(out_dir, "train", tokens_of(s for _, s in order), shard_tokens),
              "val": write_shards(out_dir, "val", tokens_of(f["seq"] for f in kept if f["split"] == "val"), shard_tokens)}
    splits["train"]["unique_documents"] = sum(f["split"] == "train" for f in kept)
    splits["val"]["unique_documents"] = sum(f["split"] == "val" for f in kept)
    anneal_record = write_shards(out_dir, "anneal", tokens_of(f["seq"] for f in kept if f["seq"] in anneal), shard_tokens)
    anneal_record.update({"fraction": anneal_fraction, "domains": ["code", "math"],
                          "note": "top-quality code/math training documents (§3.1.3); also in train"})
    tok_seconds = time.time() - t0
    report.stages["tokenize"] = {"stage": "tokenize", "docs_in": len(kept), "docs_out": len(kept),
                                 "chars_in": n_doc_chars, "chars_out": n_doc_chars, "dropped": {}, "examples": {},
                                 "tokens_unique": int(n_tok), "chars_per_token": round(n_doc_chars / max(1, n_tok), 3)}
    report.timings["tokenize_and_write"] = round(tok_seconds, 3)
    print0(f"[data] tokenize+shards      docs {len(kept):>7}  tokens train {splits['train']['tokens']:,} "
           f"val {splits['val']['tokens']:,} anneal {anneal_record['tokens']:,}  {tok_seconds:6.2f}s")

    # -- documents.jsonl, dropped.jsonl, report.json, report.png, timings.json, meta.json (last)
    report.write_drop_log(os.path.join(work, "dropped.jsonl"))
    os.replace(os.path.join(work, "documents.jsonl"), os.path.join(out_dir, "documents.jsonl"))
    os.replace(os.path.join(work, "dropped.jsonl"), os.path.join(out_dir, "dropped.jsonl"))
    report_json = {
        "input": inputs or "built-in corpus", "seed": seed, "stages": report.records(),
        "read_issues": read_issues, "drop_log": "dropped.jsonl (one line per dropped document: id, stage, reason, "
                                                "detail, location, metadata)",
        "minhash": minhash_config(),
        "mix": report.extra["mix"]["mix"],
        "domains": dict(sorted(Counter(f["domain"] for f in kept).items())),
        "splits": {k: {kk: vv for kk, vv in v.items() if kk not in ("files", "index_files")} for k, v in splits.items()},
        "anneal": {"documents": anneal_record["documents"], "tokens": anneal_record["tokens"]},
        "filter_rates": filter_calibration(dirty, seed),
        "thresholds": {"gopher_quality": GOPHER_QUALITY, "gopher_repetition": {
            k: (v if not isinstance(v, dict) else {str(n): x for n, x in v.items()}) for k, v in GOPHER_REPETITION.items()},
            "code": CODE_RULES, "dirty_max_ratio": DIRTY_MAX_RATIO, "dirty_min_count": DIRTY_MIN_COUNT,
            "dirty_words": len(dirty), "kl_mad_k": KL_MAD_K, "kl_min": KL_MIN,
            "quality_threshold": quality_threshold, "line_max_repeats": LINE_MAX_REPEATS,
            "line_bucket_docs": line_bucket, "math_min_density": MATH_MIN_DENSITY},
    }
    atomic_write_json(os.path.join(out_dir, "report.json"), report_json)
    if plot:
        plot_report(report_json, os.path.join(out_dir, "report.png"))
    total_s, input_mb = time.time() - t_start, report.stages["read"]["chars_out"] / 1e6
    timings = {"stages_seconds": report.timings, "total_seconds": round(total_s, 3),
               "input_mb": round(input_mb, 3), "pipeline_mb_per_s": round(input_mb / max(total_s, 1e-9), 3),
               "curation_mb_per_s": round(input_mb / max(1e-9, sum(v for k, v in report.timings.items()
                                                                   if k not in ("tokenizer_training", "tokenize_and_write"))), 3),
               # per worker-second: the signatures' own time, summed over the workers
               "minhash_docs_per_s": round(minhash["docs"] / max(1e-9, minhash["seconds"]), 1),
               "minhash_mb_per_s": round(minhash["chars"] / 1e6 / max(1e-9, minhash["seconds"]), 3),
               "workers": workers,       # memory: this process's peak, and the indexes that grow with the input
               "memory": dict(memory, peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))}
    atomic_write_json(os.path.join(out_dir, "timings.json"), timings)
    meta = {"tokenizer": tokenizer_path, "vocab_size": tok.n_words, "bos_id": tok.bos_id, "eos_id": tok.eos_id,
            "dtype": "uint32", "format": "each document is [bos] + tokens + [eos]; NAME.idx = uint64 document starts",
            "splits": splits, "anneal": anneal_record, "seed": seed, "input": inputs or "built-in corpus",
            "documents": len(kept), "mix": report_json["mix"]}
    atomic_write_json(os.path.join(out_dir, "meta.json"), meta)
    print0(f"[data] done in {total_s:.1f}s ({timings['pipeline_mb_per_s']:.2f} MB/s overall, curation "
           f"{timings['curation_mb_per_s']:.2f} MB/s, MinHash {timings['minhash_docs_per_s']:.0f} docs/s per worker); "
           f"train {splits['train']['tokens']:,} tokens, val {splits['val']['tokens']:,} tokens -> {out_dir}")
    return meta


@cli
def main(argv=None):
    p = argparse.ArgumentParser(description="Llama 3 pre-training data pipeline (§3.1)")
    p.add_argument("--data", "--input", dest="input", nargs="+", default=None,
                   help="files/folders (txt, md, jsonl, html, warc[.gz]); default: built-in corpus")
    p.add_argument("--out", default=DEFAULT_OUT, help="output folder")
    p.add_argument("--tokenizer", default=None, help="tokenizer.model (default OUT/tokenizer.model, trained when missing)")
    p.add_argument("--vocab-size", type=int, default=8192, help="vocabulary size when training a tokenizer")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", "--threads", dest="workers", type=int, default=None,
                   help="worker processes (default: min(2, cores))")
    p.add_argument("--val-fraction", type=float, default=0.02)
    p.add_argument("--shard-tokens", type=int, default=1 << 24, help="tokens per shard file")
    p.add_argument("--dirty-words", default=None, help="file with one dirty word per line (default: a small built-in list)")
    p.add_argument("--blocked-domains", default=None, help="file with one blocked domain per line")
    p.add_argument("--quality-threshold", type=float, default=QUALITY_THRESHOLD)
    p.add_argument("--mix", default=None, help="target mix, e.g. general=0.5,code=0.17,math=0.25,multilingual=0.08")
    p.add_argument("--mix-max-repeat", type=float, default=2.0, help="most copies of a scarce domain's documents")
    p.add_argument("--mix-min-keep", type=float, default=0.5, help="least fraction kept of an abundant domain")
    p.add_argument("--anneal-fraction", type=float, default=0.1)
    p.add_argument("--line-bucket", type=int, default=LINE_BUCKET_DOCS, help="documents per line-dedup bucket (paper: 30M)")
    p.add_argument("--max-doc-mb", type=float, default=10.0, help="larger documents are skipped and reported")
    p.add_argument("--tokenizer-sample-mb", type=float, default=6.0, help="text used to train a missing tokenizer")
    args = p.parse_args(argv)
    print0(json.dumps(vars(args)))
    mix = _parse_mix(args.mix) if args.mix else None
    for path in args.input or []:
        if not os.path.lexists(path):
            raise UsageError(f"--data {path}: no such file or folder")
    build(args.out, args.input, args.tokenizer, args.vocab_size, args.seed, args.workers, args.val_fraction,
          args.shard_tokens, _read_word_file(args.dirty_words) if args.dirty_words else None,
          _read_word_file(args.blocked_domains) if args.blocked_domains else (), args.quality_threshold, mix,
          args.mix_max_repeat, args.mix_min_keep, args.anneal_fraction, args.line_bucket, args.max_doc_mb,
          args.tokenizer_sample_mb)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
