"""
corpus.py — where documents come from, and the formats data.py reads and writes.

Two sources, both giving documents (plain dicts, see make_doc) that data.py curates:

    builtin_corpus()   text that exists wherever Python runs: the Language Reference
                       topics (pydoc_data/topics.py), the standard library's source and
                       its docstrings, and the docstrings of the installed numpy/torch.
                       tokenizer.py trains and measures BPE on the texts of the same
                       documents: [d["text"] for d in builtin_corpus(["python-source"])].
    iter_inputs(paths) the user's files and folders, one document at a time: .txt/.md,
                       JSONL ("text"; optional "id", "url", "timestamp", "kind"; any
                       other field kept as the document's "metadata"), HTML,
                       WARC/WARC.gz/WET (Common Crawl's format), any of them gzipped.
                       read_inputs(paths) is the same as a list.

Bad input never stops a run: every unreadable record (invalid UTF-8, malformed or
pathological JSON, a truncated gzip stream, a WARC record with a lying Content-Length,
a FIFO or device in a folder, a document over the size limit) is skipped and counted in
a ReadLog with where it was ("file:line", "file@recordN") and why. data.py puts these
counts in report.json's "read" stage and every one in dropped.jsonl.

The rest is format machinery data.py uses: html_to_text / strip_markdown (the §3.1.1
text extraction: page chrome out, code and identifiers intact), the quality
classifier's reference text and planted junk, DocumentSpill (documents on disk between
passes), the token shards (write_shards, read_meta, load_shards, load_index), the run
Report, and a measurement of html_to_text against trafilatura on real pages:

    import corpus
    docs, log = corpus.read_inputs(["crawl.warc.gz", "my_jsonl/"])
    for location, reason, detail in log.skipped: print(location, reason, detail)
    text = corpus.html_to_text(open("page.html").read())

    python corpus.py --compare-extraction /usr/share/doc/python3.11/html --out cmp.json
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import multiprocessing as mp
import os
import random
import re
import shutil
import stat
import sysconfig
import time
import zlib
from collections import Counter, defaultdict
from html.parser import HTMLParser

import numpy as np

from common import atomic_write_bytes, print0, read_jsonl

SOURCES = ("pydoc-topics", "python-source", "stdlib-docs", "numpy-docstrings", "torch-docstrings")
LOCAL_SOURCES = SOURCES[:3]          # the standard library only: no numpy/torch import


def make_doc(doc_id, text, source, url=None, timestamp=None, kind="text", metadata=None, location=None):
    """A document is a plain dict; stages add fields (lang, is_code, quality, domain...).
    kind says how extraction (§3.1.1) must treat the text: "html", "markdown" or "text".
    `id` is the input's own identity (a JSONL record's "id", else "file:line" or the
    path); `metadata` holds a JSONL record's other fields; `location` is where it was
    read ("file:line", "file@recordN"). All three travel with it to documents.jsonl."""
    doc = {"id": doc_id, "text": text, "source": source, "url": url, "timestamp": timestamp, "kind": kind}
    if metadata:
        doc["metadata"] = metadata
    if location and location != doc_id:
        doc["location"] = location
    return doc


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
    """Bad input is skipped and counted with the reason and where it was, never raised.
    Skipped records are kept in `skipped`, or handed to on_skip(location, reason, detail)
    when it is given (a streaming run logs them instead of holding them)."""

    def __init__(self, on_skip=None):
        self.records = 0
        self.skipped = []                      # (location, reason, detail)
        self.on_skip = on_skip

    def skip(self, location, reason, detail=None):
        if self.on_skip is None:
            self.skipped.append((location, reason, detail))
        else:
            self.on_skip(location, reason, detail)


def _decode(data: bytes, location, log, encoding="utf-8"):
    try:
        return data.decode(encoding)
    except (UnicodeDecodeError, LookupError) as e:
        log.skip(location, "invalid_encoding", f"{encoding}: {str(e)[:80]}")
        return None


def _checked(doc, log, max_chars):
    """[doc], or [] when it is empty or too large (counted either way): `yield from` it."""
    if not doc["text"].strip():
        log.skip(doc["id"], "empty")
    elif len(doc["text"]) > max_chars:
        log.skip(doc["id"], "too_large", f"{len(doc['text'])} chars")
    else:
        return [doc]
    return []


def _open(path):
    """A binary file, decompressed on the fly when its name ends in .gz."""
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _jsonl_reason(error: str) -> str:
    """common.read_jsonl's reason -> the ReadLog reason it is counted under."""
    if error.startswith("invalid UTF-8"):
        return "invalid_encoding"
    return "too_large" if error.startswith("line longer") else "malformed_json"


JSONL_FIELDS = ("id", "text", "url", "timestamp", "kind")    # the rest go to "metadata"


def _read_jsonl(path, log, max_bytes):
    """One document per line: {"text": ..., "id", "url", "timestamp": optional, "kind":
    optional "html" | "markdown" | "text", any other fields}. The document's id is the
    record's "id" (a string or integer; ids need not be unique) or else "path:line";
    the other fields are kept as its "metadata" and written out with it. Blank lines
    are not records. Any line that does not parse (invalid UTF-8, bad JSON, a
    5,000-digit integer, 100k nested brackets, a line over max_bytes) is skipped as
    "path:line"."""
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
            rid = row.get("id")
            doc_id = str(rid) if isinstance(rid, (str, int)) and not isinstance(rid, bool) and str(rid) else loc
            meta = {k: v for k, v in row.items() if k not in JSONL_FIELDS}
            yield from _checked(make_doc(doc_id, row["text"], "jsonl", url, ts, kind, meta, loc), log, max_bytes)
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


