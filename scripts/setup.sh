#!/usr/bin/env bash
# Creates ./.venv and installs the project into it (once; again only when pyproject.toml or
# constraints.txt change). torch is installed first, pinned by constraints.txt, so that no
# dependency can pull a multi-GB CUDA build on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp_now="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ "$(cat .venv/.setup-stamp 2>/dev/null)" != "$stamp_now" ]; then
  echo "[setup] installing into .venv (first run takes a few minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0"
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
  echo "$stamp_now" > .venv/.setup-stamp
fi
