"""Orbax checkpoints of the train state together with the data iterator's position."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from bitjax import files
from bitjax.parallel import max_over_processes


# The layout of a workdir (config.json, checkpoints/, tokenizer/, ...) this version writes;
# RUN_MARKER holds it, and a workdir of a higher format is refused rather than misread.
RUN_FORMAT = 1
RUN_MARKER = "bitjax_run.json"


def check_run_format(workdir: str, write: bool) -> None:
  """Refuse a workdir written by a newer bitjax (RUN_MARKER's format above RUN_FORMAT);
  if `write`, record this version's format in a workdir that has none. A workdir from
  before the marker existed is format 1."""
  path = os.path.join(workdir, RUN_MARKER)
  if files.exists(path):
    found = json.loads(files.read_text(path)).get("format")
    if not isinstance(found, int) or found > RUN_FORMAT:
      raise files.WorkdirError(f"workdir {workdir!r} was written by a newer bitjax (run format "
                       f"{found!r}; this version reads up to {RUN_FORMAT}); upgrade bitjax")
  elif write:
    files.write_atomic(path, json.dumps({"format": RUN_FORMAT}) + "\n")


def nonfinite_leaves(tree) -> list[str]:
  """Paths (as jax.tree_util.keystr writes them) of the floating arrays of `tree` that hold
  a nan or an inf. One jitted program reduces every array where it lives and returns the
  flags to every process (op-by-op reductions of arrays sharded over several processes
  deadlocked a two-host job)."""
  leaves = [(path, leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
            if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact)]
  if not leaves:
    return []
  finite = np.asarray(_all_finite([leaf for _, leaf in leaves]))
  return [jax.tree_util.keystr(path) for (path, _), ok in zip(leaves, finite) if not ok]


@jax.jit
def _all_finite(leaves) -> jax.Array:
  return jnp.stack([jnp.isfinite(leaf).all() for leaf in leaves])


class DamagedCheckpoints(files.WorkdirError):
  """No committed step of a run's checkpoints restores intact; the message names each."""


class UnreadableCheckpoint(files.WorkdirError):
  """A checkpoint step could not be read for a reason that says nothing about the step (the
  network, the storage service, memory); nothing was moved."""


# A step's verdict on one process; the job takes the largest over its processes.
INTACT, DAMAGED, UNREADABLE = range(3)

# Exceptions (by module and class name, checked only if that module is loaded: the error
# cannot come from a module never imported) that tell of the way to the storage rather than
# of what it holds. gcsfs's HttpError counts when its status is 429 or 5xx.
_UNREADABLE_TYPES = (("google.api_core.exceptions", ("ServerError", "TooManyRequests",
                                                     "RetryError")),
                     ("requests.exceptions", ("ConnectionError", "Timeout")),
                     ("aiohttp", ("ClientConnectionError", "ServerTimeoutError")))
# Status codes in the messages of tensorstore (which reads Orbax's arrays) and gRPC.
_UNREADABLE_STATUS = re.compile(r"\b(UNAVAILABLE|DEADLINE_EXCEEDED|RESOURCE_EXHAUSTED)\b")


def _unreadable(error: BaseException) -> bool:
  """Whether `error` (or an error it was raised from) failed the read without saying the
  checkpoint is damaged: a connection or timeout error (missing files, FileNotFoundError, do
  prove damage), a storage service's 429 / 5xx, a tensorstore status such as UNAVAILABLE,
  or running out of memory."""
  classes = [ConnectionError, TimeoutError, MemoryError]
  for module, names in _UNREADABLE_TYPES:
    if module in sys.modules:
      classes += [getattr(sys.modules[module], name) for name in names
                  if hasattr(sys.modules[module], name)]
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, tuple(classes)) or _UNREADABLE_STATUS.search(str(error)):
      return True
    if type(error).__name__ == "HttpError" and (getattr(error, "code", None) == 429 or
                                                 str(getattr(error, "code", "")).startswith("5")):
      return True
    error = error.__cause__ or error.__context__
  return False


def one_line(error: Exception) -> str:
  text = " ".join(str(error).split())
  return f"{type(error).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


