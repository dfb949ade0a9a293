"""The Transformer pieces the decoder, encoder and encoder-decoder share.

Norm layouts (`config.model.norm_layout`):
  per_projection (default): full precision has pre-norm blocks (norm -> attention /
    MLP); quantized (b1.58, 1bit, ...) gives every projection a BitDense with its own
    built-in norm, so the block drops the pre-norms it replaces (BitNet b1.58 recipe).
  subln (the released BitNet b1.58 models, e.g. 2B4T): pre-norm blocks at any precision,
    plus a SubLN norm inside o_proj and down_proj (Hugging Face's attn_sub_norm and
    ffn_sub_norm), four norms a block against seven, so imported weights map one to one.
A block is causal or bidirectional and may add cross-attention (encoder-decoder); that
is the only difference between the three models' blocks.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from bitjax._compat import partition_metadata
from bitjax.models.precision import ModelConfig
from bitjax.nn import Attention, BitDense, make_norm
from bitjax.nn.attention import KVCache
from bitjax.parallel.sharding import with_logical_constraint
from bitjax.schema import POSITIVE_INT, field

MLP_TYPES = ("swiglu", "relu2_glu", "relu2")
NORM_LAYOUTS = ("per_projection", "subln")
HIDDEN_AXES = ("batch", "length", "embed")  # logical axes of the hidden states


@dataclasses.dataclass(frozen=True)
class TransformerConfig(ModelConfig):
  """Architecture fields shared by every Transformer's `config.model`."""

  # None in a config: the task's tokenizer decides (bitjax.train.config.resolve_config);
  # a model is always built from a resolved, integer size.
  vocab_size: int | None = field(264, rule=POSITIVE_INT)
  hidden_size: int = field(128, rule=POSITIVE_INT)
  num_layers: int = field(2, rule=POSITIVE_INT)
  num_heads: int = field(4, rule=POSITIVE_INT)
  num_kv_heads: int | None = field(None, rule=POSITIVE_INT)  # None: num_heads (no GQA)
  head_dim: int | None = field(None, rule=POSITIVE_INT)  # None: hidden_size // num_heads
  mlp_hidden_size: int = field(512, rule=POSITIVE_INT)
  mlp_type: str = field("swiglu", allowed=MLP_TYPES)
  rope_theta: float = 10000.0
  norm_layout: str = field("per_projection", allowed=NORM_LAYOUTS)
  remat: bool = False
  # Store the blocks stacked on a leading `layers` axis and run them with a scan: the step
  # compiles one block instead of num_layers (MaxText's scan_layers).
  scan_layers: bool = False

  def __post_init__(self):
    super().__post_init__()
    if self.head_dim is None and self.hidden_size % self.num_heads:
      raise self.error("hidden_size",
                       f"is not divisible by config.model.num_heads={self.num_heads}")
    if self.num_heads % self.kv_heads:
      raise self.error("num_kv_heads", f"must divide config.model.num_heads={self.num_heads}")
    if self.head_size % 2:
      raise self.error("head_dim", "must be even for rotary embeddings", self.head_size)

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def head_size(self) -> int:
    return self.head_dim or self.hidden_size // self.num_heads

  @property
  def pre_norms(self) -> bool:
    """Whether blocks normalise before attention and the MLP (else the projections do)."""
    return self.norm_layout == "subln" or not self.spec.quantized

  @property
  def input_norm(self) -> str | None:
    """The norm inside projections that read the block's input (q, k, v, gate, up)."""
    return None if self.norm_layout == "subln" else self.inner_norm

  @property
  def output_norm(self) -> str | None:
    """The norm inside o_proj and down_proj: SubLN's, or the per-projection one."""
    return self.norm if self.norm_layout == "subln" else self.inner_norm


