"""Run a sweep: every run in its own sub-workdir, finished runs skipped, others resumed.

A run is finished when WORKDIR/NAME/result.json exists; it is written last, after
the run's summary, so a killed sweep rerun with the same command trains only what
is missing and leaves finished results untouched. A run that stopped at a non-finite
loss left WORKDIR/NAME/FAILED.json instead: it is reported as failed, not retrained, and
the sweep goes on with the others, then ends in RunsFailed. A run stopped by SIGTERM or
SIGINT (bitjax.train.trainer.Interrupted) stops the sweep after its checkpoint. WORKDIR may be a gs:// URL
(bitjax.files). `--task_index/--num_tasks`
splits the runs over a job array (or one TPU slice per share).
"""

from __future__ import annotations

import csv
import io
import json
import os

from bitjax.sweep.spec import Run, check_unique, load_sweep, run_group
from bitjax import files

RESULT_FILE = "result.json"
RESULTS_CSV = "results.csv"
PLOTS_DIR = "plots"


class RunsFailed(RuntimeError):
  """Some runs of a sweep stopped at a non-finite loss; the message names each and why."""


def _failure(path: str) -> str:
  """The reason a FAILED.json gives, in one line."""
  try:
    return json.loads(files.read_text(path))["reason"]
  except (ValueError, KeyError, TypeError):
    return f"{path} is not readable"


def task_share(runs: list[Run], task_index: int, num_tasks: int) -> list[Run]:
  """The runs of share `task_index` out of `num_tasks` (round robin, stable)."""
  if num_tasks < 1 or not 0 <= task_index < num_tasks:
    raise ValueError(f"--task_index={task_index} must be in [0, --num_tasks={num_tasks})")
  return runs[task_index::num_tasks]


def _read_result(path: str) -> dict:
  """A result row; rows written before they carried `group` get it from their labels."""
  row = json.loads(files.read_text(path))
  if "group" not in row:
    row["group"] = run_group(row["labels"], row.get("overrides", {}))
  return row


def train_run(run: Run, config, workdir: str) -> dict:
  """Train `run` with its loaded `config` in workdir/run.name; writes and returns its row:
  the labels, the run summary (with its task's `analysis`), the run's `group`, and how
  it was configured (the resolved config: derived learning rates filled in)."""
  from bitjax.train import train_and_evaluate
  import jax

  from bitjax.train.config import resolve_config

  run_dir = os.path.join(workdir, run.name)
  summary = train_and_evaluate(config, run_dir)
  result = {"name": run.name, **run.labels, **summary, "group": run.group,
            "config_spec": run.config, "overrides": run.overrides, "labels": run.labels,
            "config": resolve_config(config).to_dict()}
  # Whole or absent, never partial: locally a temporary file and os.replace; in an object
  # store one upload, which becomes visible only when complete (files.write_atomic). Either
  # way result.json appears only after the run's summary.json was written. One process
  # writes it, as the trainer writes summary.json.
  if jax.process_index() == 0:
    files.write_atomic(os.path.join(run_dir, RESULT_FILE),
                       json.dumps(result, indent=2, default=str))
  return result


def run_sweep(sweep_spec: str, workdir: str, task_index: int = 0, num_tasks: int = 1,
              log=print) -> list[dict]:
  """Train this task's share of the sweep; returns its result rows in sweep order."""
  return run_runs(task_share(load_sweep(sweep_spec), task_index, num_tasks), workdir, log)


