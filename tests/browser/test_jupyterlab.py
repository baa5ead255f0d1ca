"""Real-browser end-to-end test: every ``notebooks/*.ipynb`` runs in JupyterLab, and EVERY slider and dropdown of it
redraws its plot, fast enough.

For each notebook (one test case per file name) the test starts JupyterLab (token auth, 127.0.0.1,
a temporary COPY of the notebooks folder, ``DEQKIT_FAST=1`` and ``CI=1`` so notebooks take their fast
path, inline matplotlib), drives Debian's Chromium through playwright and:

1. opens ``/lab/tree/<name>`` and waits for the kernel to be idle;
2. runs "Run > Run All Cells" (the menu; ``notebook:run-all-cells`` as a fallback) and waits until every
   non-empty code cell has an execution count and the kernel is idle again;
3. fails if any output is an error / a stderr text with "Traceback" or "Error", if a widget failed to
   render ("Error displaying widget", "Model not found", an ipywidgets error view), judged on the
   output areas (so markdown that *mentions* these words does not count);
4. finds every ipywidgets slider (``.widget-slider``: int, float, log and selection sliders) and dropdown
   (``.widget-dropdown``) in the notebook, in page order, and for each one the plot it drives: the images
   (``<img>``) of the nearest enclosing widget box that has any, within the control's output area;
5. moves each control one step and back, twice (a heavy control once): a slider with ArrowRight then ArrowLeft
   on its handle (mirrored at the maximum), a dropdown to the next option (the previous one for the last) and
   back; for each move it measures the **latency**: from the key press / selection event to the last change of
   the plot's images before the page settles (kernel idle and no change for 0.6 s), both timed in the page
   (``performance.now()``, a MutationObserver on the plot);
6. fails when a move does not change the plot's image content (SHA-256 of the image bytes before and after
   the first move), when a deqkit error alert (``.deqkit-error``) shows after a move, on any kernel error
   (also those no output area shows: an exception in a widget callback comes only as an IOPub message,
   which is watched), and — in the notebooks of ``P95_BOUND_NOTEBOOKS`` (00, 01, 02, 03, 03b, 05) — when the 95th
   percentile of the latencies of the quick controls exceeds ``DEQKIT_BROWSER_P95`` seconds (0.5), and in those of
   ``MAX_BOUND`` (03) when any move takes longer than its bound (1 s).

Every control's latencies are printed, and the whole table is written to ``latency.md`` (Markdown, the
format of the table in ``docs/results.md``) and ``latency.json`` in the artifacts folder.

Convention the notebooks follow
-------------------------------
* A control whose callback is heavy (it trains a model) carries the CSS class ``deqkit-heavy``
  (``slider.add_class("deqkit-heavy")``), updates when released (``continuous_update=False``) and shows a
  progress bar: its latency is reported, marked heavy, and kept out of the p95 bound.
* A notebook without any slider or dropdown fails, unless its notebook metadata says
  ``{"deqkit": {"browser_slider": false}}`` (then steps 4-6 are skipped and the test says so).
* In CI / fast mode (``DEQKIT_FAST=1``) a notebook must run in well under the run-all timeout.

Artifacts (PNG, page text on failure, server log, timings.json, latency.md/json) go to ``$DEQKIT_ARTIFACTS``
or ``<repo>/artifacts/browser/`` (git-ignored); the absolute path is printed, also in the terminal summary.
Per notebook ``<stem>``: ``<stem>__1-page-after-run-all.png``, ``<stem>__2-page-after-controls.png``; on failure
``<stem>__FAILED.png`` and ``<stem>__FAILED.txt``.

Running it
----------
Needs ``/usr/bin/chromium`` (``sudo apt-get install -y chromium`` or ``scripts/install_browser.sh``; never
``playwright install``) or ``$DEQKIT_CHROMIUM``, and the ``playwright`` python package::

    python -m pytest tests/browser -m browser -s
    DEQKIT_BROWSER_NOTEBOOKS=/some/folder python -m pytest tests/browser -s   # other notebooks

Timeouts (seconds, env): ``DEQKIT_BROWSER_OPEN_TIMEOUT`` (120), ``DEQKIT_BROWSER_RUN_TIMEOUT`` (180 per
notebook), ``DEQKIT_BROWSER_SLIDER_TIMEOUT`` (30 per quick move), ``DEQKIT_BROWSER_HEAVY_TIMEOUT`` (180 per heavy
move); the latency bound ``DEQKIT_BROWSER_P95`` (0.5).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

HEAVY_CLASS = "deqkit-heavy"
CONTROL_SELECTOR = ".widget-slider, .widget-dropdown"
P95_BOUND_NOTEBOOKS = ("00_", "01_", "02_", "03_", "03b_", "05_")  # notebooks whose quick controls are bounded
#: Notebooks whose every control (quick or heavy) must answer within this many seconds: 03's training widget reads a
#: saved grid of runs instead of training.
MAX_BOUND = {"03_": 1.0}
REPO_ROOT = Path(__file__).resolve().parents[2]


# Same rules as in conftest.py (the fixtures there use them too).
def _chromium_path() -> str:
    return os.environ.get("DEQKIT_CHROMIUM", "/usr/bin/chromium")


def _notebooks_dir() -> Path:
    override = os.environ.get("DEQKIT_BROWSER_NOTEBOOKS")
    return Path(override).expanduser().resolve() if override else REPO_ROOT / "notebooks"


def _timeout(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def _missing() -> str | None:
    """Why this machine cannot run the test (skip reason with the install hint), or None."""
    if not os.path.exists(_chromium_path()):
        return (
            f"no Chromium at {_chromium_path()}: install Debian's chromium: sudo apt-get install -y chromium, "
            "or run scripts/install_browser.sh (or set DEQKIT_CHROMIUM to a Chromium binary)"
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return (
            "the playwright python package is missing: pip install playwright (or pip install -e '.[test]'); "
            "the browser itself comes from scripts/install_browser.sh, not from 'playwright install'"
        )
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        return "jupyterlab is missing: pip install -e . (deqkit depends on it)"
    return None


# Skip per test (not the module at import time): the cases are still collected, so a machine without
# Chromium reports "N skipped" with the reason and pytest exits 0, never 5 ("no tests collected").
SKIP_REASON = _missing()
pytestmark = [pytest.mark.browser, pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")]

if SKIP_REASON is None:
    from playwright.sync_api import Error as PlaywrightError
else:  # never raised: every test is skipped
    PlaywrightError = RuntimeError

OPEN_TIMEOUT = _timeout("DEQKIT_BROWSER_OPEN_TIMEOUT", 120)
RUN_TIMEOUT = _timeout("DEQKIT_BROWSER_RUN_TIMEOUT", 180)
SLIDER_TIMEOUT = _timeout("DEQKIT_BROWSER_SLIDER_TIMEOUT", 30)
HEAVY_TIMEOUT = _timeout("DEQKIT_BROWSER_HEAVY_TIMEOUT", 180)
P95_BOUND = _timeout("DEQKIT_BROWSER_P95", 0.5)
QUIET = 0.6  # seconds without a plot change (kernel idle) after which a move counts as settled
MOVES_PER_QUICK_CONTROL = 4

NOTEBOOK_DIR = _notebooks_dir()
NOTEBOOKS = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb")) if NOTEBOOK_DIR.is_dir() else []
# An empty parameter list would be a silent skip (or pytest exit code 5): fail loudly instead.
PARAMS = [pytest.param(n, id=n) for n in NOTEBOOKS] or [pytest.param(None, id="no-notebooks-found")]

# --- JavaScript run in the page --------------------------------------------------------------------

# State of the open notebook, read from JupyterLab's models (window.jupyterapp is exposed by the server).
STATE_JS = r"""
(path) => {
  const app = window.jupyterapp;
  if (!app || !app.shell) return {app: false};
  let panel = null;
  for (const w of app.shell.widgets('main')) {
    if (w.context && w.context.path === path && w.content && w.content.model) { panel = w; break; }
  }
  if (!panel) return {app: true, panel: false};
  const sc = panel.sessionContext;
  const kernel = sc && sc.session ? sc.session.kernel : null;
  const cells = [];
  const model = panel.content.model;
  for (let i = 0; i < model.cells.length; i++) {
    const c = model.cells.get(i);
    if (c.type !== 'code') continue;
    const errors = [];
    for (let j = 0; j < c.outputs.length; j++) {
      const o = c.outputs.get(j).toJSON();
      if (o.output_type === 'error') {
        errors.push(`${o.ename}: ${o.evalue}\n` + (o.traceback || []).join('\n').replace(/\x1b\[[0-9;]*m/g, ''));
      }
    }
    cells.push({index: i, blank: !c.sharedModel.getSource().trim(), count: c.executionCount,
                running: c.executionState === 'running', errors});
  }
  const prompts = Array.from(panel.node.querySelectorAll('.jp-CodeCell .jp-InputPrompt'))
    .map(e => e.textContent || '');
  return {app: true, panel: true, id: panel.id, ready: !!(sc && sc.isReady && panel.context.isReady),
          kernel: kernel ? kernel.status : null, connection: kernel ? kernel.connectionStatus : null,
          kernelName: kernel ? kernel.name : null, busyPrompt: prompts.some(t => t.includes('*')), cells};
}
"""

# Errors visible in the output areas (cell outputs and ipywidgets Output widgets).
DOM_ERRORS_JS = r"""
() => {
  const found = [];
  const clip = s => (s || '').trim().slice(0, 3000);
  for (const el of document.querySelectorAll(
      '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')) {
    const t = el.textContent || '';
    if (/Traceback|Error/.test(t)) found.push('error/stderr output: ' + clip(t));
  }
  for (const el of document.querySelectorAll('.jupyter-widgets-error-widget')) {
    found.push('ipywidgets error view: ' + clip(el.textContent));
  }
  const text = Array.from(document.querySelectorAll('.jp-OutputArea')).map(e => e.textContent || '').join('\n');
  if (text.includes('Error displaying widget')) found.push('output text contains "Error displaying widget"');
  if (/model not found/i.test(text)) found.push('output text contains "Model not found"');
  if (text.includes('Failed to create view')) found.push('output text contains "Failed to create view"');
  return found;
}
"""

# Every slider and dropdown of the open notebook, in page order. Each control and the element holding its plot get
# a data attribute (data-deqkit-control / data-deqkit-plot = its number) so that Python can find them again. The
# plot is the nearest enclosing element that holds an <img> outside the control, up to the control's output area.
CONTROLS_JS = r"""
(args) => {
  const [id, selector, heavyClass] = args;
  const panel = Array.from(jupyterapp.shell.widgets('main')).find(w => w.id === id);
  const found = [];
  const controls = Array.from(panel.node.querySelectorAll(selector));
  controls.forEach((el, i) => {
    el.setAttribute('data-deqkit-control', String(i));
    let plot = null;
    for (let up = el.parentElement; up; up = up.parentElement) {
      const imgs = Array.from(up.querySelectorAll('img')).filter(im => !el.contains(im));
      if (imgs.length) { plot = up; break; }
      if (up.classList.contains('jp-OutputArea-output')) break;
    }
    if (plot && !plot.hasAttribute('data-deqkit-plot')) plot.setAttribute('data-deqkit-plot', String(i));
    const label = el.querySelector('.widget-label');
    const select = el.querySelector('select');
    found.push({
      index: i,
      kind: select ? 'dropdown' : 'slider',
      label: ((label && label.textContent) || el.getAttribute('aria-label') || '').trim() || `control ${i}`,
      heavy: !!el.closest('.' + heavyClass),
      disabled: !!(select ? select.disabled : el.querySelector('[disabled]')),
      plot: plot ? plot.getAttribute('data-deqkit-plot') : null,
      cell: (c => c ? Array.from(c.parentElement.children).indexOf(c) : -1)(el.closest('.jp-Cell')),
    });
  });
  return found;
}
"""

# Arm the latency clock for one move: the first keydown / input / change event after this starts it, and every
# change of an <img> (new src, added image) under the plot element is time-stamped.
ARM_JS = r"""
(plotId) => {
  if (window.__deqkitObserver) window.__deqkitObserver.disconnect();
  window.__deqkitT0 = null;
  window.__deqkitChanges = [];
  if (!window.__deqkitListening) {
    window.__deqkitListening = true;
    for (const type of ['keydown', 'input', 'change']) {
      document.addEventListener(type, () => { if (window.__deqkitT0 === null) window.__deqkitT0 = performance.now(); },
                                true);
    }
  }
  const plot = document.querySelector(`[data-deqkit-plot="${plotId}"]`);
  const obs = new MutationObserver(muts => {
    for (const m of muts) {
      const img = m.type === 'attributes' ? m.target.tagName === 'IMG'
        : Array.from(m.addedNodes).some(n => n.nodeType === 1 && (n.tagName === 'IMG' || n.querySelector('img')));
      if (img) window.__deqkitChanges.push(performance.now());
    }
  });
  obs.observe(plot, {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
  window.__deqkitObserver = obs;
}
"""

MOVE_STATE_JS = r"""
(id) => {
  const panel = Array.from(jupyterapp.shell.widgets('main')).find(w => w.id === id);
  const kernel = panel && panel.sessionContext.session ? panel.sessionContext.session.kernel : null;
  return {t0: window.__deqkitT0, changes: window.__deqkitChanges || [], now: performance.now(),
          kernel: kernel ? kernel.status : null};
}
"""

# SHA-256 of every image under an element (the bytes, whether the src is a blob or a data URL).
PLOT_HASH_JS = r"""
async (el) => {
  const parts = [];
  for (const img of el.querySelectorAll('img')) {
    if (!img.src) { parts.push('no-src'); continue; }
    const data = await (await fetch(img.src)).arrayBuffer();
    const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', data));
    parts.push(Array.from(digest, b => b.toString(16).padStart(2, '0')).join(''));
  }
  return parts.join('|');
}
"""

ERROR_ALERT_JS = r"""
(el) => Array.from(el.querySelectorAll('.deqkit-error')).map(e => (e.textContent || '').trim().slice(0, 300))
"""

# Record kernel errors that no cell shows: an exception in a widget callback (``slider.observe``) outside
# ``with out:`` comes as an IOPub "error" message whose parent is a comm_msg; JupyterLab shows it nowhere.
IOPUB_HOOK_JS = r"""
(id) => {
  const panel = Array.from(jupyterapp.shell.widgets('main')).find(w => w.id === id);
  window.__deqkitIopubErrors = [];
  panel.sessionContext.iopubMessage.connect((_, msg) => {
    const type = msg.header.msg_type, c = msg.content || {};
    const parent = (msg.parent_header || {}).msg_type || '?';
    if (parent === 'execute_request') return;  // cell output: the cell models and the DOM show it
    const strip = s => (s || '').replace(/\x1b\[[0-9;]*m/g, '');
    if (type === 'error') {
      window.__deqkitIopubErrors.push(`[kernel error, reply to ${parent}] ${c.ename}: ${c.evalue}\n`
                                      + strip((c.traceback || []).join('\n')));
    } else if (type === 'stream' && c.name === 'stderr' && /Traceback|Error/.test(c.text || '')) {
      window.__deqkitIopubErrors.push(`[kernel stderr, reply to ${parent}] ` + strip(c.text));
    }
  });
}
"""


def _log(msg: str) -> None:
    print(f"[deqkit browser] {msg}", flush=True)


class NotebookRun:
    """One notebook in one browser page, with diagnostics on failure."""

    def __init__(self, page, server, name: str, artifacts: Path):
        self.page = page
        self.server = server
        self.name = name
        self.stem = Path(name).stem
        self.artifacts = artifacts
        self.times: dict[str, float] = {}
        for old in artifacts.glob(f"{self.stem}__*"):
            old.unlink()

    # helpers ---------------------------------------------------------------------------------------
    def shot(self, label: str, locator=None) -> Path:
        path = self.artifacts / f"{self.stem}__{label}.png"
        if locator is None:
            self.page.screenshot(path=str(path), full_page=True)
        else:
            locator.screenshot(path=str(path))
        return path

    def state(self) -> dict:
        return self.page.evaluate(STATE_JS, self.name)

    def dom_errors(self) -> list[str]:
        return self.page.evaluate(DOM_ERRORS_JS)

    def fail(self, msg: str) -> None:
        pytest.fail(f"{self.name}: {msg}", pytrace=False)

    def accept_dialog(self) -> None:
        dialog = self.page.locator(".jp-Dialog")
        if dialog.count():
            text = dialog.first.inner_text()
            _log(f"{self.name}: dialog shown, accepting it: {text.strip()[:300]!r}")
            self.shot("dialog")
            self.page.locator(".jp-Dialog .jp-mod-accept").first.click()

    def save_failure(self, exc: BaseException) -> None:
        lines = [f"notebook: {self.name}", f"failure: {exc}", ""]
        try:
            self.shot("FAILED")
        except Exception as e:  # diagnostics must not hide the real failure
            lines.append(f"(could not take the failure screenshot: {e})")
        try:
            lines += ["--- notebook state ---", json.dumps(self.state(), indent=1)[:20000]]
        except Exception as e:
            lines.append(f"(no notebook state: {e})")
        try:
            lines += ["", "--- page text ---", self.page.locator("body").inner_text(timeout=5000)]
        except Exception as e:
            lines.append(f"(no page text: {e})")
        lines += ["", "--- browser console errors ---", *getattr(self.page, "deqkit_console_errors", [])]
        lines += ["", "--- jupyter server log (tail) ---", self.server.log_tail(80)]
        out = self.artifacts / f"{self.stem}__FAILED.txt"
        out.write_text("\n".join(lines))
        _log(f"{self.name}: FAILED, see {out} and {self.artifacts / (self.stem + '__FAILED.png')}")

    def errors(self) -> list[str]:
        st = self.state()
        found = [f"cell {c['index']}: {e}" for c in st.get("cells", []) for e in c["errors"]]
        found += self.dom_errors()
        found += self.page.evaluate("() => window.__deqkitIopubErrors || []")
        return list(dict.fromkeys(found))  # the same traceback once per key press: report it once

    def check_no_errors(self, when: str) -> None:
        found = self.errors()
        if found:
            more = f"\n\n(+{len(found) - 4} more)" if len(found) > 4 else ""
            self.fail(f"error {when}:\n" + "\n\n".join(found[:4]) + more)

    # steps -----------------------------------------------------------------------------------------
    def open(self) -> None:
        t0 = time.monotonic()
        url = self.server.url(f"lab/tree/{quote(self.name)}", "reset")
        self.page.goto(url, wait_until="domcontentloaded", timeout=OPEN_TIMEOUT * 1000)
        deadline = t0 + OPEN_TIMEOUT
        st: dict = {}
        while True:
            st = self.state()
            if st.get("ready") and st.get("kernel") == "idle" and st.get("connection") == "connected":
                break
            if st.get("kernel") == "dead":
                self.fail(f"kernel is {st.get('kernel')} right after opening (state {st})")
            self.accept_dialog()
            if time.monotonic() > deadline:
                hint = "" if st.get("app") else " (window.jupyterapp missing: is --LabApp.expose_app_in_browser gone?)"
                self.fail(f"kernel not idle {OPEN_TIMEOUT:.0f}s after opening; last state {st}{hint}")
            time.sleep(0.3)
        self.page.evaluate(
            "(id) => { const s = jupyterapp.shell; s.activateById(id); if (s.collapseLeft) s.collapseLeft(); }",
            st["id"],
        )
        self.page.evaluate(IOPUB_HOOK_JS, st["id"])
        self.panel_id = st["id"]
        self.times["open"] = time.monotonic() - t0
        _log(f"{self.name}: kernel {st.get('kernelName')} idle after {self.times['open']:.1f}s")

    def run_all(self) -> None:
        t0 = time.monotonic()
        how = "Run menu > Run All Cells"
        try:
            self.page.locator(".lm-MenuBar-item").filter(has_text=re.compile(r"^\s*Run\s*$")).click(timeout=5000)
            label = self.page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^\s*Run All Cells\s*$"))
            self.page.locator(".lm-Menu-item:not(.lm-mod-disabled)").filter(has=label).first.click(timeout=5000)
        except PlaywrightError as e:
            how = f"jupyterapp.commands.execute('notebook:run-all-cells') (menu failed: {str(e).splitlines()[0]})"
            self.page.keyboard.press("Escape")
            self.page.evaluate("() => { jupyterapp.commands.execute('notebook:run-all-cells'); }")
        _log(f"{self.name}: {how}")
        deadline = t0 + RUN_TIMEOUT
        settled = 0
        while True:
            time.sleep(0.5)
            st = self.state()
            cells = st.get("cells", [])
            busy = st.get("kernel") != "idle" or st.get("busyPrompt") or any(c["running"] for c in cells)
            if st.get("kernel") in ("dead", "restarting", "autorestarting"):
                self.fail(f"kernel {st.get('kernel')} while running all cells (out of memory? crashed?)")
            if not busy:
                self.check_no_errors("while running all cells")  # stop at the first error, with details
            pending = [c["index"] for c in cells if not c["blank"] and c["count"] is None]
            settled = settled + 1 if not busy and not pending else 0
            if settled >= 3:  # idle with every count in place for ~1.5 s: done
                break
            if time.monotonic() > deadline:
                self.fail(
                    f"Run All not finished after {RUN_TIMEOUT:.0f}s (DEQKIT_BROWSER_RUN_TIMEOUT): kernel "
                    f"{st.get('kernel')}, code cells without an execution count: {pending}"
                )
        self.times["run_all"] = time.monotonic() - t0
        _log(f"{self.name}: all {len(cells)} code cells ran in {self.times['run_all']:.1f}s")
        self.check_no_errors("after Run All")
        self.wait_widgets_rendered()
        self.check_no_errors("after Run All")
        _log(f"{self.name}: full page -> {self.shot('1-page-after-run-all')}")

    def wait_widgets_rendered(self) -> None:
        """Widget views render asynchronously after the kernel is idle: wait for "Loading widget..." to go."""
        deadline = time.monotonic() + SLIDER_TIMEOUT
        while True:
            loading = self.page.locator(".jp-OutputArea-output", has_text="Loading widget...").count()
            if not loading:
                break
            if time.monotonic() > deadline:
                self.fail(f"{loading} output(s) still say 'Loading widget...' {SLIDER_TIMEOUT:.0f}s after Run All")
            time.sleep(0.25)
        self.page.wait_for_timeout(500)  # let the last views and images paint

    # every control ----------------------------------------------------------------------------------------------
    def controls(self) -> list[dict]:
        return self.page.evaluate(CONTROLS_JS, [self.panel_id, CONTROL_SELECTOR, HEAVY_CLASS])

    def move(self, control: dict, step: str) -> Move:
        """One move of one control (``step``: "forward" or "back"), timed in the page."""
        i, heavy = control["index"], control["heavy"]
        el = self.page.locator(f'[data-deqkit-control="{i}"]')
        plot = self.page.locator(f'[data-deqkit-plot="{control["plot"]}"]')
        plot.scroll_into_view_if_needed()
        el.scroll_into_view_if_needed()
        before = plot.evaluate(PLOT_HASH_JS)
        self.page.evaluate(ARM_JS, control["plot"])
        value = self.act(el, control, step)
        result = self.wait_settled(HEAVY_TIMEOUT if heavy else SLIDER_TIMEOUT)
        after = plot.evaluate(PLOT_HASH_JS)
        alerts = plot.evaluate(ERROR_ALERT_JS)
        return Move(
            self.name,
            i,
            control["label"],
            control["kind"],
            heavy,
            step,
            value,
            result,
            after != before,
            alerts,
            control["cell"],
        )

    def act(self, el, control: dict, step: str) -> str:
        """Change the control's value one step; return "old -> new" as the page shows it."""
        if control["kind"] == "dropdown":
            select = el.locator("select")
            n = select.evaluate("s => s.options.length")
            k = select.evaluate("s => s.selectedIndex")
            if step == "forward":
                self._dropdown_target = k + 1 if k + 1 < n else k - 1
                self._dropdown_start = k
                target = self._dropdown_target
            else:
                target = self._dropdown_start
            old = select.evaluate("s => s.options[s.selectedIndex].text")
            select.select_option(index=target)
            return f"{old} -> {select.evaluate('s => s.options[s.selectedIndex].text')}"
        handle = el.locator(".noUi-handle").first
        old = handle.get_attribute("aria-valuetext") or handle.get_attribute("aria-valuenow")
        if step == "forward":
            at_max = handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax")
            self._slider_key = "ArrowLeft" if at_max else "ArrowRight"
            key = self._slider_key
        else:
            key = "ArrowRight" if self._slider_key == "ArrowLeft" else "ArrowLeft"
        handle.focus()
        self.page.keyboard.press(key)
        new = handle.get_attribute("aria-valuetext") or handle.get_attribute("aria-valuenow")
        return f"{old} -> {new}"

    def wait_settled(self, timeout: float) -> dict:
        """Wait until the kernel is idle and the plot has not changed for QUIET seconds; return the timings."""
        deadline = time.monotonic() + timeout
        while True:
            time.sleep(0.1)
            st = self.page.evaluate(MOVE_STATE_JS, self.panel_id)
            last = max(st["changes"]) if st["changes"] else None
            quiet = last is not None and st["now"] - last > QUIET * 1000
            if st["kernel"] == "idle" and quiet:
                return {
                    "latency": (last - st["t0"]) / 1000 if st["t0"] is not None else None,
                    "redraws": len(st["changes"]),
                }
            if st["kernel"] in ("dead", "restarting", "autorestarting"):
                self.fail(f"kernel {st['kernel']} after moving a control (out of memory? crashed?)")
            if time.monotonic() > deadline:
                return {"latency": None, "redraws": len(st["changes"])}

    def move_every_control(self) -> list[Move]:
        controls = self.controls()
        moves: list[Move] = []
        for control in controls:
            if control["plot"] is None:
                self.fail(
                    f"control {control['label']!r} (cell {control['cell']}) has no plot: no <img> in its "
                    "widget box or output area"
                )
            if control["disabled"]:
                _log(f"{self.name}: control {control['label']!r} is disabled: not moved")
                continue
            # a quick control twice there and back (four samples of its latency), a heavy one once
            for step in ("forward", "back") * (1 if control["heavy"] else MOVES_PER_QUICK_CONTROL // 2):
                m = self.move(control, step)
                moves.append(m)
                _log(f"{self.name}: {m.describe()}")
                self.check_no_errors(f"after moving {control['label']!r} ({step})")
        self.shot("2-page-after-controls")
        return moves


@dataclass
class Move:
    """One timed move of one control."""

    notebook: str
    index: int
    label: str
    kind: str
    heavy: bool
    step: str
    value: str
    timing: dict = field(default_factory=dict)
    changed: bool = False
    alerts: list = field(default_factory=list)
    cell: int = -1

    @property
    def latency(self) -> float | None:
        return self.timing.get("latency")

    def describe(self) -> str:
        lat = "no redraw" if self.latency is None else f"{self.latency * 1000:.0f} ms"
        tags = (" [heavy]" if self.heavy else "") + ("" if self.changed else " [PLOT UNCHANGED]")
        tags += f" [ERROR: {self.alerts[0]}]" if self.alerts else ""
        return f"{self.kind} {self.label!r} {self.step} ({self.value}): {lat}{tags}"


_MOVES: list[Move] = []


def _p95(values: list[float]) -> float:
    return float(np.percentile(values, 95)) if values else float("nan")


def latency_table(moves: list[Move]) -> str:
    """The Markdown table of ``docs/results.md``: one row per control, both moves' latencies, heavy marked."""
    rows = ["| notebook | control | kind | latency of each move (ms) | plot changed |", "|---|---|---|---|---|"]
    by_control: dict[tuple[str, int], list[Move]] = {}
    for m in moves:
        by_control.setdefault((m.notebook, m.index), []).append(m)
    for (nb, _), ms in by_control.items():
        lat = " / ".join("—" if m.latency is None else f"{m.latency * 1000:.0f}" for m in ms)
        name = f"{ms[0].label} (cell {ms[0].cell})" + (" — heavy: trains" if ms[0].heavy else "")
        rows.append(f"| {nb} | {name} | {ms[0].kind} | {lat} | {'yes' if ms[0].changed else 'NO'} |")
    rows += [
        "",
        "| notebook | quick moves | median (ms) | p95 (ms) | max (ms) | heavy moves | heavy max (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for nb in dict.fromkeys(m.notebook for m in moves):
        quick = [m.latency * 1000 for m in moves if m.notebook == nb and not m.heavy and m.latency is not None]
        heavy = [m.latency for m in moves if m.notebook == nb and m.heavy and m.latency is not None]
        q = [f"{np.median(quick):.0f}", f"{_p95(quick):.0f}", f"{max(quick):.0f}"] if quick else ["—"] * 3
        rows.append(
            f"| {nb} | {len(quick)} | {' | '.join(q)} | {len(heavy)} | {f'{max(heavy):.1f}' if heavy else '—'} |"
        )
    return "\n".join(rows) + "\n"


def _write_latencies(artifacts: Path) -> None:
    (artifacts / "latency.json").write_text(json.dumps([asdict(m) for m in _MOVES], indent=1) + "\n")
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("n/a",) * 3
    header = (
        f"<!-- measured by tests/browser/test_jupyterlab.py, DEQKIT_FAST=1, {os.cpu_count()} CPUs, "
        f"load average {load[0]:.2f} at the end -->\n"
    )
    (artifacts / "latency.md").write_text(header + latency_table(_MOVES))


def _slider_opt_out(path: Path) -> bool:
    try:
        meta = json.loads(path.read_text()).get("metadata", {})
    except (OSError, ValueError):
        return False
    return (meta.get("deqkit") or {}).get("browser_slider") is False


def _check_moves(notebook: str, moves: list[Move]) -> list[str]:
    problems = [f"{m.describe()}" for m in moves if m.step == "forward" and not m.changed]
    problems += [f"{m.describe()}" for m in moves if m.latency is None]
    problems += [f"{m.describe()}" for m in moves if m.alerts]
    quick = [m.latency for m in moves if not m.heavy and m.latency is not None]
    if notebook.startswith(P95_BOUND_NOTEBOOKS) and quick and _p95(quick) > P95_BOUND:
        slow = sorted((m for m in moves if not m.heavy and m.latency), key=lambda m: -m.latency)[:5]
        problems.append(
            f"p95 latency {_p95(quick):.2f} s > {P95_BOUND} s over {len(quick)} quick moves; slowest: "
            + "; ".join(m.describe() for m in slow)
        )
    bound = next((b for prefix, b in MAX_BOUND.items() if notebook.startswith(prefix)), None)
    late = [m for m in moves if bound is not None and m.latency is not None and m.latency > bound]
    problems += [f"{m.describe()}: over {bound} s" for m in late]
    return list(dict.fromkeys(problems))


@pytest.mark.browser
@pytest.mark.parametrize("notebook", PARAMS)
def test_notebook_runs_and_every_control_redraws_its_plot(notebook, request):
    if notebook is None:  # before any fixture: no server, no browser
        pytest.fail(
            f"no notebooks found: {NOTEBOOK_DIR} has no *.ipynb (set DEQKIT_BROWSER_NOTEBOOKS to test another folder)",
            pytrace=False,
        )
    jupyter_server = request.getfixturevalue("jupyter_server")
    page = request.getfixturevalue("page")
    artifacts_dir = request.getfixturevalue("artifacts_dir")
    timings = request.getfixturevalue("timings")
    page.set_default_timeout(30_000)
    run = NotebookRun(page, jupyter_server, notebook, artifacts_dir)
    t0 = time.monotonic()
    moves: list[Move] = []
    try:
        run.open()
        run.run_all()
        if not run.controls():
            if _slider_opt_out(jupyter_server.root / notebook):
                _log(f"{notebook}: no control, and metadata deqkit.browser_slider is false: control checks skipped")
            else:
                run.fail(
                    'no slider or dropdown found; set notebook metadata {"deqkit": {"browser_slider": false}} '
                    "if the notebook has none on purpose"
                )
        else:
            t1 = time.monotonic()
            moves = run.move_every_control()
            run.times["controls"] = time.monotonic() - t1
        _MOVES.extend(moves)
        _write_latencies(artifacts_dir)
        print("\n" + latency_table(moves) if moves else "", flush=True)
        problems = _check_moves(notebook, moves)
        if problems:
            run.fail("controls:\n  " + "\n  ".join(problems))
    except BaseException as exc:
        run.save_failure(exc)
        raise
    finally:
        run.times["total"] = time.monotonic() - t0
        timings[notebook] = {k: round(v, 2) for k, v in run.times.items()}
        _log(f"{notebook}: timings " + ", ".join(f"{k} {v:.1f}s" for k, v in run.times.items()))
        if page.deqkit_console_errors:
            _log(f"{notebook}: browser console errors (not failing the test): {page.deqkit_console_errors[:5]}")
        jupyter_server.shutdown_kernels()
