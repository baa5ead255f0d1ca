#!/usr/bin/env bash
# Set everything up, then run the whole test suite: unit tests, the real-browser JupyterLab test (skipped with
# a reason when Chromium is missing), and nbval on every notebook, in the notebooks' fast mode.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DEQKIT_FAST="${DEQKIT_FAST:-1}"
# MNIST: use DEQKIT_MNIST_DIR if set; else a shared copy beside the checkout if there is one; else the loader's
# own cache (downloaded with MD5 checks on first use).
if [ -z "${DEQKIT_MNIST_DIR:-}" ] && [ -f ../shared/data/mnist/t10k-labels-idx1-ubyte.gz ]; then
  export DEQKIT_MNIST_DIR="$(cd ../shared/data/mnist && pwd)"
fi
echo "[test] DEQKIT_MNIST_DIR=${DEQKIT_MNIST_DIR:-<unset: loader cache>}"
.venv/bin/python -m pytest tests notebooks --nbval-lax --nbval-current-env -p no:cacheprovider "$@"
