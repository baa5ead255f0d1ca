#!/usr/bin/env bash
# Build the documentation site into docs/_build/html: the pages, the API reference from the docstrings, and every
# notebook executed in fast mode (DEQKIT_FAST=1) with its figures. Warnings are errors.
#
# Usage: bash scripts/docs.sh [extra sphinx-build options]
# Open docs/_build/html/index.html, or serve it: python -m http.server -d docs/_build/html 8000 --bind 127.0.0.1
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "[docs] installing deqkit[docs] with constraints.txt"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test,docs]"
# MNIST for notebook 04: the same shared folder beside the checkout that the test suite uses, if it is there.
if [ -z "${DEQKIT_MNIST_DIR:-}" ] && [ -f ../shared/data/mnist/t10k-labels-idx1-ubyte.gz ]; then
  export DEQKIT_MNIST_DIR="$(cd ../shared/data/mnist && pwd)"
fi
export DEQKIT_FAST=1
rm -rf docs/_build/html docs/_build/doctrees docs/_build/jupyter_execute  # every build starts clean
start=$(date +%s)
.venv/bin/python -m sphinx -b html -W --keep-going docs docs/_build/html "$@"
pages=$(find docs/_build/html -name '*.html' -not -path '*/_static/*' | wc -l)
echo "[docs] built $pages pages in $(( $(date +%s) - start )) s: docs/_build/html/index.html"
