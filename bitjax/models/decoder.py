"""LLaMA-style decoder-only LM whose projections become BitDense under a quantized preset.

Full precision: pre-norm blocks (RMSNorm -> attention / MLP). Quantized
(b1.58, 1bit, ...): every projection is a BitDense with its own built-in norm,
so the block drops the pre-norms it replaces (BitNet b1.58 recipe). Embeddings,
the LM head and the final norm always stay full precision.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from bitjax.nn import NORM_TYPES, Attention, BitDense, Embed, make_norm, resolve_dtype
from bitjax.nn.params import DTYPES
from bitjax.quant import PRECISIONS, QuantSpec, resolve_precision

MLP_TYPES = ("swiglu", "relu2_glu", "relu2")
COMPUTE_DTYPES = ("auto", *DTYPES)


def _field_error(field: str, value, requirement: str) -> ValueError:
  return ValueError(f"config.model.{field}={value!r} {requirement}")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Schema of `config.model` for the decoder; validated on construction."""

  vocab_size: int = 264
  hidden_size: int = 128
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int | None = None  # None: as many as num_heads (no GQA)
  head_dim: int | None = None  # None: hidden_size // num_heads
  mlp_hidden_size: int = 512
  mlp_type: str = "swiglu"
  rope_theta: float = 10000.0
  tie_embeddings: bool = True
  precision: str = "bf16"
  weight_quant: str | None = None  # None: the preset's; else one of WEIGHT_METHODS
  act_bits: int | None = None  # None: the preset's; 0: no activation quantization
  act_granularity: str | None = None  # None: the preset's; "token" or "tensor"
  norm: str = "rms"
  norm_eps: float = 1e-6
  compute_dtype: str = "auto"  # auto: the preset's dtype, else bf16 on accelerators / f32 on CPU
  remat: bool = False

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "mlp_hidden_size"):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise _field_error(name, value, "must be a positive integer")
    if self.head_dim is None and self.hidden_size % self.num_heads:
      raise _field_error("hidden_size", self.hidden_size,
                         f"is not divisible by config.model.num_heads={self.num_heads}")
    if self.num_heads % self.kv_heads:
      raise _field_error("num_kv_heads", self.num_kv_heads,
                         f"must divide config.model.num_heads={self.num_heads}")
    if self.head_size % 2:
      raise _field_error("head_dim", self.head_size, "must be even for rotary embeddings")
    if self.mlp_type not in MLP_TYPES:
      raise _field_error("mlp_type", self.mlp_type, f"is not one of {list(MLP_TYPES)}")
    if self.norm not in NORM_TYPES:
      raise _field_error("norm", self.norm, f"is not one of {list(NORM_TYPES)}")
    if self.compute_dtype not in COMPUTE_DTYPES:
      raise _field_error("compute_dtype", self.compute_dtype,
                         f"is not one of {list(COMPUTE_DTYPES)}")
    if self.precision not in PRECISIONS:
      raise _field_error("precision", self.precision, f"is not one of {list(PRECISIONS)}")
    try:
      self.spec
    except ValueError as e:
      raise ValueError(f"config.model.{e}") from None

  @classmethod
  def from_mapping(cls, fields: Mapping[str, Any]) -> DecoderConfig:
    """From `config.model` (a ConfigDict or dict); unknown keys are an error."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
      raise ValueError(f"config.model has unknown fields {unknown}; known: {sorted(known)}")
    return cls(**dict(fields))

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def head_size(self) -> int:
    return self.head_dim or self.hidden_size // self.num_heads

  @property
  def spec(self) -> QuantSpec:
    return resolve_precision(self.precision, weight_quant=self.weight_quant,
                             act_bits=self.act_bits, act_granularity=self.act_granularity)

  @property
  def dtype(self):
    if self.compute_dtype == "auto" and self.spec.compute_dtype is not None:
      return resolve_dtype(self.spec.compute_dtype)
    return resolve_dtype(self.compute_dtype)


class MLP(nnx.Module):
  """Gated (SwiGLU or squared-ReLU GLU) or plain squared-ReLU feed-forward."""

  def __init__(self, cfg: DecoderConfig, *, norm: str | None, rngs: nnx.Rngs):
    dense = dict(spec=cfg.spec, norm=norm, norm_eps=cfg.norm_eps, dtype=cfg.dtype, rngs=rngs)
    self.mlp_type = cfg.mlp_type
    self.up_proj = BitDense(cfg.hidden_size, cfg.mlp_hidden_size, kernel_axes=("embed", "mlp"),
                            **dense)
    self.gate_proj = (None if cfg.mlp_type == "relu2" else
                      BitDense(cfg.hidden_size, cfg.mlp_hidden_size,
                               kernel_axes=("embed", "mlp"), **dense))
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


class DecoderBlock(nnx.Module):

  def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
    quantized = cfg.spec.quantized
    inner_norm = cfg.norm if quantized else None
    self.attn_norm = None if quantized else make_norm(cfg.norm, cfg.hidden_size,
                                                      eps=cfg.norm_eps, rngs=rngs)
    self.attn = Attention(cfg.hidden_size, cfg.num_heads, cfg.kv_heads, cfg.head_size,
                          spec=cfg.spec, norm=inner_norm, norm_eps=cfg.norm_eps,
                          rope_theta=cfg.rope_theta, dtype=cfg.dtype, rngs=rngs)
    self.mlp_norm = None if quantized else make_norm(cfg.norm, cfg.hidden_size,
                                                     eps=cfg.norm_eps, rngs=rngs)
    self.mlp = MLP(cfg, norm=inner_norm, rngs=rngs)

  def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
    h = x if self.attn_norm is None else self.attn_norm(x)
    x = x + self.attn(h, positions)
    h = x if self.mlp_norm is None else self.mlp_norm(x)
    return x + self.mlp(h)


class Decoder(nnx.Module):
  """tokens [..., seq] (int) -> logits [..., seq, vocab] (float32)."""

  def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype, rngs=rngs)
    self.layers = nnx.List([DecoderBlock(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_norm = make_norm(cfg.norm, cfg.hidden_size, eps=cfg.norm_eps, rngs=rngs)
    self.lm_head = None if cfg.tie_embeddings else BitDense(
        cfg.hidden_size, cfg.vocab_size, norm=None, dtype=cfg.dtype,
        kernel_axes=("embed", "vocab"), rngs=rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[-1]), tokens.shape)
    x = self.embed(tokens)
    for layer in self.layers:
      block = nnx.remat(type(layer).__call__) if self.cfg.remat else type(layer).__call__
      x = block(layer, x, positions)
    x = self.final_norm(x)
    logits = self.embed.attend(x) if self.lm_head is None else self.lm_head(x)
    return logits.astype(jnp.float32)


def count_params(model: nnx.Module) -> dict[str, int]:
  """Total parameters and non-embedding parameters (embedding and untied head excluded)."""
  params = nnx.state(model, nnx.Param)
  total = sum(math.prod(x.shape) for x in jax.tree.leaves(params))  # abstract models too
  embedding = math.prod(model.embed.embedding.get_value().shape)
  head = 0 if model.lm_head is None else math.prod(model.lm_head.kernel.get_value().shape)
  return {"total": total, "non_embedding": total - embedding - head}


def quantized_kernels(model: nnx.Module) -> dict[str, jax.Array]:
  """The forward-pass weights of every quantized BitDense, keyed by path."""
  out = {}
  for path, module in nnx.iter_modules(model):
    if isinstance(module, BitDense) and module.spec.weight != "none":
      out["/".join(map(str, path))] = module.quantized_kernel()
  return out


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


def weight_memory_bits(model: nnx.Module) -> float:
  """Bits to store the weights: quantized kernels at their preset's bits per weight
  (log2(3) for ternary, 1 for sign) plus a float32 scale each; everything else at 16."""
  quantized = {id(m.kernel): m.spec.weight_bits
               for _, m in nnx.iter_modules(model)
               if isinstance(m, BitDense) and m.spec.weight != "none"}
  bits = 0.0
  for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    size = var[...].size
    bits += size * quantized[id(var)] + 32 if id(var) in quantized else 16 * size
  return bits
