"""Attention with RoPE and grouped-query heads, on BitDense projections.

Causal self-attention by default (the decoder); `causal=False` with a key
padding mask gives bidirectional encoder attention, and a `context` gives
cross-attention (keys and values from the encoder, no rotary positions). A
`KVCache` lets causal self-attention run a few tokens at a time (generation):
each call writes its keys and values into the cache and attends over it.
"""

from __future__ import annotations

import dataclasses

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


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
  """One self-attention layer's keys and values at a fixed number of slots.

  keys, values: [batch, slots, kv_heads, head_dim] (only the KV heads of grouped-query
  attention), in the compute dtype; a stack of layers adds a leading `layers` axis.
  The size is fixed so that one compiled decode step serves every token.
  """

  keys: jax.Array
  values: jax.Array

  @classmethod
  def zeros(cls, batch: int, slots: int, kv_heads: int, head_dim: int, dtype) -> KVCache:
    shape = (batch, slots, kv_heads, head_dim)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

  def write(self, keys: jax.Array, values: jax.Array, index: jax.Array) -> KVCache:
    """The cache with keys/values [batch, seq, kv_heads, head_dim] stored at slots
    [index, index + seq) of every row."""
    put = lambda cache, new: jax.lax.dynamic_update_slice_in_dim(
        cache, new.astype(cache.dtype), index, axis=1)
    return KVCache(put(self.keys, keys), put(self.values, values))


def cached_attention_mask(key_mask: jax.Array, index: jax.Array, seq: int) -> jax.Array:
  """[batch, 1, seq, slots]: query i, stored at slot index + i, sees the slots up to its
  own that `key_mask` [batch, slots] marks as tokens (False at padding)."""
  slots = key_mask.shape[-1]
  causal = jnp.arange(slots)[None, :] <= index + jnp.arange(seq)[:, None]
  return key_mask[:, None, None, :] & causal[None, None]


class Attention(nnx.Module):
  """q, k, v, o projections are BitDense layers; with a quantized spec each
  normalises its own input (so the block needs no pre-attention norm).

  `norm` is the norm inside q, k and v; `output_norm` the one inside o (default: `norm`).
  The SubLN layout of the released BitNet models passes norm=None (the block's pre-norm
  serves q, k, v) and output_norm="rms" (their attn_sub_norm).
  `rope_theta=None` leaves positions out (cross-attention, where query and key
  positions index different sequences).
  """

  def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
               spec: QuantSpec, norm: str | None, norm_eps: float, rope_theta: float | None,
               dtype, rngs: nnx.Rngs, causal: bool = True, output_norm: str | None = "same",
               use_bias: bool = False):
    self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
    self.rope_theta, self.causal = rope_theta, causal
    dense = dict(spec=spec, norm=norm, norm_eps=norm_eps, dtype=dtype, use_bias=use_bias,
                 rngs=rngs)
    self.q_proj = BitDense(hidden_size, num_heads * head_dim, kernel_axes=("embed", "heads"), **dense)
    self.k_proj = BitDense(hidden_size, num_kv_heads * head_dim, kernel_axes=("embed", "kv_heads"),
                           **dense)
    self.v_proj = BitDense(hidden_size, num_kv_heads * head_dim, kernel_axes=("embed", "kv_heads"),
                           **dense)
    dense["norm"] = norm if output_norm == "same" else output_norm
    self.o_proj = BitDense(num_heads * head_dim, hidden_size, kernel_axes=("heads", "embed"), **dense)

  def __call__(self, x: jax.Array, positions: jax.Array | None = None, *,
               context: jax.Array | None = None,
               key_mask: jax.Array | None = None,
               cache: KVCache | None = None,
               cache_index: jax.Array | None = None):
    """x [batch, seq, hidden]; keys and values come from `context` [batch, keys, hidden]
    when given, else from x. `key_mask` [batch, keys] is False at padding.

    With a `cache` (causal self-attention only), x's keys and values are written at
    slots [cache_index, cache_index + seq), the queries attend causally over the cache
    slots (`key_mask` is then [batch, slots]), and the result is (output, new cache).
    """
    if cache is not None and (context is not None or not self.causal):
      raise ValueError("cache: only causal self-attention (no context) keeps a key-value "
                       "cache")
    *lead, seq, _ = x.shape
    source = x if context is None else context
    keys = source.shape[-2]
    q = self.q_proj(x).reshape(*lead, seq, self.num_heads, self.head_dim)
    k = self.k_proj(source).reshape(*lead, keys, self.num_kv_heads, self.head_dim)
    v = self.v_proj(source).reshape(*lead, keys, self.num_kv_heads, self.head_dim)
    if self.rope_theta is not None:
      q, k = rope(q, positions, self.rope_theta), rope(k, positions, self.rope_theta)
    if cache is None:
      mask = None if key_mask is None else key_mask[..., None, None, :]
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=self.causal)
    else:
      cache = cache.write(k, v, cache_index)
      out = jax.nn.dot_product_attention(q, cache.keys, cache.values,
                                         mask=cached_attention_mask(key_mask, cache_index, seq))
    out = self.o_proj(out.reshape(*lead, seq, self.num_heads * self.head_dim))
    return out if cache is None else (out, cache)
