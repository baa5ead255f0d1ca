#!/usr/bin/env bash
# Set everything up, then open the teaching notebooks in JupyterLab.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/jupyter lab notebooks/00_welcome.ipynb --ServerApp.root_dir=notebooks "$@"
