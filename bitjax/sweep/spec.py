"""Sweep definitions: runs as (config file argument, overrides, name), big_vision style.

A sweep file `configs/sweeps/NAME.py` defines `get_sweep(arg)` returning a list
of `Run`s, usually built with `product` / `zipped` and `make_runs`.
"""

from __future__ import annotations

import dataclasses
import itertools
import re


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run: `config` is "file.py:arg", `overrides` dotted fields, `name` its
  sub-workdir; `labels` (size, precision, seed, ...) and `group` go into its result row."""

  name: str
  config: str
  overrides: dict
  labels: dict

  @property
  def group(self) -> str:
    return run_group(self.labels, self.overrides)


# Labels the result rows carry as fields of their own (precision, seed, steps and so tokens);
# the others say what was trained, the group an analysis compares precisions within.
NOT_GROUP_LABELS = ("precision", "seed", "steps")


def product(**axes) -> list[dict]:
  """Every combination of the axes' values (the first axis varies slowest)."""
  keys = list(axes)
  return [dict(zip(keys, values)) for values in itertools.product(*axes.values())]


def zipped(**axes) -> list[dict]:
  """The axes' values taken together, position by position (all of equal length)."""
  lengths = {key: len(values) for key, values in axes.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(f"zipped axes need equal lengths, got {lengths}")
  keys = list(axes)
  return [dict(zip(keys, values)) for values in zip(*axes.values())]


def _slug(value) -> str:
  return re.sub(r"[^A-Za-z0-9.=_]+", "_", str(value))


def _join(args: dict, override_labels: dict) -> str:
  """Run names and groups: the config-file argument values, then `leaf=value` per override."""
  return "-".join([*(_slug(v) for v in args.values()),
                   *(f"{k}={_slug(v)}" for k, v in override_labels.items())])


def run_group(labels: dict, overrides: dict) -> str:
  """A run's group: its labels other than NOT_GROUP_LABELS, joined as its name joins them
  (so `nano-bf16-seed=0` is in group `nano`). `overrides` tell which labels came from
  dotted overrides; rows of older versions get their group from their labels this way."""
  leaves = {key.rsplit(".", 1)[-1] for key in overrides}
  kept = {k: v for k, v in labels.items() if k not in NOT_GROUP_LABELS}
  return _join({k: v for k, v in kept.items() if k not in leaves},
               {k: v for k, v in kept.items() if k in leaves})


def make_runs(config_file: str, items: list[dict], shared: dict | None = None) -> list[Run]:
  """Runs from dicts mixing config-file arguments (plain keys, e.g. size, precision)
  and dotted overrides (e.g. "train.seed"). The name joins the plain values, then
  `leaf=value` for each override, so it is stable and readable. `shared` overrides
  apply to every run and stay out of the names."""
  runs = []
  for item in items:
    args = {k: v for k, v in item.items() if "." not in k}
    overrides = {k: v for k, v in item.items() if "." in k}
    arg = ",".join(f"{k}={v}" for k, v in args.items())
    override_labels = {k.rsplit(".", 1)[-1]: v for k, v in overrides.items()}
    name = _join(args, override_labels)
    labels = {**args, **override_labels}
    runs.append(Run(name, f"{config_file}:{arg}" if arg else config_file,
                    {**(shared or {}), **overrides}, labels))
  return runs


def check_unique(runs: list[Run]) -> None:
  """Two runs may never share a sub-workdir."""
  names = [run.name for run in runs]
  duplicates = sorted({name for name in names if names.count(name) > 1})
  if duplicates:
    raise ValueError(f"sweep defines several runs with the same workdir name: {duplicates}")


def load_sweep(spec: str) -> list[Run]:
  """Runs of `path/to/sweep.py[:arg]` via its get_sweep(arg)."""
  from bitjax.train.config import call_python_file

  runs = call_python_file(spec, "get_sweep")
  if not runs:
    raise ValueError(f"sweep {spec!r} has no runs")
  check_unique(runs)
  return runs
