"""Quantizers as pure functions on arrays (DESIGN.md section 2).

`quantize_*` return integer codes and a float32 scale such that `codes * scale`
approximates the input; `weight_quant` / `activation_quant` return that product
in the input dtype with a straight-through (identity) gradient, which is how
BitNet trains through the non-differentiable rounding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

WEIGHT_METHODS = ("none", "absmean", "absmedian", "sign")
GRANULARITIES = ("token", "tensor")
ACTIVATION_BITS = tuple(range(2, 17))
SCALE_EPS = 1e-5


def _check(name: str, value, allowed) -> None:
  if value not in allowed:
    raise ValueError(f"{name}={value!r} is not one of {list(allowed)}")


def nonnegative_median(x: jax.Array) -> jax.Array:
  """The exact median of a non-negative float32 array (jnp.median's value) by radix
  selection: non-negative floats order like their int32 bit patterns, so the two middle
  order statistics are built bit by bit, one counting pass per bit. A sort, which
  jnp.median does, takes seconds per step on CPU for a 10M-weight layer."""
  bits = jax.lax.bitcast_convert_type(x.reshape(-1), jnp.int32)
  n = bits.shape[0]
  ranks = jnp.array([(n - 1) // 2, n // 2])

  def next_bit(i, prefix):  # keep a bit where fewer than rank + 1 values lie below
    candidate = prefix | jnp.left_shift(jnp.int32(1), 30 - i)
    below = (bits[:, None] < candidate[None, :]).sum(0)
    return jnp.where(below <= ranks, candidate, prefix)

  middle = jax.lax.fori_loop(0, 31, next_bit, jnp.zeros(2, jnp.int32))
  return jax.lax.bitcast_convert_type(middle, jnp.float32).mean()


def quantize_weight(w: jax.Array, method: str = "absmean") -> tuple[jax.Array, jax.Array]:
  """Per-tensor weight quantization; returns (int8 codes, float32 scalar scale).

  `absmean`/`absmedian` give ternary codes {-1, 0, 1} (BitNet b1.58 and its
  median variant); `sign` gives binary codes {-1, 1} after centring on the
  mean (BitNet 2023). `none` returns the weights themselves with scale 1.
  """
  _check("method", method, WEIGHT_METHODS)
  if method == "none":
    return w, jnp.ones((), jnp.float32)
  w32 = w.astype(jnp.float32)
  if method == "sign":
    scale = jnp.mean(jnp.abs(w32))
    codes = jnp.where(w32 - jnp.mean(w32) > 0, 1, -1)
    return codes.astype(jnp.int8), scale
  center = jnp.mean if method == "absmean" else nonnegative_median
  scale = jnp.maximum(center(jnp.abs(w32)), SCALE_EPS)
  codes = jnp.clip(jnp.round(w32 / scale), -1, 1)
  return codes.astype(jnp.int8), scale


def quantize_activation(
    x: jax.Array, bits: int = 8, granularity: str = "token"
) -> tuple[jax.Array, jax.Array]:
  """Symmetric absmax quantization to signed `bits`-bit integers.

  The scale is taken over the last axis (`token`, shape x.shape[:-1] + (1,))
  or the whole tensor (`tensor`, shape ()). Codes are int8 up to 8 bits,
  int32 above.
  """
  _check("bits", bits, ACTIVATION_BITS)
  _check("granularity", granularity, GRANULARITIES)
  q = 2 ** (bits - 1)
  x32 = x.astype(jnp.float32)
  if granularity == "token":
    absmax = jnp.max(jnp.abs(x32), axis=-1, keepdims=True)
  else:
    absmax = jnp.max(jnp.abs(x32))
  scale = jnp.maximum(absmax, SCALE_EPS) / (q - 1)
  codes = jnp.clip(jnp.round(x32 / scale), -q, q - 1)
  return codes.astype(jnp.int8 if bits <= 8 else jnp.int32), scale


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def weight_quant(w: jax.Array, method: str = "absmean") -> jax.Array:
  """Fake-quantized weights `codes * scale` in w's dtype; gradient = identity."""
  if method == "none":
    return w
  codes, scale = quantize_weight(w, method)
  return (codes.astype(jnp.float32) * scale).astype(w.dtype)


def _weight_quant_fwd(w, method):
  return weight_quant(w, method), None


def _straight_through_bwd(*args):
  return (args[-1],)


weight_quant.defvjp(_weight_quant_fwd, _straight_through_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def activation_quant(x: jax.Array, bits: int = 8, granularity: str = "token") -> jax.Array:
  """Fake-quantized activations `codes * scale` in x's dtype; gradient = identity."""
  codes, scale = quantize_activation(x, bits, granularity)
  return (codes.astype(jnp.float32) * scale).astype(x.dtype)


def _activation_quant_fwd(x, bits, granularity):
  return activation_quant(x, bits, granularity), None


activation_quant.defvjp(_activation_quant_fwd, _straight_through_bwd)
