"""Activation reorderings that line activations up with packed weight words.

Weights stay in the one packed format (`bitjax.kernels.format`); each kernel
instead permutes the (small) activation matrix once so that the rows a decoded
slab of words produces meet the activations they multiply. Every function takes
x of shape (M, K_pad), K_pad a multiple of `K_BLOCK`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from bitjax.kernels.format import CODES_PER_WORD, K_BLOCK, ROWS_PER_BLOCK


def by_code_slot(x: jax.Array) -> jax.Array:
  """(M, K_pad) -> (M, 16, K_pad / 16): entry [m, i, b*16 + j] is x[m, b*256 + i*16 + j].

  Row i of the result is what the codes in bits 2i of every word multiply.
  """
  m, k = x.shape
  x = x.reshape(m, k // K_BLOCK, CODES_PER_WORD, ROWS_PER_BLOCK)
  return x.transpose(0, 2, 1, 3).reshape(m, CODES_PER_WORD, -1)


def by_tile(x: jax.Array, tile_rows: int) -> jax.Array:
  """(M, K_pad) -> (M, K_pad) ordered as the decoded slabs of `tile_rows`-word tiles.

  A kernel that decodes a tile of `tile_rows` word rows into 16 slabs (one per
  code slot) and stacks them sees weight rows in the order (slot, block, j);
  this puts x in the same order, tile by tile.
  """
  m, k = x.shape
  blocks_per_tile = tile_rows // ROWS_PER_BLOCK
  x = x.reshape(m, -1, blocks_per_tile, CODES_PER_WORD, ROWS_PER_BLOCK)
  return x.transpose(0, 1, 3, 2, 4).reshape(m, k)


def int8_quads(x: jax.Array) -> jax.Array:
  """(M, K_pad) int8 -> (M, 4, K_pad / 16) int32 words for 4-way int8 dot products.

  Byte `q` of word [m, s, r] is the activation that meets the code in bits
  `8q + 2s` of weight word row r, so `dp4a((w >> 2s) & 0x03030303, word)`
  multiplies four codes of a word at once.
  """
  slots = by_code_slot(x)  # slot i = 4q + s
  m, _, rows = slots.shape
  quads = slots.reshape(m, 4, 4, rows).transpose(0, 2, 3, 1)  # (m, s, r, q)
  return jax.lax.bitcast_convert_type(quads.astype(jnp.int8), jnp.int32)
