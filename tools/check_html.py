"""Open every page of the built book in headless Chromium and report what a reader would see broken.

Pages: every ``*.html`` under the HTML folder except Sphinx's helper pages, which carry no
book content (``genindex.html``, ``search.html``), theme template fragments under ``_static/``
and redirect stubs (the root ``index.html`` is a meta refresh to the first chapter).

Each page is served by a local HTTP server and loaded at 1280 px and 400 px wide. The book serves
its own MathJax (``_static/mathjax``, copied from ``node_modules/mathjax`` by ``tools/book_mathjax.py``);
a request for MathJax's CDN URL is answered from ``node_modules/mathjax`` so that the other checks
still run, and reported; every other non-local request is aborted and reported. A page fails on any
of these kinds:

- ``mathjax``: a TeX error or an undefined macro (shown with its TeX source), ``merror`` output,
  "Math input error", or MathJax not finishing;
- ``raw-tex``: ``$...$``, ``\\(``, ``\\[`` or a ``\\command`` left untypeset in the text;
- ``tex-in-title``: a backslash command or ``$`` in ``<title>``, a heading, the sidebar or a link, or
  a Greek letter with its subscript written as plain text (``η_L``; headings use ``η{sub}`L```);
- ``unresolved-ref``: ``???``, an unlinked Sphinx xref, a link to a missing file or anchor;
- ``overflow`` (1280 px): an element sticking out of the article column, or a container that
  hides content behind a horizontal scrollbar or a clip (with the px hidden); ``code-overflow``
  is the same for code cells and their printed outputs (``<pre>``);
- ``page-scroll`` (400 px): the page itself scrolls horizontally;
- ``console``, ``request`` (a local resource failed), ``image`` (broken), ``external``;
- ``mathjax-cdn``: the page loads MathJax from a CDN instead of the book's own copy (a book built
  before ``npm ci``, or a change that undid ``tools/book_mathjax.py``);
- ``tex-escape``: a TeX accent or escape (``\\'``, ``\\"``, ``{\\``, ``\\&``) left in the text, links and
  headings included (a BibTeX field that was not decoded: "Sokoli\\'c");
- ``broken-word`` (both widths): a word of four or more letters broken across two lines outside
  code (a table column squeezed until its text wraps letter by letter);
- ``clipped-math`` (both widths): typeset math that extends past an ancestor that hides overflow or
  past the viewport, with no scrolling box in between (a scroll box is fine; a cut is not);
- ``caption``: a figure caption that does not start with its one number ("Figure 2." for the paper's
  figures, "Book figure 3." for the book's own), or that carries Sphinx's automatic "Fig. n";
- ``bibliography``: an entry that prints its year twice;
- ``pasted-object``: a glued value pasted as its Python repr ("<IPython.core.display.Markdown object>");
- ``citable``: a page without the line naming the dbpaper version and the commit of the build, or an
  erratum heading "En — ..." whose section is not reachable as ``#en``;
- ``figure-text`` (both widths): a figure whose smallest text shows under 9 CSS px, from the width the
  page displays the image at, its pixel width and the font size and resolution it was drawn with (the
  record ``book/figures/<name>.json`` that ``dbpaper.paper.figures.save_figure`` writes beside it), or a
  figure image without such a record;
- ``alt-text``: an image of the article without alt text, or whose alt text is a file path or name;
- ``pseudo-tex`` (both widths): ``_{`` or ``^{`` in the text outside typeset math and code (``γ_{L-1}``
  printed instead of typeset), tables and printed cell outputs included.

Usage: ``python tools/check_html.py [--html DIR] [--pages P ...] [--no-screenshots] [--report F] [--tolerate P ...]``
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import re
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from urllib.parse import unquote, urlsplit

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
FIGURE_RECORDS = ROOT / "book" / "figures"
MIN_TEXT_PX = 9  # dbpaper.paper.figures.MIN_TEXT_PX
CHROMIUM = "/usr/bin/chromium"
MATHJAX_DIR = ROOT / "node_modules" / "mathjax"
MATHJAX_URL = re.compile(r"^https?://[^/]+/(?:npm/)?mathjax@3[^/]*/(es5/[^?#]+)")
SKIPPED = {"genindex.html", "search.html"}
WIDTHS = (1280, 400)

# In-page checks; each returns a list of {kind, detail}.
CONTENT_JS = r"""() => {
  const out = [], add = (kind, detail) => out.push({kind, detail});
  const snip = (s) => s.replace(/\s+/g, ' ').trim().slice(0, 90);
  const shown = (el) => (el.checkVisibility() ? '' : ' (not displayed on screen)');
  const noMath = (el) => { const c = el.cloneNode(true);
    c.querySelectorAll('mjx-container, .headerlink').forEach((m) => m.remove()); return c.textContent; };
  if (window.MathJax && MathJax.startup && MathJax.startup.document && MathJax.startup.toMML) {
    for (const item of MathJax.startup.document.math) {
      const mml = MathJax.startup.toMML(item.root);
      const err = mml.match(/data-mjx-error="([^"]*)"/);
      const undef = mml.match(/<mtext mathcolor="red"[^>]*>(\\[^<]*)</);
      if (err || undef) add('mathjax', (err ? err[1] : 'undefined macro ' + undef[1]) + ' in TeX: ' + snip(item.math));
    }
  } else {
    document.querySelectorAll('mjx-merror, merror').forEach((e) => add('mathjax', 'merror: ' + snip(e.textContent)));
  }
  if (document.body.innerText.includes('Math input error')) add('mathjax', 'Math input error');
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const skip = 'script, style, pre, code, kbd, samp, textarea, mjx-container, .highlight';
  const rawTex = /\$[^$\s][^$]*\$|\\\(|\\\[|\\begin\{|\\[A-Za-z]{2,}/;
  for (let n; (n = walker.nextNode());) {
    const p = n.parentElement;
    if (p.closest(skip)) continue;
    if (rawTex.test(n.data) && !p.closest('a, h1, h2, h3, h4, h5, h6')) add('raw-tex', `<${p.tagName.toLowerCase()}> ${snip(n.data)}${shown(p)}`);
    if (n.data.includes('???')) add('unresolved-ref', '"???" in: ' + snip(n.data) + shown(p));
  }
  document.querySelectorAll('.bibtex-citation').forEach((c) => { if (!c.querySelector('a')) {
    const r = document.createRange(); r.setStart(c.parentElement, 0); r.setEndBefore(c);
    add('unresolved-ref', `citation without an entry: "...${r.toString().replace(/\s+/g, " ").slice(-60)} ${c.textContent}"`); } });
  document.querySelectorAll('article .xref').forEach((x) => { if (!x.closest('a')) add('unresolved-ref', 'unlinked xref: ' + snip(x.textContent)); });
  const texy = /\\[A-Za-z]+|\$|[\u0370-\u03FF]_[\p{L}\p{N}{]/u;  // TeX, or a Greek letter with a plain-text subscript (η_L)
  if (texy.test(document.title)) add('tex-in-title', '<title>: ' + document.title);
  const named = [['heading', 'h1, h2, h3, h4, h5, h6'], ['sidebar', '.bd-sidebar-primary a, .bd-toc a'], ['link', 'a:not(.bd-sidebar-primary a, .bd-toc a)']];
  for (const [what, sel] of named)
    document.querySelectorAll(sel).forEach((e) => { const t = noMath(e); if (texy.test(t)) add('tex-in-title', `${what}: ${snip(t)}${shown(e)}`); });
  document.querySelectorAll('img').forEach((i) => { if (i.complete && i.naturalWidth === 0) add('image', 'broken image: ' + i.getAttribute('src')); });
  // TeX accents and escapes that a BibTeX or Markdown conversion left undecoded, anywhere in the text
  const escape = /\\['"`^~=.][A-Za-z{]|\{\\['"`^~=.]|\\[&%#_$]/;
  const walker2 = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n; (n = walker2.nextNode());) {
    const p = n.parentElement;
    if (p.closest(skip)) continue;
    if (escape.test(n.data)) add('tex-escape', `<${p.tagName.toLowerCase()}> ${snip(n.data)}${shown(p)}`);
  }
  // a glued value pasted as its repr (in prose, inline code included; not in a cell's printed output)
  document.querySelectorAll('p, li, td, th, dd, figcaption, h1, h2, h3, h4, h5, h6').forEach((e) => {
    if (e.closest('script, style, pre, .highlight, .cell_output')) return;
    if (e.querySelector('p, li, td')) return;  // the innermost block reports it
    if (/<IPython\.[\w.]+ object>|<[\w.]+ object at 0x/.test(e.textContent.replace(/\s+/g, ' ')))
      add('pasted-object', `the repr of an object instead of its value: ${snip(e.textContent)}`);
  });
  // one number per caption: the paper's "Figure n." or the book's "Book figure n.", nothing automatic
  document.querySelectorAll('article figcaption, article .caption').forEach((c) => {
    if (c.querySelector('.caption-number')) add('caption', 'automatic number "' + snip(c.querySelector('.caption-number').textContent) + '" in: ' + snip(c.textContent));
    else if (!/^(Figure|Book figure) [0-9]+\./.test(c.textContent.trim())) add('caption', 'caption without its number: ' + snip(c.textContent));
  });
  // bibliography entries that print their year twice ("2023, 2023")
  document.querySelectorAll('.citation, [role="doc-biblioentry"]').forEach((c) => {
    const m = c.textContent.match(/\b((?:19|20)[0-9][0-9])\b[^0-9]{1,6}\b\1\b/);
    if (m) add('bibliography', 'year printed twice: ' + snip(c.textContent));
  });
  // citable: the version line on every page, and every erratum "En — ..." reachable as #en
  const version = document.getElementById('dbpaper-version');
  if (!version || !/dbpaper [0-9]+\.[0-9]+/.test(version.textContent) || !/commit/.test(version.textContent))
    add('citable', 'no "dbpaper <version> ... commit" line on the page');
  document.querySelectorAll('article h2').forEach((h) => {
    const m = noMath(h).trim().match(/^E([0-9]+) —/);
    if (!m) return;
    const target = document.getElementById('e' + m[1]);
    if (!target || !(target.contains(h) || target.nextElementSibling === h || target.parentElement.contains(h)))
      add('citable', `erratum E${m[1]} is not reachable as #e${m[1]}`);
  });
  return out;
}"""

# At every width: words broken inside (letter-by-letter wrapping of a squeezed column) and math cut off.
LAYOUT_JS = r"""() => {
  const out = [], add = (kind, detail) => out.push({kind, detail});
  const snip = (s) => s.replace(/\s+/g, ' ').trim().slice(0, 90);
  const root = document.querySelector('article.bd-article, main') || document.body;
  const skip = 'script, style, pre, code, kbd, samp, textarea, mjx-container, .highlight, .headerlink';
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  const range = document.createRange();
  let broken = 0;
  for (let n; (n = walker.nextNode());) {
    const p = n.parentElement;
    if (p.closest(skip) || !p.checkVisibility()) continue;
    for (const m of n.data.matchAll(/[\p{L}]{4,}/gu)) {
      range.setStart(n, m.index); range.setEnd(n, m.index + m[0].length);
      const tops = new Set([...range.getClientRects()].filter((r) => r.width > 0).map((r) => Math.round(r.top / 3)));
      if (tops.size > 1) {
        broken += 1;
        if (broken <= 5) add('broken-word', `"${m[0]}" broken across ${tops.size} lines in <${p.tagName.toLowerCase()}> ${snip(n.data)}`);
      }
    }
  }
  if (broken > 5) add('broken-word', `... and ${broken - 5} more broken words`);
  let clipped = 0;
  document.querySelectorAll('mjx-container').forEach((c) => {
    const inner = c.querySelector('mjx-math') || c;
    const r = inner.getBoundingClientRect();
    if (r.width === 0 || !c.checkVisibility()) return;
    for (let a = c; a && a !== document.documentElement; a = a.parentElement) {
      const cs = getComputedStyle(a);
      if (cs.display === 'inline' || cs.display === 'contents') continue;  // overflow does not apply to inline boxes
      if (cs.overflowX === 'auto' || cs.overflowX === 'scroll') return;  // the reader can scroll to the rest
      if (cs.overflowX === 'hidden' || cs.overflowX === 'clip') {
        const ar = a.getBoundingClientRect();
        if (r.right > ar.right + 1 || r.left < ar.left - 1) {
          clipped += 1;
          if (clipped <= 5) add('clipped-math', `${Math.round(Math.max(r.right - ar.right, ar.left - r.left))} px of math cut off by <${a.tagName.toLowerCase()}${a.className ? '.' + String(a.className).split(' ')[0] : ''}>: ${snip(c.textContent)}`);
          return;
        }
      }
    }
    if (r.right > window.innerWidth + 1) {
      clipped += 1;
      if (clipped <= 5) add('clipped-math', `math ends ${Math.round(r.right - window.innerWidth)} px past the window: ${snip(c.textContent)}`);
    }
  });
  if (clipped > 5) add('clipped-math', `... and ${clipped - 5} more`);
  return out;
}"""

# Elements wider than `root` (the article at 1280 px, the viewport at 400 px). Reports the outermost
# element sticking out, and any horizontal scroll/clip container with the px it hides.
OVERFLOW_JS = r"""(page) => {
  const root = page ? document.body : (document.querySelector('article.bd-article, main') || document.body);
  const limit = page ? window.innerWidth : root.getBoundingClientRect().right;
  const out = [];
  const name = (e) => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') +
    [...e.classList].slice(0, 3).map((c) => '.' + c).join('');
  const text = (e) => (e.getAttribute('aria-label') || e.textContent || '').replace(/\s+/g, ' ').trim().slice(0, 80);
  const visit = (el, clipped) => {
    for (const c of el.children) {
      const cs = getComputedStyle(c);
      if (cs.display === 'none' || cs.position === 'fixed' || (!page && cs.visibility === 'hidden')) continue;
      const r = c.getBoundingClientRect();
      if (!clipped && r.width > 0 && r.right > limit + 1) {
        out.push({kind: 'sticks out', element: name(c), text: text(c), px: Math.round(r.right - limit)});
        continue;
      }
      const clips = cs.overflowX !== 'visible';
      if (clips && c.scrollWidth > c.clientWidth + 1) {
        const code = !!c.closest('pre');  // name the longest line, the one to rewrap
        const line = code ? c.textContent.split('\n').reduce((a, b) => (b.length > a.length ? b : a), '') : '';
        out.push({kind: cs.overflowX === 'hidden' || cs.overflowX === 'clip' ? 'clipped' : 'scrolls', code,
                  element: name(c), text: code ? `longest line (${line.length} chars): ${line.trim().slice(0, 60)}` : text(c),
                  px: c.scrollWidth - c.clientWidth});
        continue;
      }
      visit(c, clipped || clips);
    }
  };
  // MathJax's assistive MathML is visually hidden but wider than the rendering: leave it out.
  const style = document.head.appendChild(document.createElement('style'));
  style.textContent = 'mjx-assistive-mml { display: none !important; }';
  visit(root, false);
  style.remove();
  return {out, scrollWidth: document.documentElement.scrollWidth, viewport: window.innerWidth};
}"""

# Every image of the article: its file, alt text, displayed and natural width; and every text node that
# carries a braced sub- or superscript outside math and code.
FIGURES_JS = r"""() => {
  const root = document.querySelector('article.bd-article, main') || document.body;
  const images = [...root.querySelectorAll('img')].filter((i) => i.checkVisibility()).map((i) => ({
    src: i.getAttribute('src') || '', alt: i.getAttribute('alt'), shown: i.getBoundingClientRect().width,
    natural: i.naturalWidth, figure: !!i.closest('figure, div.figure')}));
  const snip = (s) => s.replace(/\s+/g, ' ').trim().slice(0, 90);
  const code = 'script, style, mjx-container, .cell_input, code, kbd, samp, textarea';
  const tex = [];
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  for (let n; (n = walker.nextNode());) {
    const p = n.parentElement;
    if (p.closest(code) || (p.closest('.highlight') && !p.closest('.cell_output'))) continue;  // source code may say x_{i}
    if (/[_^]\{/.test(n.data)) tex.push(`<${p.tagName.toLowerCase()}> ${snip(n.data)}`);
  }
  return {images, tex};
}"""

LINKS_JS = r"""() => ({ids: [...document.querySelectorAll('[id], a[name]')].map((e) => e.id || e.name),
  links: [...document.querySelectorAll('a[href]')].map((a) => a.href)})"""


# A page is checked once this resolves to "ready": the document is loaded, MathJax has finished
# typesetting, every image has loaded or failed (lazy images are made eager first) and the fonts
# are ready; otherwise it names what was still pending when the bound (ms) ran out.
READY_TIMEOUT_MS = 180_000
READY_JS = """async (bound) => {
  const pending = new Set();
  const track = (name, p) => { pending.add(name); return p.finally(() => pending.delete(name)); };
  const loaded = document.readyState === "complete" ? Promise.resolve()
    : new Promise(r => window.addEventListener("load", r, {once: true}));
  const images = [...document.images].map((img, i) => {
    if (img.loading === "lazy") img.loading = "eager";
    if (img.complete) return Promise.resolve();
    return new Promise(r => { img.addEventListener("load", r, {once: true}); img.addEventListener("error", r, {once: true}); });
  });
  const all = Promise.all([
    track("document load", loaded),
    track("MathJax typesetting", (window.MathJax && MathJax.startup && MathJax.startup.promise) || Promise.resolve()),
    track("images", Promise.all(images)),
    track("fonts", document.fonts ? document.fonts.ready : Promise.resolve()),
  ]).then(() => "ready");
  const timeout = new Promise(r => setTimeout(() => r(`still waiting after ${bound / 1000} s for ${[...pending].join(", ")}`), bound));
  return Promise.race([all, timeout]);
}"""


def find_pages(html: Path, wanted: list[str] | None) -> list[str]:
    """Relative paths of the content pages under `html` (optionally only those matching `wanted`)."""
    pages = []
    for path in sorted(html.rglob("*.html")):
        rel = path.relative_to(html).as_posix()
        if rel in SKIPPED or rel.startswith("_") or "/_" in rel:
            continue
        if re.match(r'\s*<meta http-equiv="Refresh"', path.read_text(errors="replace"), re.I):
            continue  # redirect stub
        if wanted and not any(w in rel for w in wanted):
            continue
        pages.append(rel)
    return pages


def serve(html: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve `html` on a free localhost port in a daemon thread; return the server and its base URL."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(html)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


class Checker:
    """Loads pages in one browser context and collects failures as (page, width, kind, detail)."""

    def __init__(self, browser, base: str, shots: Path | None, records: dict[str, dict] | None = None):
        self.base, self.shots, self.failures = base, shots, []
        self.records = load_records(FIGURE_RECORDS) if records is None else records
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
        self.context.set_default_timeout(READY_TIMEOUT_MS)
        self.context.route("**/*", self._route)
        self.current = ("", 0)
        self.anchors: dict[str, set[str]] = {}
        self.links: dict[str, list[str]] = {}

    def fail(self, kind: str, detail: str, where: tuple[str, int] | None = None) -> None:
        page, width = where or self.current
        self.failures.append({"page": page, "width": width, "kind": kind, "detail": detail})

    def _route(self, route) -> None:
        """Let local requests through, serve MathJax from node_modules, abort everything else."""
        url = route.request.url
        if url.startswith(self.base):
            return route.continue_()
        match = MATHJAX_URL.match(url)
        if match and (MATHJAX_DIR / match[1]).is_file():
            if match[1].endswith("-chtml.js") or match[1].endswith("-svg.js"):  # the entry bundle, once per page
                self.fail("mathjax-cdn", f"MathJax loaded from a CDN ({url}), not from the book's _static/mathjax")
            return route.fulfill(path=MATHJAX_DIR / match[1], headers={"Access-Control-Allow-Origin": "*"})
        self.fail("external", f"blocked request {url}" + (" (not in node_modules/mathjax)" if match else ""))
        route.abort("blockedbyclient")

    def _on_console(self, msg) -> None:
        # a failed load is already reported as `request` or `external`; the theme's own notice on a
        # reader's first visit (no colour mode stored yet: it logs this and falls back to "auto") is benign
        if msg.type == "error" and not msg.text.startswith(("Failed to load resource", "Got invalid theme mode")):
            self.fail("console", f"{msg.text} ({msg.location.get('url', '')}:{msg.location.get('lineNumber', '')})")

    def _on_response(self, response) -> None:
        if response.url.startswith(self.base) and response.status >= 400:
            self.fail("request", f"HTTP {response.status} {response.url[len(self.base):]}")

    def _on_failed(self, request) -> None:
        if request.url.startswith(self.base):
            self.fail("request", f"{request.failure} {request.url[len(self.base):]}")

    def check(self, rel: str, width: int) -> None:
        """Load one page at one width, wait for MathJax, run the checks and take a screenshot."""
        self.current = (rel, width)
        page = self.context.new_page()
        page.set_viewport_size({"width": width, "height": 900})
        page.on("console", self._on_console)
        page.on("pageerror", lambda exc: self.fail("console", f"uncaught {exc}"))
        page.on("response", self._on_response)
        page.on("requestfailed", self._on_failed)
        page.goto(self.base + rel, wait_until="load", timeout=READY_TIMEOUT_MS)
        # Explicit conditions, not network idleness (which flakes on a loaded machine): MathJax has
        # typeset the page, every image has loaded or failed (a failure is reported by the checks
        # below), the web fonts are ready. One generous bound for all of them.
        if page.query_selector('script[src*="mathjax"]'):
            try:
                page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                                       timeout=READY_TIMEOUT_MS)
            except Exception as exc:  # noqa: BLE001 - reported, then the other checks still run
                self.fail("mathjax", f"MathJax did not start: {exc}".splitlines()[0])
        state = page.evaluate(READY_JS, READY_TIMEOUT_MS)
        if state != "ready":
            self.fail("mathjax" if "MathJax" in state else "request", f"page not ready: {state}")
        if width == WIDTHS[0]:
            self._check_content(page)
        else:
            self._check_page_scroll(page)
        for item in page.evaluate(LAYOUT_JS):
            self.fail(item["kind"], item["detail"])
        self._check_figures(page, alt=width == WIDTHS[0])
        if self.shots:
            page.screenshot(path=self.shots / f"{rel[:-5].replace('/', '__')}-{width}.png", full_page=True)
        page.close()

    def _check_content(self, page) -> None:
        for item in page.evaluate(CONTENT_JS):
            self.fail(item["kind"], item["detail"])
        for item in page.evaluate(OVERFLOW_JS, False)["out"]:
            kind = "code-overflow" if item.get("code") else "overflow"
            self.fail(kind, f"{item['element']} {item['kind']} by {item['px']} px: {item['text']!r}")
        found = page.evaluate(LINKS_JS)
        self.anchors[self.current[0]] = set(found["ids"])
        self.links[self.current[0]] = found["links"]

    def _check_figures(self, page, alt: bool) -> None:
        """Figure text at least MIN_TEXT_PX high where the page shows it; alt text that is not a path; no pseudo-TeX."""
        found = page.evaluate(FIGURES_JS)
        for img in found["images"]:
            name = unquote(urlsplit(img["src"]).path).rsplit("/", 1)[-1]
            text = (img["alt"] or "").strip()
            if alt and (not text or re.search(r"(^|/)[\w.-]+\.(png|svg|jpe?g|gif|pdf)$|^[\w./-]+/[\w./-]+$", text)):
                self.fail("alt-text", f"{name}: alt text {text!r} says nothing about what the image shows")
            if not img["figure"]:
                continue
            record = self.records.get(name.rsplit(".", 1)[0])
            if record is None or not record.get("min_font_pt"):
                self.fail("figure-text", f"{name}: no record of the font size it was drawn with (book/figures/*.json)")
                continue
            if not img["natural"]:
                continue  # a broken image is reported as `image`
            px = record["min_font_pt"] * record["dpi"] / 72 * img["shown"] / img["natural"]
            if px < MIN_TEXT_PX - 0.05:
                self.fail("figure-text", f"{name}: its smallest text ({record['min_font_pt']} pt, "
                                         f"{record.get('smallest_text')!r}) shows {px:.1f} px high (image shown "
                                         f"{img['shown']:.0f} px wide, {img['natural']} px in the file)")
        for where in found["tex"][:5]:
            self.fail("pseudo-tex", f"a braced sub- or superscript printed as text: {where}")
        if len(found["tex"]) > 5:
            self.fail("pseudo-tex", f"... and {len(found['tex']) - 5} more")

    def _check_page_scroll(self, page) -> None:
        result = page.evaluate(OVERFLOW_JS, True)
        if result["scrollWidth"] > result["viewport"]:
            culprits = "; ".join(f"{i['element']} ({i['kind']} {i['px']} px: {i['text'][:40]!r})"
                                 for i in result["out"] if i["kind"] == "sticks out")
            self.fail("page-scroll", f"page is {result['scrollWidth'] - result['viewport']} px wider than "
                                     f"{result['viewport']} px; widest: {culprits or 'n/a'}")

    def check_links(self, html: Path) -> None:
        """Every local link must name an existing file, and its #anchor must exist on the target page."""
        for rel, links in self.links.items():
            for link in dict.fromkeys(links):
                if not link.startswith(self.base):
                    continue
                parts = urlsplit(link)
                target = unquote(parts.path).lstrip("/") or "index.html"
                if not (html / target).exists():
                    self.fail("unresolved-ref", f"link to missing file {target}", (rel, WIDTHS[0]))
                elif parts.fragment and target in self.anchors and unquote(parts.fragment) not in self.anchors[target]:
                    self.fail("unresolved-ref", f"link to missing anchor {target}#{parts.fragment}", (rel, WIDTHS[0]))


def load_records(folder: Path) -> dict[str, dict]:
    """The figure records (``<name>.json`` beside ``<name>.png``) by file stem."""
    out = {}
    for path in sorted(folder.glob("*.json")):
        if path.name != "MANIFEST.json" and path.with_suffix(".png").exists():
            out[path.stem] = json.loads(path.read_text(encoding="utf-8"))
    return out


def _png(width: int, height: int) -> bytes:
    """A white PNG of the given size (for the self-test pages), without any imaging library."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + b"\xff" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


# The self-test's images: drawn at 9 pt and 72 dpi and shown at their own width (9 px text), or drawn at
# 9 pt and 150 dpi, 600 px wide, and shown 100 px wide (3 px text).
_SELF_TEST_IMAGES = {"fig-readable": (100, 40, {"min_font_pt": 9, "dpi": 72, "smallest_text": "tick"}),
                     "fig-thumbnail": (600, 40, {"min_font_pt": 9, "dpi": 150, "smallest_text": "tick"})}
_GOOD_ALT = "A line rising from left to right, the measured error against the step size"

# ---------------------------------------------------------------- self-test
# One small page per fault class that these checks exist to catch, and one page with none: every run
# first shows that each check fails on its fault (and not on the clean page), so that a check that can
# no longer fail does not pass silently.
_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body {{ font: 16px sans-serif; margin: 0; }} article {{ width: 360px; margin: 8px; }}</style></head>
<body><article class="bd-article">{body}</article>{version}</body></html>"""
_VERSION = '<p class="dbpaper-version" id="dbpaper-version">This page: dbpaper 0.0.0, built from commit <code>0123abcd</code>.</p>'
SELF_TEST = {
    "clean": ("", """<p>Prose with <span class="math"><mjx-container><mjx-math style="display:inline-block;width:40px">x</mjx-math></mjx-container></span> math.</p>
<figure><figcaption><p>Figure 2. The paper's figure.</p></figcaption></figure>
<section id="e5"><h2>E5 — an erratum</h2></section>
<figure><img src="fig-readable.png" alt="{good_alt}" style="width: 100px"><figcaption><p>Book figure 3. A readable figure.</p></figcaption></figure>
<p>A subscript typeset as math: <span class="math"><mjx-container><mjx-math style="display:inline-block;width:40px">γ_{L-1}</mjx-math></mjx-container></span>, and in code: <code>x_{i}</code>.</p>
<div class="citation">[Sokolić et al., 2017] Jure Sokolić. A title. 2017.</div>"""),
    "tex-escape": ("tex-escape", '<p><a href="#">[Sokoli' + "\\'" + 'c et al., 2017]</a></p>'),
    "broken-word": ("broken-word", """<table><tr><td style="width:20px;overflow-wrap:anywhere">framework</td>
<td style="width:330px">a long second column that takes all the room there is in the row</td></tr></table>"""),
    "clipped-math": ("clipped-math", """<div style="overflow:hidden;width:200px"><mjx-container display="true" style="display:block">
<mjx-math style="display:inline-block;width:600px">x</mjx-math></mjx-container></div>"""),
    "caption": ("caption", '<figure><figcaption><p><span class="caption-number">Fig. 13 </span>Figure 2. Two numbers.</p></figcaption></figure>'),
    "bibliography": ("bibliography", '<div class="citation">[Anonymous, 2023] Anonymous. A blog post. 2023, 2023.</div>'),
    "pasted-object": ("pasted-object", '<p>Measured on <code class="docutils literal"><span class="pre">&lt;IPython.core.display.Markdown</span> <span class="pre">object&gt;</span></code>.</p>'),
    "tex-in-title": ("tex-in-title", '<h2>Where η_L comes from</h2>'),
    "citable": ("citable", '<section id="erratum-b1-eta"><h2>E5 — an erratum without its anchor</h2></section>'),
    "figure-text": ("figure-text", f'<figure><img src="fig-thumbnail.png" alt="{_GOOD_ALT}" style="width: 100px">'
                                   '<figcaption><p>Book figure 4. A thumbnail.</p></figcaption></figure>'),
    "alt-text": ("alt-text", '<figure><img src="fig-readable.png" alt="figures/fig-readable.png" style="width: 100px">'
                             '<figcaption><p>Book figure 5. Alt text that is a path.</p></figcaption></figure>'),
    "pseudo-tex": ("pseudo-tex", '<table><tr><td>γ_{L-1} = K_Lᵀ(θ_L, η_L)</td></tr></table>'),
    "mathjax-cdn": ("mathjax-cdn", '<p>Math from a CDN.</p><script defer '
                                   'src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>'),
}
SELF_TEST["clean"] = ("", SELF_TEST["clean"][1].replace("{good_alt}", _GOOD_ALT))


def self_test(browser) -> list[str]:
    """Run the checks on the pages of SELF_TEST; return what went wrong (an empty list if every check works)."""
    import tempfile

    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (_, body) in SELF_TEST.items():
            version = "" if name == "citable" else _VERSION
            (Path(tmp) / f"{name}.html").write_text(_PAGE.format(title=name, body=body, version=version), encoding="utf-8")
        for stem, (w, h, _) in _SELF_TEST_IMAGES.items():
            (Path(tmp) / f"{stem}.png").write_bytes(_png(w, h))
        server, base = serve(Path(tmp))
        checker = Checker(browser, base, None, records={stem: rec for stem, (_, _, rec) in _SELF_TEST_IMAGES.items()})
        for name in SELF_TEST:
            for width in WIDTHS:
                checker.check(f"{name}.html", width)
        server.shutdown()
    for name, (kind, _) in SELF_TEST.items():
        found = {f["kind"] for f in checker.failures if f["page"] == f"{name}.html"}
        if kind and kind not in found:
            problems.append(f"self-test: the {kind!r} check does not fail on its fault page (found {sorted(found)})")
        if not kind and found:
            problems.append(f"self-test: the clean page fails: {[f for f in checker.failures if f['page'] == 'clean.html']}")
    return problems


def summary(pages: list[str], failures: list[dict]) -> str:
    """A table: one row per page, one column per kind of failure found anywhere."""
    counts = defaultdict(Counter)
    for f in failures:
        counts[f["page"]][f["kind"]] += 1
    kinds = sorted({f["kind"] for f in failures})
    width = max(len(p) for p in pages)
    lines = [f"{'page':<{width}}  " + "  ".join(kinds) + ("  total" if kinds else "  (no failures)")]
    for p in pages:
        cells = "  ".join(f"{counts[p][k] or '.':>{len(k)}}" for k in kinds)
        lines.append(f"{p:<{width}}  {cells}  {sum(counts[p].values()):>5}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--html", type=Path, default=ROOT / "_build" / "html", help="built book (default _build/html)")
    parser.add_argument("--pages", nargs="+", help="check only pages whose path contains one of these strings")
    parser.add_argument("--no-screenshots", action="store_true", help="skip the full-page screenshots")
    parser.add_argument("--screenshots", type=Path, default=ROOT / "_build" / "screenshots", help="screenshot folder")
    parser.add_argument("--report", type=Path, help="also write the failures as JSON to this file")
    parser.add_argument("--no-self-test", action="store_true", help="skip the self-test (each check on its fault page)")
    parser.add_argument("--tolerate", nargs="+", default=[], metavar="PAGE",
                        help="report the failures of pages whose path contains one of these strings, but do not "
                             "fail on them (pages being fixed elsewhere; name them in the CI script)")
    args = parser.parse_args(argv)

    html = args.html.resolve()
    pages = find_pages(html, args.pages) if html.is_dir() else []
    if not pages:
        print(f"No pages to check under {html}: build the book first (make book).", file=sys.stderr)
        return 2
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing: apt-get install -y chromium", file=sys.stderr)
        return 2
    if not (MATHJAX_DIR / "es5").is_dir():
        print("node_modules/mathjax is missing: npm ci", file=sys.stderr)
        return 2
    shots = None if args.no_screenshots else args.screenshots
    if shots:
        shots.mkdir(parents=True, exist_ok=True)

    start = time.monotonic()
    server, base = serve(html)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        if not args.no_self_test:
            problems = self_test(browser)
            for p in problems:
                print(p, file=sys.stderr)
            if problems:
                browser.close()
                server.shutdown()
                return 1
            print(f"self-test: each of the checks {', '.join(k for k, _ in SELF_TEST.values() if k)} fails on its fault page")
        checker = Checker(browser, base, shots)
        for rel in pages:
            for width in WIDTHS:
                checker.check(rel, width)
        checker.check_links(html)
        browser.close()
    server.shutdown()

    failures = checker.failures
    for rel in pages:
        mine = [f for f in failures if f["page"] == rel]
        print(f"\n{rel}: {'ok' if not mine else f'{len(mine)} failure(s)'}")
        for f in mine:
            print(f"  [{f['kind']} @{f['width']}px] {f['detail']}")
    print(f"\n{summary(pages, failures)}")
    elapsed = time.monotonic() - start
    print(f"\nChecked {len(pages)} pages at {'/'.join(map(str, WIDTHS))} px in {elapsed:.0f} s"
          + (f"; screenshots in {shots}" if shots else ""))
    if args.report:
        args.report.write_text(json.dumps({"pages": pages, "seconds": round(elapsed, 1), "failures": failures}, indent=1))
    blocking = [f for f in failures if not any(t in f["page"] for t in args.tolerate)]
    if failures and not blocking:
        print(f"only tolerated pages fail ({', '.join(args.tolerate)}): passing")
    return 1 if blocking else 0


if __name__ == "__main__":
    sys.exit(main())
