#!/usr/bin/env bash
# Set-up and entry point: creates .venv and node_modules from the project's own files, then runs
#   ./camins.sh demo      the demo (SQLite, pathways, users, cases, server + scheduler)
#   ./camins.sh test      the whole test suite (SQLite and PostgreSQL)
#   ./camins.sh ARGS...   any `camins` command, e.g. ./camins.sh validate bpmn/
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  echo "==> creating the virtual environment (.venv)" >&2
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip >&2
  .venv/bin/python -m pip install --quiet -e ".[test]" >&2
  touch "$stamp"
fi
if [ ! -d node_modules/swagger-ui-dist ] && command -v npm >/dev/null 2>&1; then
  echo "==> installing web assets (npm)" >&2
  npm install --no-audit --no-fund --loglevel=error >&2
fi
case "${1:-}" in
  test)
    shift
    # The whole suite must cross every sequence flow of every bundled diagram.
    if [ $# -eq 0 ]; then export CAMINS_FLOW_COVERAGE=strict; fi
    exec .venv/bin/python -m pytest -q "$@"
    ;;
  "")
    exec .venv/bin/camins --help
    ;;
  *)
    exec .venv/bin/camins "$@"
    ;;
esac
