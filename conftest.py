"""Settings for the whole test suite (unit tests and nbval on the notebooks), applied before anything runs.

* Notebooks and widget callbacks take their fast mode (``DEQKIT_FAST=1``) unless the caller set it; notebook
  kernels and the browser test's JupyterLab inherit it.
* MNIST is read from ``$DEQKIT_MNIST_DIR`` if set; else from a shared copy beside the checkout
  (``../shared/data/mnist``) if there is one; else the tests that need the real files skip with a reason.
"""

import os
from pathlib import Path

os.environ.setdefault("DEQKIT_FAST", "1")
_SHARED_MNIST = Path(__file__).resolve().parent.parent / "shared" / "data" / "mnist"
if not os.environ.get("DEQKIT_MNIST_DIR") and (_SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").is_file():
    os.environ["DEQKIT_MNIST_DIR"] = str(_SHARED_MNIST)


def pytest_report_header(config):
    return [f"deqkit: DEQKIT_FAST={os.environ['DEQKIT_FAST']}, "
            f"DEQKIT_MNIST_DIR={os.environ.get('DEQKIT_MNIST_DIR') or '<unset: tests on the real files skip>'}"]
