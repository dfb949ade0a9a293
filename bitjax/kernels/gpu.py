"""Pallas GPU (Triton) kernels: activations times packed ternary weights.

Two kernels, picked by batch size:

* `gemv` (few rows): a grid over N blocks x K splits; each program streams
  (tile_rows, bn) slabs of words with wide loads and keeps a (tile_rows, bn)
  accumulator, so the inner loop is elementwise and the reduction happens once.
  int8 activations use 4-way int8 dot products (PTX `dp4a`): one shift and one
  mask decode four codes per instruction (`layout.int8_quads`), and the kernel
  returns sum(code * x), from which the caller subtracts sum(x). bf16 activations
  decode a code to float by OR-ing it into the mantissa of 2**23 (no int->float
  conversion instruction) and multiply-add in float32.
* `tiled` (many rows): M x N output tiles; each K step decodes a slab into 16
  slots and feeds them to tensor-core dots (int8 -> int32 or bf16 -> float32),
  activations reordered by `layout.by_tile`.

Split-K partial sums come back stacked and are added by the caller. With
`interpret=True` both kernels run on CPU (the dp4a then runs as plain jnp), which
is how CI checks their numerics.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from bitjax.kernels.format import CODES_PER_WORD, EXACT_FLOAT_SUM_MAX_K, ternary_slot
from bitjax.kernels.layout import by_code_slot, by_tile, int8_quads

INT8_MMA_MIN_K = 32
FLOAT_MAGIC = 0x4B000000  # bits of 2.0**23: OR-ing a small integer c in gives 2**23 + c


@dataclasses.dataclass(frozen=True)
class GemvConfig:
  bn: int = 128
  tile_rows: int = 32
  splits: int = 1
  num_warps: int = 4
  num_stages: int = 3


@dataclasses.dataclass(frozen=True)
class TiledConfig:
  bm: int = 64
  bn: int = 128
  tile_rows: int = 16
  num_warps: int = 4
  num_stages: int = 3


def _dp4a_unsigned_signed(codes: jax.Array, quads: jax.Array, acc: jax.Array,
                          interpret: bool) -> jax.Array:
  """acc + sum over the 4 bytes of (unsigned byte of codes) * (signed byte of quads)."""
  if not interpret:
    return plgpu.elementwise_inline_asm(
        "dp4a.u32.s32 $0, $1, $2, $3;", args=[codes, quads, acc], constraints="=r,r,r,r",
        pack=1, result_shape_dtypes=[jax.ShapeDtypeStruct(acc.shape, jnp.int32)])[0]
  for byte in range(4):
    code = (codes >> (8 * byte)) & 0xFF
    x = ((quads << (24 - 8 * byte)) >> 24)  # arithmetic shift sign-extends the byte
    acc = acc + code * x
  return acc


def _gemv_int8_kernel(q_ref, w_ref, o_ref, *, m, tile_rows, n_tiles, interpret):
  def step(t, accs):
    rows = pl.ds(t * tile_rows, tile_rows)
    words = w_ref[rows, :]
    accs = list(accs)
    for s in range(4):
      codes = (words >> (2 * s)) & 0x03030303
      for r in range(m):
        quads = jnp.broadcast_to(q_ref[r, s, rows][:, None], words.shape)
        accs[r] = _dp4a_unsigned_signed(codes, quads, accs[r], interpret)
    return tuple(accs)

  zeros = jnp.zeros((tile_rows, w_ref.shape[1]), jnp.int32)
  accs = jax.lax.fori_loop(0, n_tiles, step, (zeros,) * m)
  for r in range(m):
    o_ref[0, r, :] = jnp.sum(accs[r], axis=0)


def _gemv_float_kernel(x_ref, w_ref, o_ref, *, m, tile_rows, n_tiles):
  def step(t, accs):
    rows = pl.ds(t * tile_rows, tile_rows)
    words = w_ref[rows, :]
    accs = list(accs)
    for i in range(CODES_PER_WORD):
      bits = ((words >> (2 * i)) & 3) | FLOAT_MAGIC
      weight = jax.lax.bitcast_convert_type(bits, jnp.float32) - (2.0**23 + 1.0)
      for r in range(m):
        accs[r] = accs[r] + weight * x_ref[r, i, rows][:, None]
    return tuple(accs)

  zeros = jnp.zeros((tile_rows, w_ref.shape[1]), jnp.float32)
  accs = jax.lax.fori_loop(0, n_tiles, step, (zeros,) * m)
  for r in range(m):
    o_ref[0, r, :] = jnp.sum(accs[r], axis=0)


def _check_divisible(name: str, total: int, block: int) -> None:
  if total % block:
    raise ValueError(f"{name}={total} is not a multiple of the kernel block {block}")


@functools.partial(jax.jit, static_argnames=("config", "interpret"))
def gemv(x: jax.Array, packed: jax.Array, *, config: GemvConfig = GemvConfig(),
         interpret: bool = False) -> jax.Array:
  """(M, K_pad) int8 or bf16 with small M @ packed -> (splits, M, N) partial sums.

  int8: int32 sums of code * x (subtract sum(x) for ternary values); bf16: float32
  sums of ternary * x.
  """
  m, _ = x.shape
  rows, n = packed.shape
  _check_divisible("N", n, config.bn)
  _check_divisible("K_pad / 16 (word rows per split)", rows, config.splits * config.tile_rows)
  rows_per_split = rows // config.splits
  n_tiles = rows_per_split // config.tile_rows
  if x.dtype == jnp.int8:
    operand = int8_quads(x)
    kernel = functools.partial(_gemv_int8_kernel, interpret=interpret)
    out_dtype = jnp.int32
    slots = 4
  else:
    operand = by_code_slot(x.astype(jnp.float32))
    kernel = _gemv_float_kernel
    out_dtype = jnp.float32
    slots = CODES_PER_WORD
  return pl.pallas_call(
      functools.partial(kernel, m=m, tile_rows=config.tile_rows, n_tiles=n_tiles),
      out_shape=jax.ShapeDtypeStruct((config.splits, m, n), out_dtype),
      grid=(n // config.bn, config.splits),
      in_specs=[pl.BlockSpec((m, slots, rows_per_split), lambda j, s: (0, 0, s)),
                pl.BlockSpec((rows_per_split, config.bn), lambda j, s: (s, j))],
      out_specs=pl.BlockSpec((1, m, config.bn), lambda j, s: (s, 0, j)),
      compiler_params=plgpu.CompilerParams(num_warps=config.num_warps,
                                           num_stages=config.num_stages),
      interpret=interpret,
  )(operand, packed)


def _tiled_kernel(x_ref, w_ref, o_ref, *, tile_rows, n_tiles, weight_dtype, acc_dtype):
  bm, bn = o_ref.shape

  def step(t, acc):
    words = w_ref[pl.ds(t * tile_rows, tile_rows), :]
    base = t * tile_rows * CODES_PER_WORD
    for i in range(CODES_PER_WORD):
      weight = ternary_slot(words, i).astype(weight_dtype)
      x = x_ref[:, pl.ds(base + i * tile_rows, tile_rows)]
      acc = acc + jnp.dot(x, weight, preferred_element_type=acc_dtype)
    return acc

  o_ref[...] = jax.lax.fori_loop(0, n_tiles, step, jnp.zeros((bm, bn), acc_dtype))


@functools.partial(jax.jit, static_argnames=("config", "interpret"))
def tiled(x: jax.Array, packed: jax.Array, *, config: TiledConfig = TiledConfig(),
          interpret: bool = False) -> jax.Array:
  """(M, K_pad) int8 or bf16 @ packed -> (M, N) int32 or float32 sums on tensor cores."""
  m, k = x.shape
  rows, n = packed.shape
  _check_divisible("N", n, config.bn)
  _check_divisible("K_pad / 16 (word rows)", rows, config.tile_rows)
  integer = x.dtype == jnp.int8
  if integer and config.tile_rows < INT8_MMA_MIN_K:
    # int8 tensor-core dots need K >= 32 per instruction; bf16 products of int8
    # values summed in float32 stay exact up to EXACT_FLOAT_SUM_MAX_K.
    if k > EXACT_FLOAT_SUM_MAX_K:
      raise ValueError(f"K={k}: int8 sums through bf16 dots are exact only up to "
                       f"K={EXACT_FLOAT_SUM_MAX_K}; use K tiles of {INT8_MMA_MIN_K} rows")
    sums = tiled(x.astype(jnp.bfloat16), packed, config=config, interpret=interpret)
    return sums.astype(jnp.int32)
  acc_dtype = jnp.int32 if integer else jnp.float32
  m_pad = -(-m // config.bm) * config.bm
  x = jnp.pad(by_tile(x, config.tile_rows), ((0, m_pad - m), (0, 0)))
  out = pl.pallas_call(
      functools.partial(_tiled_kernel, tile_rows=config.tile_rows,
                        n_tiles=rows // config.tile_rows,
                        weight_dtype=x.dtype, acc_dtype=acc_dtype),
      out_shape=jax.ShapeDtypeStruct((m_pad, n), acc_dtype),
      grid=(m_pad // config.bm, n // config.bn),
      in_specs=[pl.BlockSpec((config.bm, k), lambda i, j: (i, 0)),
                pl.BlockSpec((rows, config.bn), lambda i, j: (0, j))],
      out_specs=pl.BlockSpec((config.bm, config.bn), lambda i, j: (i, j)),
      compiler_params=plgpu.CompilerParams(num_warps=config.num_warps,
                                           num_stages=config.num_stages),
      interpret=interpret,
  )(x, packed)
  return out[:m]
