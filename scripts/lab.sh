#!/usr/bin/env bash
# Set everything up, then open the teaching notebooks in JupyterLab: on 127.0.0.1 only, with a login token (open the
# http://127.0.0.1:8888/lab?token=... address it prints). Extra arguments go to `jupyter lab`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the notebooks' collapsed test cells import the widget test harness from this checkout's tests/
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
args=(--ServerApp.ip=127.0.0.1 --ServerApp.root_dir=notebooks)
if [ "$(id -u)" -eq 0 ]; then
  # Containers and cloud notebooks often run as root; JupyterLab refuses that unless told. Auth stays on.
  echo "[lab] running as root: adding --allow-root (the server still listens on 127.0.0.1 with a token)"
  args+=(--allow-root)
fi
exec .venv/bin/jupyter lab notebooks/00_welcome.ipynb "${args[@]}" "$@"
