#!/usr/bin/env bash
# Run a tool of the project's environment: .venv's (scripts/setup.sh) if there is one, else the one on PATH (an
# activated environment, e.g. conda's). The pre-commit hooks call it, so they run without an activated environment.
# Usage: bash scripts/in_env.sh TOOL [ARGS...]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tool="$1"
shift
if [ -x "$root/.venv/bin/$tool" ]; then
  exec "$root/.venv/bin/$tool" "$@"
fi
if ! command -v "$tool" >/dev/null; then
  echo "$tool not found: run bash scripts/setup.sh (it installs the test extra into .venv), or activate the" \
       "project's environment" >&2
  exit 127
fi
exec "$tool" "$@"