def _read_warc(path, log, max_bytes):
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
                yield from _warc_document(payload, headers, loc, log, max_bytes)
                line = f.readline(1 << 20)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError) as e:
        log.skip(f"{path}@record{record if inside else record + 1}", "truncated_gzip", type(e).__name__)


def _warc_document(payload, headers, loc, log, max_bytes):
    """[the document in one WARC record's payload], or [] if it holds none."""
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
            return []
        m = re.search(r"charset=([\w-]+)", ctype)
        text = _decode(body, loc, log, m.group(1) if m else "utf-8")
        if text is not None:
            return _checked(make_doc(loc, text, "warc", url, ts, "html" if "html" in ctype else "text"), log, max_bytes)
    elif wtype in ("conversion", "resource"):
        text = _decode(payload, loc, log)
        if text is not None:
            kind = "html" if "html" in headers.get("content-type", "") else "text"
            return _checked(make_doc(loc, text, "warc", url, ts, kind), log, max_bytes)
    return []                # warcinfo / request / metadata records carry no document


def _read_file(path, log, max_bytes):
    name = path.lower()
    base = name[:-3] if name.endswith(".gz") else name
    if base.endswith((".jsonl", ".ndjson")):
        return (yield from _read_jsonl(path, log, max_bytes))
    if base.endswith((".warc", ".wet", ".arc")):
        return (yield from _read_warc(path, log, max_bytes))
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
    yield from _checked(make_doc(path, text, "file", None, None, kind), log, max_bytes)


def iter_inputs(paths, max_doc_mb=10.0, log=None):
    """Files and folders (walked in sorted order; hidden names skipped) -> documents,
    one at a time (a 200 MB JSONL file is never held whole). A FIFO, socket or device
    is skipped as "not_regular_file" without being opened (opening a FIFO blocks until
    someone writes to it). Skipped records go to `log` (a ReadLog)."""
    log = log if log is not None else ReadLog()
    max_bytes = int(max_doc_mb * 1e6)
    for p in paths:
        if os.path.isdir(p):
            for d, dirs, names in os.walk(p):
                dirs[:] = sorted(x for x in dirs if not x.startswith("."))
                for n in sorted(names):
                    if not n.startswith("."):
                        yield from _read_path(os.path.join(d, n), log, max_bytes)
        elif os.path.lexists(p):
            yield from _read_path(p, log, max_bytes)
        else:
            log.skip(p, "missing_path")


def read_inputs(paths, max_doc_mb=10.0, log=None):
    """iter_inputs as a list: returns (docs, ReadLog)."""
    log = log if log is not None else ReadLog()
    return list(iter_inputs(paths, max_doc_mb, log)), log


def _read_path(path, log, max_bytes):
    try:
        mode = os.stat(path).st_mode              # follows symlinks: a link to a file is read
    except OSError as e:
        log.skip(path, "unreadable", e.strerror or type(e).__name__)
        return
    if not stat.S_ISREG(mode):
        log.records += 1
        log.skip(path, "not_regular_file", _FILE_KINDS.get(stat.S_IFMT(mode), "special file"))
        return
    yield from _read_file(path, log, max_bytes)


_FILE_KINDS = {stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device",
               stat.S_IFBLK: "block device", stat.S_IFDIR: "directory"}


# ----------------------------------------------------------------------------
# 3. HTML and markdown -> text (data.extract_text, §3.1.1 "custom parser ... removes
# boilerplate ... keeps math and code ... removes markdown markers")
#
# One pass of Python's HTMLParser cuts the page into blocks (paragraphs, headings, list
# items, table rows, <pre>), then three rules decide which blocks are page chrome:
#   1. landmarks: <nav>, <aside>, <footer>, a page-level <header>, forms and buttons,
#      role=navigation/banner/contentinfo/complementary/search/menu, aria-hidden or
#      hidden elements, and class/id names of chrome (sidebar, breadcrumb, related,
#      cookie, share, metadata...): their text is never seen;
#   2. the main content: when the page marks it (<main>, <article>, role=main), only
#      the blocks inside it are kept;
#   3. link density, the jusText/trafilatura idea (Pomikalek 2011): a block whose text
#      is >= 80% links and that is no sentence is a menu; a short block (<= 4 words)
#      goes with its neighbours (kept unless both are chrome); a heading is kept only
#      when the first block after it is.
# <pre> blocks are kept word for word, inline <code> is never touched by the markdown
# rules, MathML keeps its TeX, images their alt text.

_BLOCK_TAGS = {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table",
               "section", "article", "blockquote", "pre", "hr", "dl", "dt", "dd", "figure", "figcaption",
               "main", "caption", "details", "summary", "address", "fieldset", "legend", "center"}
_SKIP_TAGS = {"script", "style", "nav", "footer", "aside", "form", "noscript", "dialog", "menu", "svg",
              "iframe", "template", "button", "select", "textarea", "head", "canvas", "object"}
_VOID_TAGS = {"br", "img", "hr", "meta", "link", "input", "area", "base", "col", "embed", "source",
              "track", "wbr", "param"}
_CODE_TAGS = {"code", "kbd", "samp", "tt", "var"}
_LANDMARK_ROLES = {"navigation", "banner", "contentinfo", "complementary", "search", "menu", "menubar",
                   "dialog", "alertdialog", "toolbar", "tablist"}
