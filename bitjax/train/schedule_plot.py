"""A config's learning rate and weight decay over training, as numbers and as a figure.

The numbers come from the optimizer's own schedule functions (bitjax.train.optim) on the
resolved config, so the figure shows what a run would use, not a re-derivation. The
figure in docs/ (docs/design.md section 7) is made by

  python -m bitjax.train.schedule_plot --out docs/schedule_paper_presets.png
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from matplotlib.figure import Figure

from bitjax.train.config import load_config, resolve_config
from bitjax.train.optim import OptimConfig, learning_rate_schedule, weight_decay_schedule

LM_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "lm.py")
# What the docs figure shows: label -> (config-file argument, overrides).
DOCS_CURVES = {
    "700M b1.58 (two_stage)": ("700m,precision=b1.58", {}),
    "1.3B-3.9B b1.58 (two_stage)": ("1.3b,precision=b1.58", {}),
    "700M b1.58, earlier reading (two_stage_restart)":
        ("700m,precision=b1.58", {"optim.schedule": "two_stage_restart"}),
    "700M LLaMA (bf16, linear)": ("700m,precision=bf16", {}),
}


def schedule_values(config, steps=None) -> dict[str, np.ndarray]:
  """The learning rate and weight decay `config` trains with, at `steps` (default: every
  step of the run): {"step", "learning_rate", "weight_decay"}, float64 arrays but step."""
  resolved = resolve_config(config)
  optim = OptimConfig.from_mapping(resolved.optim)
  total = resolved.train.steps
  step = np.arange(total) if steps is None else np.asarray(steps)
  at_steps = lambda schedule: np.broadcast_to(np.asarray(schedule(step), np.float64), step.shape)
  return {
      "step": step,
      "learning_rate": at_steps(learning_rate_schedule(optim, total)),
      "weight_decay": at_steps(weight_decay_schedule(optim, total)),  # constant: a scalar
  }


def plot_schedules(curves: dict[str, object], path: str) -> str:
  """Plot each labelled config's learning rate and weight decay over the fraction of its
  run to `path` (PNG or SVG, by the extension); returns `path`."""
  fig = Figure(figsize=(9, 6.5), layout="constrained")
  lr_axis, wd_axis = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
  for i, (label, config) in enumerate(curves.items()):
    values = schedule_values(config)
    fraction = values["step"] / len(values["step"])
    style = "--" if "restart" in label else "-"
    lr_axis.plot(fraction, values["learning_rate"], style, color=f"C{i}", label=label)
    wd_axis.plot(fraction, values["weight_decay"], style, color=f"C{i}")
  lr_axis.set_ylabel("learning rate")
  lr_axis.legend(fontsize=8)
  lr_axis.grid(alpha=0.3)
  wd_axis.set_ylabel("weight decay")
  wd_axis.set_xlabel("fraction of training (steps / total steps)")
  wd_axis.grid(alpha=0.3)
  fig.suptitle("Paper presets' schedules (configs/lm.py; docs/design.md section 7)")
  fig.savefig(path, dpi=110)
  return path


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="PNG or SVG to write")
  args = parser.parse_args(argv)
  curves = {label: load_config(f"{LM_CONFIG}:{arg}", overrides)
            for label, (arg, overrides) in DOCS_CURVES.items()}
  print(plot_schedules(curves, args.out))


if __name__ == "__main__":
  main()