def run_runs(share: list[Run], workdir: str, log=print) -> list[dict]:
  """Train `share`, each run in workdir/run.name; returns the result rows in order.

  Finished runs are read back; the configs of the others are all loaded and checked
  before the first one trains.
  """
  from bitjax.train.config import load_config, validate_config
  from bitjax.train.trainer import FAILED_FILE, NonFiniteError

  check_unique(share)
  result_path = lambda run: os.path.join(workdir, run.name, RESULT_FILE)
  failed_path = lambda run: os.path.join(workdir, run.name, FAILED_FILE)
  finished = {run.name for run in share if files.exists(result_path(run))}
  failed = {run.name: _failure(failed_path(run)) for run in share
            if run.name not in finished and files.exists(failed_path(run))}
  pending = {run.name: load_config(run.config, run.overrides)
             for run in share if run.name not in finished and run.name not in failed}
  for config in pending.values():
    validate_config(config)
  files.makedirs(workdir)
  rows = []
  for i, run in enumerate(share, 1):
    prefix = f"[{i}/{len(share)}] {run.name}"
    if run.name in finished:
      log(f"{prefix}: finished earlier")
      rows.append(_read_result(result_path(run)))
    elif run.name in failed:
      log(f"{prefix}: failed earlier: {failed[run.name]}")
    else:
      log(f"{prefix}: training")
      try:
        rows.append(train_run(run, pending[run.name], workdir))
      except NonFiniteError as e:
        failed[run.name] = str(e)
        log(f"{prefix}: failed: {e}")
  if failed:
    reasons = "; ".join(f"{name}: {reason}" for name, reason in failed.items())
    raise RunsFailed(f"{len(failed)} of {len(share)} runs failed ({reasons}); `python -m "
                     f"bitjax plot --workdir {workdir}` analyses the {len(rows)} finished")
  return rows


def collect_results(workdir: str) -> list[dict]:
  """Result rows of every finished run under `workdir`, sorted by name."""
  if not files.isdir(workdir):
    raise ValueError(f"--workdir={workdir!r} is not a directory")
  rows = []
  for name in sorted(files.listdir(workdir)):
    path = os.path.join(workdir, name, RESULT_FILE)
    if files.exists(path):
      rows.append(_read_result(path))
  if not rows:
    raise ValueError(f"no finished runs (*/{RESULT_FILE}) under {workdir!r}")
  return rows


def write_csv(rows: list[dict], path: str) -> str:
  """The scalar columns of the rows as one CSV table (nested config left out)."""
  columns = []
  for row in rows:
    columns += [k for k, v in row.items()
                if k not in columns and isinstance(v, (str, int, float, bool))]
  text = io.StringIO(newline="")
  writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
  writer.writeheader()
  writer.writerows(rows)
  files.write_text(path, text.getvalue())
  return path


def read_curves(workdir: str, names) -> dict[str, list[dict]]:
  """Each run's metrics.jsonl records, for training-curve plots."""
  from bitjax.train.metrics import read_metrics

  return {name: read_metrics(os.path.join(workdir, name)) for name in names}


def _csv_value(text: str):
  """A CSV cell as written by write_csv: int, float, bool or the string itself."""
  if text in ("True", "False"):
    return text == "True"
  for kind in (int, float):
    try:
      return kind(text)
    except ValueError:
      pass
  return text


def read_results_csv(path: str) -> list[dict]:
  """Result rows back from a results.csv (local or gs://), e.g. a committed one whose run
  folders are not at hand: numbers parsed, empty cells dropped, and the fields an analysis
  needs that the CSV does not hold rebuilt: `labels` (the config argument's key=value
  pairs and the seed, as make_runs labels a run) and `group` (run_group of those labels)."""
  rows = []
  for record in csv.DictReader(io.StringIO(files.read_text(path))):
    row = {k: _csv_value(v) for k, v in record.items() if v not in ("", None)}
    if "labels" not in row:
      _, _, arg = str(row.get("config_spec", "")).partition(":")
      labels = dict(item.split("=", 1) for item in arg.split(",") if "=" in item)
      if "seed" in row:
        labels["seed"] = row["seed"]
      row["labels"] = labels
    if "group" not in row:
      row["group"] = run_group(row["labels"], {})
    rows.append(row)
  if not rows:
    raise ValueError(f"{path!r} holds no result rows")
  return rows


def sweep_rows(workdir: str) -> list[dict]:
  """The result rows of a sweep workdir (local or gs://): from its runs' result.json files
  when it holds any, else from its results.csv (read_results_csv), as a results folder
  committed without its runs (experiments/scaling, experiments/small_models) holds."""
  if files.isdir(workdir) and any(files.exists(os.path.join(workdir, name, RESULT_FILE))
                                  for name in files.listdir(workdir)):
    return collect_results(workdir)
  path = os.path.join(workdir, RESULTS_CSV)
  if not files.exists(path):
    raise ValueError(f"{workdir!r} holds neither finished runs (*/{RESULT_FILE}) nor "
                     f"{RESULTS_CSV}")
  return read_results_csv(path)
