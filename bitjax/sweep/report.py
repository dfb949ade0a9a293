"""Analysis of a sweep workdir: results table (CSV), then for each analysis its runs ask for
(the task's `analysis`, in their summaries) its report and plots."""

from __future__ import annotations

import os

from bitjax.sweep import runner, scaling, seed_table

# Analysis name -> function(rows, workdir) returning its report text and the files it plotted.
# A new analysis is one such function and one entry here; a Task names it as `analysis`.
ANALYSES = {"scaling": scaling.analyze, "seed_table": seed_table.analyze}


def analysis_of(row: dict) -> str:
  """The analysis a result row asks for. Rows written before runs recorded it get scaling
  for language models and the seed table for other tasks, as they always did."""
  name = row.get("analysis")
  if name is None:
    name = "scaling" if row.get("task", "lm") == "lm" else "seed_table"
  if name not in ANALYSES:
    raise ValueError(f"run {row.get('name', '?')!r} has analysis={name!r}; "
                     f"it must be one of {list(ANALYSES)}")
  return name


def analyze(workdir: str) -> str:
  """Collect every finished run under `workdir`, write results.csv and hand each analysis
  its rows; returns the report printed by `python -m bitjax sweep` and `python -m bitjax plot`."""
  rows = runner.collect_results(workdir)
  by_analysis: dict[str, list[dict]] = {}
  for row in rows:  # every row checked before any analysis runs
    by_analysis.setdefault(analysis_of(row), []).append(row)
  csv_path = runner.write_csv(rows, os.path.join(workdir, runner.RESULTS_CSV))
  lines, plotted = [], []
  for name, analysis in ANALYSES.items():
    if name in by_analysis:
      text, paths = analysis(by_analysis[name], workdir)
      lines += [text, ""]
      plotted += paths
  return "\n".join([*lines, f"results: {csv_path}",
                    "plots: " + ", ".join(p for p in plotted if p.endswith(".png"))])
