"""Train one config at several precisions and compare them side by side (the README main job)."""

from __future__ import annotations

import os


def compare_precisions(config_spec: str, workdir: str, precisions, overrides=None) -> list[dict]:
  """Train `config_spec` (file.py:arg) once per precision, each in workdir/<precision>.

  The precision goes through the config file's own argument, so the file can set
  the precision-dependent recipe (learning rates, schedule); finished runs are
  reused and interrupted ones resume.
  """
  from bitjax.train import train_and_evaluate
  from bitjax.train.config import load_config, validate_config

  separator = "," if ":" in config_spec else ":"
  configs = {p: load_config(f"{config_spec}{separator}precision={p}", overrides)
             for p in precisions}
  for config in configs.values():  # a bad one fails before any training starts
    validate_config(config)
  return [train_and_evaluate(cfg, os.path.join(workdir, p)) for p, cfg in configs.items()]


def format_task_comparison(summaries: list[dict]) -> str:
  """The table for tasks other than language modelling: every eval metric per run."""
  keys = [k for k in summaries[0] if k.startswith("eval_")]
  header = f"{'precision':<14}{'params':>12}" + "".join(f"{k[5:]:>14}" for k in keys) + \
      f"{'minutes':>9}"
  lines = [header, "-" * len(header)]
  for s in summaries:
    lines.append(f"{s['precision']:<14}{s['params']:>12,}"
                 + "".join(f"{s[k]:>14.4f}" for k in keys) + f"{s['train_wall_s'] / 60:>9.1f}")
  lines.append(f"task: {summaries[0]['task']}; data: {summaries[0]['data']['name']}; "
               f"device: {summaries[0]['device_kind']}")
  return "\n".join(lines)


def format_comparison(summaries: list[dict]) -> str:
  """A plain-text table of the runs' validation metrics, baseline first."""
  if summaries[0].get("task", "lm") != "lm":
    return format_task_comparison(summaries)
  header = (f"{'precision':<14}{'params':>10}{'tokens':>12}{'val loss':>10}{'val ppl':>10}"
            f"{'bits/byte':>11}{'tok/s avg':>11}{'minutes':>9}")
  lines = [header, "-" * len(header)]
  for s in summaries:
    lines.append(
        f"{s['precision']:<14}{s['params'] / 1e6:>9.2f}M{s['tokens'] / 1e6:>11.2f}M"
        f"{s['eval_loss']:>10.4f}{s['eval_perplexity']:>10.3f}{s['eval_bits_per_byte']:>11.4f}"
        f"{s['tokens_per_s']:>11,.0f}{s['train_wall_s'] / 60:>9.1f}")
  base = summaries[0]
  for s in summaries[1:]:
    lines.append(f"{s['precision']} / {base['precision']} perplexity ratio: "
                 f"{s['eval_perplexity'] / base['eval_perplexity']:.3f}")
  lines.append(f"compute dtype: {', '.join(sorted({s['compute_dtype'] for s in summaries}))}; "
               f"device: {base['device_kind']}")
  data = base["data"]
  if "sha256" in data:
    lines.append(f"data: {data['name']} ({data['num_files']} files, {data['num_bytes']:,} bytes, "
                 f"sha256 {data['sha256'][:12]}); validation {data['validation_files']} files")
  return "\n".join(lines)
