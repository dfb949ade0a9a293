"""Causal self-attention with RoPE and grouped-query heads, on BitDense projections."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bitjax.nn.dense import BitDense
from bitjax.quant import QuantSpec


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary position embedding on [..., seq, heads, head_dim], rotating half-dim pairs."""
  half = x.shape[-1] // 2
  freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions[..., :, None, None].astype(jnp.float32) * freqs
  sin, cos = jnp.sin(angles), jnp.cos(angles)
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class Attention(nnx.Module):
  """q, k, v, o projections are BitDense layers; with a quantized spec each
  normalises its own input (so the block needs no pre-attention norm)."""

  def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
               spec: QuantSpec, norm: str | None, norm_eps: float, rope_theta: float,
               dtype, rngs: nnx.Rngs):
    self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
    self.rope_theta = rope_theta
    dense = dict(spec=spec, norm=norm, norm_eps=norm_eps, dtype=dtype, rngs=rngs)
    self.q_proj = BitDense(hidden_size, num_heads * head_dim, kernel_axes=("embed", "heads"), **dense)
    self.k_proj = BitDense(hidden_size, num_kv_heads * head_dim, kernel_axes=("embed", "kv_heads"),
                           **dense)
    self.v_proj = BitDense(hidden_size, num_kv_heads * head_dim, kernel_axes=("embed", "kv_heads"),
                           **dense)
    self.o_proj = BitDense(num_heads * head_dim, hidden_size, kernel_axes=("heads", "embed"), **dense)

  def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
    *lead, seq, _ = x.shape
    q = self.q_proj(x).reshape(*lead, seq, self.num_heads, self.head_dim)
    k = self.k_proj(x).reshape(*lead, seq, self.num_kv_heads, self.head_dim)
    v = self.v_proj(x).reshape(*lead, seq, self.num_kv_heads, self.head_dim)
    q, k = rope(q, positions, self.rope_theta), rope(k, positions, self.rope_theta)
    out = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    return self.o_proj(out.reshape(*lead, seq, self.num_heads * self.head_dim))
