#!/usr/bin/env bash
# The seed paper's small-model comparisons at CPU scale, from a fresh clone:
#   bash experiments/small_models/run.sh [WORKDIR]     (default runs/small_models)
# Trains every run of configs/sweeps/small_models.py:all (3 seeds per cell) in one
# process per core, then writes results.md (mean ± std over seeds), results.csv
# and plots/small_models.{png,svg} to WORKDIR and copies them here with the wall time.
# Rerunning continues a killed sweep: finished runs are kept.
set -euo pipefail
cd "$(dirname "$0")/../.."
WORKDIR=${1:-runs/small_models}
OUT=experiments/small_models
SWEEP=configs/sweeps/small_models.py:all
mkdir -p "$WORKDIR"
export JAX_PLATFORMS=cpu
# Runs this small are dominated by XLA compile time; the cheaper CPU optimisation level
# compiles about twice as fast and ran these steps no slower (measured on 2 cores).
export XLA_FLAGS="--xla_backend_optimization_level=1"
# The corpus for the encoder tasks is built here, once, before the shares read it.
export TFDS_DATA_DIR=${TFDS_DATA_DIR:-$WORKDIR/tfds}
start=$(date +%s)
python - <<'PY'
from bitjax.train.config import load_config
from bitjax.train.tasks import get_task
get_task(load_config("configs/encoder.py:mlm")).eval_batches()
PY
bash experiments/sweep_on_all_cores.sh "$SWEEP" "$WORKDIR" "$WORKDIR/report.txt"
wall=$(( $(date +%s) - start ))
cp "$WORKDIR/results.md" "$WORKDIR/results.csv" "$OUT/"
cp "$WORKDIR/plots/small_models.png" "$WORKDIR/plots/small_models.svg" "$OUT/"
{
  echo "command: bash experiments/small_models/run.sh $*"
  echo "wall_seconds: $wall"
  echo "finished: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD)"
  echo "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
} > "$OUT/wall_time.txt"
cat "$OUT/results.md"
echo "wall time: ${wall}s"
