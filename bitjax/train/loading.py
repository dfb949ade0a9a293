"""bitjax.load: a trained run as a model, its config and its tokenizer.

The model is restored through the trainer's own state layout and Checkpointer, so
sharding and scanned layers come back exactly as they were trained, onto any mesh.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from bitjax import files
from bitjax.data.tokenizers import MARKER as TOKENIZER_MARKER
from bitjax.data.tokenizers import load_tokenizer
from bitjax.parallel import MeshConfig, make_mesh
from bitjax.train.checkpoint import Checkpointer, check_run_format
from bitjax.train.config import (ConfigError, TrainConfig, default_config, model_config,
                                 upgrade_record)
from bitjax.train.optim import DERIVED_FIELDS, OptimConfig, make_optimizer
from bitjax.train.step import state_layout
from bitjax.train.tasks import get_task
from bitjax.train.trainer import TOKENIZER_DIR


class RunNotFound(ValueError):
  """A workdir holds no bitjax run, not the step asked for, or a newer format's run."""


@dataclasses.dataclass
class Run:
  """A trained run: `model` (its parameters at `step`), `config` (the resolved config
  it trained with; config.mesh is the default, since a run may load on any layout),
  `tokenizer` (None for tasks without one) and `workdir`."""

  model: nnx.Module
  config: ml_collections.ConfigDict
  tokenizer: Any
  step: int
  workdir: str

  def generate(self, prompts: str | Sequence[str], max_new_tokens: int = 64, **sampling):
    """Continue text prompts (bitjax.infer.generate_text), within the context the run
    trained on (config.train.seq_len)."""
    from bitjax.infer.generation import generate_text

    if self.tokenizer is None:
      raise ValueError(f"this run's task ({self.config.task}) has no tokenizer to generate "
                       "text with")
    sampling.setdefault("max_context", self.config.train.seq_len)
    return generate_text(self.model, self.tokenizer, prompts, max_new_tokens, **sampling)


def load(workdir: str, step: int | None = None, mesh: Mesh | None = None) -> Run:
  """The run trained in `workdir` (a local path or gs:// URL) at `step` (default: the
  newest committed checkpoint, so a run still training loads as far as it got), its
  parameters laid out over `mesh` (default: data parallel over the local devices).

  Raises RunNotFound (a ValueError) with one line for a folder without a run, a step
  that is not there (naming those that are) and a run of a newer format.
  """
  workdir = os.fspath(workdir)
  config_path = os.path.join(workdir, "config.json")
  if not files.isdir(workdir):
    raise RunNotFound(f"workdir {workdir!r} does not exist")
  if not files.exists(config_path):
    raise RunNotFound(f"workdir {workdir!r} holds no bitjax run (no config.json)")
  try:
    check_run_format(workdir, write=False)
  except ValueError as e:
    raise RunNotFound(str(e)) from None
  config = saved_config(json.loads(files.read_text(config_path)), config_path)
  task = get_task(config)
  checkpoints = os.path.join(workdir, "checkpoints")
  if not files.isdir(checkpoints):
    raise RunNotFound(f"workdir {workdir!r} holds no checkpoint yet")
  checkpointer = Checkpointer(checkpoints, None, for_reading=True)
  try:
    steps = checkpointer.all_steps()
    if not steps:
      raise RunNotFound(f"workdir {workdir!r} holds no committed checkpoint yet")
    if step is None:
      step = steps[-1]
    elif step not in steps:
      raise RunNotFound(f"step={step!r} is not a checkpoint of {workdir!r}; its steps: {steps}")
    model_cfg = model_config(config)
    mesh = make_mesh(devices=jax.local_devices()) if mesh is None else mesh
    tx = make_optimizer(config.optim, config.train.steps)
    layout = state_layout(model_cfg, tx, config.train.seed, mesh, task.model_class)
    state, _ = checkpointer.restore(step, layout.abstract)
  finally:
    checkpointer.close()
  return Run(nnx.merge(layout.graphdef, state.params), config, _run_tokenizer(task, workdir),
             int(step), workdir)


def saved_config(record: dict, source: str) -> ml_collections.ConfigDict:
  """The config of a run from its config.json (bitjax.train.config.run_record): every
  section over this version's defaults, the mesh at its default. The model and train
  sections are checked; the data section is not, since the corpus and the tokenizer
  file it names need not exist where the run is loaded."""
  try:
    config = default_config(record["task"])
    merge = lambda section, fields: ml_collections.ConfigDict({**config[section].to_dict(),
                                                                **fields})
    config.model = merge("model", record["model"])
    recipe = model_config(config).spec.lr_recipe
    # An earlier version's run left derived optim fields to run time ("auto", None):
    # filled by the rules a resumed run applies (train.config.upgrade_record).
    for section, fields in upgrade_record(record, recipe).items():
      if section not in ("task", "model"):
        config[section] = merge(section, fields)
    config.mesh = MeshConfig.config_dict()
    optim = OptimConfig.from_mapping(config.optim).resolved(recipe)
    config.optim.update({name: getattr(optim, name) for name in DERIVED_FIELDS})
    TrainConfig.from_mapping(config.train)
  except (KeyError, ValueError) as e:
    raise ConfigError(f"{source}: {e}") from None
  return config


def _run_tokenizer(task, workdir: str):
  """The tokenizer saved with the run; a run from before runs saved theirs gets the
  tokenizer its config names."""
  directory = os.path.join(workdir, TOKENIZER_DIR)
  if files.exists(os.path.join(directory, TOKENIZER_MARKER)):
    return load_tokenizer(directory)
  return task.tokenizer()
