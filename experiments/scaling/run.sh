#!/usr/bin/env bash
# Reproduces experiments/scaling: configs/sweeps/lm_scaling.py:cpu_equal_tokens,seeds=3,
# 18 runs (nano, micro, tiny x bf16, b1.58 x seeds 0-2, each trained on 2 tokens per
# non-embedding parameter), in one process per core, then copies the report, table,
# plots and the wall time here. Rerunning continues a killed sweep: finished runs are kept.
# Usage: bash experiments/scaling/run.sh [WORKDIR]   (default runs/scaling)
set -euo pipefail
cd "$(dirname "$0")/../.."
workdir=${1:-runs/scaling}
out=experiments/scaling
sweep=configs/sweeps/lm_scaling.py:cpu_equal_tokens,seeds=3
mkdir -p "$workdir" "$out/plots"
export JAX_PLATFORMS=cpu
start=$(date +%s)
bash experiments/sweep_on_all_cores.sh "$sweep" "$workdir" "$out/report.txt"
wall=$(( $(date +%s) - start ))
cp "$workdir/results.csv" "$out/results.csv"
rm -f "$out"/plots/*.png "$out"/plots/*.svg
cp "$workdir"/plots/*.png "$workdir"/plots/*.svg "$out/plots/"
{
  echo "command: bash experiments/scaling/run.sh $*"
  echo "wall_seconds: $wall"
  echo "finished: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD)"
  echo "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
} > "$out/wall_time.txt"
cat "$out/report.txt"
echo "wall time: ${wall}s"
