"""Pallas TPU (Mosaic) kernel: activations times packed ternary weights.

Grid (M blocks, N blocks, K tiles); each step decodes a (tile_rows, bn) slab of
words into 16 code slots with a shift and a mask, stacks them along sublanes into a
(16 * tile_rows, bn) ternary tile and feeds the MXU, accumulating in a VMEM scratch
(int32 for int8 activations, float32 for bf16). Activations arrive reordered by
`layout.by_tile` so the stacked rows line up. TPU v4 has no int8 MXU path: there
int8 activations go through bf16, which is still exact (|x| <= 128, so sums stay
within 2**24 for K <= EXACT_FLOAT_SUM_MAX_K = 131072).

The same kernel runs on CPU with `interpret=True`; CI tests its numerics that way.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from bitjax.kernels.format import CODES_PER_WORD, EXACT_FLOAT_SUM_MAX_K, ternary_slot
from bitjax.kernels.layout import by_tile

LANES = 128
TILE_ROW_CHOICES = (128, 64, 32, 16)  # word rows per K step (2048 .. 256 weight rows)
BN_CHOICES = (512, 256, 128)
MAX_BM = 256


def _decode_tile(words: jax.Array, dtype) -> jax.Array:
  """(R, bn) int32 words -> (16 R, bn) ternary values in `dtype`, slot-major."""
  slots = [ternary_slot(words, i) for i in range(CODES_PER_WORD)]
  stacked = jnp.concatenate(slots, axis=0)
  if dtype == jnp.int8:
    return stacked.astype(jnp.int8)
  return stacked.astype(jnp.float32).astype(dtype)


def _kernel(x_ref, w_ref, o_ref, acc_ref, *, weight_dtype, acc_dtype):
  @pl.when(pl.program_id(2) == 0)
  def _():
    acc_ref[...] = jnp.zeros_like(acc_ref)

  w = _decode_tile(w_ref[...], weight_dtype)
  acc_ref[...] += jnp.dot(x_ref[...].astype(weight_dtype), w, preferred_element_type=acc_dtype)

  @pl.when(pl.program_id(2) == pl.num_programs(2) - 1)
  def _():
    o_ref[...] = acc_ref[...]


def _largest_dividing(total: int, choices: tuple[int, ...]) -> int:
  return next(c for c in choices if total % c == 0)


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


@functools.partial(jax.jit, static_argnames=("int8_mxu", "interpret"))
def matmul(x: jax.Array, packed: jax.Array, *, int8_mxu: bool = True,
           interpret: bool = False) -> jax.Array:
  """(M, K_pad) int8 or bf16 @ packed (K_pad / 16, N) -> (M, N) int32 or float32 sums.

  int8 inputs give exact int32 sums; bf16 inputs float32 sums. M and N are padded
  to the kernel's blocks here and the padding is sliced off.
  """
  m, k = x.shape
  rows, n = packed.shape
  integer = x.dtype == jnp.int8
  weight_dtype = jnp.int8 if integer and int8_mxu else jnp.bfloat16
  if integer and not int8_mxu and k > EXACT_FLOAT_SUM_MAX_K:
    raise ValueError(f"K={k}: int8 sums through the bf16 MXU are exact only up to "
                     f"K={EXACT_FLOAT_SUM_MAX_K}; use backend='xla'")
  acc_dtype = jnp.int32 if weight_dtype == jnp.int8 else jnp.float32
  sublanes = 32 if x.dtype == jnp.int8 else 16  # packed-dtype sublane tiling
  bm = min(_round_up(m, sublanes), MAX_BM)
  n_pad = _round_up(n, LANES)
  bn = _largest_dividing(n_pad, BN_CHOICES)
  tile_rows = _largest_dividing(rows, TILE_ROW_CHOICES)
  m_pad = _round_up(m, bm)
  x = jnp.pad(by_tile(x, tile_rows), ((0, m_pad - m), (0, 0)))
  packed = jnp.pad(packed, ((0, 0), (0, n_pad - n)))
  tile_k = tile_rows * CODES_PER_WORD
  out = pl.pallas_call(
      functools.partial(_kernel, weight_dtype=weight_dtype, acc_dtype=acc_dtype),
      out_shape=jax.ShapeDtypeStruct((m_pad, n_pad), acc_dtype),
      grid=(m_pad // bm, n_pad // bn, k // tile_k),
      in_specs=[pl.BlockSpec((bm, tile_k), lambda i, j, t: (i, t)),
                pl.BlockSpec((tile_rows, bn), lambda i, j, t: (t, j))],
      out_specs=pl.BlockSpec((bm, bn), lambda i, j, t: (i, j)),
      scratch_shapes=[pltpu.VMEM((bm, bn), acc_dtype)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")),
      interpret=interpret,
  )(x, packed)
  return out[:m, :n].astype(jnp.int32) if integer else out[:m, :n]