# class/id words of page chrome, whole words only ("sidebar-left" yes, "shared" no)
_CHROME_NAMES = re.compile(
    r"(^|[\s_-])(nav|navbar|navigation|menu|menubar|sidebar|sphinxsidebar|breadcrumbs?|related|footer|"
    r"masthead|topbar|toolbar|skip|pagination|pager|toc|table[_-]of[_-]contents|headerlink|"
    r"cookies?|consent|banner|advert|ads|share|sharing|social|popup|modal|subscribe|newsletter|"
    r"meta|metadata|byline|author|tags|widget|hidden|hide)($|[\s_-])", re.I)
_NEVER_CHROME = {"html", "body", "main", "article", "pre"} | _CODE_TAGS
_HIDDEN_STYLE = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)
_CODE, _CELL = "\x01", "\x02"   # bracket inline code / separate table cells inside a block
_SENTENCE_END = (".", ":", "?", "!")
MAX_TAG_DEPTH = 256             # deeper elements are treated as if their tags were absent


class TooComplex(ValueError):
    """A document that extraction refuses: over its size or time budget."""


class Block:
    """A paragraph-like piece of a page: its text parts, how many of its characters
    are in links (to other pages) and in-page anchors, and where it is."""
    __slots__ = ("kind", "parts", "chars", "link_chars", "anchor_chars", "main")

    def __init__(self, kind, main):
        self.kind, self.parts, self.main = kind, [], main        # kind: p, h, li, pre
        self.chars = self.link_chars = self.anchor_chars = 0


