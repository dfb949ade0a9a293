"""Dense-feature classification: scikit-learn's bundled datasets (no download).

`Classification` is also what the text-classification pipeline returns, so an
MLP task reads features and labels the same way from either.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from bitjax.data.splits import stratified_split
from bitjax.schema import check_one_of

TABULAR_DATASETS = ("digits", "breast_cancer", "wine")
SPLIT_FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}


@dataclasses.dataclass(frozen=True)
class Classification:
  """Per split {'features': [n, d] (numpy, or scipy CSR for bag-of-words), 'labels': int32[n]}."""

  name: str
  splits: dict[str, dict]
  class_names: tuple[str, ...]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def input_dim(self) -> int:
    return self.splits["train"]["features"].shape[1]


def standardized(splits: dict[str, dict]) -> dict[str, dict]:
  """Features shifted and scaled by the train split's mean and std (constant columns: 1)."""
  train = splits["train"]["features"]
  mean, std = train.mean(0), train.std(0)
  std = np.where(std == 0, 1.0, std)
  return {name: {**split, "features": ((split["features"] - mean) / std).astype(np.float32)}
          for name, split in splits.items()}


def load_tabular(name: str, seed: int = 0) -> Classification:
  """digits, breast_cancer or wine: stratified train/validation/test (70/10/20) from
  `seed`, features standardised with the train split's statistics."""
  check_one_of("config.data.name", name, TABULAR_DATASETS)
  from sklearn import datasets  # Deferred: only these loaders need scikit-learn.

  bunch = getattr(datasets, f"load_{name}")()
  features = np.asarray(bunch.data, np.float32)
  labels = np.asarray(bunch.target, np.int32)
  parts = stratified_split(labels, SPLIT_FRACTIONS, seed)
  splits = {split: {"features": features[idx], "labels": labels[idx]}
            for split, idx in parts.items()}
  class_names = tuple(str(c) for c in getattr(bunch, "target_names", np.unique(labels)))
  return Classification(name, standardized(splits), class_names)
