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
# The kit's JupyterLab defaults (no news prompt, no update check): an overrides.d file of this environment's
# JupyterLab. The user's own settings (~/.jupyter/lab/user-settings) are not touched and still take precedence.
overrides=".venv/share/jupyter/lab/settings/overrides.d"
mkdir -p "$overrides"
cp scripts/jupyterlab-overrides.json "$overrides/deqkit.json"
.venv/bin/python -c "import deqkit, torch; print('[setup] deqkit', deqkit.__version__, '| torch', torch.__version__)"
