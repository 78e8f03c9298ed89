#!/usr/bin/env bash
# Set-up and entry point: creates .venv and node_modules from the project's own files, then runs
#   ./camins.sh demo      the demo (SQLite, pathways, users, cases, server + scheduler)
#   ./camins.sh test      the whole test suite (SQLite and PostgreSQL), in parallel
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
    if [ $# -eq 0 ]; then
      # The whole suite must cross every sequence flow of every bundled diagram.
      export CAMINS_FLOW_COVERAGE=strict
      # In parallel (pytest-xdist): one worker per core, at most 4 (CAMINS_TEST_WORKERS=0: serially).
      # loadgroup keeps the tests that start servers and workers as subprocesses on one worker, one
      # after the other (the `xdist_group("processes")` mark), and hands it that group first.
      workers="${CAMINS_TEST_WORKERS:-$(cores=$(nproc 2>/dev/null || echo 2); echo $((cores < 4 ? cores : 4)))}"
      if [ "$workers" -gt 1 ]; then set -- -n "$workers" --dist loadgroup; fi
    fi
    exec .venv/bin/python -m pytest -q "$@"
    ;;
  "")
    exec .venv/bin/camins --help
    ;;
  *)
    exec .venv/bin/camins "$@"
    ;;
esac
