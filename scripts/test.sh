#!/usr/bin/env bash
# Set up from nothing, lint (ruff, then dead code: scripts/deadcode.py), and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check .
python scripts/deadcode.py
python -m pytest "$@"
