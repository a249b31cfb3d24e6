#!/usr/bin/env bash
# The main job on the embedded default: set up, generate one synthetic chest CT phantom, and run the
# detector with the shipped weights over it. Results land in out/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
resmtnet phantom -o out/demo/phantom -n 1 --seed 2026
resmtnet detect out/demo/phantom/phantom-s2026-0000.nrrd -o out/demo/detect
echo "Results: out/demo/detect (nodules.csv, report.json, overview.png, nodules.mrk.json, nodules.seg.nrrd, scene.mrb)"
