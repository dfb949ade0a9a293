"""The config: every section's defaults, the derived fields and up-front validation.

Each section's schema is a `bitjax.schema.Section` dataclass (model: the task's
ModelConfig; data: the task's; train: TrainConfig; mesh: MeshConfig; optim:
OptimConfig), which gives both its defaults and its checks. Config files
(configs/*.py) start from `default_config()` and change fields; `resolve_config`
fills the fields that depend on others (the learning-rate recipe depends on the
precision) after the command-line overrides and checks the whole thing before any
work starts, so a typo or an impossible shape fails in the first second with the
field named.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import ClassVar

import ml_collections

from bitjax.models import ModelConfig
from bitjax.parallel import MeshConfig
from bitjax.schema import POSITIVE_INT, Section, field
from bitjax import files
from bitjax.train.optim import DERIVED_FIELDS, OptimConfig, earlier_schedule_names

SECTIONS = ("task", "model", "data", "train", "mesh", "optim")
# A vocabulary size left to the tokenizer is rounded up to a multiple of this, as the byte
# configs always were (259 ids -> 264 rows), so embeddings and logits tile evenly.
VOCAB_MULTIPLE = 8


@dataclasses.dataclass(frozen=True)
class TrainConfig(Section):
  """Schema of `config.train`."""

  section: ClassVar[str] = "train"

  seq_len: int = field(256, rule=POSITIVE_INT)
  batch_size: int = field(16, rule=POSITIVE_INT)
  steps: int = field(1000, rule=POSITIVE_INT)
  seed: int = 0
  eval_every: int = field(250, rule=POSITIVE_INT)
  eval_batches: int = field(8, rule=POSITIVE_INT)
  log_every: int = field(25, rule=POSITIVE_INT)
  checkpoint_every: int = field(500, rule=POSITIVE_INT)
  max_checkpoints: int = field(2, rule=POSITIVE_INT)
  progress_bar: bool = True
  # A step whose loss or gradient norm is not finite: "stop" ends the run there (nothing
  # non-finite is saved; WORKDIR/FAILED.json says why), "skip" keeps the state from before
  # it and stops after `max_skipped_in_a_row` such steps in a row.
  nonfinite: str = field("stop", allowed=("stop", "skip"))
  max_skipped_in_a_row: int = field(10, rule=POSITIVE_INT)


def default_config(task: str = "lm") -> ml_collections.ConfigDict:
  """Every section's defaults for `task` (bitjax.train.tasks.TASKS), which sets the
  schemas of config.model and config.data."""
  from bitjax.train.tasks import task_class  # the data stack is needed only to train

  task_cls = task_class(task)
  config = ml_collections.ConfigDict()
  config.task = task
  config.model = task_cls.config_class.config_dict()
  config.data = task_cls.default_data()
  config.train = TrainConfig.config_dict()
  config.mesh = MeshConfig.config_dict()
  config.optim = OptimConfig.config_dict()
  return config


def parse_config_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parse a config-file argument like "tiny,precision=b1.58" (big_vision style).

  A bare first item sets the first default's key (the size preset); values are
  converted to the type of their default.
  """
  parsed = ml_collections.ConfigDict(defaults)
  if not arg:
    return parsed
  first_key = next(iter(defaults))
  for i, item in enumerate(arg.split(",")):
    key, sep, value = item.partition("=")
    if not sep:
      if i:
        raise ValueError(f"config argument {item!r} needs the form key=value")
      key, value = first_key, item
    if key not in defaults:
      raise ValueError(f"config argument {key!r} is not one of {list(defaults)}")
    default = defaults[key]
    parsed[key] = value if default is None else type(default)(value)
  return parsed


