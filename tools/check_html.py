"""Open every page of the built book in headless Chromium and report what a reader would see broken.

Pages: every ``*.html`` under the HTML folder except Sphinx's helper pages, which carry no
book content (``genindex.html``, ``search.html``), theme template fragments under ``_static/``
and redirect stubs (the root ``index.html`` is a meta refresh to the first chapter).

Each page is served by a local HTTP server and loaded at 1280 px and 400 px wide. MathJax 3 is
served from ``node_modules/mathjax`` by intercepting its CDN URL; every other non-local request
is aborted and reported. A page fails on any of these kinds:

- ``mathjax``: a TeX error or an undefined macro (shown with its TeX source), ``merror`` output,
  "Math input error", or MathJax not finishing;
- ``raw-tex``: ``$...$``, ``\\(``, ``\\[`` or a ``\\command`` left untypeset in the text;
- ``tex-in-title``: a backslash command or ``$`` in ``<title>``, a heading, the sidebar or a link;
- ``unresolved-ref``: ``???``, an unlinked Sphinx xref, a link to a missing file or anchor;
- ``overflow`` (1280 px): an element sticking out of the article column, or a container that
  hides content behind a horizontal scrollbar or a clip (with the px hidden); ``code-overflow``
  is the same for code cells and their printed outputs (``<pre>``);
- ``page-scroll`` (400 px): the page itself scrolls horizontally;
- ``console``, ``request`` (a local resource failed), ``image`` (broken), ``external``.

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
  const texy = /\\[A-Za-z]+|\$/;
  if (texy.test(document.title)) add('tex-in-title', '<title>: ' + document.title);
  const named = [['heading', 'h1, h2, h3, h4, h5, h6'], ['sidebar', '.bd-sidebar-primary a, .bd-toc a'], ['link', 'a:not(.bd-sidebar-primary a, .bd-toc a)']];
  for (const [what, sel] of named)
    document.querySelectorAll(sel).forEach((e) => { const t = noMath(e); if (texy.test(t)) add('tex-in-title', `${what}: ${snip(t)}${shown(e)}`); });
  document.querySelectorAll('img').forEach((i) => { if (i.complete && i.naturalWidth === 0) add('image', 'broken image: ' + i.getAttribute('src')); });
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

    def __init__(self, browser, base: str, shots: Path | None):
        self.base, self.shots, self.failures = base, shots, []
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
