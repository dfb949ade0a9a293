"""Analysis of a sweep workdir: results table (CSV), scaling-law fits, plots."""

from __future__ import annotations

import os

from bitjax.sweep import runner

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


def analyze(workdir: str) -> str:
  """Collect every finished run under `workdir`, write results.csv, fit, plot; returns
  the report printed by `python -m bitjax sweep` and `python -m bitjax plot`."""
  from bitjax.sweep import fit, plots

  rows = runner.collect_results(workdir)
  csv_path = runner.write_csv(rows, os.path.join(workdir, runner.RESULTS_CSV))
  summary = fit.summarize(rows)
  out_dir = os.path.join(workdir, PLOTS_DIR)
  os.makedirs(out_dir, exist_ok=True)
  paths = plots.plot_scaling(rows, summary, out_dir)
  paths += plots.plot_training_curves(runner.read_curves(workdir, [r["name"] for r in rows]),
                                      out_dir, rows=rows)
  return "\n".join([
      format_table(rows), "", fit.format_summary(summary), "",
      f"results: {csv_path}",
      "plots: " + ", ".join(p for p in paths if p.endswith(".png")),
  ])
