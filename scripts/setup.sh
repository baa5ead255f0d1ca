#!/usr/bin/env bash
# Create .venv (Python 3.10+) and install deqkit with its test extras at the pinned versions of constraints.txt.
# Idempotent: re-running only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
echo "[setup] installing deqkit[test] with constraints.txt (torch pinned to 2.13.0)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
.venv/bin/python -c "import deqkit, torch; print('[setup] deqkit', deqkit.__version__, '| torch', torch.__version__)"
