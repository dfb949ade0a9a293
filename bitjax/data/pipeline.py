"""grain input pipelines for language modelling, without TensorFlow.

documents -> token ids + EOS -> concatenate-then-split into windows of
seq_len + 1 tokens -> batches of {'inputs', 'targets'} (targets = inputs
shifted by one), as int32 numpy arrays.
"""

from __future__ import annotations

import dataclasses

from absl import logging
import grain
import numpy as np

from bitjax.data import builders
from bitjax.data import config as config_lib
from bitjax.data import tokenizers

# grain's shuffle accepts seeds in [0, 2**32).
_MAX_SEED = 2**32
# make_eval_batches reads up to this many times the windows it keeps.
EVAL_SPREAD = 64


@dataclasses.dataclass(frozen=True)
class _TokenizeDocument:
  """Example dict -> {'tokens': int32[n + 1]}: the text's ids, then EOS."""

  tokenizer: tokenizers.Tokenizer
  text_key: str

  def __call__(self, example) -> dict[str, np.ndarray]:
    ids = self.tokenizer.encode(example[self.text_key])
    eos = np.array([self.tokenizer.eos_id], np.int32)
    return {"tokens": np.concatenate([ids, eos])}


def _check_positive(**sizes) -> None:
  for name, value in sizes.items():
    if not isinstance(value, (int, np.integer)) or value <= 0:
      raise ValueError(f"{name}={value!r} must be a positive integer")


def _documents(data_config, split: str) -> grain.MapDataset:
  """Tokenized documents of `split`, in stored order; ValueError if empty."""
  source = builders.data_source(data_config, split)
  if len(source) == 0:
    raise ValueError(
        f"split {split!r} of config.data.name={data_config.name!r} has no"
        " documents"
    )
  features = sorted(source[0])
  if data_config.text_key not in features:
    raise ValueError(
        f"config.data.text_key={data_config.text_key!r} is not one of the"
        f" features {features} of split {split!r}"
    )
  tokenize = _TokenizeDocument(
      tokenizers.get_tokenizer(data_config), data_config.text_key
  )
  return grain.MapDataset.source(source).map(tokenize)


def _windows(documents: grain.MapDataset, seq_len: int) -> grain.IterDataset:
  """The token stream cut into consecutive windows of seq_len + 1 tokens.

  Elements are {'tokens', 'tokens_segment_ids', 'tokens_positions'}; only a
  finite stream's last window can be short, and it is zero-padded (its last
  segment id is 0).
  """
  return grain.experimental.ConcatThenSplitIterDataset(
      documents.to_iter_dataset(), length_struct={"tokens": seq_len + 1}
  )


def _inputs_targets(windows: np.ndarray) -> dict[str, np.ndarray]:
  """int32[B, L + 1] windows -> {'inputs', 'targets'}, each int32[B, L]."""
  return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}


@dataclasses.dataclass(frozen=True)
class _ProcessRows:
  """Global batch of windows -> this process's rows, as inputs and targets."""

  start: int
  stop: int

  def __call__(self, windows: np.ndarray) -> dict[str, np.ndarray]:
    return _inputs_targets(windows[self.start : self.stop])


def _tuples(state):
  """`state` with every list turned back into a tuple, recursively."""
  if isinstance(state, dict):
    return {k: _tuples(v) for k, v in state.items()}
  if isinstance(state, (list, tuple)):
    return tuple(_tuples(v) for v in state)
  return state


class _JsonStateIterator(grain.DatasetIterator):
  """Passes elements through; restores states that went through JSON.

  ConcatThenSplit keeps slices as tuples and compares them with a tuple
  sentinel, so the lists that `json.loads` returns (grain's checkpoint handler
  saves states as JSON) would resume at the wrong place.
  """

  def __next__(self):
    return next(self._parent)

  def get_state(self):
    return self._parent.get_state()

  def set_state(self, state):
    self._parent.set_state(_tuples(state))


class _JsonStateDataset(grain.IterDataset):
  """See `_JsonStateIterator`."""

  def __iter__(self) -> grain.DatasetIterator:
    return _JsonStateIterator(self._parent.__iter__())


