"""The packed ternary weight format, defined here and nowhere else (DESIGN.md section 4).

Format `bitjax-ternary-v1` for a (K, N) weight with ternary values t in {-1, 0, 1}:

* codes c = t + 1 in {0, 1, 2}, two bits each, sixteen to an int32 word;
* K is padded with zero weights (code 1) to a multiple of `K_BLOCK` = 256, and each
  block of 256 rows becomes 16 rows of words;
* word row `b * 16 + j`, column n, bits `2i .. 2i+1` hold the code of weight row
  `k = b * 256 + i * 16 + j`.

So one shift and one mask of a (16, N) slab of words yields 16 consecutive weight rows
(`i * 16 .. i * 16 + 15` of the block): kernels unpack without gathers. Read byte-wise,
`(word >> 2s) & 0x03030303` puts the codes of rows `s*16 + j + 64*byte` into the four
bytes of a word, which is what a 4-way int8 dot product (dp4a) consumes.

A second, storage-only layout packs five codes per byte in base 3 (1.6 bits per
weight) for exported files; kernels never read it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

FORMAT_VERSION = 1
FORMAT_NAME = f"bitjax-ternary-v{FORMAT_VERSION}"
K_BLOCK = 256
CODES_PER_WORD = 16
ROWS_PER_BLOCK = K_BLOCK // CODES_PER_WORD
BASE3_PER_BYTE = 5
# int8 activations (|x| <= 128) times ternary weights summed in float32 stay exact
# integers while 128 * K <= 2**24.
EXACT_FLOAT_SUM_MAX_K = 2**24 // 128


def padded_k(k: int) -> int:
  """K rounded up to a whole number of format blocks."""
  return -(-k // K_BLOCK) * K_BLOCK


def _check_codes_2d(codes) -> None:
  if codes.ndim != 2:
    raise ValueError(f"codes must be 2-D (K, N); got shape {codes.shape}")


def pack_ternary(codes: jax.Array) -> jax.Array:
  """(K, N) codes in {0, 1, 2} -> (padded_k(K) / 16, N) int32 words (layout above).

  Concrete inputs are checked (ternary values -1/0/1 passed by mistake would corrupt
  neighbouring codes); traced ones cannot be.
  """
  _check_codes_2d(codes)
  if not isinstance(codes, jax.core.Tracer) and codes.size:
    low, high = int(jnp.min(codes)), int(jnp.max(codes))
    if low < 0 or high > 2:
      raise ValueError(f"codes must lie in {{0, 1, 2}} (ternary_to_codes(w) = w + 1); "
                       f"got values in [{low}, {high}]")
  k, n = codes.shape
  pad = padded_k(k) - k
  codes = jnp.pad(codes.astype(jnp.uint32), ((0, pad), (0, 0)), constant_values=1)
  # (blocks, i, j, N): row b*256 + i*16 + j; shift code i into bits 2i of word (b, j).
  codes = codes.reshape(-1, CODES_PER_WORD, ROWS_PER_BLOCK, n)
  shifts = (2 * jnp.arange(CODES_PER_WORD, dtype=jnp.uint32))[None, :, None, None]
  words = jnp.sum(codes << shifts, axis=1, dtype=jnp.uint32)  # disjoint bits: sum == or
  return jax.lax.bitcast_convert_type(words, jnp.int32).reshape(-1, n)


def unpack_ternary(packed: jax.Array, k: int) -> jax.Array:
  """Inverse of `pack_ternary`: (K_pad / 16, N) int32 words -> (k, N) int8 codes."""
  _check_codes_2d(packed)
  rows, n = packed.shape
  if rows % ROWS_PER_BLOCK or not 0 < k <= rows * CODES_PER_WORD:
    raise ValueError(
        f"packed has {rows} word rows; expected a multiple of {ROWS_PER_BLOCK} holding "
        f"k={k} rows (at most {rows * CODES_PER_WORD})")
  words = packed.reshape(-1, 1, ROWS_PER_BLOCK, n)
  shifts = (2 * jnp.arange(CODES_PER_WORD, dtype=jnp.int32))[None, :, None, None]
  codes = (words >> shifts) & 3
  return codes.reshape(-1, n)[:k].astype(jnp.int8)


def ternary_to_codes(ternary: jax.Array) -> jax.Array:
  """Ternary values {-1, 0, 1} -> codes {0, 1, 2}."""
  return (ternary.astype(jnp.int8) + 1).astype(jnp.int8)


def ternary_slot(words: jax.Array, slot: int) -> jax.Array:
  """The ternary values (-1, 0, 1; int32) held in bits 2*slot of every word."""
  return ((words >> (2 * slot)) & 3) - 1


def pack_base3(codes: np.ndarray) -> np.ndarray:
  """Codes in {0, 1, 2} (any shape) -> uint8, five codes per byte in base 3 (storage only)."""
  flat = np.asarray(codes, np.uint8).reshape(-1)
  if flat.size and flat.max() > 2:
    raise ValueError("codes must lie in {0, 1, 2}")
  flat = np.pad(flat, (0, -flat.size % BASE3_PER_BYTE), constant_values=1)
  digits = flat.reshape(-1, BASE3_PER_BYTE).astype(np.uint16)
  powers = 3 ** np.arange(BASE3_PER_BYTE, dtype=np.uint16)
  return (digits * powers).sum(axis=1).astype(np.uint8)


def unpack_base3(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """Inverse of `pack_base3` for codes of the given shape."""
  size = int(np.prod(shape))
  packed = np.asarray(packed, np.uint8)
  if packed.size != -(-size // BASE3_PER_BYTE) or (packed.size and packed.max() > 242):
    raise ValueError(f"{packed.size} base-3 bytes cannot hold codes of shape {shape}")
  powers = 3 ** np.arange(BASE3_PER_BYTE, dtype=np.uint16)
  digits = (packed[:, None].astype(np.uint16) // powers) % 3
  return digits.reshape(-1)[:size].reshape(shape).astype(np.int8)


def block_layout() -> np.ndarray:
  """Where pack_ternary puts each weight row of a block, read back from packed words:
  a (ROWS_PER_BLOCK, CODES_PER_WORD) array whose [j, i] is the weight row held in bits
  2i, 2i+1 of word row j. Found by packing a (256, 256) matrix whose column n is +1 at
  row n only and locating every +1 code (2), so it shows the packer, not this docstring."""
  one_hot = jnp.eye(K_BLOCK, dtype=jnp.int8)
  words = np.asarray(pack_ternary(ternary_to_codes(one_hot)))  # (16, 256)
  layout = np.full((ROWS_PER_BLOCK, CODES_PER_WORD), -1, np.int64)
  for slot in range(CODES_PER_WORD):
    word_rows, columns = np.nonzero(np.asarray(ternary_slot(jnp.asarray(words), slot)) == 1)
    layout[word_rows, slot] = columns
  return layout
