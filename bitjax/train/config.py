"""The one config schema: defaults for every section and up-front validation.

Config files (configs/*.py) start from `default_config()` and change fields;
`validate_config` checks the whole thing before any work starts, so a typo or
an impossible shape fails in the first second with the field named.
"""

from __future__ import annotations

import dataclasses
import os
import typing

import ml_collections

from bitjax.data.config import optional
from bitjax.models import ModelConfig
from bitjax.parallel import MESH_FIELDS, check_mesh_fields
from bitjax.train import files
from bitjax.train.optim import resolve_schedule

SECTIONS = ("task", "model", "data", "train", "mesh", "optim")
TRAIN_POSITIVE_INTS = ("seq_len", "batch_size", "steps", "eval_every", "eval_batches",
                       "log_every", "checkpoint_every", "max_checkpoints")


def _model_section(config_class) -> ml_collections.ConfigDict:
  """A model config class's fields and defaults; None defaults keep their declared type."""
  hints = typing.get_type_hints(config_class)
  section = {}
  for field in dataclasses.fields(config_class):
    value = field.default
    if value is None:
      value = optional(next(t for t in typing.get_args(hints[field.name]) if t is not type(None)))
    section[field.name] = value
  return ml_collections.ConfigDict(section)


def default_config(task: str = "lm") -> ml_collections.ConfigDict:
  """Every section's defaults for `task` (bitjax.train.tasks.TASKS), which sets the
  schemas of config.model and config.data."""
  from bitjax.train.tasks import task_class  # the data stack is needed only to train

  task_cls = task_class(task)
  config = ml_collections.ConfigDict()
  config.task = task
  config.model = _model_section(task_cls.config_class)
  config.data = task_cls.default_data()
  config.train = ml_collections.ConfigDict(dict(
      seq_len=256, batch_size=16, steps=1000, seed=0,
      eval_every=250, eval_batches=8, log_every=25,
      checkpoint_every=500, max_checkpoints=2, progress_bar=True,
  ))
  # Mesh axis sizes within a slice (data, fsdp, tensor) and across slices (dcn_*);
  # one per group may be -1 to take the remaining devices (bitjax.parallel.make_mesh).
  config.mesh = ml_collections.ConfigDict(dict(
      data=-1, fsdp=1, tensor=1, dcn_data=1, dcn_fsdp=1, dcn_tensor=1))
  config.optim = ml_collections.ConfigDict(dict(
      schedule="auto", lr=1e-3, stage2_lr=6e-4,
      stage1_end_lr=optional(float),
      warmup_steps=375, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0,
  ))
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


def validate_config(config: ml_collections.ConfigDict) -> ModelConfig:
  """Check every section; returns the model config (the task's config class).
  Raises ConfigError naming the field."""
  try:
    return _validate(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def _validate(config: ml_collections.ConfigDict) -> ModelConfig:
  from bitjax.train.tasks import get_task

  for section in SECTIONS:
    if section not in config:
      raise ValueError(f"config has no section {section!r}; expected {', '.join(SECTIONS)}")
  task = get_task(config)
  model = task.config_class.from_mapping(config.model)
  unknown = sorted(set(config.mesh) - set(MESH_FIELDS))
  if unknown:
    raise ValueError(f"config.mesh has unknown fields {unknown}; known: {list(MESH_FIELDS)}")
  check_mesh_fields(config.mesh)
  for name in TRAIN_POSITIVE_INTS:
    value = config.train[name]
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f"config.train.{name}={value!r} must be a positive integer")
  task.validate(model)
  resolve_schedule(config.optim.schedule, model.spec.quantized)
  for name in ("lr", "stage2_lr", "weight_decay", "grad_clip", "eps"):
    if config.optim[name] < 0:
      raise ValueError(f"config.optim.{name}={config.optim[name]!r} must be >= 0")
  if not 0 <= config.optim.warmup_steps:
    raise ValueError(f"config.optim.warmup_steps={config.optim.warmup_steps!r} must be >= 0")
  return model


def check_workdir(workdir: str) -> str:
  """Refuse a workdir path that exists as a file (or a URL scheme that is not supported);
  create the directory otherwise. A workdir may be a local path or a gs:// URL
  (bitjax.train.files)."""
  if not workdir:
    raise ValueError("--workdir is required")
  if files.exists(workdir) and not files.isdir(workdir):
    raise ValueError(f"--workdir={workdir!r} exists and is not a directory")
  files.makedirs(workdir)
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
    raise ValueError(f"file {path!r} (from {spec!r}) does not exist")
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
