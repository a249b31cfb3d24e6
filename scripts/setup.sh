#!/usr/bin/env bash
# Prepare the project's virtual environment (.venv) from nothing: pinned dependencies + the core
# installed in editable mode. Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --disable-pip-version-check --upgrade pip
# torch first, alone, so that nothing later pulls a different (CUDA, multi-GB) build.
python -m pip install --quiet --disable-pip-version-check "$(grep -E '^torch==' requirements.txt)"
python -m pip install --quiet --disable-pip-version-check -r requirements.txt
python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
