"""Checkpointable batch iterators: the one iterator type a task's train data comes in.

A batch is a dict of numpy arrays of fixed shapes, so one compiled step serves a whole
run. `get_state()` returns JSON-able state that the checkpoint stores and `set_state`
restores exactly; the LM pipeline's grain iterator has the same three methods.
Eval batches are a finite list instead, padded to full batches with rows of weight 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

Batch = dict[str, np.ndarray]


@runtime_checkable
class BatchIterator(Protocol):
  """Endless batches whose position survives a checkpoint."""

  def __iter__(self):
    return self

  def __next__(self) -> Batch: ...

  def get_state(self) -> dict: ...

  def set_state(self, state: dict) -> None: ...


def num_rows(arrays: dict) -> int:
  return next(iter(arrays.values())).shape[0]


def dense_rows(array, rows) -> np.ndarray:
  """Rows of a numpy array or a scipy sparse matrix (bag-of-words), as dense numpy."""
  picked = array[rows]
  return picked.toarray() if hasattr(picked, "toarray") else np.asarray(picked)


class ArrayBatches(BatchIterator):
  """Endless shuffled batches of the rows of in-memory arrays (a new permutation each
  epoch, from `seed`), this process's block of every batch. The state is the batch
  count, so a checkpoint resumes it exactly."""

  def __init__(self, arrays: dict, batch_size: int, seed: int, block: int, num_blocks: int):
    self.arrays, self.batch_size, self.seed = arrays, batch_size, seed
    self.block = slice(block * batch_size // num_blocks, (block + 1) * batch_size // num_blocks)
    self.num_rows = num_rows(arrays)
    if self.num_rows < batch_size:
      raise ValueError(f"config.train.batch_size={batch_size} exceeds the {self.num_rows} "
                       "training examples")
    self.count = 0

  def __next__(self) -> Batch:
    epoch, index = divmod(self.count, self.num_rows // self.batch_size)
    order = np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
    rows = order[index * self.batch_size:(index + 1) * self.batch_size][self.block]
    self.count += 1
    batch = {key: dense_rows(value, rows) for key, value in self.arrays.items()}
    return {**batch, "weights": np.ones(len(rows), np.float32)}

  def get_state(self) -> dict:
    return {"batches": self.count}

  def set_state(self, state: dict) -> None:
    self.count = int(state["batches"])


class Repeat(BatchIterator):
  """The same batch forever: a GNN trains on its one graph."""

  def __init__(self, batch: Batch):
    self.batch = batch

  def __next__(self) -> Batch:
    return self.batch

  def get_state(self) -> dict:
    return {}

  def set_state(self, state: dict) -> None:
    pass


class MappedBatches(BatchIterator):
  """Another BatchIterator's batches through `fn(batch, rng)`; the rng is seeded by
  (seed, batch count), so a resumed run sees the same corruption."""

  def __init__(self, inner: BatchIterator, fn: Callable[[Batch, np.random.Generator], Batch],
               seed: int):
    self.inner, self.fn, self.seed, self.count = inner, fn, seed, 0

  def __next__(self) -> Batch:
    batch = self.fn(next(self.inner), np.random.default_rng([self.seed, self.count]))
    self.count += 1
    return batch

  def get_state(self) -> dict:
    return {"inner": self.inner.get_state(), "batches": self.count}

  def set_state(self, state: dict) -> None:
    self.inner.set_state(state["inner"])
    self.count = int(state["batches"])


def padded_batches(arrays: dict, batch_size: int, max_batches: int) -> list[Batch]:
  """The rows in order in batches of `batch_size` (at most `max_batches`); the last is
  padded with copies of row 0 of weight 0, so every batch has the same shape."""
  total = num_rows(arrays)
  batches = []
  for start in range(0, min(total, batch_size * max_batches), batch_size):
    rows = np.arange(start, start + batch_size)
    real = rows < total
    batch = {key: dense_rows(value, np.where(real, rows, 0)) for key, value in arrays.items()}
    batches.append({**batch, "weights": real.astype(np.float32)})
  return batches
