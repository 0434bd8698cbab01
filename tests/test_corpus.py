"""
Tests for corpus.py: the built-in corpus and the readers of the user's files.

Bad input is skipped and counted with its location, and the good documents around it
all survive: invalid UTF-8, empty documents, a 50 MB document, malformed and
pathological JSONL lines (a 5,000-digit integer, 100k nested brackets), truncated gzip
streams, WARC records with a lying Content-Length (the reader resynchronizes on the
next 'WARC/1.' line), and a FIFO in an input folder (skipped, never opened).

Run: python -m pytest -q tests/test_corpus.py
"""

import gzip
import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import corpus as C  # noqa: E402
import data as D  # noqa: E402
from test_data import CODE, FRENCH, PROSE  # noqa: E402


# ----------------------------------------------------------------------------
# Sources: bad input is skipped and counted, good documents all survive

def _warc_record(uri, html, date="2024-01-01T00:00:00Z", truncate=0):
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html.encode()
    head = (f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: {uri}\r\nWARC-Date: {date}\r\n"
            f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(http)}\r\n\r\n").encode()
    return head + http[:len(http) - truncate] + (b"\r\n\r\n" if not truncate else b"")


def make_bad_inputs(root: Path):
    root.mkdir()
    (root / "good.txt").write_text(PROSE[0])
    (root / "notes.md").write_text("# Notes\n\n" + PROSE[1])
    (root / "bad_utf8.txt").write_bytes(b"caf\xe9 " + PROSE[2].encode()[:100])
    (root / "empty.txt").write_text("   \n")
    with open(root / "huge.txt", "wb") as f:                   # a 50 MB single document
        f.seek(50_000_000)
        f.write(b"x")
    rows = [json.dumps({"text": PROSE[2], "url": "https://a.org/1", "timestamp": "2024-01-01"}),
            "{not json",
            '{"text": "lone \\ud800 surrogate"}',
            json.dumps({"no_text": 1}),
            "",
            json.dumps({"text": PROSE[3]})]
    (root / "docs.jsonl").write_bytes(("\n".join(rows) + "\n").encode() + b'{"text": "bad \xff utf8"}\n'
                                      + (json.dumps({"text": PROSE[4]}) + "\n").encode())
    gz = gzip.compress(b"".join((json.dumps({"text": t}) + "\n").encode() for t in (PROSE[5], FRENCH)))
    (root / "trunc.jsonl.gz").write_bytes(gz[:-30])           # cut inside the stream
    html = f"<html><body><nav>menu</nav><p>{CODE[:0]}{PROSE[0][:50]} page one. {PROSE[1]}</p></body></html>"
    records = [_warc_record("https://b.org/x", html), _warc_record("https://b.org/y", f"<p>{PROSE[3]}</p>"),
               _warc_record("https://b.org/z", f"<p>{PROSE[4]}</p>", truncate=40)]
    # Common Crawl gzips every record on its own: a multi-member gzip file
    (root / "crawl.warc.gz").write_bytes(b"".join(gzip.compress(r) for r in records))
    (root / "page.html").write_text(f"<html><body><p>{FRENCH}</p></body></html>")
    (root / "latin1.html").write_bytes(f'<html><head><meta charset="iso-8859-1"></head><body><p>{FRENCH}</p>'
                                       f'</body></html>'.encode("latin-1"))   # declared charset, not UTF-8
    return root


