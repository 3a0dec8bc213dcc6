#!/usr/bin/env bash
# Runs the test suite (installs into .venv first if needed). Extra arguments go to pytest.
# Without arguments the whole suite runs in $SENCA_TEST_WORKERS pytest-xdist processes (default 2; 0: one process),
# whole modules per worker (tests/conftest.py: work_unit): most end-to-end tests wait on Ray / MLflow subprocesses,
# so two run side by side even on 2 cores. With arguments (one file, -k, ...) pytest runs them in one process unless
# they pass -n themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_USAGE_STATS_ENABLED=0
if [ "$#" -eq 0 ]; then
  set -- -n "${SENCA_TEST_WORKERS:-2}"
fi
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$rc"
