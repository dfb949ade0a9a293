"""Run a sweep: every run in its own sub-workdir, finished runs skipped, others resumed.

A run is finished when WORKDIR/NAME/result.json exists; it is written last, after
the run's summary, so a killed sweep rerun with the same command trains only what
is missing and leaves finished results untouched. A finished (or begun) run is reused only
while its config.json matches what the sweep asks now; otherwise the sweep refuses before
training anything, naming the run and the changed fields, as `train` does. A run that
stopped at a non-finite loss left WORKDIR/NAME/FAILED.json instead: it is reported as
failed, not retrained, and the sweep goes on with the others, then ends in RunsFailed. A
run stopped by SIGTERM or SIGINT (bitjax.train.trainer.Interrupted) stops the sweep after
its checkpoint. WORKDIR may be a gs:// URL (bitjax.files).

Several processes or machines may run one sweep on one workdir: each claims a run before
training it (bitjax.sweep.claims), so no run trains twice, and each ends with every row.
`--task_index/--num_tasks` splits the runs statically over a job array (or one TPU slice
per share) instead, or as well.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time

from bitjax.sweep import claims
from bitjax.sweep.claims import Claim
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
              log=print, claim_timeout: float = claims.DEFAULT_TIMEOUT) -> list[dict]:
  """Train this task's share of the sweep; returns its result rows in sweep order."""
  return run_runs(task_share(load_sweep(sweep_spec), task_index, num_tasks), workdir, log,
                  claim_timeout)


# What the lead process found for a run (one int, so that all processes of a job agree).
FINISHED, FAILED, CLAIMED, ACQUIRED = range(4)


def _lead_decides(code: int) -> int:
  """The lead process's `code`, on every process of the job (they train runs together, so
  only the lead reads and writes claims); free with one process."""
  import jax

  if jax.process_count() == 1:
    return code
  import numpy as np
  from jax.experimental import multihost_utils

  return int(multihost_utils.broadcast_one_to_all(np.int32(code)))


def run_runs(share: list[Run], workdir: str, log=print,
             claim_timeout: float = claims.DEFAULT_TIMEOUT) -> list[dict]:
  """Train `share`, each run in workdir/run.name; returns the result rows in order.

  Every run's config is loaded and checked first, and a run directory holding a config.json
  for another config than the sweep's now (a changed shared override, say) is refused
  naming the run and the changed fields, before anything trains. Then each run is read
  back if finished, reported if failed, or claimed and trained (bitjax.sweep.claims). Runs
  another process holds are left for last: this process trains all it can, then looks at
  them every claims.heartbeat_every(claim_timeout) seconds until each is finished or
  failed there, or released unfinished (an interrupted process) or stale, when it claims
  and trains it itself. So every process sharing a workdir ends with every run's row.
  """
  import jax

  from bitjax.train.config import load_config, resolve_config
  from bitjax.train.trainer import FAILED_FILE, NonFiniteError, check_run_config

  check_unique(share)
  configs = {run.name: resolve_config(load_config(run.config, run.overrides)) for run in share}
  for run in share:
    run_dir = os.path.join(workdir, run.name)
    try:
      check_run_config(configs[run.name], run_dir, write=False)
    except files.WorkdirError as e:
      raise files.WorkdirError(f"sweep run {run.name!r}: {e}") from None
  files.makedirs(workdir)
  lead = jax.process_index() == 0
  rows, failed = {}, {}
  position = {run.name: f"[{i}/{len(share)}] {run.name}" for i, run in enumerate(share, 1)}

  def attempt(run: Run, earlier: str) -> tuple[bool, Claim | None]:
    """Settle `run` if this process can (read it back, note its failure, or claim and
    train it): (True, None); else (False, the live claim of the process that holds it,
    None off the lead process)."""
    run_dir = os.path.join(workdir, run.name)
    prefix = position[run.name]
    result_path = os.path.join(run_dir, RESULT_FILE)
    failed_path = os.path.join(run_dir, FAILED_FILE)
    held = claim = None
    if lead:
      if files.exists(result_path):
        code = FINISHED
      elif files.exists(failed_path):
        code = FAILED
      else:
        files.makedirs(run_dir)
        claim = claims.acquire(run_dir, claim_timeout, lambda line: log(f"{prefix}: {line}"))
        code = CLAIMED if isinstance(claim, Claim) else ACQUIRED
        if code == ACQUIRED:  # finished or failed since the look above: not trained again
          held, claim = claim, None
          code = (FINISHED if files.exists(result_path) else
                  FAILED if files.exists(failed_path) else ACQUIRED)
          if code != ACQUIRED:
            held.release()
    code = _lead_decides(code if lead else 0)
    if code == FINISHED:
      log(f"{prefix}: finished {earlier}")
      rows[run.name] = _read_result(result_path)
    elif code == FAILED:
      failed[run.name] = _failure(failed_path)
      log(f"{prefix}: failed {earlier}: {failed[run.name]}")
    elif code == ACQUIRED:
      log(f"{prefix}: training")
      try:
        rows[run.name] = train_run(run, configs[run.name], workdir)
      except NonFiniteError as e:
        failed[run.name] = str(e)
        log(f"{prefix}: failed: {e}")
      finally:
        if held:
          held.release()
    return code != CLAIMED, claim

  def announce(name: str, claim: Claim | None, then: str) -> None:
    if claim:
      log(f"{position[name]}: claimed by {claim.owner}, heartbeat {claim.age():.0f} s ago; "
          f"{then}")

  waiting = {}  # name -> (run, the owner last announced)
  for run in share:
    settled, claim = attempt(run, "earlier")
    if not settled:
      announce(run.name, claim, "training the others first")
      waiting[run.name] = (run, None)
  while waiting:
    time.sleep(claims.heartbeat_every(claim_timeout))
    for name, (run, announced) in list(waiting.items()):
      settled, claim = attempt(run, "in another process")
      if settled:
        del waiting[name]
      elif claim and claim.owner != announced:
        announce(name, claim, "waiting")
        waiting[name] = (run, claim.owner)
  if failed:
    reasons = "; ".join(f"{name}: {reason}" for name, reason in failed.items())
    raise RunsFailed(f"{len(failed)} of {len(share)} runs failed ({reasons}); `python -m "
                     f"bitjax plot --workdir {workdir}` analyses the {len(rows)} finished")
  return [rows[run.name] for run in share if run.name in rows]


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
  files.write_atomic(path, text.getvalue())  # processes sharing a sweep may both write it
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
