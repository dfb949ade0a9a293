"""Deterministic stratified splits: every class is divided in the same proportions."""

from __future__ import annotations

import numpy as np


def stratified_split(labels, fractions: dict[str, float], seed: int = 0) -> dict[str, np.ndarray]:
  """Sorted example indices per split; each class is shuffled with `seed` and cut by
  `fractions` (which must sum to 1), cumulative rounding giving every example a split.

  The result depends only on the labels, the fractions and the seed.
  """
  labels = np.asarray(labels)
  values = np.array(list(fractions.values()), np.float64)
  if (values < 0).any() or not np.isclose(values.sum(), 1.0):
    raise ValueError(f"split fractions {fractions} must be >= 0 and sum to 1")
  rng = np.random.default_rng(seed)
  parts = {name: [] for name in fractions}
  for label in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == label))
    bounds = np.round(np.cumsum(np.concatenate([[0.0], values])) * len(members)).astype(int)
    for name, start, stop in zip(fractions, bounds[:-1], bounds[1:]):
      parts[name].append(members[start:stop])
  return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}
