"""What a learner sees on the first run, in a real Chromium: JupyterLab as ``scripts/lab.sh`` starts it.

The server gets no settings of its own (an empty user-settings folder, no ``--LabApp.news_url`` or update-check
options): only the kit's defaults, which ``scripts/setup.sh`` installs into this environment's JupyterLab
(``<app dir>/settings/overrides.d/deqkit.json``). Then:

* notebook 00 runs, its widget draws its plot, and no "get notified about official Jupyter news?" prompt
  appears; the picture of this (the README's and the site's opening picture) is saved to
  ``artifacts/browser/jupyterlab.png``, and to ``docs/img/jupyterlab.png`` when ``DEQKIT_UPDATE_SCREENSHOTS=1``;
* control: with the user's own setting ``fetchNews: "none"`` (JupyterLab's default) the prompt does appear, so
  the check above can fail, and the user's settings still win over the kit's.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from .conftest import REPO_ROOT, chromium_path, env_float

NEWS_PROMPT = "official Jupyter news"
NOTEBOOK = "00_welcome.ipynb"
PICTURE = REPO_ROOT / "docs" / "img" / "jupyterlab.png"
OPEN_TIMEOUT = env_float("DEQKIT_BROWSER_OPEN_TIMEOUT", 120)
RUN_TIMEOUT = env_float("DEQKIT_BROWSER_RUN_TIMEOUT", 180)


def _missing() -> str | None:
    if not os.path.exists(chromium_path()):
        return f"no Chromium at {chromium_path()}: run scripts/install_browser.sh (or set DEQKIT_CHROMIUM)"
    try:
        import jupyterlab  # noqa: F401
        import playwright.sync_api  # noqa: F401
    except ImportError as err:
        return f"{err.name} is missing: pip install -e '.[test]'"
    return None


SKIP_REASON = _missing()
pytestmark = [pytest.mark.browser, pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")]


def _kit_overrides() -> Path:
    from jupyterlab.commands import get_app_dir

    return Path(get_app_dir()) / "settings" / "overrides.d" / "deqkit.json"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(artifacts_dir):
    """JupyterLab as lab.sh runs it (127.0.0.1, a token, --allow-root only as root) on a copy of notebook 00."""
    overrides = _kit_overrides()
    if not overrides.is_file():
        pytest.fail(
            f"{overrides} is missing: scripts/setup.sh installs the kit's JupyterLab defaults there "
            "(run bash scripts/setup.sh)",
            pytrace=False,
        )
    tmp = Path(tempfile.mkdtemp(prefix="deqkit-first-run-"))
    root = tmp / "notebooks"
    root.mkdir()
    shutil.copy(REPO_ROOT / "notebooks" / NOTEBOOK, root / NOTEBOOK)
    for sub in ("user-settings", "config", "workspaces", "runtime"):
        (tmp / sub).mkdir()
    port, token = _free_port(), secrets.token_hex(24)
    env = dict(
        os.environ,
        DEQKIT_FAST="1",
        JUPYTERLAB_SETTINGS_DIR=str(tmp / "user-settings"),
        JUPYTER_CONFIG_DIR=str(tmp / "config"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        MPLBACKEND="module://matplotlib_inline.backend_inline",
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    cmd = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--port={port}",
        "--port-retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",
    ]  # window.jupyterapp: run the cells, read the kernel state
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log_path = artifacts_dir / "first-run-server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + OPEN_TIMEOUT
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not start; log {log_path}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                time.sleep(0.3)
        yield {"base": base, "token": token}
    finally:
        _shutdown_kernels(base, token)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def _shutdown_kernels(base: str, token: str) -> None:
    """Kernels run in their own process groups: ask the server to stop them before stopping the server."""
    auth = {"Authorization": f"token {token}"}
    try:
        with urllib.request.urlopen(urllib.request.Request(f"{base}/api/kernels", headers=auth), timeout=10) as r:
            kernels = json.loads(r.read())
        for k in kernels:
            req = urllib.request.Request(f"{base}/api/kernels/{k['id']}", method="DELETE", headers=auth)
            urllib.request.urlopen(req, timeout=20).close()
    except (urllib.error.URLError, OSError, ValueError):
        pass  # the server is gone already: nothing to stop


KERNEL_JS = r"""
() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const sc = w && w.sessionContext;
  const k = sc && sc.session && sc.session.kernel;
  if (!k) return {kernel: null};
  const cells = [];
  const model = w.content.model;
  for (let i = 0; i < model.cells.length; i++) {
    const c = model.cells.get(i);
    if (c.type === 'code' && c.sharedModel.getSource().trim()) cells.push(c.executionCount);
  }
  return {kernel: k.status, pending: cells.filter(n => n === null).length};
}
"""


def _wait(page, what: str, check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout:.0f}s", pytrace=False)
        time.sleep(0.3)


def _news_prompt_shown(page, seconds: float) -> bool:
    """Watch the page for the news prompt for ``seconds`` (it comes as a toast shortly after the app starts)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if NEWS_PROMPT in page.locator("body").inner_text():
            return True
        time.sleep(0.3)
    return False


