"""train_and_evaluate: the one training loop, a pure jitted step on (graphdef, state)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from bitjax.data.tokenizers import MARKER as TOKENIZER_MARKER
from bitjax.models import weight_memory_bits
from bitjax.parallel import (global_batch, make_mesh, max_over_processes, process_batch_block,
                             sharded_jit)
from bitjax import files
from bitjax.train.checkpoint import (Checkpointer, one_line, check_run_format, guard_config,
                                     nonfinite_leaves)
from bitjax.train.config import (ConfigError, check_workdir, default_config, model_config,
                                 resolve_config, run_record, upgrade_record)
from bitjax.train.metrics import MetricWriter
from bitjax.train.optim import learning_rate_schedule, make_optimizer
from bitjax.train.step import jit_train_step, state_layout
from bitjax.train.tasks import get_task


def evaluate(task, eval_fn, params, batches) -> dict[str, float]:
  totals = {}
  for batch in batches:
    for key, value in jax.device_get(eval_fn(params, batch)).items():
      totals[key] = totals.get(key, 0.0) + float(value)
  return task.summarize(totals)


def device_batch(batch, sharding, num_blocks: int) -> dict[str, jax.Array]:
  """This process's block of every array as a global array of `num_blocks` blocks; the
  arrays may differ in rows (a graph's nodes and edges)."""
  return {key: global_batch({key: value}, sharding, len(value) * num_blocks)[key]
          for key, value in batch.items()}


def _run_summary(config, task, model_cfg, model, num_params, eval_metrics, wall, steps_run,
                 units_s, data_info):
  return {
      "task": config.task,
      "metric": task.metric,
      "analysis": task.analysis,
      "precision": model_cfg.precision,
      "compute_dtype": jnp.dtype(model_cfg.dtype).name,
      "params": num_params,
      "weight_memory_bits": weight_memory_bits(model),
      "steps": config.train.steps,
      **task.run_stats(model_cfg, model),
      **{f"eval_{key}": value for key, value in eval_metrics.items()},
      "train_wall_s": wall,
      "steps_this_session": steps_run,
      # this session's steps over its wall time (compile, eval too)
      f"{task.unit}_per_s": units_s,
      "device_kind": jax.devices()[0].device_kind,
      "data": data_info,
  }


FAILED_FILE = "FAILED.json"  # WORKDIR/FAILED.json: the step and reason a run stopped at
# The exit status of a run (or sweep) stopped by SIGTERM / SIGINT after saving a checkpoint:
# sysexits' EX_TEMPFAIL, "try again later", which is what a preempted job should do.
EXIT_INTERRUPTED = 75


class NonFiniteError(RuntimeError):
  """A run stopped at a non-finite loss, gradient norm or state; FAILED.json says so."""

  def __init__(self, step: int, reason: str):
    super().__init__(f"step {step}: {reason}")
    self.step, self.reason = step, reason


class Interrupted(Exception):
  """SIGTERM or SIGINT stopped the run after it saved a checkpoint at `step`."""

  def __init__(self, signal_name: str, step: int):
    super().__init__(f"{signal_name} at step {step}: saved a checkpoint at step {step}; "
                     f"rerun the same command to resume (exit code {EXIT_INTERRUPTED})")
    self.signal_name, self.step = signal_name, step


@contextlib.contextmanager
def workdir_io(workdir: str, step: int):
  """Around the loop's writes to a remote workdir: an error of its object store (once the
  client's retries are spent) becomes a one-line files.StorageError naming the workdir and
  the step, and the loop writes nothing more there."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except  # re-raised unless the store failed
    if not (files.is_remote(workdir) and files.is_storage_error(e)):
      raise
    raise files.StorageError(
        f"workdir {workdir!r}: its storage failed at step {step} ({one_line(e)}); rerun "
        "the same command once it is reachable: the run resumes from its newest committed "
        "checkpoint") from None


class StopRequests:
  """While active, SIGTERM (how Cloud TPU announces a preemption) and SIGINT only set
  `signal_name`, which the loop reads after each step through `agreed`; the handlers in
  place before are put back at once, so a second signal acts as it would have (ends the
  process). Signals can only be caught in the main thread; elsewhere this does nothing."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal_name: str | None = None
    self._previous = {}
    self._gathered = lambda: 0  # the signal numbers of the step before, over processes

  def agreed(self) -> str | None:
    """The signal to stop at this step for, the same on every process, as saving a
    checkpoint is collective and every host must save the same step. One process: its own
    signal, at once. Several: the largest signal number any process had caught by the step
    before (gathered then by max_over_processes, read now, so the loop does not wait on it),
    whether or not this process caught one. Call it once per step on every process."""
    if jax.process_count() == 1:
      return self.signal_name
    caught = signal.Signals[self.signal_name].value if self.signal_name else 0
    agreed, self._gathered = self._gathered(), max_over_processes(caught)
    return signal.Signals(agreed).name if agreed else None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
    return self

  def _handle(self, signum, frame):
    del frame
    self.signal_name = signal.Signals(signum).name
    self._restore()

  def _restore(self):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def __exit__(self, *exc):
    self._restore()


class NonFiniteGuard:
  """Checks each step's loss and gradient norm. `stop`: the first non-finite one raises
  NonFiniteError; `skip` (the jitted step kept the old state): counts them and raises
  after `max_in_a_row` in a row."""

  QUANTITIES = ("loss", "grad_norm")

  def __init__(self, mode: str, max_in_a_row: int):
    self.mode, self.max_in_a_row = mode, max_in_a_row
    self.in_a_row = self.skipped = 0

  def check(self, step: int, metrics) -> None:
    values = jax.device_get({key: metrics[key] for key in self.QUANTITIES})
    bad = next((key for key in self.QUANTITIES if not math.isfinite(float(values[key]))),
               None)
    if bad is None:
      self.in_a_row = 0
      return
    what = f"{bad} is {float(values[bad])}"
    if self.mode == "stop":
      raise NonFiniteError(step, f"{what} (config.train.nonfinite='stop')")
    self.in_a_row += 1
    self.skipped += 1
    if self.in_a_row >= self.max_in_a_row:
      raise NonFiniteError(step, f"{what}, {self.in_a_row} skipped steps in a row "
                                 f"(config.train.max_skipped_in_a_row={self.max_in_a_row})")


TOKENIZER_DIR = "tokenizer"  # the run's tokenizer, under its workdir, for bitjax.load


def save_tokenizer(task, workdir: str) -> None:
  """Save the task's tokenizer (if it has one) as WORKDIR/tokenizer/, once: a run keeps
  the tokenizer it was trained with even if config.data.tokenizer_path later changes."""
  tokenizer = task.tokenizer()
  directory = os.path.join(workdir, TOKENIZER_DIR)
  if tokenizer is not None and not files.exists(os.path.join(directory, TOKENIZER_MARKER)):
    tokenizer.save(directory)


def make_config_mesh(config: ml_collections.ConfigDict, task, devices=None) -> Mesh:
  """The mesh `config.mesh` asks for over `devices` (default: all), checked against the
  batch size where the task splits batches by rows; a ConfigError naming the field
  when they do not fit."""
  try:
    mesh = make_mesh(**config.mesh, devices=devices)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if task.splits_rows and config.train.batch_size % batch_shards:
    raise ConfigError(
        f"config.train.batch_size={config.train.batch_size} is not divisible by the mesh's "
        f"data x fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']} = {batch_shards}")
  return mesh


def check_run_config(config: ml_collections.ConfigDict, workdir: str, write: bool) -> None:
  """Refuse `workdir` if its config.json was written for another config than the resolved
  `config` (WorkdirError naming each changed field); if `write`, write it where absent.
  `train` checks its workdir so, and a sweep each run's before anything trains."""
  recipe = model_config(config).spec.lr_recipe
  guard_config(workdir, run_record(config), write=write,
               defaults=run_record(default_config(config.task)),
               upgrade=lambda saved: upgrade_record(saved, recipe))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train `config` in `workdir`, resuming from its newest checkpoint; returns the summary.

  The state is sharded over the mesh of `config.mesh` (by default data parallel over
  every device; one device trains exactly as unsharded code would). With several
  processes (bitjax.parallel.initialize_distributed) each reads only its rows of
  every batch; only process 0 writes metrics and the summary.
  A finished workdir returns its stored summary without training again.
  """
  config = resolve_config(config)
  model_cfg = model_config(config)
  task = get_task(config)
  workdir = check_workdir(workdir)
  lead = jax.process_index() == 0
  check_run_format(workdir, write=lead)
  check_run_config(config, workdir, write=lead)
  if lead:
    save_tokenizer(task, workdir)
  summary_path = os.path.join(workdir, "summary.json")
  tcfg = config.train
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), tcfg.max_checkpoints)
  if checkpointer.latest_step() == tcfg.steps and files.exists(summary_path):
    checkpointer.close()
    return json.loads(files.read_text(summary_path))

  mesh = make_config_mesh(config, task)
  tx = make_optimizer(config.optim, tcfg.steps)
  lr_schedule = learning_rate_schedule(config.optim, tcfg.steps)
  layout = state_layout(model_cfg, tx, tcfg.seed, mesh, task.model_class)
  batch_layout = task.batch_sharding(mesh)
  block, num_blocks = process_batch_block(batch_layout, (tcfg.batch_size, tcfg.seq_len))

  def rows(value):  # this process's block of a global eval array
    size = len(value) // num_blocks
    return value[block * size:(block + 1) * size]

  train_iter = task.train_iterator(block, num_blocks)
  eval_batches = [device_batch({k: rows(v) for k, v in batch.items()}, batch_layout, num_blocks)
                  for batch in task.eval_batches()]
  data_info = task.data_info()

  restored = checkpointer.restore_newest_intact(
      layout.abstract, train_iter.set_state,
      warn=lambda message: tqdm.write(f"{workdir}: {message}") if lead else None)
  if restored is None:
    start, state = 0, layout.init()
  else:
    start, state = restored
    if lead:
      tqdm.write(f"Resuming {workdir} from step {start}")
  model = nnx.merge(layout.graphdef, state.params)
  num_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))

  step_fn = jit_train_step(layout, tx, lr_schedule, mesh, batch_layout, task.loss, tcfg.seed,
                           skip_nonfinite=tcfg.nonfinite == "skip")
  eval_fn = sharded_jit(
      lambda params, batch: task.eval_sums(nnx.merge(layout.graphdef, params), batch), mesh,
      in_shardings=(layout.shardings.params, batch_layout),
      out_shardings=NamedSharding(mesh, PartitionSpec()))
  writer = MetricWriter(workdir, start) if lead else None
  units_per_step = task.units_per_step()
  bar = tqdm(total=tcfg.steps, initial=start, disable=not (tcfg.progress_bar and lead),
             mininterval=2.0, desc=f"{model_cfg.precision} {num_params / 1e6:.2f}M",
             unit="step", dynamic_ncols=True)
  # FLOPs per step for TFLOP/s and MFU, from the first batch's shapes (traced, not run).
  flops_per_step = None
  t_start = t_log = time.perf_counter()
  step_log = start
  eval_metrics = None
  guard = NonFiniteGuard(tcfg.nonfinite, tcfg.max_skipped_in_a_row)
  # The step before, checked once the next one is dispatched, so that reading its loss
  # does not hold up the device; steps that log, evaluate or save are checked at once.
  unchecked = None
  storage_failed = False
  try:
    with StopRequests() as stop:
      for step in range(start + 1, tcfg.steps + 1):
        batch = device_batch(next(train_iter), batch_layout, num_blocks)
        state, metrics = step_fn(state, batch)
        bar.update(1)
        if unchecked:
          guard.check(*unchecked)
        unchecked = step, metrics
        log = step % tcfg.log_every == 0 or step == tcfg.steps
        run_eval = step % tcfg.eval_every == 0 or step == tcfg.steps
        stopping = stop.agreed()
        save = step % tcfg.checkpoint_every == 0 or step == tcfg.steps or stopping
        if log or run_eval or save:
          guard.check(*unchecked)  # before anything of this step is written
          unchecked = None
        if log:
          metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
          if tcfg.nonfinite == "skip":
            metrics["skipped"] = guard.skipped  # all skipped steps of this session so far
          now = time.perf_counter()
          units_s = (step - step_log) * units_per_step / (now - t_log)
          t_log, step_log = now, step
          if flops_per_step is None:
            flops_per_step = task.train_flops_per_step(model_cfg, layout.graphdef,
                                                       state.params, batch)
            t_log = time.perf_counter()  # tracing is not training time
          if writer:
            with workdir_io(workdir, step):
              writer.write(step, "train", {**metrics,
                                           **task.throughput(units_s, flops_per_step)})
          bar.set_postfix(loss=f"{metrics['loss']:.3f}",
                          **{f"{task.unit}_s": f"{units_s:,.0f}"})
        if run_eval:
          eval_metrics = evaluate(task, eval_fn, state.params, eval_batches)
          if writer:
            with workdir_io(workdir, step):
              writer.write(step, "eval", eval_metrics)
            bar.write(f"step {step}: eval " + ", ".join(f"{key} {value:.4f}"
                                                        for key, value in eval_metrics.items()))
        if save:
          bad = nonfinite_leaves(state)
          if bad:  # finite loss and gradients, yet the update overflowed
            raise NonFiniteError(step, f"the train state holds non-finite values in "
                                       f"{len(bad)} arrays, first {bad[0]}")
          with workdir_io(workdir, step):
            checkpointer.save(step, state, train_iter.get_state())
        if stopping and step < tcfg.steps:
          raise Interrupted(stopping, step)
  except NonFiniteError as e:
    saved = checkpointer.committed_step()
    if lead:
      files.write_atomic(os.path.join(workdir, FAILED_FILE), json.dumps(
          {"step": e.step, "reason": e.reason, "nonfinite": tcfg.nonfinite,
           "last_checkpoint": saved}, indent=2) + "\n")
    kept = "no checkpoint" if saved is None else f"its newest checkpoint is step {saved}"
    raise NonFiniteError(e.step, f"{e.reason}; the run stops, {kept} "
                                 f"({os.path.join(workdir, FAILED_FILE)})") from None
  except files.StorageError:
    storage_failed = True
    raise
  finally:
    bar.close()
    if writer:
      writer.close(storage_failed)
    checkpointer.close()
  if eval_metrics is None:  # resumed at the last step without a summary
    eval_metrics = evaluate(task, eval_fn, state.params, eval_batches)
  wall = time.perf_counter() - t_start
  steps_run = tcfg.steps - start
  summary = _run_summary(config, task, model_cfg, model, num_params, eval_metrics, wall,
                         steps_run, steps_run * units_per_step / wall, data_info)
  summary["workdir"] = workdir
  if lead:
    files.write_atomic(summary_path, json.dumps(summary, indent=2))
  return summary