class _BlockParser(HTMLParser):
    """An HTML page -> a list of Blocks, in one pass. Work per tag is O(1) amortized: an
    end tag that matches no open element is recognised with a per-tag counter (not a
    scan of the stack), and nesting beyond MAX_TAG_DEPTH is not stacked at all (100k
    nested <div>s cost as much as 100k siblings)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.blocks, self.block = [], None
        self.stack = []          # (tag, flags) per open element, <= MAX_TAG_DEPTH
        self.open = Counter()    # tag -> how many are on the stack
        self.unstacked = defaultdict(list)   # tag -> skip flags of open elements beyond the depth
        # > 0 while inside: chrome (text dropped), <pre>, a link, an in-page anchor, <code>,
        # the marked main content, an article-like element (its <header> is not chrome)
        self.depth = dict.fromkeys(("skip", "pre", "link", "anchor", "code", "main", "article"), 0)
        self.seen_main = False
        self.math = None         # inside <math> without alttext: {"tex": [...], "plain": [...]}
        self.math_script = False

    def new_block(self, kind="p"):
        if self.block is not None and self.block.parts:
            self.blocks.append(self.block)
        self.block = Block(kind, self.depth["main"] > 0)

    def emit(self, text):
        if self.block is None:
            self.new_block()
        self.block.parts.append(text)
        n = len(text.strip())
        self.block.chars += n
        self.block.link_chars += n if self.depth["link"] else 0
        self.block.anchor_chars += n if self.depth["anchor"] else 0

    def handle_starttag(self, tag, attrs):
        a, d = dict(attrs), self.depth
        if tag in _BLOCK_TAGS and not d["skip"] and not d["pre"]:
            self.new_block("h" if tag in ("h1", "h2", "h3", "h4", "h5", "h6") else "li" if tag in ("li", "tr") else "p")
        if tag in ("td", "th") and not d["skip"] and not d["pre"]:
            self.emit(_CELL)
        if tag == "img" and not d["skip"] and a.get("alt"):
            self.emit(f" {a['alt'].strip()} ")                 # keep image alt text (§3.1.1)
        if tag == "br" and d["pre"] and not d["skip"]:
            self.emit("\n")
        if tag in _VOID_TAGS:
            return
        names, ident, role = a.get("class") or "", a.get("id") or "", (a.get("role") or "").lower()
        if ident and tag != "section" and "section" not in names and len(re.split(r"[\s_-]+", ident)) <= 2:
            names += " " + ident          # short ids name page parts; long ones are headings' anchors
        skip = (tag in _SKIP_TAGS or role in _LANDMARK_ROLES or a.get("aria-hidden") == "true"
                or "hidden" in a or _HIDDEN_STYLE.search(a.get("style") or "") is not None
                or (tag == "header" and not d["article"])                 # the page's banner
                or (not d["pre"] and not d["code"] and tag not in _NEVER_CHROME
                    and _CHROME_NAMES.search(names) is not None))
        if len(self.stack) >= MAX_TAG_DEPTH:                      # too deep: only its skip flag
            self.unstacked[tag].append(skip)
            d["skip"] += skip
            return
        # MathJax keeps TeX in <script type="math/tex">: keep it, it *is* the math
        if tag == "script" and "math/tex" in (a.get("type") or "") and not d["skip"]:
            skip, self.math_script = False, True
            self.emit(" $")
        math = False
        if tag == "math" and not d["skip"]:
            if a.get("alttext"):                                   # MathML with a TeX alt text
                self.emit(f" ${a['alttext'].strip()}$ ")
                skip = True
            else:
                self.math, math = {"tex": [], "plain": []}, True
        if tag == "annotation" and self.math is not None and "tex" in (a.get("encoding") or ""):
            self.math["in_tex"] = True
        href = a.get("href")
        flags = {"skip": skip, "pre": tag == "pre", "code": tag in _CODE_TAGS,
                 "link": tag == "a" and href is not None and not href.startswith("#"),
                 "anchor": tag == "a" and href is not None and href.startswith("#"),
                 "main": tag in ("main", "article") or role == "main",
                 "article": tag in ("main", "article", "section") or role == "main"}
        if flags["pre"] and not d["skip"] and not d["pre"]:
            self.new_block("pre")
        if flags["code"] and not d["skip"] and not d["pre"] and not d["code"]:
            self.emit(_CODE)
        self.stack.append((tag, flags, math))
        self.open[tag] += 1
        for k, v in flags.items():
            d[k] += v
        self.seen_main |= flags["main"] and not d["skip"]

    def handle_endtag(self, tag):
        d = self.depth
        if self.unstacked.get(tag):
            d["skip"] -= self.unstacked[tag].pop()                 # closes an unstacked element
            return
        if not self.open[tag]:
            return                                                 # stray end tag
        while self.stack:
            t, flags, math = self.stack.pop()
            self.open[t] -= 1
            for k, v in flags.items():
                d[k] -= v
            if flags["code"] and not d["code"] and not d["pre"] and not d["skip"]:
                self.emit(_CODE)
            if flags["pre"] and not d["pre"] and not d["skip"]:
                self.new_block()
            if t == "script" and self.math_script:
                self.math_script = False
                self.emit("$ ")
            if t == "annotation" and self.math is not None:
                self.math.pop("in_tex", None)
            if math and self.math is not None:                     # prefer TeX, else the text
                tex = "".join(self.math["tex"]).strip()
                self.emit(f" ${tex}$ " if tex else " " + " ".join("".join(self.math["plain"]).split()) + " ")
                self.math = None
            if t == tag:
                break
        if tag in _BLOCK_TAGS and not d["skip"] and not d["pre"]:
            self.new_block()

    def handle_data(self, data):
        if self.depth["skip"]:
            return
        if self.math is not None:
            self.math["tex" if self.math.get("in_tex") else "plain"].append(data)
        else:                                                      # code: whitespace matters
            self.emit(data if self.depth["pre"] else re.sub(r"\s+", " ", data))


def parse_blocks(html_text: str, max_seconds: float | None = None) -> tuple[list, bool]:
    """HTML -> (blocks, whether the page marks its main content). With max_seconds,
    raises TooComplex once parsing has taken longer (checked before each further
    256 KB of input)."""
    parser = _BlockParser()
    start, step = time.monotonic(), 1 << 18
    try:
        for i in range(0, len(html_text), step):
            if i and max_seconds is not None and time.monotonic() - start > max_seconds:
                raise TooComplex(f"HTML parsing over {max_seconds:g} s at character {i}")
            parser.feed(html_text[i:i + step])
        parser.close()
    except TooComplex:
        raise
    except Exception:                          # noqa: BLE001 — HTMLParser rarely raises; keep what we have
        pass
    parser.new_block()
    return parser.blocks, parser.seen_main


def keep_blocks(blocks: list) -> list[bool]:
    """Rules 3 above: which blocks are content. Each block is first "good" (text, or a
    <pre>), "links" (>= 80% of its characters in links and not a sentence; for list
    items in-page anchors count too: a table of contents), "short" (<= 4 words, no
    sentence) or a heading; then short blocks and headings take their context."""
    kinds = []
    for b in blocks:
        text = "".join(b.parts).replace(_CODE, "").replace(_CELL, " ").strip()
        links = b.link_chars + (b.anchor_chars if b.kind == "li" else 0)
        kinds.append(None if not text else "good" if b.kind == "pre" else "heading" if b.kind == "h"
                     else "links" if links >= 0.8 * b.chars and not text.endswith(_SENTENCE_END)
                     else "short" if len(text.split()) <= 4 and not text.endswith(_SENTENCE_END + (",", ";"))
                     else "good")
    order = [i for i, k in enumerate(kinds) if k is not None]
    edge = "links" if "good" in kinds else "good"   # a page of short blocks only keeps them
    before, last = {}, edge                     # the nearest good/links block before each one
    for i in order:
        before[i] = last
        last = kinds[i] if kinds[i] in ("good", "links") else last
    after, following = edge, "links"
    for i in reversed(order):                   # walking back: the nearest one after it
        if kinds[i] == "short":
            kinds[i] = "links" if before[i] == after == "links" else "good"
        elif kinds[i] == "heading":
            kinds[i] = following
        if kinds[i] in ("good", "links"):
            after = kinds[i]
        following = kinds[i]
    return [k == "good" for k in kinds]


def html_to_text(html_text: str, max_seconds: float | None = None) -> str:
    """HTML -> plain text, page chrome removed. Example:
    '<nav>Home|About</nav><h1>Title</h1><p>Some **bold** text.</p><pre>x = 1\\n  y</pre>'
    -> 'Title\\n\\nSome bold text.\\n\\nx = 1\\n  y'
    Blocks are separated by a blank line, list items and table rows (cells joined by
    ' | ') by a newline. max_seconds: see parse_blocks."""
    blocks, has_main = parse_blocks(html_text, max_seconds)
    if has_main and sum(len("".join(b.parts).split()) for b in blocks if b.main) >= 20:
        blocks = [b for b in blocks if b.main]             # the page says where its content is
    out, prev_kind = [], None
    for b, keep in zip(blocks, keep_blocks(blocks)):
        if not keep:
            continue
        if b.kind == "pre":
            text = "".join(b.parts).strip("\n")
        else:                                                # markdown markers outside code only
            pieces = "".join(b.parts).split(_CODE)
            text = "".join(p if i % 2 else strip_markdown(p, inline_only=True) for i, p in enumerate(pieces))
            text = " | ".join(c for c in (" ".join(c.split()) for c in text.split(_CELL)) if c)
        if text.strip():
            out.append(("\n" if b.kind == prev_kind == "li" else "\n\n") + text)
            prev_kind = b.kind
    return "".join(out).strip("\n")


# Markdown (§3.1.1: markdown "is harmful to the performance of a model that is primarily
# trained on web data"): markers go, their text stays, code never changes. Emphasis needs
# delimiters that are not inside a word ('a*b', 'snake_case' stay) and, for underscores,
# more than one word inside ('__init__', '__all__' stay); '**kwargs, **x' has no closing
# delimiter. Every pattern stays on one line ([ \t], not \s, which would also match
# newlines and make 40k blank lines quadratic) and spans at most 2,000 characters.
_MD_LINE_RULES = [
    (re.compile(r"^[ \t]{0,3}#{1,6}[ \t]+", re.M), ""),                    # # headings
    (re.compile(r"^[ \t]{0,3}>[ \t]?", re.M), ""),                         # > quotes
    (re.compile(r"^[ \t]{0,3}[-*+][ \t]+", re.M), ""),                     # - bullets
    (re.compile(r"^[ \t]{0,3}([-*_])([ \t]*\1){2,}[ \t]*$", re.M), ""),     # --- rules
]
_MD_INLINE_RULES = [
    (re.compile(r"!\[([^\[\]\n]{0,2000})\]\([^()\n]{0,2000}\)"), r"\1"),       # ![alt](src) -> alt
    (re.compile(r"\[([^\[\]\n]{1,2000})\]\([^()\n]{0,2000}\)"), r"\1"),        # [text](url) -> text
    (re.compile(r"(?<![\w*])\*\*(?=[^\s*])([^*\n]{1,2000}?)(?<=[^\s*])\*\*(?![\w*])"), r"\1"),  # **bold**
    (re.compile(r"(?<![\w*])\*(?=[^\s*])([^*\n]{1,2000}?)(?<=[^\s*])\*(?![\w*])"), r"\1"),      # *italic*
    (re.compile(r"(?<![\w_])(__?)(?=[^\s_])([^_\n]{0,2000}?[ \t][^_\n]{0,2000}?)(?<=[^\s_])\1(?![\w_])"),
     r"\2"),                                                                  # __bold words__, _it_
]
_INLINE_CODE = re.compile(r"(`+)([^`\n]{1,2000}?)\1")                         # `code`, ``co`de``


def _md_inline(text):
    """Inline markers of prose; `code spans` lose their backticks and nothing else."""
    pieces = _INLINE_CODE.split(text)                # [prose, ticks, code, ticks, code, ..., prose]
    out = []
    for i in range(0, len(pieces), 3):
        prose = pieces[i]
        for pattern, repl in _MD_INLINE_RULES:
            prose = pattern.sub(repl, prose)
        out.append(prose)
        if i + 2 < len(pieces):
            out.append(pieces[i + 2])
    return "".join(out)


def strip_markdown(text: str, inline_only: bool = False) -> str:
    """Remove markdown markers, keep their text: '## A *b* [c](u) `__init__`' -> 'A b c
    __init__'. Fenced blocks (``` or ~~~) lose only their fence lines; indented code
    (4 spaces or a tab after a blank line) is untouched. inline_only: no line rules
    (for the text of one HTML block)."""
    if inline_only:
        return _md_inline(text)
    out, prose, fence, code = [], [], None, False

    def flush():
        if prose:
            block = "\n".join(prose)
            for pattern, repl in _MD_LINE_RULES:
                block = pattern.sub(repl, block)
            out.append(_md_inline(block))
            prose.clear()

    for line in text.split("\n"):
        marker = line.lstrip()[:3]
        if fence:                                    # inside a fenced block: verbatim
            if marker == fence:
                fence = None
            else:
                out.append(line)
            continue
        if marker in ("```", "~~~"):
            flush()
            fence = marker
            continue
        code = line.startswith(("    ", "\t")) and bool(line.strip()) and (code or not prose or not prose[-1].strip())
        if code:
            flush()
            out.append(line)
        else:
            prose.append(line)
    flush()
    return "\n".join(out)


# ----------------------------------------------------------------------------
# 4. Text the quality classifier learns from (§3.1.1 model-based quality filtering):
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


def planted_junk(good_texts, n, seed=0, is_code=None):
    """(kinds, texts): junk_examples' five kinds plus four that the heuristic filters
    (§3.1.1) exist for: a page repeated 3-6 times, lorem ipsum, a page with dirty words,
    a document of 5-40 words. All built from good_texts, deterministically."""
    rng = random.Random(seed)
    prose = [t for t in good_texts if not (is_code and is_code(t))] or good_texts
    kinds = ["word_salad", "gibberish", "log_dump", "navigation", "keyword_spam"]
    texts = junk_examples(prose, n, seed, is_code)
    out_kinds = [kinds[i % 5] for i in range(n)]
    for i in range(n):
        page = prose[rng.randrange(len(prose))][:1500]
        kind = ["repeated", "lorem_ipsum", "dirty_words", "too_short"][i % 4]
        out_kinds.append(kind)
        texts.append("\n\n".join([page] * rng.randint(3, 6)) if kind == "repeated" else
                     page[:600] + " Lorem ipsum dolor sit amet, consectetur adipiscing elit." if kind == "lorem_ipsum"
                     else page[:800] + " " + " ".join(rng.choice(["porn", "xxx", "nsfw"]) for _ in range(8))
                     if kind == "dirty_words" else " ".join(page.split()[:rng.randint(5, 40)]))
    return out_kinds, texts


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
# 5. Files data.py writes: spill files (documents between its passes) and token shards
# (what pretrain.py reads). Each document -> [bos] + tokens + [eos], concatenated into
# uint32 files of about `shard_tokens` tokens (a document never spans two files);
# NAME.idx holds the uint64 start offset of every document in NAME.bin.

class DocumentSpill:
    """Documents on disk between two passes of a streaming run: one JSON line each.
    `with DocumentSpill(path, "w") as s: s.write(doc)`; `for doc in DocumentSpill(path)`."""

    def __init__(self, path, mode="r"):
        self.path, self.mode, self.f = path, mode, None

    def __enter__(self):
        self.f = open(self.path, self.mode + "b")
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, doc):
        self.f.write(json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n")

    def __iter__(self):
        with open(self.path, "rb") as f:
            for line in f:
                yield json.loads(line.decode("utf-8", "surrogatepass"))


def write_shards(out_dir, split, arrays, shard_tokens=1 << 24):
    """Write token arrays to SPLIT_000.bin/.idx, SPLIT_001... as they come (memory: one
    array at a time). A shard is written under a temporary name and renamed when complete
    (interrupted: no half shard). Removes stale SPLIT_*.bin/.idx of older runs. Returns
    the meta.json record."""
    files, index_files, n_tokens, n_docs = [], [], 0, 0
    shard = {"f": None, "starts": [], "tokens": 0}

    def close():
        if shard["f"] is None:
            return
        name = f"{split}_{len(files):03d}"
        shard["f"].flush()
        os.fsync(shard["f"].fileno())
        shard["f"].close()
        shard["f"] = None
        os.replace(shard["path"], os.path.join(out_dir, name + ".bin"))
        atomic_write_bytes(os.path.join(out_dir, name + ".idx"), np.array(shard["starts"], np.uint64).tobytes())
        files.append(name + ".bin")
        index_files.append(name + ".idx")
        shard.update(starts=[], tokens=0)

    try:
        for a in arrays:
            if shard["f"] is None:
                shard["path"] = os.path.join(out_dir, f".{split}_{len(files):03d}.bin.partial")
                shard["f"] = open(shard["path"], "wb")
            shard["starts"].append(shard["tokens"])
            shard["f"].write(np.asarray(a, np.uint32).tobytes())
            shard["tokens"] += len(a)
            n_tokens += len(a)
            n_docs += 1
            if shard["tokens"] >= shard_tokens:
                close()
        close()
    finally:
        if shard["f"] is not None:                          # interrupted mid-shard
            shard["f"].close()
            os.remove(shard["path"])
    for name in os.listdir(out_dir):                        # stale shards of older runs
        m = re.fullmatch(rf"{split}_(\d+)\.(bin|idx)", name)
        if m and name not in files and name not in index_files:
            os.remove(os.path.join(out_dir, name))
    return {"files": files, "index_files": index_files, "tokens": int(n_tokens), "documents": int(n_docs)}


def read_meta(out_dir):
    """meta.json of a finished data.py build (raises FileNotFoundError if there is none)."""
    with open(os.path.join(out_dir, "meta.json")) as f:
        return json.load(f)


def load_shards(out_dir, split="train"):
    """The split's token files as read-only uint32 memmaps (one per shard)."""
    meta = read_meta(out_dir)
    return [np.memmap(os.path.join(out_dir, f), dtype=np.uint32, mode="r") for f in meta["splits"][split]["files"]]


