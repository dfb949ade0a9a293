"""T5-style encoder-decoder: a bidirectional encoder, a causal decoder with
cross-attention, one tied embedding for both and the LM head.

The blocks are the shared `bitjax.models.transformer` ones (quantized presets make
every projection, cross-attention included, a BitDense). Positions: rotary in
both self-attentions, none in cross-attention (T5's relative bias plays the same
role; RoPE keeps one position scheme across bitjax). Embedding, LM head and norms
stay full precision. Training is teacher forcing (`__call__`); evaluation uses
`greedy_decode`, which has static shapes so one jit serves every batch.
Span-corruption targets come from `bitjax.data.text_tasks`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from bitjax.models.encoder import check_token_id
from bitjax.models.transformer import (TransformerConfig, apply_layers, make_layers,
                                       positions_like, zero_padding)
from bitjax.nn import Embed, make_norm
from bitjax.schema import POSITIVE_INT, field


@dataclasses.dataclass(frozen=True)
class EncDecConfig(TransformerConfig):
  """Schema of `config.model` for the encoder-decoder; `num_layers` is the encoder's. Its
  projections take a bias where `use_bias` says (b1.58-ln: as the 2411.05882 BitLinear)."""

  takes_bias: ClassVar[bool] = True

  num_decoder_layers: int | None = field(None, rule=POSITIVE_INT)  # None: as many as num_layers
  pad_id: int = 0  # the byte tokenizer's pad, bos and eos
  decoder_start_id: int = 1
  eos_id: int = 2

  def __post_init__(self):
    super().__post_init__()
    for name in ("pad_id", "decoder_start_id", "eos_id"):
      check_token_id(self, name)

  @property
  def decoder_layers(self) -> int:
    return self.num_decoder_layers or self.num_layers


class EncoderDecoder(nnx.Module):
  """(inputs [batch, in_seq], decoder_inputs [batch, out_seq]) -> logits
  [batch, out_seq, vocab] (float32); masks are True at real tokens."""

  def __init__(self, cfg: EncDecConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype, rngs=rngs)
    self.encoder_layers = make_layers(cfg, cfg.num_layers, causal=False, rngs=rngs)
    self.encoder_norm = make_norm(cfg.norm, cfg.hidden_size, eps=cfg.norm_eps, rngs=rngs)
    self.decoder_layers = make_layers(cfg, cfg.decoder_layers, cross_attention=True,
                                      rngs=rngs)
    self.decoder_norm = make_norm(cfg.norm, cfg.hidden_size, eps=cfg.norm_eps, rngs=rngs)

  def input_mask(self, inputs: jax.Array, mask: jax.Array | None) -> jax.Array:
    return inputs != self.cfg.pad_id if mask is None else mask.astype(bool)

  def encode(self, inputs: jax.Array, input_mask: jax.Array | None = None) -> jax.Array:
    """Encoder states [batch, in_seq, hidden], zero at padding."""
    mask = self.input_mask(inputs, input_mask)
    x = zero_padding(self.embed(inputs), mask)
    x = apply_layers(self.encoder_layers, x, positions_like(inputs), remat=self.cfg.remat,
                     mask=mask)
    return self.encoder_norm(x)

  def decode(self, encoded: jax.Array, input_mask: jax.Array, decoder_inputs: jax.Array,
             decoder_mask: jax.Array | None = None) -> jax.Array:
    """Next-token logits for every decoder position, given the encoder states.

    Without `decoder_mask` nothing is masked: causality already hides later
    (padding) positions, except from per-tensor activation scales (1bit), which
    see the whole tensor; pass the mask there to zero padded rows.
    """
    x = self.embed(decoder_inputs)
    if decoder_mask is not None:
      x = zero_padding(x, decoder_mask)
    x = apply_layers(self.decoder_layers, x, positions_like(decoder_inputs),
                     remat=self.cfg.remat, mask=decoder_mask, context=encoded,
                     context_mask=input_mask)
    return self.embed.attend(self.decoder_norm(x)).astype(jnp.float32)

  def __call__(self, inputs: jax.Array, decoder_inputs: jax.Array,
               input_mask: jax.Array | None = None,
               decoder_mask: jax.Array | None = None) -> jax.Array:
    input_mask = self.input_mask(inputs, input_mask)
    return self.decode(self.encode(inputs, input_mask), input_mask, decoder_inputs,
                       decoder_mask)

  def greedy_decode(self, inputs: jax.Array, input_mask: jax.Array | None = None, *,
                    max_len: int) -> jax.Array:
    """Greedy output tokens [batch, max_len]: pad after each row's first EOS.

    Step t reruns the decoder over the whole fixed-size buffer (no KV cache) and
    reads position t, so every step has the same static shape: O(max_len^2)
    work, which is fine for evaluation at the sizes bitjax trains on CPU.
    """
    cfg = self.cfg
    input_mask = self.input_mask(inputs, input_mask)
    encoded = self.encode(inputs, input_mask)
    batch = inputs.shape[0]
    buffer = jnp.full((batch, max_len + 1), cfg.pad_id, inputs.dtype)
    buffer = buffer.at[:, 0].set(cfg.decoder_start_id)

    def step(t, carry):
      buffer, finished = carry
      logits = self.decode(encoded, input_mask, buffer[:, :-1])
      token = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False), -1)
      token = jnp.where(finished, cfg.pad_id, token).astype(buffer.dtype)
      buffer = jax.lax.dynamic_update_index_in_dim(buffer, token, t + 1, axis=1)
      return buffer, finished | (token == cfg.eos_id)

    buffer, _ = jax.lax.fori_loop(0, max_len, step, (buffer, jnp.zeros((batch,), bool)))
    return buffer[:, 1:]