def _window_tokens(packed) -> np.ndarray:
  return packed["tokens"]


def make_train_iterator(
    data_config,
    *,
    seq_len: int,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> grain.DatasetIterator:
  """Endless, checkpointable iterator over training batches of this process.

  Documents of the train split are shuffled from `seed` (a new order each
  epoch), tokenized with EOS appended, packed into windows of seq_len + 1,
  shuffled within blocks of `data_config.shuffle_window` windows and
  grouped into global batches of `global_batch_size` windows. Process i gets
  rows [i * B, (i + 1) * B) with B = global_batch_size // process_count, so
  the global stream, and hence training, is the same for any process count;
  each process tokenizes and packs the whole stream to get there (cheap for
  the byte tokenizer; a subword tokenizer encodes in Rust or C++).

  `get_state()` / `set_state()` on the iterator resume exactly where it was,
  also after the state went through JSON (as grain's checkpoint handler does).
  Each element is {'inputs': int32[B, seq_len], 'targets': int32[B, seq_len]}.
  """
  config_lib.validate_data_config(data_config)
  _check_positive(
      seq_len=seq_len,
      global_batch_size=global_batch_size,
      process_count=process_count,
  )
  if global_batch_size % process_count:
    raise ValueError(
        f"global_batch_size={global_batch_size} is not divisible by"
        f" process_count={process_count}"
    )
  if not 0 <= process_index < process_count:
    raise ValueError(
        f"process_index={process_index} is not in [0, {process_count})"
    )
  if not isinstance(seed, (int, np.integer)) or not 0 <= seed < _MAX_SEED:
    raise ValueError(f"seed={seed!r} must be an integer in [0, 2**32)")
  documents = (
      _documents(data_config, data_config.train_split)
      .shuffle(seed=int(seed))
      .repeat(None)
  )
  rows = global_batch_size // process_count
  select = _ProcessRows(process_index * rows, (process_index + 1) * rows)
  windows = _windows(documents, seq_len).map(_window_tokens)
  if data_config.shuffle_window:
    windows = grain.experimental.WindowShuffleIterDataset(
        windows, window_size=data_config.shuffle_window, seed=int(seed)
    )
  batches = windows.batch(global_batch_size).map(select)
  return iter(_JsonStateDataset(batches))


def make_eval_batches(
    data_config, *, seq_len: int, batch_size: int, num_batches: int
) -> list[dict[str, np.ndarray]]:
  """`num_batches` batches of eval windows spread evenly over the eval split.

  The split is packed in stored order and up to EVAL_SPREAD times the needed
  windows are read; evenly spaced ones among them are kept, so the estimate
  covers many documents, not just the first few. Deterministic. A split too small for `num_batches` gives as
  many full batches as it holds, with a warning; none at all is a ValueError.
  """
  config_lib.validate_data_config(data_config)
  _check_positive(seq_len=seq_len, batch_size=batch_size, num_batches=num_batches)
  split = data_config.eval_split
  wanted = batch_size * num_batches
  windows = []
  for packed in _windows(_documents(data_config, split), seq_len):
    if packed["tokens_segment_ids"][-1] == 0:  # The zero-padded last window.
      break
    windows.append(packed["tokens"])
    if len(windows) == wanted * EVAL_SPREAD:
      break
  if len(windows) > wanted:
    keep = np.linspace(0, len(windows) - 1, wanted).round().astype(int)
    windows = [windows[i] for i in keep]
  available = len(windows) // batch_size
  if available == 0:
    raise ValueError(
        f"config.data.eval_split={split!r} holds {len(windows)} full windows"
        f" of seq_len + 1 = {seq_len + 1} tokens, fewer than"
        f" batch_size={batch_size}"
    )
  if available < num_batches:
    logging.warning(
        "config.data.eval_split=%r holds only %d full batches of %d x %d"
        " tokens; evaluating on those instead of num_batches=%d",
        split, available, batch_size, seq_len + 1, num_batches,
    )
  stacked = np.stack(windows[: available * batch_size])
  return [
      _inputs_targets(batch)
      for batch in stacked.reshape(available, batch_size, seq_len + 1)
  ]
