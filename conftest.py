"""Settings for the whole test suite (unit tests and nbval on the notebooks), applied before anything runs.

* Notebooks and widget callbacks take their fast mode (``DEQKIT_FAST=1``) unless the caller set it; notebook
  kernels and the browser test's JupyterLab inherit it.
* Notebook kernels get this checkout on ``PYTHONPATH``: each notebook's test cell imports the widget test
  harness, ``tests/teach/harness.py``, which is not part of the installed package.
* MNIST is read from ``$DEQKIT_MNIST_DIR`` if set; else from a shared copy beside the checkout
  (``../shared/data/mnist``) if there is one; else the tests that need the real files skip with a reason.
* A notebook whose metadata says ``{"deqkit": {"requires": ["mnist"]}}`` needs the real files too. When it is
  collected (by nbval, or as the parameter of a browser test) and MNIST can be neither found nor downloaded, as
  the notebook itself would do, its items skip with the unit tests' reason instead of failing cell by cell.
"""

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("DEQKIT_FAST", "1")
# notebook kernels import this checkout's test harness (the test cells' `from tests.teach.harness import sweep`)
_ROOT = str(Path(__file__).resolve().parent)
if _ROOT not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, os.environ.get("PYTHONPATH")]))
_SHARED_MNIST = Path(__file__).resolve().parent.parent / "shared" / "data" / "mnist"
if not os.environ.get("DEQKIT_MNIST_DIR") and (_SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").is_file():
    os.environ["DEQKIT_MNIST_DIR"] = str(_SHARED_MNIST)

NOTEBOOKS = Path(__file__).resolve().parent / "notebooks"
# The reason tests/data/test_mnist.py and tests/teach/test_digits.py give when the real files are missing.
MNIST_SKIP_REASON = "set DEQKIT_MNIST_DIR to a folder holding the four MNIST .gz files to run this test"
_mnist_problem: list[str] = []  # why MNIST could not be loaded, once checked


def pytest_report_header(config):
    return [
        f"deqkit: DEQKIT_FAST={os.environ['DEQKIT_FAST']}, "
        f"DEQKIT_MNIST_DIR={os.environ.get('DEQKIT_MNIST_DIR') or '<unset: tests on the real files skip>'}"
    ]


def _needs_mnist(notebook: Path) -> bool:
    try:
        meta = json.loads(notebook.read_text()).get("metadata", {})
    except (OSError, ValueError):
        return False
    return "mnist" in ((meta.get("deqkit") or {}).get("requires") or [])


def _mnist_unavailable() -> str | None:
    """Why MNIST cannot be loaded here (found or downloaded as the notebooks would), or None."""
    from deqkit.data import mnist_unavailable

    return mnist_unavailable()


def _notebook_of(item) -> str | None:
    """The notebook an item runs: nbval cells belong to an .ipynb file; a browser test gets its name as a parameter,
    tests/test_exercises.py its path or an exercise naming it."""
    if item.path.suffix == ".ipynb":
        return item.path.name
    params = getattr(getattr(item, "callspec", None), "params", {})
    for value in params.values():
        value = getattr(value, "notebook", value)  # an exercise of tests/test_exercises.py names its notebook
        if isinstance(value, (str, Path)) and str(value).endswith(".ipynb"):
            return Path(value).name
    return None


def pytest_collection_modifyitems(config, items):
    needing = {p.name for p in NOTEBOOKS.glob("*.ipynb") if _needs_mnist(p)}
    chosen = [item for item in items if _notebook_of(item) in needing]
    if not chosen:
        return
    why = _mnist_unavailable()
    if why is None:
        return
    _mnist_problem.append(why)
    for item in chosen:
        item.add_marker(pytest.mark.skip(reason=MNIST_SKIP_REASON))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _mnist_problem:
        terminalreporter.write_line(f"deqkit: notebooks that need MNIST were skipped: {_mnist_problem[0]}")