def _open(page, lab) -> None:
    page.goto(f"{lab['base']}/lab/tree/{NOTEBOOK}?reset&token={lab['token']}", wait_until="domcontentloaded")
    _wait(page, "kernel idle after opening", lambda: page.evaluate(KERNEL_JS)["kernel"] == "idle", OPEN_TIMEOUT)


def test_first_run_no_news_prompt_and_the_picture(lab, page, artifacts_dir):
    page.set_viewport_size({"width": 1280, "height": 800})
    _open(page, lab)
    page.evaluate("() => jupyterapp.commands.execute('notebook:run-all-cells')")
    plot = page.locator(".deqkit-browser-plot").first

    def done() -> bool:
        st = page.evaluate(KERNEL_JS)
        return (
            st["kernel"] == "idle"
            and st["pending"] == 0
            and plot.count() > 0
            and plot.evaluate("e => e.complete && e.naturalWidth > 0")
        )

    _wait(page, f"{NOTEBOOK}: every cell run and the widget's plot drawn", done, RUN_TIMEOUT)
    assert not _news_prompt_shown(page, 5), (
        f"JupyterLab asks about news although the kit's defaults ({_kit_overrides()}) turn the prompt off"
    )
    page.evaluate("() => jupyterapp.shell.collapseLeft()")
    plot.evaluate("e => e.closest('.jp-Cell').scrollIntoView({block: 'start'})")
    page.wait_for_timeout(500)
    shot = artifacts_dir / "jupyterlab.png"
    page.screenshot(path=str(shot))
    print(f"[deqkit browser] first-run picture: {shot}", flush=True)
    if os.environ.get("DEQKIT_UPDATE_SCREENSHOTS") == "1":
        shutil.copy(shot, PICTURE)
        print(f"[deqkit browser] DEQKIT_UPDATE_SCREENSHOTS=1: copied to {PICTURE}", flush=True)


def test_control_the_prompt_appears_when_the_user_asks_for_it(lab, page):
    """The user's own settings win over the kit's, and the prompt is detectable: the test above can fail."""
    url = f"{lab['base']}/lab/api/settings/@jupyterlab/apputils-extension:notification"
    body = json.dumps({"raw": json.dumps({"fetchNews": "none"})}).encode()
    req = urllib.request.Request(
        url,
        data=body,
        method="PUT",
        headers={"Authorization": f"token {lab['token']}", "Content-Type": "application/json"},
    )
    urllib.request.urlopen(req, timeout=10).close()
    try:
        _open(page, lab)
        assert _news_prompt_shown(page, 20), f"no {NEWS_PROMPT!r} prompt with the user setting fetchNews 'none'"
    finally:
        reset = urllib.request.Request(
            url,
            data=json.dumps({"raw": "{}"}).encode(),
            method="PUT",
            headers={"Authorization": f"token {lab['token']}", "Content-Type": "application/json"},
        )
        urllib.request.urlopen(reset, timeout=10).close()