class MLP(nnx.Module):
  """Gated (SwiGLU or squared-ReLU GLU) or plain squared-ReLU feed-forward."""

  def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
    dense = dict(cfg.dense_kwargs(), norm=cfg.input_norm, rngs=rngs)
    self.mlp_type = cfg.mlp_type
    self.up_proj = BitDense(cfg.hidden_size, cfg.mlp_hidden_size, kernel_axes=("embed", "mlp"),
                            **dense)
    self.gate_proj = (None if cfg.mlp_type == "relu2" else
                      BitDense(cfg.hidden_size, cfg.mlp_hidden_size,
                               kernel_axes=("embed", "mlp"), **dense))
    dense["norm"] = cfg.output_norm
    self.down_proj = BitDense(cfg.mlp_hidden_size, cfg.hidden_size, kernel_axes=("mlp", "embed"),
                              **dense)

  def __call__(self, x: jax.Array) -> jax.Array:
    up = self.up_proj(x)
    if self.mlp_type == "swiglu":
      h = jax.nn.silu(self.gate_proj(x)) * up
    elif self.mlp_type == "relu2_glu":
      h = jnp.square(jax.nn.relu(self.gate_proj(x))) * up
    else:
      h = jnp.square(jax.nn.relu(up))
    return self.down_proj(h)


class TransformerBlock(nnx.Module):
  """Self-attention (causal or not), optional cross-attention, MLP; residual each."""

  def __init__(self, cfg: TransformerConfig, *, causal: bool = True,
               cross_attention: bool = False, rngs: nnx.Rngs):
    def pre_norm():
      return (make_norm(cfg.norm, cfg.hidden_size, eps=cfg.norm_eps, rngs=rngs)
              if cfg.pre_norms else None)

    def attention(**kwargs):
      return Attention(cfg.hidden_size, cfg.num_heads, cfg.kv_heads, cfg.head_size,
                       spec=cfg.spec, norm=cfg.input_norm, output_norm=cfg.output_norm,
                       norm_eps=cfg.norm_eps, dtype=cfg.dtype, use_bias=cfg.use_bias,
                       rngs=rngs, **kwargs)

    self.attn_norm = pre_norm()
    self.attn = attention(rope_theta=cfg.rope_theta, causal=causal)
    self.cross_norm = pre_norm() if cross_attention else None
    self.cross_attn = attention(rope_theta=None, causal=False) if cross_attention else None
    self.mlp_norm = pre_norm()
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x: jax.Array, positions: jax.Array, *, mask: jax.Array | None = None,
               context: jax.Array | None = None,
               context_mask: jax.Array | None = None,
               cache: KVCache | None = None,
               cache_index: jax.Array | None = None):
    """`mask` [batch, seq] is False at padding: padded keys are ignored and padded rows
    are zeroed, so with per-tensor activation scales too nothing depends on pad tokens.

    With a self-attention `cache` (generation), x sits at cache slots
    [cache_index, cache_index + seq), `mask` [batch, slots] covers every slot, and the
    result is (x, new cache).
    """
    h = x if self.attn_norm is None else self.attn_norm(x)
    if cache is None:
      x = x + self.attn(h, positions, key_mask=mask)
      row_mask = mask
    else:
      attended, cache = self.attn(h, positions, key_mask=mask, cache=cache,
                                  cache_index=cache_index)
      x = x + attended
      row_mask = jax.lax.dynamic_slice_in_dim(mask, cache_index, x.shape[-2], axis=-1)
    if self.cross_attn is not None:
      h = x if self.cross_norm is None else self.cross_norm(x)
      x = x + self.cross_attn(h, context=context, key_mask=context_mask)
    h = x if self.mlp_norm is None else self.mlp_norm(x)
    x = x + self.mlp(h)
    x = x if row_mask is None else zero_padding(x, row_mask)
    return x if cache is None else (x, cache)


def make_layers(cfg: TransformerConfig, num_layers: int, *, rngs: nnx.Rngs, **block_kwargs):
  """`num_layers` TransformerBlocks: an nnx.List, or with `cfg.scan_layers` one block
  whose parameters carry a leading `layers` axis (logical name `layers`)."""
  if not cfg.scan_layers:
    return nnx.List([TransformerBlock(cfg, rngs=rngs, **block_kwargs) for _ in range(num_layers)])

  @nnx.split_rngs(splits=num_layers)
  @nnx.vmap(in_axes=0, out_axes=0, transform_metadata=partition_metadata("layers"))
  def stacked(rngs):
    return TransformerBlock(cfg, rngs=rngs, **block_kwargs)

  return stacked(rngs)


def zero_padding(x: jax.Array, mask: jax.Array) -> jax.Array:
  """x [batch, seq, features] with the rows where mask [batch, seq] is False set to 0."""
  return jnp.where(mask[..., None], x, jnp.zeros((), x.dtype))


