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
# MathJax, served by the site itself (the default loads it from a CDN: offline, every formula stayed raw LaTeX).
# npm's registry tarball, cached; only the TeX-to-HTML component and its fonts are copied into the site.
MATHJAX_VERSION=3.2.2
mathjax_cache="${XDG_CACHE_HOME:-$HOME/.cache}/deqkit/mathjax-$MATHJAX_VERSION"
if [ ! -f "$mathjax_cache/es5/tex-chtml.js" ]; then
  echo "[docs] fetching MathJax $MATHJAX_VERSION from the npm registry into $mathjax_cache"
  if ! command -v npm >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[docs] installing npm (Debian) to fetch MathJax"
    apt-get install -y -qq npm >/dev/null || { apt-get update -qq && apt-get install -y -qq npm >/dev/null; }
  fi
  command -v npm >/dev/null || { echo "[docs] npm is needed to fetch MathJax (apt-get install -y npm)" >&2; exit 1; }
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "mathjax@$MATHJAX_VERSION" >/dev/null && tar -xzf "mathjax-$MATHJAX_VERSION.tgz" package/es5)
  mkdir -p "$mathjax_cache"
  rm -rf "$mathjax_cache/es5" && mv "$tmp/package/es5" "$mathjax_cache/es5" && rm -rf "$tmp"
fi
rm -rf docs/_static/mathjax
mkdir -p docs/_static/mathjax/output/chtml/fonts
cp "$mathjax_cache/es5/tex-chtml.js" docs/_static/mathjax/
cp -r "$mathjax_cache/es5/output/chtml/fonts/woff-v2" docs/_static/mathjax/output/chtml/fonts/
export DEQKIT_FAST=1
rm -rf docs/_build/html docs/_build/doctrees docs/_build/jupyter_execute  # every build starts clean
start=$(date +%s)
.venv/bin/python -m sphinx -b html -W --keep-going docs docs/_build/html "$@"
pages=$(find docs/_build/html -name '*.html' -not -path '*/_static/*' | wc -l)
echo "[docs] built $pages pages in $(( $(date +%s) - start )) s: docs/_build/html/index.html"