def test_bad_inputs_skipped_and_counted(tmp_path):
    root = make_bad_inputs(tmp_path / "in")
    docs, log = C.read_inputs([str(root), str(tmp_path / "missing")])
    reasons = sorted(r for _, r, _ in log.skipped)
    assert reasons == sorted(["invalid_encoding"] * 3 + ["empty", "too_large",
                              "malformed_json", "no_text_field", "truncated_gzip", "truncated_warc_record",
                              "missing_path"]), log.skipped
    locations = {r: loc for loc, r, _ in log.skipped}
    assert locations["malformed_json"].endswith("docs.jsonl:2")
    assert locations["truncated_warc_record"].endswith("crawl.warc.gz@record3")
    texts = [d["text"] for d in docs]
    for p in (PROSE[0], PROSE[2], PROSE[3], PROSE[4]):        # every good document is there
        assert any(p in t for t in texts)
    assert [d["text"] for d in docs if d["id"].endswith("trunc.jsonl.gz:1")] == [PROSE[5]]  # before the cut
    assert sum(FRENCH in D.html_to_text(t) for t in texts) == 2                  # UTF-8 and Latin-1 pages
    assert sum(PROSE[3] in t for t in texts) == 2             # JSONL and WARC copies
    warc_docs = [d for d in docs if d["source"] == "warc"]
    assert [d["url"] for d in warc_docs] == ["https://b.org/x", "https://b.org/y"]
    assert warc_docs[0]["kind"] == "html" and warc_docs[0]["timestamp"] == "2024-01-01T00:00:00Z"
    assert D.html_to_text(warc_docs[0]["text"]).startswith(PROSE[0][:50])


def test_jsonl_lines_that_break_json_loads_are_located_and_the_rest_kept(tmp_path):
    bad = [b'{"text": "caf\xe9"}',                                  # 2 invalid UTF-8
           b'{"text": "x", "n": ' + b"9" * 5000 + b"}",             # 3 int over 4,300 digits
           b"[" * 100_000 + b"]" * 100_000,                         # 4 RecursionError in json
           b'{"text": ']                                            # 5 malformed
    lines = [json.dumps({"text": PROSE[0]}).encode()] + bad + [json.dumps({"text": PROSE[1]}).encode()]
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    docs, log = C.read_inputs([str(path)])
    assert [d["text"] for d in docs] == [PROSE[0], PROSE[1]]
    assert [d["id"] for d in docs] == [f"{path}:1", f"{path}:6"]
    assert log.records == 6
    assert [(loc, reason) for loc, reason, _ in log.skipped] == [
        (f"{path}:2", "invalid_encoding"), (f"{path}:3", "malformed_json"),
        (f"{path}:4", "malformed_json"), (f"{path}:5", "malformed_json")]
    assert "nested deeper" in log.skipped[2][2] and "digits" in log.skipped[1][2]


def _warc(uri, text, length=None):
    body = text.encode()
    head = (f"WARC/1.0\r\nWARC-Type: conversion\r\nWARC-Target-URI: {uri}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n\r\n").encode()
    return head + body + b"\r\n\r\n"


@pytest.mark.parametrize("compress", [False, True])
def test_warc_resynchronizes_after_a_bad_content_length(tmp_path, compress):
    records = [_warc("https://a/1", PROSE[0]),
               _warc("https://a/2", PROSE[1], length=10**15),          # way over the limit
               _warc("https://a/3", PROSE[2]),
               _warc("https://a/4", PROSE[3], length=len(PROSE[3]) + 500),  # swallows record 5
               _warc("https://a/5", PROSE[4]),
               b"garbage between records\r\n",
               _warc("https://a/6", PROSE[5], length="abc"),           # not a number
               _warc("https://a/7", FRENCH)]
    path = tmp_path / ("crawl.warc.gz" if compress else "crawl.warc")
    path.write_bytes(b"".join(gzip.compress(r) for r in records) if compress else b"".join(records))
    docs, log = C.read_inputs([str(path)])
    assert [d["url"] for d in docs] == ["https://a/1", "https://a/3", "https://a/5", "https://a/7"]
    assert [d["text"] for d in docs] == [PROSE[0], PROSE[2], PROSE[4], FRENCH]
    assert [(loc, reason) for loc, reason, _ in log.skipped] == [
        (f"{path}@record2", "too_large"), (f"{path}@record4", "malformed_warc"),
        (f"{path}@record6", "malformed_warc"), (f"{path}@record6", "malformed_warc")]
    assert log.skipped[2][2] == "expected a 'WARC/1.x' version line"
    assert log.records == 7


