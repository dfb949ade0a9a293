"""The seed table of tasks other than language modelling: runs that differ only in their
seed become one cell (mean ± std of the task's headline metric), written as results.md
with a bar plot per task."""

from __future__ import annotations

import os
from operator import itemgetter

import numpy as np

from bitjax.sweep import runner
from bitjax.sweep.intervals import welch_difference
from bitjax.sweep.table import Column, format_table
from bitjax import files

RESULTS_MD = "results.md"


def seed_cells(rows: list[dict]) -> list[dict]:
  """One cell per (task, group, precision, steps): mean and standard deviation (ddof=1)
  of the task's headline metric (the row's `metric`) over seeds; tasks in the order of
  the registry (bitjax.train.tasks.TASKS), groups in the order of the rows. A cell's
  `setting` spells its labels out (dataset=digits) for the table."""
  from bitjax.train.tasks import TASKS

  order = list(TASKS)
  cells = {}
  for row in sorted(rows, key=lambda r: order.index(r["task"]) if r["task"] in order
                    else len(order)):
    key = (row["task"], row["group"], row["precision"], row["steps"])
    cells.setdefault(key, []).append(row)
  out = []
  for (task, _, precision, _), members in cells.items():
    metric = members[0]["metric"]
    values = np.array([m[f"eval_{metric}"] for m in members], np.float64)
    setting = ", ".join(f"{k}={v}" for k, v in members[0]["labels"].items()
                        if k not in ("seed", "precision"))
    out.append({"task": task, "setting": setting,
                "precision": precision, "metric": metric, "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
                "seeds": len(values), "params": members[0]["params"],
                "weight_kbytes": members[0]["weight_memory_bits"] / 8e3})
  return out


def _settings(cells: list[dict]) -> list[tuple[str, str]]:
  """The (task, setting) lines of the tables, tasks in the cells' order."""
  tasks = list(dict.fromkeys(c["task"] for c in cells))
  return sorted(dict.fromkeys((c["task"], c["setting"]) for c in cells),
                key=lambda key: tasks.index(key[0]))


def _scale(cell: dict) -> float:
  return 100.0 if cell["metric"] == "accuracy" else 1.0


def format_cells(cells: list[dict]) -> str:
  """A markdown table: one line per (task, setting), one column per precision with
  mean ± std over seeds (accuracy in %), then the first precision's parameter count."""
  from bitjax.sweep.plots import precision_order

  precisions = precision_order(c["precision"] for c in cells)
  lines = []
  for task, setting in _settings(cells):
    row = {c["precision"]: c for c in cells if (c["task"], c["setting"]) == (task, setting)}
    first = row[next(p for p in precisions if p in row)]
    scale = _scale(first)
    seeds = "/".join(sorted({str(c["seeds"]) for c in row.values()}))
    lines.append([task, setting, "accuracy %" if scale == 100.0 else first["metric"],
                  *(f"{row[p]['mean'] * scale:.2f} ± {row[p]['std'] * scale:.2f}"
                    if p in row else "" for p in precisions),
                  f"{first['params']:,}", seeds])
  headers = ("task", "setting", "metric", *precisions, "params", "seeds")
  return format_table([Column(h, "", itemgetter(i)) for i, h in enumerate(headers)], lines,
                      markdown=True)


def format_differences(cells: list[dict], reference: str = "bf16") -> str:
  """A markdown table: per (task, setting), each precision's mean minus `reference`'s with
  its 95% Welch interval over seeds and whether the two are distinguishable."""
  from bitjax.sweep.plots import precision_order

  others = [p for p in precision_order(c["precision"] for c in cells) if p != reference]
  lines = []
  for task, setting in _settings(cells):
    row = {c["precision"]: c for c in cells if (c["task"], c["setting"]) == (task, setting)}
    ref = row.get(reference)
    if ref is None:
      continue
    lines.append([task, setting, *(
        welch_difference(row[p]["mean"], row[p]["std"], row[p]["seeds"], ref["mean"],
                         ref["std"], ref["seeds"]).format(_scale(ref), digits=2)
        if p in row else "" for p in others)])
  headers = ("task", "setting", *(f"{p} - {reference}" for p in others))
  return format_table([Column(h, "", itemgetter(i)) for i, h in enumerate(headers)], lines,
                      markdown=True)


def analyze(rows: list[dict], workdir: str) -> tuple[str, list[str]]:
  """The seed table and the differences to bf16 and to b1.58 (also written as
  workdir/results.md), and the paths of its plots."""
  from bitjax.sweep import plots

  cells = seed_cells(rows)
  table = format_cells(cells)
  # Against 16-bit, and against BitNet's b1.58 (median scaling, the 2411.05882 layer, 1-bit).
  for reference in ("bf16", "b1.58"):
    if any(c["precision"] == reference for c in cells):
      table += (f"\n\nDifference to {reference} (accuracy in points), seed means with [95% "
                "Welch interval over seeds]; 'not distinguishable' where it contains 0:\n\n"
                + format_differences(cells, reference))
  path = os.path.join(workdir, RESULTS_MD)
  files.write_text(path, table + "\n")
  paths = plots.plot_task_comparison(cells, os.path.join(workdir, runner.PLOTS_DIR))
  return "\n".join([table, "", f"table: {path}"]), paths
