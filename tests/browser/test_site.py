"""Real-browser check of the built documentation site (``bash scripts/docs.sh`` -> ``docs/_build/html``).

Every HTML page of the site is opened in Chromium (served by ``http.server`` on 127.0.0.1; requests to any other
host are blocked, as in an offline CI) and checked:

* no internal link is broken: its file exists and its ``#fragment`` is an id on the target page;
* no image is missing: every ``<img>`` loads (``naturalWidth > 0``), and no request to the site fails;
* a notebook page shows its figures: at least one loaded image in the cell outputs, every widget shown as its
  static picture (no widget left as the text of its ``repr``); and every ``notebooks/*.ipynb`` has a page;
* the API page has an entry for every name of ``deqkit.__all__`` (read from the code now, not from the build);
* every formula is typeset by MathJax served from the site itself (with a CDN, it stays raw ``\\(...\\)`` LaTeX
  offline).

Skips with the reason when the site is not built (``.ci/run`` builds it first), or Chromium / playwright are
missing. ``DEQKIT_SITE`` points the test at another build folder.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from .conftest import REPO_ROOT, chromium_path

SITE = Path(os.environ.get("DEQKIT_SITE") or REPO_ROOT / "docs" / "_build" / "html").resolve()
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))


def _missing() -> str | None:
    if not (SITE / "index.html").is_file():
        return f"the documentation site is not built ({SITE} has no index.html): run bash scripts/docs.sh first"
    if not os.path.exists(chromium_path()):
        return f"no Chromium at {chromium_path()}: run scripts/install_browser.sh (or set DEQKIT_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright python package is missing: pip install -e '.[test]'"
    return None


SKIP_REASON = _missing()
pytestmark = [pytest.mark.browser, pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")]

PAGES = sorted(str(p.relative_to(SITE)) for p in SITE.rglob("*.html") if "_static" not in p.parts)
BUILD = json.loads((SITE / "deqkit-build.json").read_text()) if (SITE / "deqkit-build.json").is_file() else {}

# Everything the checks need from one loaded page.
PAGE_JS = r"""
async () => {
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(i => i.decode().catch(() => null)));
  const main = document.querySelector('main') || document.body;
  const outputs = Array.from(main.querySelectorAll('.cell_output'));
  const outputImgs = outputs.flatMap(o => Array.from(o.querySelectorAll('img')));
  return {
    brokenImages: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => (i.currentSrc || i.src).slice(0, 120)),
    links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
    outputImages: outputImgs.filter(i => i.complete && i.naturalWidth > 0).length,
    staticWidgets: main.querySelectorAll('.deqkit-static img').length,
    widgetReprs: outputs.flatMap(o => Array.from(o.querySelectorAll('.output'))).map(o => o.innerText.trim())
                        .filter(t => /^[A-Z]\w*\((children|value|layout)=/.test(t)  // a widget's repr
                                     || /\b0%\|.*\[00:00<\?, \?it\/s\]/.test(t))  // a widget bar's first state
                        .map(t => t.slice(0, 120)),
    ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
  };
}
"""


class _Ids(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.ids.update(v for k, v in attrs if k in ("id", "name") and v)


@functools.cache
def _ids(path: Path) -> frozenset[str]:
    parser = _Ids()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.ids)


@pytest.fixture(scope="module")
def site_url():
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the test reports what matters
        pass


MATH_JS = """async () => {
  const math = [...document.querySelectorAll('span.math, div.math')];
  if (!math.length) return {count: 0, raw: []};
  const ready = () => window.MathJax && MathJax.startup && MathJax.startup.promise;
  for (let i = 0; i < 200 && !ready(); i++) await new Promise(r => setTimeout(r, 50));
  if (ready()) await MathJax.startup.promise;
  return {count: math.length,
          raw: math.filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 60))};
}"""


def _open(page, url: str) -> tuple[dict, list[str]]:
    """Load ``url`` with every other host blocked; return PAGE_JS's findings and the site requests that failed."""
    origin = url.split("/", 3)[:3]
    failed: list[str] = []
    page.route(
        "**/*", lambda route: route.continue_() if route.request.url.split("/", 3)[:3] == origin else route.abort()
    )
    page.on("requestfailed", lambda r: r.url.split("/", 3)[:3] == origin and failed.append(r.url))
    page.on("response", lambda r: r.status >= 400 and failed.append(f"{r.url} (HTTP {r.status})"))
    page.goto(url, wait_until="load")
    return page.evaluate(PAGE_JS), failed


def _broken_links(page_path: str, links: list[str], base: str) -> list[str]:
    broken = []
    for href in dict.fromkeys(links):  # each target once, however often the page links it
        if not href.startswith(base + "/"):
            continue
        parts = urlsplit(href)
        target = SITE / unquote(parts.path).lstrip("/")
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file():
            broken.append(f"{href} (no file {target.relative_to(SITE) if target.is_relative_to(SITE) else target})")
        elif parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in _ids(target):
            broken.append(f"{href} (no id {parts.fragment!r} on {target.relative_to(SITE)})")
    return broken


@pytest.mark.parametrize("path", PAGES or [None], ids=lambda p: p or "no-pages")
def test_page(path, request):
    if path is None:
        pytest.fail(f"{SITE} has no HTML pages", pytrace=False)
    site_url = request.getfixturevalue("site_url")
    page = request.getfixturevalue("page")
    found, failed = _open(page, f"{site_url}/{path}")
    problems = [f"image not shown: {src}" for src in found["brokenImages"]]
    problems += [f"request failed: {url}" for url in failed]
    problems += [f"broken link: {link}" for link in _broken_links(path, found["links"], site_url)]
    math = page.evaluate(MATH_JS)
    problems += [f"formula not typeset (raw LaTeX; is MathJax served by the site?): {t!r}" for t in math["raw"][:5]]
    notebook = path.startswith("notebooks/")
    if notebook:
        problems += [
            f"a widget is shown as its text at display time, not as a picture: {t!r}" for t in found["widgetReprs"]
        ]
    assert not problems, f"{path}:\n" + "\n".join(problems)
    if not notebook:
        return
    docname = path.removesuffix(".html")
    if docname in BUILD.get("not_executed", {}):
        pytest.skip(f"{docname} was built without running it: {BUILD['not_executed'][docname]}")
    assert found["outputImages"] > 0, f"{path}: no figure in the cell outputs (was the notebook executed?)"
    print(f"{path}: {found['outputImages']} figures, {found['staticWidgets']} of them widgets", flush=True)


def test_every_notebook_has_a_page():
    if not NOTEBOOKS:
        pytest.fail("no notebooks in notebooks/", pytrace=False)
    missing = [p.name for p in NOTEBOOKS if not (SITE / "notebooks" / f"{p.stem}.html").is_file()]
    assert not missing, f"no page for {missing}: the site is older than the notebooks, rebuild it (scripts/docs.sh)"


def test_api_page_lists_every_public_name(request):
    import deqkit

    site_url = request.getfixturevalue("site_url")
    page = request.getfixturevalue("page")
    found, _ = _open(page, f"{site_url}/api.html")
    ids = set(found["ids"])
    missing = [name for name in deqkit.__all__ if f"deqkit.{name}" not in ids]
    assert not missing, (
        f"api.html has no entry for {missing} of deqkit.__all__: rebuild the site (scripts/docs.sh); "
        "if it persists, the name lacks a docstring autodoc can find"
    )
    summary = page.locator("table.autosummary td:first-child a").all_inner_texts()
    assert sorted(s.strip() for s in summary) == sorted(deqkit.__all__), f"summary table lists {summary}"
