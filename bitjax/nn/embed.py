"""Token embeddings (full precision, as in BitNet) with an optional tied LM head."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from bitjax.nn.params import logical_param


class Embed(nnx.Module):

  def __init__(self, vocab_size: int, features: int, *, dtype=jnp.float32,
               init_std: float = 0.02, rngs: nnx.Rngs):
    self.dtype = dtype
    self.embedding = logical_param(rngs, nnx.initializers.normal(init_std),
                                   (vocab_size, features), ("vocab", "embed"))

  def __call__(self, tokens: jax.Array) -> jax.Array:
    return jnp.take(self.embedding[...], tokens, axis=0).astype(self.dtype)

  def attend(self, x: jax.Array) -> jax.Array:
    """Logits against the embedding matrix (the tied LM head)."""
    return jnp.dot(x.astype(self.dtype), self.embedding[...].astype(self.dtype).T)
