"""BERT-style encoder: bidirectional Transformer blocks with a padding mask, a masked-LM
head and a classification head.

The blocks are the decoder's (`bitjax.models.transformer`) with `causal=False`, so
quantized presets turn every projection into a BitDense exactly as in the decoder.
Positions are rotary (RoPE), not BERT's learned absolute embeddings: the same
position scheme as the rest of bitjax and no length limit baked into weights.
Full precision, as in the decoder's convention: the token embedding, the
masked-LM head (tied to the embedding), the final norm and the classifier.
The classifier reads the mean of the non-padding positions (no [CLS] token).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from bitjax.models.transformer import (TransformerConfig, apply_layers, make_layers,
                                       positions_like, zero_padding)
from bitjax.nn import BitDense, Embed, make_norm
from bitjax.schema import Rule, field


def check_token_id(cfg: TransformerConfig, name: str) -> None:
  if cfg.vocab_size is not None and not 0 <= getattr(cfg, name) < cfg.vocab_size:
    raise cfg.error(name, f"must be a token id in [0, config.model.vocab_size={cfg.vocab_size})")


@dataclasses.dataclass(frozen=True)
class EncoderConfig(TransformerConfig):
  """Schema of `config.model` for the encoder; validated on construction. Its projections
  take a bias where `use_bias` says (b1.58-ln: the 2411.05882 BitLinear has one)."""

  takes_bias: ClassVar[bool] = True

  # 0: no classification head (masked-LM pretraining only)
  num_classes: int = field(0, rule=Rule(lambda n: n >= 0,
                                        "an integer >= 0 (0: no classification head)"))
  pad_id: int = 0  # the byte tokenizer's; marks padding when no mask is passed

  def __post_init__(self):
    super().__post_init__()
    check_token_id(self, "pad_id")


class Encoder(nnx.Module):
  """tokens [batch, seq] (int), mask [batch, seq] (True at real tokens; default
  tokens != pad_id) -> hidden states [batch, seq, hidden], zero at padding."""

  def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype, rngs=rngs)
    self.layers = make_layers(cfg, cfg.num_layers, causal=False, rngs=rngs)
    self.final_norm = make_norm(cfg.norm, cfg.hidden_size, eps=cfg.norm_eps, rngs=rngs)
    self.classifier = BitDense(
        cfg.hidden_size, cfg.num_classes, norm=None, dtype=cfg.dtype,
        kernel_axes=("embed", None), rngs=rngs) if cfg.num_classes else None

  def padding_mask(self, tokens: jax.Array, mask: jax.Array | None) -> jax.Array:
    return tokens != self.cfg.pad_id if mask is None else mask.astype(bool)

  def __call__(self, tokens: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    mask = self.padding_mask(tokens, mask)
    x = zero_padding(self.embed(tokens), mask)
    x = apply_layers(self.layers, x, positions_like(tokens), remat=self.cfg.remat, mask=mask)
    return self.final_norm(x)

  def masked_lm(self, tokens: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Logits [batch, seq, vocab] (float32) at every position, from the tied embedding."""
    return self.embed.attend(self(tokens, mask)).astype(jnp.float32)

  def classify(self, tokens: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Logits [batch, num_classes] (float32) from the mean over non-padding positions."""
    if self.classifier is None:
      raise ValueError("config.model.num_classes=0: this encoder has no classification head")
    mask = self.padding_mask(tokens, mask)
    hidden = self(tokens, mask).astype(jnp.float32)
    count = jnp.maximum(mask.sum(-1, keepdims=True), 1)
    pooled = hidden.sum(-2) / count
    return self.classifier(pooled.astype(self.cfg.dtype)).astype(jnp.float32)
