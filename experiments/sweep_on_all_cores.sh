#!/usr/bin/env bash
# Trains every run of sweep SWEEP in WORKDIR with one process per core (--task_index /
# --num_tasks shares; logs in WORKDIR/share*.log), then writes the sweep's report to REPORT.
# Rerunning continues a killed sweep: finished runs are kept.
# Usage: bash experiments/sweep_on_all_cores.sh SWEEP WORKDIR REPORT
set -euo pipefail
sweep=$1 workdir=$2 report=$3
cores=$(nproc)
mkdir -p "$workdir"
pids=()
for ((share = 0; share < cores; share++)); do
  python -m bitjax sweep --config="$sweep" --workdir="$workdir" --task_index=$share \
    --num_tasks="$cores" > "$workdir/share$share.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
python -m bitjax plot --workdir="$workdir" > "$report"