def apply_layers(layers, x: jax.Array, positions: jax.Array, *, remat: bool,
                 **kwargs) -> jax.Array:
  """Runs the blocks of `make_layers` in order (a loop over a list, a scan over a stacked
  block), each rematerialised in the backward pass if `remat`.

  The hidden states entering and leaving every block are pinned to their logical
  sharding [batch, length, embed] (a no-op without a mesh).
  """
  # Keyword arguments are bound here: nnx.remat and nnx.scan pass only positional ones.
  call = lambda layer, x, positions: type(layer).__call__(layer, x, positions, **kwargs)
  block = nnx.remat(call) if remat else call
  step = lambda layer, x, positions: with_logical_constraint(block(layer, x, positions),
                                                             HIDDEN_AXES)
  x = with_logical_constraint(x, HIDDEN_AXES)
  if isinstance(layers, TransformerBlock):
    # The body sees one layer's slice, with `layers` dropped from its axis names.
    scan = nnx.scan(step, in_axes=(0, nnx.Carry, None), out_axes=nnx.Carry,
                    transform_metadata=partition_metadata("layers"))
    return scan(layers, x, positions)
  for layer in layers:
    x = step(layer, x, positions)
  return x


def init_layer_caches(layers, cfg: TransformerConfig, batch: int, slots: int):
  """Empty self-attention caches for the blocks of `make_layers`: one KVCache per block of
  a list, or one whose arrays carry a leading `layers` axis for stacked blocks."""
  empty = lambda: KVCache.zeros(batch, slots, cfg.kv_heads, cfg.head_size, cfg.dtype)
  if isinstance(layers, TransformerBlock):
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (cfg.num_layers, *a.shape)), empty())
  return tuple(empty() for _ in layers)


def apply_layers_cached(layers, x: jax.Array, positions: jax.Array, caches, *,
                        cache_index: jax.Array, mask: jax.Array):
  """`apply_layers` for generation: x [batch, seq, hidden] at cache slots
  [cache_index, cache_index + seq) through every block with its cache from
  `init_layer_caches`; `mask` [batch, slots] is False at padded slots. Returns
  (x, new caches)."""
  def step(layer, x, positions, cache):
    x, cache = type(layer).__call__(layer, x, positions, mask=mask, cache=cache,
                                    cache_index=cache_index)
    return with_logical_constraint(x, HIDDEN_AXES), cache

  x = with_logical_constraint(x, HIDDEN_AXES)
  if isinstance(layers, TransformerBlock):
    scan = nnx.scan(step, in_axes=(0, nnx.Carry, None, 0), out_axes=(nnx.Carry, 0),
                    transform_metadata=partition_metadata("layers"))
    return scan(layers, x, positions, caches)
  updated = []
  for layer, cache in zip(layers, caches, strict=True):
    x, cache = step(layer, x, positions, cache)
    updated.append(cache)
  return x, tuple(updated)


def convert_layers(model: nnx.Module, *, scan: bool) -> nnx.Module:
  """A copy of a Transformer `model` with the same weights, its blocks stored stacked for a
  scan (`scan=True`) or as a list; e.g. to pack a scanned model for inference or to move
  a checkpoint between the two layouts."""
  if model.cfg.scan_layers == scan:
    return nnx.clone(model)
  cfg = dataclasses.replace(model.cfg, scan_layers=scan)
  target = nnx.eval_shape(lambda: type(model)(cfg, rngs=nnx.Rngs(0)))
  stacks = {name for name, child in vars(model).items()
            if isinstance(child, (TransformerBlock, nnx.List))}
  source = dict(nnx.to_flat_state(nnx.state(model)))

  def value(path):
    if path[0] not in stacks:
      return source[path][...]
    if scan:  # (stack, *rest) <- [(stack, 0, *rest), (stack, 1, *rest), ...]
      count = len(getattr(model, path[0]))
      return jnp.stack([source[(path[0], i, *path[1:])][...] for i in range(count)])
    return source[(path[0], *path[2:])][...][path[1]]  # (stack, i, *rest) <- (stack, *rest)[i]

  flat = [(path, var.replace(value(path))) for path, var in nnx.to_flat_state(nnx.state(target))]
  nnx.update(target, nnx.from_flat_state(flat))
  return target


def positions_like(tokens: jax.Array) -> jax.Array:
  """0, 1, ... along the last axis, broadcast to the tokens' shape."""
  return jnp.broadcast_to(jnp.arange(tokens.shape[-1]), tokens.shape)
