#!/usr/bin/env bash
# The demo: generates a synthetic cohort with ground truth and runs the whole platform on it
# (embedded local Ray, local MLflow store under demo_out/). Extra arguments go to `senca-platform run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_USAGE_STATS_ENABLED=0
.venv/bin/senca-platform demo --out demo_out "$@"
