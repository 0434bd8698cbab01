"""
corpus.py — where documents come from, before §3.1.1's first stage (extraction).

Two sources, both giving documents (plain dicts, see make_doc) that data.py curates:

    builtin_corpus()   text that exists wherever Python runs: the Language Reference
                       topics (pydoc_data/topics.py), the standard library's source and
                       its docstrings, and the docstrings of the installed numpy/torch.
                       tokenizer.py trains and measures BPE on the texts of the same
                       documents: [d["text"] for d in builtin_corpus(["python-source"])].
    read_inputs(paths) the user's files and folders: .txt/.md, JSONL ("text", optional
                       "url", "timestamp", "kind"), HTML, WARC/WARC.gz/WET (Common
                       Crawl's format), any of them gzipped.

Bad input never stops a run: every unreadable record (invalid UTF-8, malformed or
pathological JSON, a truncated gzip stream, a WARC record with a lying Content-Length,
a FIFO or device in a folder, a document over the size limit) is skipped and counted in
a ReadLog with where it was ("file:line", "file@recordN") and why. data.py puts these
counts in report.json's "read" stage.

    import corpus
    docs, log = corpus.read_inputs(["crawl.warc.gz", "my_jsonl/"])
    for location, reason, detail in log.skipped: print(location, reason, detail)
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import multiprocessing as mp
import os
import random
import re
import stat
import sysconfig
import zlib

from common import read_jsonl

SOURCES = ("pydoc-topics", "python-source", "stdlib-docs", "numpy-docstrings", "torch-docstrings")
LOCAL_SOURCES = SOURCES[:3]          # the standard library only: no numpy/torch import


def make_doc(doc_id, text, source, url=None, timestamp=None, kind="text"):
    """A document is a plain dict; stages add fields (lang, is_code, quality, domain...).
    kind says how extraction (§3.1.1) must treat the text: "html", "markdown" or "text"."""
    return {"id": doc_id, "text": text, "source": source, "url": url,
            "timestamp": timestamp, "kind": kind}


def stable_hash(*parts) -> int:
    """64-bit hash that is the same in every process and run (Python's hash() is salted)."""
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(str(p).encode("utf-8", "surrogatepass"))
        h.update(b"\x1f")
    return int.from_bytes(h.digest(), "little")


# ----------------------------------------------------------------------------
# 1. The built-in corpus (no download; exists wherever Python runs)

_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__",
              "ensurepip", "turtledemo", "lib2to3"}


def _stdlib_python_files():
    """Sorted list of the standard library's .py files, tests and vendored bits excluded."""
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for d, dirs, names in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in _SKIP_DIRS and not x.startswith((".", "config-")))
        files += [os.path.join(d, n) for n in sorted(names) if n.endswith(".py")]
    return root, files


