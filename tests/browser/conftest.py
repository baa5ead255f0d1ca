"""Fixtures for the real-browser JupyterLab tests (see ``test_jupyterlab.py`` for the conventions).

Nothing here imports playwright or jupyterlab at import time: the test module decides whether
to skip (with an install hint) before any fixture needs them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
]

# JupyterLab user settings for the test server: render every cell (no virtualised
# notebook, so every output is in the DOM), never ask about news / updates (no network
# here, and the toast would sit on top of the screenshots), start the kernel without a dialog.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {
        "windowingMode": "none",
        "autoStartDefaultKernel": True,
    },
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


def chromium_path() -> str:
    return os.environ.get("DEQKIT_CHROMIUM", "/usr/bin/chromium")


def notebooks_dir() -> Path:
    override = os.environ.get("DEQKIT_BROWSER_NOTEBOOKS")
    return Path(override).expanduser().resolve() if override else REPO_ROOT / "notebooks"


def _artifacts_dir() -> Path:
    override = os.environ.get("DEQKIT_ARTIFACTS")
    return Path(override).expanduser().resolve() if override else REPO_ROOT / "artifacts" / "browser"


def env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


_used_artifacts: list[Path] = []
_timings: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    path = _artifacts_dir()
    path.mkdir(parents=True, exist_ok=True)
    _used_artifacts.append(path)
    print(f"\n[deqkit browser] screenshots and logs go to: {path}", flush=True)
    return path


@pytest.fixture(scope="session")
def timings(artifacts_dir: Path):
    yield _timings
    if _timings:
        (artifacts_dir / "timings.json").write_text(json.dumps(_timings, indent=2) + "\n")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Always say where the artifacts are (CI logs), even when output was captured."""
    if not _used_artifacts:
        return
    terminalreporter.section("deqkit browser artifacts")
    terminalreporter.write_line(f"screenshots, page text and server log: {_used_artifacts[0]}")
    for name, t in _timings.items():
        parts = ", ".join(f"{k} {v:.1f}s" for k, v in t.items())
        terminalreporter.write_line(f"  {name}: {parts}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterServer:
    def __init__(self, proc: subprocess.Popen, port: int, token: str, root: Path, log_path: Path):
        self.proc = proc
        self.port = port
        self.token = token
        self.root = root
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{port}"

    def url(self, path: str, query: str = "") -> str:
        sep = "&" if query else ""
        return f"{self.base_url}/{path.lstrip('/')}?{query}{sep}token={self.token}"

    def api(self, method: str, path: str, timeout: float = 10.0):
        req = urllib.request.Request(
            f"{self.base_url}/api/{path.lstrip('/')}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_since(0).splitlines()[-n:])

    def shutdown_kernels(self) -> None:
        try:
            for k in self.api("GET", "kernels"):
                try:
                    self.api("DELETE", f"kernels/{k['id']}", timeout=20)
                except (urllib.error.URLError, OSError):
                    pass
        except (urllib.error.URLError, OSError, ValueError):
            pass


@pytest.fixture(scope="session")
def jupyter_server(artifacts_dir: Path):
    """JupyterLab on 127.0.0.1 with a random token, serving a temporary COPY of the notebooks."""
    src = notebooks_dir()
    tmp = Path(tempfile.mkdtemp(prefix="deqkit-browser-"))
    root = tmp / "notebooks"
    if src.is_dir():
        shutil.copytree(src, root, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    else:
        root.mkdir()
    settings_dir = tmp / "lab-settings"
    for rel, content in LAB_SETTINGS.items():
        f = settings_dir / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(content))
    for sub in ("jupyter-config", "lab-workspaces", "runtime"):
        (tmp / sub).mkdir()

    port = _free_port()
    token = secrets.token_hex(24)
    env = dict(os.environ)
    env.update(
        DEQKIT_FAST="1",
        CI=os.environ.get("CI") or "1",
        # notebooks draw with the inline backend; a CI-wide MPLBACKEND=Agg would hide the plots
        MPLBACKEND="module://matplotlib_inline.backend_inline",
        JUPYTER_CONFIG_DIR=str(tmp / "jupyter-config"),  # no user config (e.g. a disabled token)
        JUPYTERLAB_SETTINGS_DIR=str(settings_dir),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp / "lab-workspaces"),
        JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
        PYTHONUNBUFFERED="1",
    )
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--port-retries=0",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: run commands, read cell models
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI containers often run as root
    log_path = artifacts_dir / "jupyter-server.log"
    log = open(log_path, "wb")  # closed in the finalizer
    proc = subprocess.Popen(
        cmd,
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    server = JupyterServer(proc, port, token, root, log_path)
    try:
        deadline = time.monotonic() + env_float("DEQKIT_BROWSER_SERVER_TIMEOUT", 90)
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"jupyter lab exited with code {proc.returncode} before it was up; log {log_path}:\n"
                    + server.log_tail()
                )
            try:
                with urllib.request.urlopen(f"{server.base_url}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer on port {port}; log {log_path}:\n" + server.log_tail())
            time.sleep(0.3)
        yield server
    finally:
        if proc.poll() is None:
            server.shutdown_kernels()
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    """A fresh browser context (own storage) per notebook; console errors are collected."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, device_scale_factor=1)
    pg = context.new_page()
    pg.deqkit_console_errors = []  # type: ignore[attr-defined]
    pg.on("console", lambda m: m.type == "error" and pg.deqkit_console_errors.append(m.text[:500]))
    pg.on("pageerror", lambda e: pg.deqkit_console_errors.append(f"uncaught: {e}"[:500]))
    try:
        yield pg
    finally:
        context.close()
