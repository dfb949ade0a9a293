"""Orbax checkpoints of the train state together with the data iterator's position."""

from __future__ import annotations

import json
import os

import orbax.checkpoint as ocp

from bitjax import files


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
      raise ValueError(f"workdir {workdir!r} was written by a newer bitjax (run format "
                       f"{found!r}; this version reads up to {RUN_FORMAT}); upgrade bitjax")
  elif write:
    files.write_text(path, json.dumps({"format": RUN_FORMAT}) + "\n")


class Checkpointer:
  """Saves (train state, data iterator state) per step; keeps the newest few.

  `for_reading` (bitjax.load: no max_to_keep, no directory created, never saved to)
  creates and deletes nothing, so it may open the checkpoints of a run that is still
  training; Orbax lists only committed steps.
  """

  def __init__(self, directory: str, max_to_keep: int | None, for_reading: bool = False):
    # Orbax takes gs:// URLs as they are (tensorstore writes the arrays there).
    self.manager = ocp.CheckpointManager(
        files.absolute(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=not for_reading),
    )

  def latest_step(self) -> int | None:
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
      raise ValueError(
          f"workdir {workdir!r} holds a run with a different config ({details}); "
          "use a new --workdir, or the same config to resume")
    return
  if not write:
    return
  files.write_text(path, json.dumps(canonical, indent=2, sort_keys=True))
