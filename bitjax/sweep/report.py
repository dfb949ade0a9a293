"""Analysis of a sweep workdir: results table (CSV), scaling-law fits, plots."""

from __future__ import annotations

import os

import numpy as np

from bitjax.sweep import runner
from bitjax.train import files

PLOTS_DIR = "plots"


def format_table(rows: list[dict]) -> str:
  """One line per run: size, precision, parameters, tokens, validation metrics."""
  header = (f"{'run':<28}{'non-emb params':>15}{'tokens':>9}{'TFLOPs':>9}{'val loss':>10}"
            f"{'val ppl':>9}{'bits/byte':>10}{'weight MB':>10}")
  lines = [header, "-" * len(header)]
  for r in sorted(rows, key=lambda r: (r["non_embedding_params"], r["precision"], r["name"])):
    lines.append(
        f"{r['name']:<28}{r['non_embedding_params']:>15,}{r['tokens'] / 1e6:>8.2f}M"
        f"{r['train_flops'] / 1e12:>9.2f}{r['eval_loss']:>10.4f}{r['eval_perplexity']:>9.3f}"
        f"{r['eval_bits_per_byte']:>10.4f}{r['weight_memory_bits'] / 8e6:>10.3f}")
  return "\n".join(lines)


def seed_cells(rows: list[dict]) -> list[dict]:
  """Runs that differ only in their seed, as one cell: mean and standard deviation
  (ddof=1) of the task's headline metric (summary's `metric`); tasks in the order of
  the registry (bitjax.train.tasks.TASKS), settings in the order of the rows."""
  from bitjax.train.tasks import TASKS

  order = list(TASKS)
  cells = {}
  for row in sorted(rows, key=lambda r: order.index(r["task"]) if r["task"] in order
                    else len(order)):
    setting = tuple((k, v) for k, v in row["labels"].items() if k not in ("seed", "precision"))
    cells.setdefault((row["task"], setting, row["precision"]), []).append(row)
  out = []
  for (task, setting, precision), members in cells.items():
    metric = members[0]["metric"]
    values = np.array([m[f"eval_{metric}"] for m in members], np.float64)
    out.append({"task": task, "setting": ", ".join(f"{k}={v}" for k, v in setting),
                "precision": precision, "metric": metric, "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
                "seeds": len(values), "params": members[0]["params"],
                "weight_kbytes": members[0]["weight_memory_bits"] / 8e3})
  return out


def format_cells(cells: list[dict]) -> str:
  """A markdown table: one line per (task, setting), one column per precision with
  mean ± std over seeds (accuracy in %), then the first precision's parameter count."""
  from bitjax.sweep.plots import precision_order

  precisions = precision_order(c["precision"] for c in cells)
  lines = ["| task | setting | metric | " + " | ".join(precisions) + " | params | seeds |",
           "|---" * (len(precisions) + 5) + "|"]
  tasks = list(dict.fromkeys(c["task"] for c in cells))
  settings = sorted(dict.fromkeys((c["task"], c["setting"]) for c in cells),
                    key=lambda key: tasks.index(key[0]))
  for task, setting in settings:
    row = {c["precision"]: c for c in cells if (c["task"], c["setting"]) == (task, setting)}
    first = row[next(p for p in precisions if p in row)]
    scale = 100.0 if first["metric"] == "accuracy" else 1.0
    values = [f"{row[p]['mean'] * scale:.2f} ± {row[p]['std'] * scale:.2f}" if p in row else ""
              for p in precisions]
    metric = "accuracy %" if scale == 100.0 else first["metric"]
    seeds = "/".join(sorted({str(c["seeds"]) for c in row.values()}))
    lines.append(f"| {task} | {setting} | {metric} | " + " | ".join(values)
                 + f" | {first['params']:,} | {seeds} |")
  return "\n".join(lines)


def analyze_tasks(rows: list[dict], workdir: str) -> str:
  """Report of non-LM runs: results.md (mean ± std per cell) and a comparison plot."""
  from bitjax.sweep import plots

  cells = seed_cells(rows)
  table = format_cells(cells)
  path = os.path.join(workdir, "results.md")
  files.write_text(path, table + "\n")
  paths = plots.plot_task_comparison(cells, os.path.join(workdir, PLOTS_DIR))
  return "\n".join([table, "", f"table: {path}",
                    "plots: " + ", ".join(p for p in paths if p.endswith(".png"))])


def analyze(workdir: str) -> str:
  """Collect every finished run under `workdir`, write results.csv, fit, plot; returns
  the report printed by `python -m bitjax sweep` and `python -m bitjax plot`. Language
  models get scaling fits; other tasks a mean ± std table over seeds (analyze_tasks)."""
  from bitjax.sweep import fit, plots

  all_rows = runner.collect_results(workdir)
  csv_path = runner.write_csv(all_rows, os.path.join(workdir, runner.RESULTS_CSV))
  rows = [r for r in all_rows if r.get("task", "lm") == "lm"]
  others = [r for r in all_rows if r.get("task", "lm") != "lm"]
  task_report = analyze_tasks(others, workdir) if others else ""
  if not rows:
    return "\n".join([task_report, f"results: {csv_path}"])
  summary = fit.summarize(rows)
  out_dir = os.path.join(workdir, PLOTS_DIR)
  paths = plots.plot_scaling(rows, summary, out_dir)
  paths += plots.plot_training_curves(runner.read_curves(workdir, [r["name"] for r in rows]),
                                      out_dir, rows=rows)
  return "\n".join([
      format_table(rows), "", fit.format_summary(summary), "",
      f"results: {csv_path}",
      "plots: " + ", ".join(p for p in paths if p.endswith(".png")),
      *([task_report] if task_report else []),
  ])
