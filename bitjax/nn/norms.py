"""Normalisations, always computed in float32 (they stay full precision)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bitjax.nn.params import logical_param
from bitjax.schema import check_one_of

class RMSNorm(nnx.Module):
  """x / rms(x) * scale, with a learnable per-feature scale."""

  def __init__(self, features: int, *, eps: float = 1e-6, rngs: nnx.Rngs):
    self.eps = eps
    self.scale = logical_param(rngs, nnx.initializers.ones, (features,), ("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return (y * self.scale[...]).astype(x.dtype)


class LayerNormNoAffine(nnx.Module):
  """(x - mean) / std without scale or bias: the BitNet (2023) SubLN option."""

  def __init__(self, features: int, *, eps: float = 1e-6, rngs: nnx.Rngs | None = None):
    del features, rngs
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
    y = centred * jax.lax.rsqrt(jnp.mean(jnp.square(centred), axis=-1, keepdims=True) + self.eps)
    return y.astype(x.dtype)


NORMS = {"rms": RMSNorm, "layernorm": LayerNormNoAffine}
NORM_TYPES = tuple(NORMS)


def make_norm(kind: str, features: int, *, eps: float = 1e-6, rngs: nnx.Rngs) -> nnx.Module:
  check_one_of("norm", kind, NORM_TYPES)
  return NORMS[kind](features, eps=eps, rngs=rngs)
