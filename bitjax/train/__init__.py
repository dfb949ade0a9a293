"""Training: train_and_evaluate, optimizer and schedules, metrics, checkpoints.

Names load on first access, so `bitjax.train.step`, `.optim`, `.metrics` and `.tasks`
import without the data stack (ml_collections, grain, TFDS), as benchmarks need.
"""

import importlib

_EXPORTS = {"TrainState": "step", "train_and_evaluate": "trainer"}


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'bitjax.train' has no attribute {name!r}")
  return getattr(importlib.import_module(f"bitjax.train.{_EXPORTS[name]}"), name)


__all__ = sorted(_EXPORTS)
