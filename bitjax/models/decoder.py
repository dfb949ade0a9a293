"""LLaMA-style decoder-only LM whose projections become BitDense under a quantized preset.

The blocks are `bitjax.models.transformer.TransformerBlock` (causal). Embeddings,
the LM head and the final norm always stay full precision.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from bitjax.models.transformer import (TransformerConfig, apply_layers, apply_layers_cached,
                                       init_layer_caches, make_layers, positions_like)
from bitjax.nn import BitDense, Embed, make_norm
from bitjax.parallel.sharding import with_logical_constraint


@dataclasses.dataclass(frozen=True)
class DecoderConfig(TransformerConfig):
  """Schema of `config.model` for the decoder; validated on construction."""

  tie_embeddings: bool = True


class Decoder(nnx.Module):
  """tokens [..., seq] (int) -> logits [..., seq, vocab] (float32)."""

  def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype, rngs=rngs)
    self.layers = make_layers(cfg, cfg.num_layers, rngs=rngs)
    self.final_norm = make_norm(cfg.norm, cfg.hidden_size, eps=cfg.norm_eps, rngs=rngs)
    self.lm_head = None if cfg.tie_embeddings else BitDense(
        cfg.hidden_size, cfg.vocab_size, norm=None, dtype=cfg.dtype,
        kernel_axes=("embed", "vocab"), rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    x = apply_layers(self.layers, self.embed(tokens), positions_like(tokens), remat=self.cfg.remat)
    return self.logits(x)

  def logits(self, x: jax.Array) -> jax.Array:
    """Final norm and LM head: hidden states [..., seq, hidden] -> float32 logits."""
    x = self.final_norm(x)
    logits = self.embed.attend(x) if self.lm_head is None else self.lm_head(x)
    return with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))

  def init_cache(self, batch: int, slots: int):
    """Empty key-value caches of `slots` positions for `extend`, one per block (stacked
    on a leading layers axis when the blocks are scanned)."""
    return init_layer_caches(self.layers, self.cfg, batch, slots)

  def extend(self, tokens: jax.Array, positions: jax.Array, cache, *, cache_index: jax.Array,
             key_mask: jax.Array):
    """Incremental forward for generation: tokens [batch, seq] (int) at cache slots
    [cache_index, cache_index + seq) with RoPE `positions` [batch, seq], attending
    causally over the cache slots that `key_mask` [batch, slots] marks as tokens.
    Returns (logits [batch, seq, vocab] float32, the cache with the new keys/values).

    Prefill is one call over the whole (padded) prompt, each decode step one call over
    one token; the blocks are the training forward's own.
    """
    x, cache = apply_layers_cached(self.layers, self.embed(tokens), positions, cache,
                                   cache_index=cache_index, mask=key_mask)
    return self.logits(x), cache


def count_params(model: nnx.Module) -> dict[str, int]:
  """Total parameters and non-embedding parameters (embedding and untied head excluded)."""
  params = nnx.state(model, nnx.Param)
  total = sum(math.prod(x.shape) for x in jax.tree.leaves(params))  # abstract models too
  embedding = math.prod(model.embed.embedding.shape)
  head = 0 if model.lm_head is None else math.prod(model.lm_head.kernel.shape)
  return {"total": total, "non_embedding": total - embedding - head}


def train_flops_per_token(cfg: DecoderConfig, seq_len: int) -> int:
  """Training FLOPs per token: 6 x matmul parameters (LM head included) plus attention.

  Forward is 2 FLOPs per matmul weight and 4 * seq * heads * head_dim per layer for
  the scores and the weighted sum (counted over the full window, as in PaLM's MFU
  formula); backward is twice the forward.
  """
  q_width, kv_width = cfg.num_heads * cfg.head_size, cfg.kv_heads * cfg.head_size
  mlp_mats = 2 if cfg.mlp_type == "relu2" else 3
  per_layer = (2 * cfg.hidden_size * q_width + 2 * cfg.hidden_size * kv_width
               + mlp_mats * cfg.hidden_size * cfg.mlp_hidden_size)
  matmul_params = cfg.num_layers * per_layer + cfg.hidden_size * cfg.vocab_size
  return 6 * matmul_params + 12 * cfg.num_layers * seq_len * q_width