class Checkpointer:
  """Saves (train state, data iterator state) per step; keeps the newest few.

  `for_reading` (bitjax.load: no max_to_keep, no directory created, never saved to)
  creates and deletes nothing, so it may open the checkpoints of a run that is still
  training; Orbax lists only committed steps (a folder still being written, Orbax's
  `*.orbax-checkpoint-tmp-*` or one without its commit marker on gs://, is not a step).
  """

  def __init__(self, directory: str, max_to_keep: int | None, for_reading: bool = False):
    # Orbax takes gs:// URLs as they are (tensorstore writes the arrays there).
    self.directory = files.absolute(directory)
    self.manager = ocp.CheckpointManager(
        files.absolute(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not for_reading),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def committed_step(self) -> int | None:
    """The newest step once every save in flight has committed."""
    self.manager.wait_until_finished()
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, data_state: dict) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)))

  def restore(self, step: int, abstract_state):
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return restored.state, restored.data

  def restore_newest_intact(self, abstract_state, set_data_state: Callable[[dict], None],
                            warn: Callable[[str], None]):
    """(step, state) of the newest step that restores intact, or None without steps.

    Intact: Orbax restores it into `abstract_state` (its tree structure, shapes and
    dtypes; Orbax raises on a missing or truncated file), every floating array is finite,
    and `set_data_state` accepts its iterator state. Each damaged step newer than the
    one taken is reported through `warn` with the reason and moved aside to
    DIRECTORY.damaged/ (never deleted: it is evidence, and the run saves that step
    again). When no step is intact, nothing is moved and DamagedCheckpoints names them all.

    A read that failed for a reason that proves nothing about the step (`_unreadable`: the
    network or storage, or this machine's memory) moves nothing and raises
    UnreadableCheckpoint. With several processes the verdict on a step is the worst of
    every process's (max_over_processes), so all take the same step; only the lead process
    moves damaged steps, and all wait for it before reading the directory again.
    """
    damaged = []
    for step in reversed(self.all_steps()):
      verdict, error = INTACT, None
      try:
        state, data_state = self.restore(step, abstract_state)
        set_data_state(data_state)
      except Exception as e:  # pylint: disable=broad-except  # sorted by _unreadable
        verdict, error = (UNREADABLE if _unreadable(e) else DAMAGED), e
      verdict = max_over_processes(verdict)()
      if verdict == UNREADABLE:
        cause = one_line(error) if error else "another process could not read it"
        raise UnreadableCheckpoint(
            f"{self.directory}: could not read checkpoint step {step} ({cause}); this says "
            "nothing about the step, so it was left in place: rerun when the storage answers")
      if verdict == INTACT:  # every process holds the step: check it together
        bad = nonfinite_leaves(state)
        if bad:
          verdict = DAMAGED
          error = ValueError(f"non-finite values in {len(bad)} arrays, first {bad[0]}")
      if verdict == DAMAGED:
        damaged.append((step, one_line(error) if error else "damaged on another process"))
        continue
      if damaged:
        self._set_aside(damaged, step, warn)
      return step, state
    if damaged:
      raise DamagedCheckpoints(
          f"{self.directory}: no checkpoint restores intact: " +
          "; ".join(f"step {step}: {reason}" for step, reason in damaged))
    return None

  def _set_aside(self, damaged: list[tuple[int, str]], resumed: int, warn) -> None:
    """The lead process moves each damaged (step, reason)'s folder to DIRECTORY.damaged/STEP
    (STEP-2, ... if taken) and warns; every process waits for it, then reads the directory
    again."""
    if jax.process_index() == 0:
      target_dir = self.directory.rstrip("/") + ".damaged"
      files.makedirs(target_dir)
      for step, reason in damaged:
        target, n = f"{target_dir}/{step}", 1
        while files.exists(target):
          n += 1
          target = f"{target_dir}/{step}-{n}"
        files.move(f"{self.directory.rstrip('/')}/{step}", target)
        warn(f"checkpoint step {step} is damaged ({reason}); moved to {target}; "
             f"resuming from step {resumed}")
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("bitjax: damaged checkpoints set aside")
    self.manager.reload()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _flatten(tree, prefix=""):
  if isinstance(tree, dict):
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: tree}


def _canonical(config_dict: dict) -> dict:
  return json.loads(json.dumps(config_dict, sort_keys=True, default=str))


def guard_config(workdir: str, config_dict: dict, write: bool = True,
                 defaults: dict | None = None, upgrade=None) -> None:
  """Write config.json into a new workdir (if `write`: one process of a multi-host job
  does); refuse to reuse one made with another config.

  Resuming must continue the same experiment, so any changed field is an error
  that names it (and asks for a new workdir) instead of silently mixing runs.
  Workdirs of earlier versions resume: `upgrade(saved)` rewrites a saved config as
  this version writes it (fields derived at run time then, filled now), and a field
  the saved config lacks (added to bitjax after the run began) counts as unchanged
  while it holds its value in `defaults`, the schema's defaults.
  """
  path = os.path.join(workdir, "config.json")
  canonical = _canonical(config_dict)
  if files.exists(path):
    saved = json.loads(files.read_text(path))
    old, new = _flatten(_canonical(upgrade(saved) if upgrade else saved)), _flatten(canonical)
    added_at_default = {k: v for k, v in _flatten(_canonical(defaults or {})).items()
                        if k not in old}
    old.update({k: v for k, v in added_at_default.items() if new.get(k) == v})
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if changed:
      details = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
      raise files.WorkdirError(
          f"workdir {workdir!r} holds a run with a different config ({details}); "
          "use a new --workdir, or the same config to resume")
    return
  if not write:
    return
  files.write_atomic(path, json.dumps(canonical, indent=2, sort_keys=True))