class ConfigError(ValueError):
  """A config field has a bad value; the message names the field and what is allowed."""


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` with every derived field filled (config.optim's DERIVED_FIELDS:
  the rates and schedule of the model's learning-rate recipe, unless set; a
  config.model.vocab_size of None: the task's tokenizer's, see derived_vocab_size; a
  config.model.norm_eps of None: the precision preset's),
  after checking every section. Call it after the overrides, so the recipe follows the final precision; a
  resolved config resolves to itself. Raises ConfigError naming the field."""
  try:
    return _resolve(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  from bitjax.train.tasks import get_task

  for section in SECTIONS:
    if section not in config:
      raise ValueError(f"config has no section {section!r}; expected {', '.join(SECTIONS)}")
  task = get_task(config)
  task.data_class.from_mapping(config.data)  # before the tokenizer it names is read
  resolved = copy.deepcopy(config)
  if "vocab_size" in config.model and config.model.vocab_size is None:
    resolved.model.vocab_size = derived_vocab_size(task)
  model = task.config_class.from_mapping(resolved.model)
  # The preset's norm eps as a number, as config.json held it before it was derived.
  if resolved.model.get("norm_eps", 0) is None:
    resolved.model.norm_eps = model.norm_eps
  MeshConfig.from_mapping(config.mesh)
  TrainConfig.from_mapping(config.train)
  task.validate(model)
  optim = OptimConfig.from_mapping(config.optim).resolved(model.spec.lr_recipe)
  resolved.optim.update({name: getattr(optim, name) for name in DERIVED_FIELDS})
  return resolved


def derived_vocab_size(task) -> int:
  """The ids the task's tokenizer needs (with the task's extra ids: [MASK], sentinels),
  rounded up to VOCAB_MULTIPLE: 264 for the byte tokenizer's 259."""
  needed = task.vocab_size_needed()
  if needed is None:
    raise ValueError(f"config.model.vocab_size=None follows a tokenizer, and "
                     f"config.task={task.config.task!r} has none; set an integer")
  return -(-needed // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
  """The task's model config of a resolved config."""
  from bitjax.train.tasks import task_class

  return task_class(config.task).config_class.from_mapping(config.model)


def validate_config(config: ml_collections.ConfigDict) -> ModelConfig:
  """Check every section (derived fields included); returns the model config.
  Raises ConfigError naming the field."""
  return model_config(resolve_config(config))


def run_record(config: ml_collections.ConfigDict) -> dict:
  """What a run's config.json holds and a resumed run must match: the resolved config,
  derived values included, less the mesh (a run may resume on another layout) and the
  recipe table (the rates it gave are in config.optim, and another precision's rates
  do not change this run)."""
  record = config.to_dict()
  del record["mesh"]
  del record["optim"]["recipes"]
  return record


def upgrade_record(saved: dict, recipe: str) -> dict:
  """A config.json of an earlier version as this one writes it: the derived fields that
  version left to run time (schedule "auto", stage1_end_lr None) filled from its saved
  rates by the same rules, and its schedule under this version's name
  (`earlier_schedule_names`). `recipe` is the learning-rate recipe of the resuming run (the
  precision fields are compared too). A saved optim section this version cannot read is
  left as it is, so the comparison names what differs."""
  try:
    renamed = earlier_schedule_names(saved["optim"], recipe)
    optim = OptimConfig.from_mapping({**renamed, "recipes": {}}).resolved(recipe)
  except (KeyError, ValueError):
    return saved
  return {**saved, "optim": {name: getattr(optim, name) for name in saved["optim"]}}


def check_workdir(workdir: str) -> str:
  """Refuse a workdir path that exists as a file (or a URL scheme that is not supported);
  create the directory otherwise. A workdir may be a local path or a gs:// URL
  (bitjax.files)."""
  if not workdir:
    raise files.WorkdirError("--workdir is required")
  if files.exists(workdir) and not files.isdir(workdir):
    raise files.WorkdirError(f"--workdir={workdir!r} exists and is not a directory")
  try:
    files.makedirs(workdir)
  except OSError as e:
    raise files.WorkdirError(f"--workdir={workdir!r} cannot be created ({e.strerror or e})")
  if not files.is_remote(workdir) and not os.access(workdir, os.W_OK | os.X_OK):
    raise files.WorkdirError(f"--workdir={workdir!r} is not writable; give a directory "
                             "this user can write to")
  return workdir


def call_python_file(spec: str, function: str):
  """Import `path/to/file.py` from a spec "file.py[:arg]" and return function(arg).

  Config files (get_config) and sweep files (get_sweep) are loaded this way, by
  path, so they need not be importable packages.
  """
  import importlib.util

  path, _, arg = spec.partition(".py:")
  path = path if path.endswith(".py") else path + ".py"
  if not os.path.isfile(path):
    raise ConfigError(f"file {path!r} (from {spec!r}) does not exist")
  name = "bitjax_file_" + "".join(c if c.isalnum() else "_" for c in os.path.abspath(path))
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, function):
    raise ValueError(f"file {path!r} defines no {function}(arg)")
  return getattr(module, function)(arg) if arg else getattr(module, function)()


def load_config(spec: str, overrides: dict | None = None) -> ml_collections.ConfigDict:
  """Load `path/to/file.py[:arg]` via its get_config(arg), then set dotted overrides.

  This is how one config file yields many runs (a precision comparison, a sweep):
  each run is the file, its argument, and a few overridden fields.
  """
  config = call_python_file(spec, "get_config")
  for key, value in (overrides or {}).items():
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
      if part not in node:
        raise ValueError(f"config override {key!r}: config has no field {part!r}")
      node = node[part]
    if leaf not in node:
      raise ValueError(f"config override {key!r}: config has no field {leaf!r}")
    node[leaf] = value
  return config