def _module_documentation(modname, source):
    """pydoc-like text of a module from its AST (never imports it: importing `antigravity`
    opens a browser). 'Module x / docstring / class C / def f(args) / docstring ...'."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    parts = []
    doc = ast.get_docstring(tree)
    parts.append(f"Module {modname}\n\n{doc}" if doc else f"Module {modname}")

    def walk(body, indent):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if node.name.startswith("_") and node.name != "__init__":
                    continue
                d = ast.get_docstring(node)
                if isinstance(node, ast.ClassDef):
                    head = f"class {node.name}"
                else:
                    try:
                        head = f"def {node.name}({ast.unparse(node.args)})"
                    except Exception:      # noqa: BLE001 — unparse of odd defaults
                        head = f"def {node.name}(...)"
                if d:
                    body_text = "\n".join(" " * (indent + 4) + ln if ln else "" for ln in d.splitlines())
                    parts.append(" " * indent + head + "\n" + body_text)
                if isinstance(node, ast.ClassDef):
                    walk(node.body, indent + 4)

    walk(tree.body, 0)
    return "\n\n".join(parts)


def _library_docstrings(_=None):
    """Docstrings of the installed numpy and torch (imported in a worker process so the
    main process never imports torch). One document per documented public object."""
    import importlib
    import inspect
    import warnings
    out, seen = [], set()
    namespaces = ["numpy", "numpy.linalg", "numpy.fft", "numpy.random", "numpy.polynomial",
                  "numpy.ma", "torch", "torch.nn", "torch.nn.functional", "torch.nn.init",
                  "torch.optim", "torch.optim.lr_scheduler", "torch.linalg", "torch.fft",
                  "torch.special", "torch.distributions", "torch.autograd", "torch.utils.data",
                  "torch.distributed", "torch.cuda", "torch.amp"]
    warnings.filterwarnings("ignore")
    for ns in namespaces:
        try:
            mod = importlib.import_module(ns)
        except Exception:                      # noqa: BLE001 — library absent or broken
            continue
        objs = [(ns, mod)] + [(f"{ns}.{n}", getattr(mod, n, None)) for n in sorted(dir(mod)) if not n.startswith("_")]
        if ns == "torch":
            objs += [(f"torch.Tensor.{n}", getattr(mod.Tensor, n, None)) for n in sorted(dir(mod.Tensor)) if not n.startswith("_")]
        for name, obj in objs:
            members = [(name, obj)]
            if inspect.isclass(obj):            # methods defined on the class itself
                members += [(f"{name}.{k}", v) for k, v in sorted(vars(obj).items())
                            if not k.startswith("_") and callable(v)]
            for qual, o in members:
                doc = getattr(o, "__doc__", None)
                if not isinstance(doc, str) or len(doc) < 300:
                    continue
                doc = inspect.cleandoc(doc)
                key = hashlib.blake2b(doc.encode("utf-8", "replace"), digest_size=8).digest()
                if key in seen:                # numpy re-exports: same object, same text
                    continue
                seen.add(key)
                src = "numpy-docstrings" if qual.startswith("numpy") else "torch-docstrings"
                out.append((f"{src}:{qual}", f"{qual}\n\n{doc}", src))
    return out


def builtin_corpus(sources=SOURCES, max_chars=None, workers=2, every=1):
    """The default corpus, as documents in a fixed order (runs are comparable):
    real prose (pydoc topics, stdlib and numpy/torch docstrings) and real code (the
    stdlib modules' source). `sources`: a subset of SOURCES. `every=k` keeps every k-th
    module (the quality classifier's reference text needs only a sample). `max_chars`:
    stop once the texts hold that many characters (the last one cut to fit)."""
    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown built-in sources {sorted(unknown)}; choose from {SOURCES}")
    docs = []
    pool = async_result = None
    libraries = bool({"numpy-docstrings", "torch-docstrings"} & set(sources))
    if libraries and workers > 1:             # torch import (~1 s) overlaps AST parsing
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        pool = ctx.Pool(1)
        async_result = pool.apply_async(_library_docstrings)
    # pydoc_data/topics.py: the Language Reference sections `help("assert")` shows
    if "pydoc-topics" in sources:
        try:
            from pydoc_data.topics import topics
            for name in sorted(topics):
                docs.append(make_doc(f"pydoc-topics:{name}", f"Topic: {name}\n\n{topics[name]}", "pydoc-topics"))
        except ImportError:
            pass
    chars = sum(len(d["text"]) for d in docs)
    if {"python-source", "stdlib-docs"} & set(sources) and not (max_chars and chars >= max_chars):
        root, files = _stdlib_python_files()
        for i, path in enumerate(files):
            if i % every:
                continue
            rel = os.path.relpath(path, root)
            if rel == os.path.join("pydoc_data", "topics.py"):
                continue                       # data, already used above as prose
            try:
                with open(path, "rb") as f:
                    source = f.read().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            modname = rel[:-3].replace(os.sep, ".").removesuffix(".__init__")
            if "python-source" in sources:
                docs.append(make_doc(f"python-source:{rel}", source, "python-source"))
                chars += len(source)
            if "stdlib-docs" in sources:
                documentation = _module_documentation(modname, source)
                if documentation and len(documentation) > 400:
                    docs.append(make_doc(f"stdlib-docs:{modname}", documentation, "stdlib-docs"))
                    chars += len(documentation)
            if max_chars and chars >= max_chars:
                break
    if libraries:
        lib = async_result.get() if pool is not None else _library_docstrings()
        if pool is not None:
            pool.close()
            pool.join()
        docs += [make_doc(doc_id, text, src) for doc_id, text, src in lib if src in sources]
    return _truncate(docs, max_chars) if max_chars else docs


def _truncate(docs, max_chars):
    """The first documents holding max_chars characters, the last one cut to fit."""
    out, total = [], 0
    for d in docs:
        if total >= max_chars:
            break
        out.append(d if total + len(d["text"]) <= max_chars else dict(d, text=d["text"][:max_chars - total]))
        total += len(out[-1]["text"])
    return out


# ----------------------------------------------------------------------------
# 2. The user's files (text, JSONL, HTML, WARC), robust to bad input

HTML_EXTS = (".html", ".htm", ".xhtml")


class ReadLog:
    """Bad input is skipped and counted with the reason and where it was, never raised."""

    def __init__(self):
        self.records = 0
        self.skipped = []                      # (location, reason, detail)

    def skip(self, location, reason, detail=None):
        self.skipped.append((location, reason, detail))


def _decode(data: bytes, location, log, encoding="utf-8"):
    try:
        return data.decode(encoding)
    except (UnicodeDecodeError, LookupError) as e:
        log.skip(location, "invalid_encoding", f"{encoding}: {str(e)[:80]}")
        return None


def _add(docs, log, doc, max_chars):
    """Append a decoded document unless it is empty or too large (counted either way)."""
    if not doc["text"].strip():
        log.skip(doc["id"], "empty")
    elif len(doc["text"]) > max_chars:
        log.skip(doc["id"], "too_large", f"{len(doc['text'])} chars")
    else:
        docs.append(doc)


def _open(path):
    """A binary file, decompressed on the fly when its name ends in .gz."""
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _jsonl_reason(error: str) -> str:
    """common.read_jsonl's reason -> the ReadLog reason it is counted under."""
    if error.startswith("invalid UTF-8"):
        return "invalid_encoding"
    return "too_large" if error.startswith("line longer") else "malformed_json"


def _read_jsonl(path, docs, log, max_bytes):
    """One document per line: {"text": ..., "url": optional, "timestamp": optional,
    "kind": optional "html" | "markdown" | "text"}. Blank lines are not records. Any
    line that does not parse (invalid UTF-8, bad JSON, a 5,000-digit integer, 100k
    nested brackets, a line over max_bytes) is skipped as "path:line"."""
    lineno = 0
    try:
        for lineno, row, error in read_jsonl(path, max_line_bytes=max_bytes, opener=lambda p, _: _open(p)):
            loc = f"{path}:{lineno}"
            log.records += 1
            if error is not None:
                log.skip(loc, _jsonl_reason(error), error)
                continue
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                log.skip(loc, "no_text_field")
                continue
            try:                                   # "\ud800" escapes decode to lone
                row["text"].encode("utf-8")        # surrogates: not text, skip them
            except UnicodeEncodeError:
                log.skip(loc, "invalid_encoding", "lone surrogate in JSON string")
                continue
            url = row.get("url") if isinstance(row.get("url"), str) else None
            ts = row.get("timestamp")
            ts = str(ts) if isinstance(ts, (str, int, float)) else None
            kind = row.get("kind") if row.get("kind") in ("html", "markdown", "text") else "text"
            _add(docs, log, make_doc(loc, row["text"], "jsonl", url, ts, kind), max_bytes)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
        log.skip(f"{path}:{lineno + 1}", "truncated_gzip", type(e).__name__)


WARC_VERSION = b"WARC/1."       # every record starts with a "WARC/1.0" or "WARC/1.1" line


def _skip_to_next_record(f):
    """Read lines (1 MB at most at a time) up to the next one that starts with
    'WARC/1.'; return that line, or b"" at the end of the file. How the reader finds
    its footing again after a record whose Content-Length cannot be trusted."""
    at_line_start = True
    while True:
        line = f.readline(1 << 20)
        if not line:
            return b""
        if at_line_start and line.startswith(WARC_VERSION):
            return line
        at_line_start = line.endswith(b"\n")


def _next_is_record(f):
    """True unless the bytes after the payload are something other than blank lines
    and the next 'WARC/1.x' line (what a right Content-Length leaves). Peeks at the
    buffer only: never moves the file (a backward seek in gzip decompresses again)."""
    ahead = f.peek(4096)[:4096]
    rest = ahead.lstrip(b"\r\n \t")
    return not rest or rest.startswith(WARC_VERSION[:len(rest)])


def _read_warc(path, docs, log, max_bytes):
    """WARC / WARC.gz (Common Crawl): a 'WARC/1.x' line, header lines, a blank line,
    then Content-Length bytes of payload. `response` records hold an HTTP response (we
    keep text/html and text/plain), `conversion` records (WET files) hold extracted
    text. A record with a missing, too large or wrong Content-Length (the payload is not
    followed by the next record) is skipped and the reader resynchronizes on the next
    line that starts with 'WARC/1.', so the records after it are kept."""
    record, inside = 0, False      # records started so far; inside one of them?
    try:
        with _open(path) as f:
            line = f.readline(1 << 20)
            while line:
                if not line.strip():
                    line = f.readline(1 << 20)
                    continue
                if not line.startswith(WARC_VERSION):
                    log.skip(f"{path}@record{record + 1}", "malformed_warc", "expected a 'WARC/1.x' version line")
                    line = _skip_to_next_record(f)
                    continue
                record, inside = record + 1, True
                log.records += 1
                loc = f"{path}@record{record}"
                headers = {}
                while True:
                    h = f.readline(1 << 16)
                    if not h or not h.strip():
                        break
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                try:
                    length = int(headers.get("content-length", "-1")[:20])
                except ValueError:
                    length = -1
                if length < 0 or length > max_bytes:
                    log.skip(loc, "malformed_warc" if length < 0 else "too_large",
                             "no valid Content-Length" if length < 0 else f"Content-Length {length}")
                    inside = False
                    line = _skip_to_next_record(f)
                    continue
                start = f.tell()
                payload = f.read(length)
                if len(payload) < length or not _next_is_record(f):
                    if WARC_VERSION in payload:        # the length lied: records follow inside
                        log.skip(loc, "malformed_warc", f"Content-Length {length} does not end the record")
                        inside = False
                        f.seek(start)
                        line = _skip_to_next_record(f)
                        continue
                    if len(payload) < length:
                        log.skip(loc, "truncated_warc_record", f"{len(payload)} of {length} bytes")
                        return
                inside = False
                _warc_document(payload, headers, loc, docs, log, max_bytes)
                line = f.readline(1 << 20)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
        log.skip(f"{path}@record{record if inside else record + 1}", "truncated_gzip", type(e).__name__)


def _warc_document(payload, headers, loc, docs, log, max_bytes):
    """The document in one WARC record's payload, if it holds one."""
    wtype = headers.get("warc-type", "")
    url = headers.get("warc-target-uri")
    ts = headers.get("warc-date")
    if wtype == "response":
        head, sep, body = payload.partition(b"\r\n\r\n")
        if not sep:
            head, sep, body = payload.partition(b"\n\n")
        ctype = ""
        for hl in head.decode("latin-1").splitlines():
            if hl.lower().startswith("content-type:"):
                ctype = hl.split(":", 1)[1].strip().lower()
        if "html" not in ctype and "text/plain" not in ctype:
            log.skip(loc, "not_text", ctype or "no content-type")
            return
        m = re.search(r"charset=([\w-]+)", ctype)
        text = _decode(body, loc, log, m.group(1) if m else "utf-8")
        if text is not None:
            _add(docs, log, make_doc(loc, text, "warc", url, ts, "html" if "html" in ctype else "text"), max_bytes)
    elif wtype in ("conversion", "resource"):
        text = _decode(payload, loc, log)
        if text is not None:
            kind = "html" if "html" in headers.get("content-type", "") else "text"
            _add(docs, log, make_doc(loc, text, "warc", url, ts, kind), max_bytes)
    # warcinfo / request / metadata records carry no document


def _read_file(path, docs, log, max_bytes):
    name = path.lower()
    base = name[:-3] if name.endswith(".gz") else name
    if base.endswith((".jsonl", ".ndjson")):
        return _read_jsonl(path, docs, log, max_bytes)
    if base.endswith((".warc", ".wet", ".arc")):
        return _read_warc(path, docs, log, max_bytes)
    log.records += 1
    try:
        if os.path.getsize(path) > max_bytes and not name.endswith(".gz"):
            log.skip(path, "too_large", f"{os.path.getsize(path)} bytes")
            return
        with _open(path) as f:
            data = f.read(max_bytes + 1)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
        log.skip(path, "truncated_gzip" if name.endswith(".gz") else "unreadable", type(e).__name__)
        return
    if len(data) > max_bytes:
        log.skip(path, "too_large", f"> {max_bytes} bytes")
        return
    if b"\x00" in data[:8192]:
        log.skip(path, "binary_file")
        return
    if base.endswith(HTML_EXTS):            # HTML may declare its charset: <meta charset=...>
        m = re.search(rb"""<meta[^>]+charset=["']?([\w-]+)""", data[:4096], re.I)
        encoding = m.group(1).decode("ascii").lower() if m else "utf-8"
        try:
            "".encode(encoding)
        except LookupError:
            encoding = "utf-8"
        text = _decode(data, path, log, encoding)
    else:
        text = _decode(data, path, log)
    if text is None:
        return
    kind = "html" if base.endswith(HTML_EXTS) else "markdown" if base.endswith((".md", ".markdown")) else "text"
    _add(docs, log, make_doc(path, text, "file", None, None, kind), max_bytes)


def read_inputs(paths, max_doc_mb=10.0, log=None):
    """Files and folders (walked in sorted order; hidden names skipped) -> documents.
    A FIFO, socket or device is skipped as "not_regular_file" without being opened
    (opening a FIFO blocks until someone writes to it). Returns (docs, ReadLog)."""
    log = log or ReadLog()
    max_bytes = int(max_doc_mb * 1e6)
    docs = []
    for p in paths:
        if os.path.isdir(p):
            for d, dirs, names in os.walk(p):
                dirs[:] = sorted(x for x in dirs if not x.startswith("."))
                for n in sorted(names):
                    if not n.startswith("."):
                        _read_path(os.path.join(d, n), docs, log, max_bytes)
        elif os.path.lexists(p):
            _read_path(p, docs, log, max_bytes)
        else:
            log.skip(p, "missing_path")
    return docs, log


def _read_path(path, docs, log, max_bytes):
    try:
        mode = os.stat(path).st_mode              # follows symlinks: a link to a file is read
    except OSError as e:
        log.skip(path, "unreadable", e.strerror or type(e).__name__)
        return
    if not stat.S_ISREG(mode):
        log.records += 1
        log.skip(path, "not_regular_file", _FILE_KINDS.get(stat.S_IFMT(mode), "special file"))
        return
    _read_file(path, docs, log, max_bytes)


_FILE_KINDS = {stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device",
               stat.S_IFBLK: "block device", stat.S_IFDIR: "directory"}


# ----------------------------------------------------------------------------
# 3. Text the quality classifier learns from (§3.1.1 model-based quality filtering):
# the paper's labels (Wikipedia references, Llama 2 judgements) are not available
# offline, so good = reference text, bad = junk generated from the same words.

_NAV = ["Home", "About us", "Contact", "Login", "Sign up", "Privacy Policy", "Terms of Service",
        "Subscribe to our newsletter", "Follow us on Twitter", "Share this page", "Read more",
        "Next page", "Previous", "Menu", "Search", "All rights reserved", "Cookie settings",
        "We use cookies to improve your experience.", "Accept all cookies", "Skip to content"]
_SPAM = ["buy", "cheap", "best", "price", "free", "download", "online", "discount", "deal",
         "casino", "bonus", "win", "now", "click", "here", "sale", "offer", "top", "2024"]


def junk_examples(good_texts, n, seed=0, is_code=None):
    """Deterministic synthetic bad text, five kinds, from the good texts' own words.
    is_code(text) -> bool (data.looks_like_code) keeps code out of the word salad."""
    rng = random.Random(seed)
    vocab = [w for t in good_texts[:200] for w in t.split()][:200000] or ["word"]
    prose = [t for t in good_texts if not (is_code and is_code(t))] or good_texts
    out = []
    for i in range(n):
        kind = i % 5
        length = rng.randint(40, 400)
        if kind == 0:                                          # word salad (of prose)
            src = prose[rng.randrange(len(prose))].split()
            rng.shuffle(src)
            out.append(" ".join(src[:length]))
        elif kind == 1:                                        # gibberish
            out.append(" ".join("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 11)))
                                for _ in range(length)))
        elif kind == 2:                                        # log dump
            lines = []
            for _ in range(length // 8):
                lvl = rng.choice(["INFO", "WARN", "ERROR", "DEBUG"])
                lines.append(f"2024-0{rng.randint(1, 9)}-{rng.randint(10, 28)} {rng.randint(10, 23)}:{rng.randint(10, 59)}:"
                             f"{rng.randint(10, 59)} {lvl} [worker-{rng.randint(1, 8)}] "
                             f"{rng.choice(['request', 'job', 'task', 'conn'])} id={rng.randint(1000, 99999)} "
                             f"status={rng.choice([200, 404, 500, 302])} latency={rng.randint(1, 999)}ms")
            out.append("\n".join(lines))
        elif kind == 3:                                        # navigation / cookie boilerplate
            out.append("\n".join(rng.choice(_NAV) for _ in range(length // 3)))
        else:                                                  # keyword spam
            out.append(" ".join(rng.choice(_SPAM + vocab[:50]) for _ in range(length)))
    return out


def _chunks_of(text, rng, lo=40, hi=400):
    """A text -> consecutive pieces of lo..hi words (random lengths, so that length is
    no cue for the classifier); a tail shorter than lo words is left out."""
    words = text.split()
    out, i = [], 0
    while i < len(words):
        k = rng.randint(lo, hi)
        if len(words) - i >= lo:
            out.append(" ".join(words[i:i + k]))
        i += k
    return out


def quality_training_data(seed=0, max_good=1500, is_code=None):
    """(texts, labels) for data.py's quality classifier (§3.1.1): good = 40-400-word
    pieces of the standard library's prose and code (certainly good text), bad = as
    many synthetic junk pieces (junk_examples), shuffled deterministically."""
    rng = random.Random(seed)
    ref = builtin_corpus(LOCAL_SOURCES, every=6)
    good = []
    for doc in ref:
        if doc["source"] == "python-source":                 # keep code lines intact
            lines = doc["text"].split("\n")
            for s in range(0, len(lines), 60):
                piece = "\n".join(lines[s:s + 60])
                if len(piece.split()) >= 40:
                    good.append(piece)
        else:
            good += _chunks_of(doc["text"], rng)
    good.sort(key=lambda t: stable_hash(seed, t))            # deterministic sample
    good = good[:max_good]
    bad = junk_examples(good, len(good), seed, is_code)
    texts, labels = good + bad, [1] * len(good) + [0] * len(bad)
    order = sorted(range(len(texts)), key=lambda i: stable_hash(seed, "order", i))
    return [texts[i] for i in order], [labels[i] for i in order]


# ----------------------------------------------------------------------------
# 4. Synthetic documents (speed measurements: bench.py --only minhash)


def synthetic_documents(n_docs=2000, doc_bytes=4096, seed=0):
    """Random-word documents of ~doc_bytes each (for MinHash speed measurements)."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9))) for _ in range(20000)]
    docs = []
    for _ in range(n_docs):
        words, size = [], 0
        while size < doc_bytes:
            words.append(rng.choice(vocab))
            size += len(words[-1]) + 1
        docs.append(" ".join(words))
    return docs