def test_truncated_warc_record_is_numbered_right(tmp_path):
    rec = _warc("https://a/2", PROSE[1])
    path = tmp_path / "cut.warc"
    path.write_bytes(_warc("https://a/1", PROSE[0]) + rec[:-60])
    docs, log = C.read_inputs([str(path)])
    assert [d["url"] for d in docs] == ["https://a/1"]
    assert [(loc, reason) for loc, reason, _ in log.skipped] == [(f"{path}@record2", "truncated_warc_record")]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this OS")
def test_fifo_in_an_input_folder_is_skipped_not_opened(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.txt").write_text(PROSE[0])
    os.mkfifo(root / "b.txt")                         # opening it would block forever
    (root / "c.txt").write_text(PROSE[1])
    docs, log = C.read_inputs([str(root), str(root / "b.txt")])
    assert [d["text"] for d in docs] == [PROSE[0], PROSE[1]]
    assert log.skipped == [(str(root / "b.txt"), "not_regular_file", "FIFO")] * 2


def test_builtin_corpus_serves_documents_and_tokenizer_texts():
    code = C.builtin_corpus(["python-source"], max_chars=200_000)
    assert {d["source"] for d in code} == {"python-source"}
    assert sum(len(d["text"]) for d in code) == 200_000          # the last one cut to fit
    assert code == C.builtin_corpus(["python-source"], max_chars=200_000)   # deterministic
    topics = C.builtin_corpus(["pydoc-topics"])
    assert topics and all(d["id"].startswith("pydoc-topics:") for d in topics)
    local = C.builtin_corpus(C.LOCAL_SOURCES, every=40)
    assert {d["source"] for d in local} == set(C.LOCAL_SOURCES)
    with pytest.raises(ValueError, match="unknown built-in sources"):
        C.builtin_corpus(["wikipedia"])


def test_gzip_cut_inside_a_record_names_that_record(tmp_path):
    stream = gzip.compress(_warc("https://a/1", PROSE[0]) + _warc("https://a/2", PROSE[1] * 20))
    path = tmp_path / "cut.warc.gz"
    path.write_bytes(stream[:len(stream) * 3 // 4])           # inside record 2's payload
    docs, log = C.read_inputs([str(path)])
    assert [d["url"] for d in docs] == ["https://a/1"]
    assert [(loc, reason) for loc, reason, _ in log.skipped] == [(f"{path}@record2", "truncated_gzip")]


# ----------------------------------------------------------------------------
# HTML -> text on pages shaped like real documentation and news sites: the chrome
# (header, nav, sidebar, breadcrumbs, table of contents, related links, footer, cookie
# banner) is gone, the article and its code are kept word for word.

DOCS_ARTICLE = ("The json module encodes Python objects as JSON text and decodes JSON text back into "
                "Python objects. Its source lives in Lib/json/__init__.py, and the names it exports "
                "are listed in __all__.")
DOCS_PARAGRAPH = ("Extra keyword arguments (**kwargs) are passed on to the JSONEncoder constructor, so "
                  "a*b stays a product and snake_case_names stay whole.")
DOCS_CODE = ('>>> import json\n>>> json.dumps({"a": [1, 2]}, indent=2)\n'
             "def encode(obj, **kwargs):\n    return JSONEncoder(**kwargs).encode(obj)  # __init__ runs first")

DOCS_PAGE = f"""<!DOCTYPE html><html><head><title>json — JSON encoder and decoder</title>
<script>var DOCUMENTATION_OPTIONS = {{}};</script></head><body>
<div class="mobile-nav"><nav class="nav-content" role="navigation"><a href="/">Python</a> Theme Auto Light Dark</nav></div>
<div class="related" role="navigation" aria-label="related navigation"><h3>Navigation</h3>
  <ul><li><a href="genindex.html">index</a></li><li><a href="py-modindex.html">modules</a> |</li>
  <li><a href="marshal.html">next</a> |</li><li><a href="netdata.html">previous</a> |</li>
  <li><a href="../index.html">Python 3.11.2 Documentation</a> &#187;</li></ul></div>
<div class="document"><div class="documentwrapper"><div class="bodywrapper">
<div class="body" role="main">
  <section id="module-json"><h1>json — JSON encoder and decoder<a class="headerlink" href="#module-json">¶</a></h1>
  <p><strong>Source code:</strong> <a href="https://github.com/python/cpython">Lib/json/__init__.py</a></p>
  <p>{DOCS_ARTICLE.replace("Lib/json/__init__.py", "<code>Lib/json/__init__.py</code>")}</p>
  <p>{DOCS_PARAGRAPH.replace("**kwargs", "<em>**kwargs</em>")}</p>
  <div class="highlight-python3 notranslate"><div class="highlight"><pre><span></span><span class="gp">&gt;&gt;&gt; </span><span class="kn">import</span> json
<span class="gp">&gt;&gt;&gt; </span>json.dumps({{"a": [1, 2]}}, indent=2)
def encode(obj, **kwargs):
    return JSONEncoder(**kwargs).encode(obj)  # __init__ runs first</pre></div></div>
  <section id="basic-usage"><h2>Basic Usage<a class="headerlink" href="#basic-usage">¶</a></h2>
  <dl class="py function"><dt class="sig sig-object py" id="json.dump"><span class="sig-name descname">json.dump</span>(obj, fp, **kw)<a class="headerlink" href="#json.dump">¶</a></dt>
  <dd><p>Serialize obj as a JSON formatted stream to fp, a file-like object.</p></dd></dl>
  </section></section>
</div></div></div>
<div class="sphinxsidebar" role="navigation" aria-label="main navigation"><div class="sphinxsidebarwrapper">
  <h3><a href="../contents.html">Table of Contents</a></h3><ul><li><a href="#">json — JSON encoder</a>
  <ul><li><a href="#basic-usage">Basic Usage</a></li></ul></li></ul>
  <h4>Previous topic</h4><p class="topless"><a href="netdata.html">Internet Data Handling</a></p>
  <h4>Next topic</h4><p class="topless"><a href="mailbox.html">mailbox — Manipulate mailboxes</a></p>
  <div role="note" aria-label="source link"><h3>This Page</h3><ul class="this-page-menu">
  <li><a href="../bugs.html">Report a Bug</a></li><li><a href="../_sources/library/json.rst.txt">Show Source</a></li></ul></div>
</div></div></div>
<div class="footer">&copy; Copyright 2001-2023, Python Software Foundation. Last updated on Mar 05, 2023.
Found a bug? Created using <a href="https://www.sphinx-doc.org/">Sphinx</a> 5.3.0.</div></body></html>"""

NEWS_PARAGRAPHS = [
    "The city council voted on Tuesday to extend the tram line to the harbour district, a project that "
    "residents have asked for since the old ferry stopped running in 2019.",
    "Construction is expected to start next spring and to take about three years. The council said the "
    "new line will carry up to twelve thousand passengers a day once it is finished.",
]
NEWS_CODE = "route = [\"Central\", \"Market\", \"Harbour\"]\nfor stop in route:\n    print(stop)"

NEWS_PAGE = f"""<html><head><title>Tram line to reach the harbour</title></head><body>
<div id="cookie-banner">We use cookies to improve your experience. <button>Accept all</button></div>
<header class="site-header"><a href="/" class="logo">The Daily Example</a>
  <nav class="main-nav"><ul><li><a href="/world">World</a></li><li><a href="/city">City</a></li>
  <li><a href="/sport">Sport</a></li><li><a href="/opinion">Opinion</a></li></ul></nav>
  <form role="search"><input name="q"><button>Search</button></form></header>
<div class="breadcrumbs"><a href="/">Home</a> &gt; <a href="/city">City</a> &gt; Transport</div>
<main><article>
  <header><h1>Tram line to reach the harbour</h1>
  <p class="byline">By Jane Reporter | 3 December 2026</p></header>
  <div class="share-buttons"><a href="https://twitter.example/share">Share on Twitter</a> <a href="mailto:">Email</a></div>
  <p>{NEWS_PARAGRAPHS[0]}</p>
  <figure><img src="map.png" alt="Map of the planned tram route"><figcaption>The planned route.</figcaption></figure>
  <p>{NEWS_PARAGRAPHS[1]}</p>
  <p>The open-data team published the stops as a short script:</p>
  <pre><code>{NEWS_CODE}</code></pre>
  <aside class="related-articles"><h3>Related</h3><ul><li><a href="/a">Bus fares to rise</a></li>
  <li><a href="/b">Ferry museum opens</a></li></ul></aside>
  <footer class="article-tags">Tags: <a href="/t/trams">trams</a> <a href="/t/harbour">harbour</a></footer>
</article></main>
<aside id="sidebar"><h2>Most read</h2><ol><li><a href="/x">Storm closes bridge</a></li>
  <li><a href="/y">Local team wins cup</a></li></ol><div class="newsletter">Subscribe to our newsletter</div></aside>
<footer id="site-footer"><a href="/about">About us</a> <a href="/privacy">Privacy Policy</a>
  &copy; 2026 The Daily Example. All rights reserved.</footer></body></html>"""


def test_documentation_page_keeps_article_and_code_drops_navigation():
    text = C.html_to_text(DOCS_PAGE)
    assert text.startswith("json — JSON encoder and decoder\n\n")
    assert DOCS_ARTICLE in text and DOCS_PARAGRAPH in text       # identifiers untouched
    assert "\n" + DOCS_CODE + "\n" in text                        # the code block, word for word
    assert "json.dump(obj, fp, **kw)" in text and "Serialize obj as a JSON formatted stream" in text
    for chrome in ("Navigation", "modules", "previous", "Table of Contents", "Previous topic", "Next topic",
                   "Internet Data Handling", "This Page", "Report a Bug", "Show Source", "Copyright",
                   "Sphinx", "Theme Auto", "¶", "DOCUMENTATION_OPTIONS"):
        assert chrome not in text, chrome


def test_news_page_keeps_article_and_code_drops_chrome():
    text = C.html_to_text(NEWS_PAGE)
    assert text == "\n\n".join(["Tram line to reach the harbour", NEWS_PARAGRAPHS[0], "Map of the planned tram route",
                                "The planned route.", NEWS_PARAGRAPHS[1],
                                "The open-data team published the stops as a short script:", NEWS_CODE])
    # the same page without <main>/<article>: landmarks and link density still find the chrome
    bare = (NEWS_PAGE.replace("<main><article>", "<div>").replace("</article></main>", "</div>")
            .replace("<header><h1>", "<div><h1>").replace("</p></header>", "</p></div>"))
    assert C.html_to_text(bare) == text


def test_identifiers_survive_markdown_stripping():
    md = ("# Title\n\nSee `Lib/json/__init__.py`, Lib/json/__init__.py and __all__; call f(*args, **kwargs) "
          "with a*b or 2**31 - 1.\nThis is **bold**, *italic*, __two words__ and [a link](http://x.org).\n\n"
          "    def f(**kwargs):  # indented code: untouched\n        return __name__\n\n* a list item\n")
    out = C.strip_markdown(md)
    assert out.split("\n") == [
        "Title", "", "See Lib/json/__init__.py, Lib/json/__init__.py and __all__; call f(*args, **kwargs) "
        "with a*b or 2**31 - 1.", "This is bold, italic, two words and a link.", "",
        "    def f(**kwargs):  # indented code: untouched", "        return __name__", "", "a list item", ""]
    html = "<p>Run <code>__init__.py</code> with **kwargs, __all__ and a*b; **really** bold.</p>"
    assert C.html_to_text(html) == "Run __init__.py with **kwargs, __all__ and a*b; really bold."
