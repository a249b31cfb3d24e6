#!/usr/bin/env bash
# Set up from nothing, lint (ruff, then dead code: scripts/deadcode.py), and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
python scripts/deadcode.py
# Two pytest workers (pytest-xdist) on this project's two cores, one torch/OpenMP thread each: the whole suite in
# about two thirds of one process's time (docs/development.md). RESMTNET_TEST_WORKERS=0 runs it in one process.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python -m pytest -n "${RESMTNET_TEST_WORKERS:-2}" "$@"
