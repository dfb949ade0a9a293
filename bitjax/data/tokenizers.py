"""Tokenizers: map text to int32 token ids and back.

Only numpy is imported here, so inference code can decode without TFDS or grain.
"""

from __future__ import annotations

import dataclasses

import numpy as np

TOKENIZERS = ("byte",)


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
  """UTF-8 bytes as tokens: pad=0, bos=1, eos=2, byte b -> b + 3.

  Needs no training and no files, and every string round-trips exactly, so it
  is the offline default. `bytes_per_token` lets the trainer report bits per
  byte for any tokenizer with the same formula.
  """

  pad_id: int = 0
  bos_id: int = 1
  eos_id: int = 2
  offset: int = 3

  @property
  def vocab_size(self) -> int:
    return self.offset + 256

  @property
  def bytes_per_token(self) -> np.ndarray:
    """float32[vocab_size]: 0 for the special ids, 1 for every byte id."""
    counts = np.ones((self.vocab_size,), np.float32)
    counts[: self.offset] = 0.0
    return counts

  def encode(self, text: str | bytes) -> np.ndarray:
    """Token ids of `text` (no BOS/EOS added), int32[len(utf8 bytes)]."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return np.frombuffer(data, np.uint8).astype(np.int32) + self.offset

  def decode(self, ids) -> str:
    """Text of `ids`.

    Special ids, and ids past the vocabulary (a model may pad its vocabulary
    for sharding), are skipped; invalid UTF-8 is replaced with U+FFFD.
    """
    ids = np.asarray(ids, np.int64).reshape(-1)
    data = ids[(ids >= self.offset) & (ids < self.vocab_size)] - self.offset
    return data.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


def get_tokenizer(data_config) -> ByteTokenizer:
  """The tokenizer named by `data_config.tokenizer`."""
  name = data_config.tokenizer
  if name == "byte":
    return ByteTokenizer()
  raise ValueError(
      f"config.data.tokenizer={name!r} is not one of {list(TOKENIZERS)}"
  )
