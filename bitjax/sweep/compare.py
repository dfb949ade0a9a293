"""Train one config at several precisions and compare them side by side: a sweep whose runs
are the precisions, each in WORKDIR/<precision>/ with its result.json, so `plot` reads the
workdir like any other sweep."""

from __future__ import annotations

import os

from bitjax.sweep import runner
from bitjax.sweep.spec import Run
from bitjax.sweep.table import Column, format_table


def precision_runs(config_spec: str, precisions, overrides=None) -> list[Run]:
  """One Run per precision, named by it. The precision goes through the config file's own
  argument, so the file can set the precision-dependent recipe (learning rates, schedule);
  the `overrides` are shared. The runs' group is the config argument (or the file's name)."""
  path, _, arg = config_spec.partition(":")
  group = arg or os.path.splitext(os.path.basename(path))[0]
  separator = "," if ":" in config_spec else ":"
  return [Run(p, f"{config_spec}{separator}precision={p}", dict(overrides or {}),
              {"config_arg": group, "precision": p}) for p in precisions]


def compare_precisions(config_spec: str, workdir: str, precisions, overrides=None,
                       log=print, claim_timeout: float = runner.claims.DEFAULT_TIMEOUT
                       ) -> list[dict]:
  """Train `config_spec` (file.py:arg) once per precision, each in workdir/<precision>,
  through the sweep runner: finished runs are read back, interrupted ones resume, and
  every config is checked before the first run trains. Returns the result rows."""
  return runner.run_runs(precision_runs(config_spec, precisions, overrides), workdir, log,
                         claim_timeout)


def _minutes(row) -> str:
  return f"{row['train_wall_s'] / 60:.1f}"


def format_task_comparison(rows: list[dict]) -> str:
  """The table for tasks other than language modelling: every eval metric per run."""
  keys = [k for k in rows[0] if k.startswith("eval_")]
  columns = [Column("precision", "<14", lambda r: r["precision"]),
             Column("params", ">12", lambda r: f"{r['params']:,}"),
             *(Column(k[5:], ">14", lambda r, k=k: f"{r[k]:.4f}") for k in keys),
             Column("minutes", ">9", _minutes)]
  return "\n".join([format_table(columns, rows),
                    f"task: {rows[0]['task']}; data: {rows[0]['data']['name']}; "
                    f"device: {rows[0]['device_kind']}"])


LM_COLUMNS = (
    Column("precision", "<14", lambda r: r["precision"]),
    Column("params", ">10", lambda r: f"{r['params'] / 1e6:.2f}M"),
    Column("tokens", ">12", lambda r: f"{r['tokens'] / 1e6:.2f}M"),
    Column("val loss", ">10", lambda r: f"{r['eval_loss']:.4f}"),
    Column("val ppl", ">10", lambda r: f"{r['eval_perplexity']:.3f}"),
    Column("bits/byte", ">11", lambda r: f"{r['eval_bits_per_byte']:.4f}"),
    Column("tok/s avg", ">11", lambda r: f"{r['tokens_per_s']:,.0f}"),
    Column("minutes", ">9", _minutes),
)


def format_comparison(rows: list[dict]) -> str:
  """A plain-text table of the runs' (result rows' or summaries') validation metrics,
  baseline first."""
  if rows[0].get("task", "lm") != "lm":
    return format_task_comparison(rows)
  lines = [format_table(LM_COLUMNS, rows)]
  base = rows[0]
  for row in rows[1:]:
    lines.append(f"{row['precision']} / {base['precision']} perplexity ratio: "
                 f"{row['eval_perplexity'] / base['eval_perplexity']:.3f}")
  lines.append(f"compute dtype: {', '.join(sorted({r['compute_dtype'] for r in rows}))}; "
               f"device: {base['device_kind']}")
  data = base["data"]
  if "sha256" in data:
    lines.append(f"data: {data['name']} ({data['num_files']} files, {data['num_bytes']:,} bytes, "
                 f"sha256 {data['sha256'][:12]}); validation {data['validation_files']} files")
  return "\n".join(lines)