def load_index(out_dir, split="train"):
    """Document start offsets (uint64) of each of the split's shards."""
    meta = read_meta(out_dir)
    return [np.fromfile(os.path.join(out_dir, f), dtype=np.uint64) for f in meta["splits"][split]["index_files"]]


# ----------------------------------------------------------------------------
# 6. data.py's run report: report.json's stage records, dropped.jsonl, report.png

class Report:
    """Per stage: documents/characters in and out, why documents left (counts and five
    examples per reason), and, with a `drop_dir`, every dropped document as one JSON line
    (id, stage, reason, detail, where it was read, its metadata): write_drop_log puts them
    in one file, stage by stage in the order documents were read, however the run was
    chunked. A streaming run adds to a stage chunk by chunk. Only deterministic numbers
    go in `stages`; seconds go in `timings`."""

    def __init__(self, drop_dir=None):
        self.stages, self.timings, self.extra, self.drop_dir, self.drop_files = {}, {}, {}, drop_dir, {}

    def stage(self, name):
        return self.stages.setdefault(name, {"stage": name, "docs_in": 0, "docs_out": 0, "chars_in": 0,
                                             "chars_out": 0, "dropped": Counter(), "examples": defaultdict(list)})

    def tally(self, name, docs_in, chars_in, docs_out, chars_out, dropped=()):
        """Add counts to stage `name`; dropped = [(document or id, reason, detail)]."""
        rec = self.stage(name)
        for key, n in (("docs_in", docs_in), ("chars_in", chars_in), ("docs_out", docs_out), ("chars_out", chars_out)):
            rec[key] += n
        for doc, reason, detail in dropped:
            doc_id = doc["id"] if isinstance(doc, dict) else doc
            rec["dropped"][reason] += 1
            if len(rec["examples"][reason]) < 5:
                rec["examples"][reason].append({"id": doc_id, "detail": detail} if detail else {"id": doc_id})
            if self.drop_dir is not None:
                if name not in self.drop_files:
                    self.drop_files[name] = open(os.path.join(self.drop_dir, f"dropped.{len(self.drop_files)}"), "w+b")
                row = {"id": doc_id, "stage": name, "reason": reason, "detail": detail}
                row.update({k: doc[k] for k in ("location", "metadata") if isinstance(doc, dict) and k in doc})
                self.drop_files[name].write(json.dumps(row, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n")

    def write_drop_log(self, path):
        """dropped.jsonl: the stages' drop logs one after the other, in pipeline order."""
        with open(path, "wb") as out:
            for name in self.stages:
                if name in self.drop_files:
                    f = self.drop_files.pop(name)
                    f.seek(0)
                    shutil.copyfileobj(f, out)
                    f.close()

    def close(self, name, seconds, notes=None):
        """A stage is complete: add its notes, print its line."""
        rec = self.stage(name)
        rec.update({k: v for k, v in (notes or {}).items() if "seconds" not in k})
        self.timings[name] = round(self.timings.get(name, 0) + seconds, 3)
        print0(f"[data] {name:<18} docs {rec['docs_in']:>7} -> {rec['docs_out']:>7}  chars "
               f"{rec['chars_in'] / 1e6:8.2f}M -> {rec['chars_out'] / 1e6:8.2f}M  {self.timings[name]:6.2f}s  "
               f"{', '.join(f'{k}={v}' for k, v in sorted(rec['dropped'].items()))}")

    def records(self):
        return [dict(r, dropped=dict(sorted(r["dropped"].items())), examples=dict(sorted(r["examples"].items())))
                for r in self.stages.values()]


def total_chars(docs):
    """Characters of a list of documents."""
    return sum(len(d["text"]) for d in docs)


def plot_report(report_json, path):
    """Documents and characters in/out per stage, and the mix: achieved vs target."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    stages = [s for s in report_json["stages"]]
    names = [s["stage"] for s in stages]
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, key, label in ((axes[0], "docs", "documents"), (axes[1], "chars", "characters (M)")):
        scale = 1e6 if key == "chars" else 1
        ax.bar(x - 0.2, [s[f"{key}_in"] / scale for s in stages], 0.4, label="in")
        ax.bar(x + 0.2, [s[f"{key}_out"] / scale for s in stages], 0.4, label="out")
        ax.set_xticks(x, names, rotation=45, ha="right")
        ax.set_title(f"{label} per stage (§3.1.1)")
        ax.legend()
    mix = report_json.get("mix") or {}
    doms = sorted(set(mix.get("paper_target", {})) | set(mix.get("achieved_share", {})))
    xd = np.arange(len(doms))
    for off, key, label in ((-0.27, "paper_target", "paper target"), (0.0, "target_over_present_domains", "target (present)"),
                            (0.27, "achieved_share", "achieved")):
        axes[2].bar(xd + off, [mix.get(key, {}).get(d, 0) for d in doms], 0.27, label=label)
    axes[2].set_xticks(xd, doms)
    axes[2].set_title("data mix, share of characters (§3.1.2)")
    axes[2].legend()
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=80, metadata={"Software": None})
    plt.close(fig)
    os.replace(tmp, path)



# ----------------------------------------------------------------------------
# 7. Synthetic documents (speed measurements: bench.py --only minhash)


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


# ----------------------------------------------------------------------------
# 8. Extraction measured against trafilatura (the extractor of FineWeb/datatrove) on
# real pages: `python corpus.py --compare-extraction DIR ...` (needs lxml and
# trafilatura: pip install -e ".[test]"). Not used by the pipeline.

_NAV_TAGS = {"nav", "aside", "footer", "header"}
_NAV_NAMES = re.compile(r"(^|[\s_-])(nav|navbar|navigation|sidebar|sphinxsidebar|breadcrumbs?|related|"
                        r"footer|menu|toc|header)($|[\s_-])", re.I)
_IDENTIFIER = re.compile(r"\b__\w+__\b|\*\*\w+|\w\*\w")        # __init__, __all__, **kwargs, a*b


def _page_truth(root):
    """lxml tree -> (navigation word counts, content word counts, <pre> texts, content
    text). A word is navigation when it is inside <nav>/<aside>/<footer>/a page-level
    <header>, a landmark role, or a container whose class/id names navigation."""
    from dedup import WORD_RE
    nav, body, pres, text = Counter(), Counter(), [], []

    def is_nav(el):
        if el.tag == "header" and any(p.tag in ("article", "main", "section") for p in el.iterancestors()):
            return False
        return (el.tag in _NAV_TAGS or (el.get("role") or "") in _LANDMARK_ROLES
                or (el.tag in ("div", "ul", "ol", "section", "table", "td", "p", "span", "dl")
                    and _NAV_NAMES.search(f"{el.get('class') or ''} {el.get('id') or ''}") is not None))

    def code_text(el):                           # what a browser shows of a <pre>
        out = [el.text or ""]
        for c in el:
            out.append("\n" if c.tag == "br" else "" if c.tag in ("button", "script", "style", "input")
                       or not isinstance(c.tag, str) else code_text(c))
            out.append(c.tail or "")
        return "".join(out)

    def walk(el, in_nav):
        words = nav if in_nav else body
        if not isinstance(el.tag, str) or el.tag in ("script", "style", "noscript", "template", "head"):
            words.update(WORD_RE.findall((el.tail or "").lower()))
            return
        here = in_nav or is_nav(el)
        if el.tag == "pre" and not here:
            pres.append(code_text(el))
        (nav if here else body).update(WORD_RE.findall((el.text or "").lower()))
        text.append("" if here else el.text or "")
        for child in el:
            walk(child, here)
        words.update(WORD_RE.findall((el.tail or "").lower()))
        text.append("" if in_nav else el.tail or "")

    walk(root, False)
    return nav, body, pres, "".join(text)


def extraction_scores(html_text, reference_text, root):
    """One page: word counts for precision/recall against the reference (all words, and
    words outside code blocks), navigation-only words kept, code blocks kept verbatim,
    identifiers kept; for ours and for the reference."""
    from dedup import WORD_RE
    ours = html_to_text(html_text)
    nav, body, pres, content = _page_truth(root)
    code_words = Counter(w for p in pres for w in WORD_RE.findall(p.lower()))
    nav_only = {w: c for w, c in nav.items() if w not in body}
    idents = Counter(_IDENTIFIER.findall(content))
    row = {"code_blocks": len(pres), "nav_words": sum(nav_only.values()), "identifiers": sum(idents.values())}
    for name, text in (("ours", ours), ("ref", reference_text)):
        words = Counter(WORD_RE.findall(text.lower()))
        lines = "\n".join(ln.rstrip() for ln in text.split("\n"))
        row[f"{name}_nav_kept"] = sum(min(c, words[w]) for w, c in nav_only.items())
        row[f"{name}_code_kept"] = sum("\n".join(ln.rstrip() for ln in p.strip("\n").split("\n")).strip() in lines
                                       for p in pres)
        found = Counter(_IDENTIFIER.findall(text))
        row[f"{name}_identifiers_kept"] = sum(min(c, found[w]) for w, c in idents.items())
        row[f"{name}_words"] = sum(words.values())
        row[f"{name}_prose_words"] = sum((words - code_words).values())
    ours_w, ref_w = Counter(WORD_RE.findall(ours.lower())), Counter(WORD_RE.findall(reference_text.lower()))
    row["common_words"] = sum((ours_w & ref_w).values())
    row["common_prose_words"] = sum(((ours_w - code_words) & (ref_w - code_words)).values())
    return row


def compare_extraction(paths, out=None):
    """Every .html page under `paths`: html_to_text against trafilatura.extract. Prints
    and returns precision, recall and F1 of words (micro-averaged over pages), the
    share of navigation-only words kept, code blocks kept word for word, identifiers
    (__init__, **kwargs, a*b) kept, per folder and in all; with `out`, writes the
    per-page rows and the summary there as JSON."""
    import lxml.html
    import trafilatura
    files = sorted(os.path.join(d, n) for p in paths for d, _, names in os.walk(p) for n in names
                   if n.endswith(HTML_EXTS)) + sorted(p for p in paths if os.path.isfile(p))
    rows, seconds = [], {"ours": 0.0, "ref": 0.0}
    for path in files:
        with open(path, "rb") as f:
            data = f.read()
        html_text = data.decode("utf-8", "replace")
        t0 = time.monotonic()
        ref = trafilatura.extract(html_text, include_comments=False) or ""
        seconds["ref"] += time.monotonic() - t0
        t0 = time.monotonic()
        html_to_text(html_text)
        seconds["ours"] += time.monotonic() - t0
        rows.append(dict(extraction_scores(html_text, ref, lxml.html.fromstring(data)), path=path))

    def summary(rs):
        s = {k: sum(r[k] for r in rs) for k in rs[0] if k != "path"}
        p, r = s["common_words"] / max(1, s["ours_words"]), s["common_words"] / max(1, s["ref_words"])
        pp = s["common_prose_words"] / max(1, s["ours_prose_words"])
        rp = s["common_prose_words"] / max(1, s["ref_prose_words"])
        out = {"pages": len(rs), "precision": p, "recall": r, "f1": 2 * p * r / max(1e-9, p + r),
               "precision_outside_code": pp, "recall_outside_code": rp}
        for name in ("ours", "ref"):
            out[f"{name}_nav_kept"] = s[f"{name}_nav_kept"] / max(1, s["nav_words"])
            out[f"{name}_code_blocks_kept"] = s[f"{name}_code_kept"] / max(1, s["code_blocks"])
            out[f"{name}_identifiers_kept"] = s[f"{name}_identifiers_kept"] / max(1, s["identifiers"])
        out.update(nav_words=s["nav_words"], code_blocks=s["code_blocks"], identifiers=s["identifiers"])
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}

    groups = defaultdict(list)
    for r in rows:
        groups[os.path.basename(os.path.dirname(r["path"]))].append(r)
    result = {"by_folder": {g: summary(rs) for g, rs in sorted(groups.items())}, "all": summary(rows),
              "seconds": {k: round(v, 2) for k, v in seconds.items()}}
    for name, s in list(result["by_folder"].items()) + [("ALL", result["all"])]:
        print(f"{name:<16} pages {s['pages']:>4}  P {s['precision']:.3f} R {s['recall']:.3f} F1 {s['f1']:.3f}  "
              f"(outside code P {s['precision_outside_code']:.3f})  nav kept {s['ours_nav_kept']:.3f} "
              f"(ref {s['ref_nav_kept']:.3f})  code kept {s['ours_code_blocks_kept']:.3f} (ref "
              f"{s['ref_code_blocks_kept']:.3f})  identifiers {s['ours_identifiers_kept']:.3f} "
              f"(ref {s['ref_identifiers_kept']:.3f})")
    if out:
        with open(out, "w") as f:
            json.dump({"summary": result, "pages": rows}, f, indent=1)
    return result


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description="corpus.py tools: extraction measured against trafilatura")
    parser.add_argument("--compare-extraction", nargs="+", metavar="PATH", required=True,
                        help="folders of .html pages (or files)")
    parser.add_argument("--out", default=None, help="write per-page rows and the summary to this JSON file")
    args = parser.parse_args()
    compare_extraction(args.compare_extraction, args.out)
