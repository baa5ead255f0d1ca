"""Real-browser end-to-end test: every ``notebooks/*.ipynb`` runs in JupyterLab, and its slider redraws its plot.

For each notebook (one test case per file name) the test starts JupyterLab (token auth, 127.0.0.1,
a temporary COPY of the notebooks folder, ``DEQKIT_FAST=1`` and ``CI=1`` so notebooks take their fast
path, inline matplotlib), drives Debian's Chromium through playwright and:

1. opens ``/lab/tree/<name>`` and waits for the kernel to be idle;
2. runs "Run > Run All Cells" (the menu; ``notebook:run-all-cells`` as a fallback) and waits until every
   non-empty code cell has an execution count and the kernel is idle again;
3. fails if any output is an error / a stderr text with "Traceback" or "Error", if a widget failed to
   render ("Error displaying widget", "Model not found", an ipywidgets error view), judged on the
   output areas (so markdown that *mentions* these words does not count);
4. moves the notebook's designated slider with the keyboard (ArrowRight x3 + PageUp, or the mirror
   image when the slider is already at its maximum) and waits until the plot's image changes;
5. fails again on any error, including kernel errors that no output area shows (an exception raised by
   a ``slider.observe`` callback outside ``with out:`` only comes as an IOPub message, which is watched).

Convention the notebooks must follow
------------------------------------
* Exactly ONE ipywidgets slider gets the CSS class ``deqkit-browser-slider``::

      slider.add_class("deqkit-browser-slider")

* The widget that shows the plot this slider controls (normally a ``widgets.Output`` into which the
  callback draws a matplotlib figure with the inline backend) gets ``deqkit-browser-plot``::

      plot_out.add_class("deqkit-browser-plot")

  The plot is compared through its ``<img>`` ``src`` (PNG data or a blob URL); an ``<svg>`` or
  ``<canvas>`` inside the element also works.
* If a class is missing the test falls back to the first ``.widget-slider`` / the first widget Output
  that contains an image, and prints ``FALLBACK: ...`` in its output. A notebook without any slider
  fails, unless its notebook metadata says ``{"deqkit": {"browser_slider": false}}`` (then steps 4-5
  are skipped and the test says so).
* In CI / fast mode (``DEQKIT_FAST=1``) a notebook must run in well under the run-all timeout.

Artifacts (PNG, page text on failure, server log, timings.json) go to ``$DEQKIT_ARTIFACTS`` or
``<repo>/artifacts/browser/`` (git-ignored); the absolute path is printed, also in the terminal summary.
Per notebook ``<stem>``: ``<stem>__1-page-after-run-all.png``, ``<stem>__2-plot-before.png``,
``<stem>__3-plot-after.png``, ``<stem>__4-page-after-slider.png``; on failure ``<stem>__FAILED.png`` and
``<stem>__FAILED.txt``.

Running it
----------
Needs ``/usr/bin/chromium`` (``sudo apt-get install -y chromium`` or ``scripts/install_browser.sh``; never
``playwright install``) or ``$DEQKIT_CHROMIUM``, and the ``playwright`` python package::

    python -m pytest tests/browser -m browser -s
    DEQKIT_BROWSER_NOTEBOOKS=/some/folder python -m pytest tests/browser -s   # other notebooks

Timeouts (seconds, env): ``DEQKIT_BROWSER_OPEN_TIMEOUT`` (120), ``DEQKIT_BROWSER_RUN_TIMEOUT`` (180 per
notebook), ``DEQKIT_BROWSER_SLIDER_TIMEOUT`` (30).
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from urllib.parse import quote

import pytest

SLIDER_CLASS = "deqkit-browser-slider"
PLOT_CLASS = "deqkit-browser-plot"
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

# What the plot shows right now: image sources (PNG data / blob URLs), else SVG markup, else canvas pixels.
PLOT_SIGNATURE_JS = r"""
(el) => {
  const imgs = el.matches('img') ? [el] : Array.from(el.querySelectorAll('img'));
  if (imgs.length) {
    if (!imgs.every(i => i.complete && i.naturalWidth > 0)) return '';
    return imgs.map(i => i.currentSrc || i.src).join('|');
  }
  const svgs = el.querySelectorAll('svg');
  if (svgs.length) return Array.from(svgs).map(s => s.outerHTML).join('|');
  const canvases = el.querySelectorAll('canvas');
  const pixels = c => { try { return c.toDataURL(); } catch (e) { return ''; } };
  if (canvases.length) return Array.from(canvases).map(pixels).join('|');
  return '';
}
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

    def find_targets(self):
        page = self.page
        sliders = page.locator(f".{SLIDER_CLASS}")
        n = sliders.count()
        if n == 1:
            slider = sliders.first
        elif n > 1:
            _log(f"{self.name}: WARNING: {n} elements have class {SLIDER_CLASS} (convention: one); using the first")
            slider = sliders.first
        else:
            fallback = page.locator(".widget-slider")
            if not fallback.count():
                return None, None
            _log(f"{self.name}: FALLBACK: no element with class {SLIDER_CLASS}; using the first .widget-slider")
            slider = fallback.first
        plots = page.locator(f".{PLOT_CLASS}")
        if plots.count() > 1:
            _log(f"{self.name}: WARNING: {plots.count()} elements have class {PLOT_CLASS}; using the first")
        if plots.count():
            plot = plots.first
        else:
            fallback = page.locator(".widget-output").filter(has=page.locator("img"))
            if not fallback.count():
                self.fail(f"no element with class {PLOT_CLASS} and no widget Output with an image to watch")
            _log(f"{self.name}: FALLBACK: no element with class {PLOT_CLASS}; using the first Output with an <img>")
            plot = fallback.first
        return slider, plot

    def plot_signature(self, plot) -> str:
        return plot.evaluate(PLOT_SIGNATURE_JS)

    def wait_plot_stable(self, plot, deadline: float) -> str:
        """Wait for kernel idle and the same non-empty plot for ~1 s (several redraws may be queued)."""
        last, same = None, 0
        while time.monotonic() < deadline:
            sig = self.plot_signature(plot)
            idle = self.state().get("kernel") == "idle"
            same = same + 1 if sig and sig == last and idle else 0
            if same >= 3:
                return sig
            last = sig
            time.sleep(0.35)
        return last or ""

    def move_slider(self, slider, plot) -> None:
        t0 = time.monotonic()
        handle = slider.locator(".noUi-handle").first
        if not handle.count():
            self.fail(
                f"the slider element has no .noUi-handle (is it an ipywidgets 8 slider?): "
                f"{slider.evaluate('e => e.outerHTML.slice(0, 300)')}"
            )
        plot.scroll_into_view_if_needed()
        slider.scroll_into_view_if_needed()
        before = self.wait_plot_stable(plot, time.monotonic() + SLIDER_TIMEOUT)
        if not before:
            self.fail(f"the plot element shows no image/svg/canvas {SLIDER_TIMEOUT:.0f}s after Run All")
        self.shot("2-plot-before", plot)
        before_png = (self.artifacts / f"{self.stem}__2-plot-before.png").read_bytes()
        value0 = handle.get_attribute("aria-valuenow")

        def press(keys):
            for key in keys:
                handle.focus()  # again before every key: a re-render or JupyterLab may move the focus
                self.page.keyboard.press(key)
                self.page.wait_for_timeout(150)

        press(["ArrowRight"] * 3 + ["PageUp"])
        value1 = handle.get_attribute("aria-valuenow")
        if value1 == value0:  # already at the maximum: go the other way
            press(["ArrowLeft"] * 3 + ["PageDown"])
            value1 = handle.get_attribute("aria-valuenow")
        _log(f"{self.name}: slider value {value0} -> {value1} (keyboard on .noUi-handle)")
        if value1 == value0:
            self.fail(f"the slider did not move with the keyboard (value stays {value0})")

        deadline = time.monotonic() + SLIDER_TIMEOUT
        while self.plot_signature(plot) in ("", before):
            self.check_no_errors("after moving the slider")
            if time.monotonic() > deadline:
                self.fail(
                    f"the plot did not change within {SLIDER_TIMEOUT:.0f}s of moving the slider "
                    f"({value0} -> {value1}); is the slider wired to the plot (slider.observe)?"
                )
            time.sleep(0.25)
        after = self.wait_plot_stable(plot, time.monotonic() + SLIDER_TIMEOUT)
        self.times["slider"] = time.monotonic() - t0
        plot.scroll_into_view_if_needed()
        self.shot("3-plot-after", plot)
        after_png = (self.artifacts / f"{self.stem}__3-plot-after.png").read_bytes()
        _log(f"{self.name}: plot redrawn {self.times['slider']:.1f}s after the key presses")
        self.shot("4-page-after-slider")

        self.check_no_errors("after moving the slider")
        assert after and after != before, f"{self.name}: plot signature unchanged after moving the slider"
        assert after_png != before_png, f"{self.name}: plot screenshot identical before and after the slider"


def _slider_opt_out(path: Path) -> bool:
    try:
        meta = json.loads(path.read_text()).get("metadata", {})
    except (OSError, ValueError):
        return False
    return (meta.get("deqkit") or {}).get("browser_slider") is False


@pytest.mark.browser
@pytest.mark.parametrize("notebook", PARAMS)
def test_notebook_runs_and_slider_redraws_plot(notebook, request):
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
    try:
        run.open()
        run.run_all()
        slider, plot = run.find_targets()
        if slider is None:
            if _slider_opt_out(jupyter_server.root / notebook):
                _log(f"{notebook}: no slider, and metadata deqkit.browser_slider is false: slider check skipped")
            else:
                run.fail(
                    f"no slider found: give ONE slider the class {SLIDER_CLASS} (and its plot "
                    f'{PLOT_CLASS}), or set notebook metadata {{"deqkit": {{"browser_slider": false}}}}'
                )
        else:
            run.move_slider(slider, plot)
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
