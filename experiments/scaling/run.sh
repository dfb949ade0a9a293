#!/usr/bin/env bash
# Reproduces experiments/scaling: configs/sweeps/lm_scaling.py:cpu_large, 15 runs
# (5 sizes x bf16, b1.58, 1bit), then copies the report, table and plots here.
# Usage: bash experiments/scaling/run.sh [WORKDIR]   (default runs/cpu_large)
set -euo pipefail
cd "$(dirname "$0")/../.."
workdir=${1:-runs/cpu_large}
out=experiments/scaling
python -m bitjax sweep --config configs/sweeps/lm_scaling.py:cpu_large --workdir "$workdir" \
  | tee "$out/report.txt"
cp "$workdir/results.csv" "$out/results.csv"
cp "$workdir"/plots/*.png "$workdir"/plots/*.svg "$out/plots/"
