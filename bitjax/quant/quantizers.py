"""Quantizers as records in two registries, and the functions that dispatch through them.

A weight quantizer is one `WeightQuantizer` record: its quantize function, bits per
weight, how its codes pack for serving and its default learning-rate recipe. Presets,
layers, packing, memory accounting and config validation read these records and
nothing else, so `register_weight_quantizer` is the one place a new quantizer goes.
Activation quantizers are records per granularity (`token`, `tensor`, and `token_qb`:
per token with BitNet 2023's scale Q/absmax) in the same way.

`quantize_*` return integer codes and a float32 scale such that `codes * scale`
approximates the input; `weight_quant` / `activation_quant` return that product
in the input dtype with a straight-through (identity) gradient, which is how
BitNet trains through the non-differentiable rounding.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from bitjax.schema import check_one_of

ACTIVATION_BITS = tuple(range(2, 17))
SCALE_EPS = 1e-5
PACKINGS = ("ternary",)  # bitjax.kernels' bitjax-ternary-v1 format (codes in {-1, 0, 1})
LR_RECIPES = ("low_bit", "full_precision")


@dataclasses.dataclass(frozen=True)
class WeightQuantizer:
  """Everything bitjax needs to know about one weight quantizer.

  `quantize(w)` maps a float (K, N) kernel to int8 codes and a float32 scale of shape
  () (per tensor) or (N,) (per output channel); None keeps the weights in full
  precision. `bits` is the information per weight (memory accounting); `packing` names
  the format its codes pack into for serving, or None if they cannot be packed;
  `lr_recipe` is the learning-rate recipe a model with these weights gets by default.
  """

  name: str
  quantize: Callable[[jax.Array], tuple[jax.Array, jax.Array]] | None
  bits: float
  packing: str | None = None
  lr_recipe: str = "low_bit"

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name:
      raise ValueError(f"name={self.name!r} must be a non-empty string")
    if self.packing is not None:
      check_one_of("packing", self.packing, PACKINGS)
    check_one_of("lr_recipe", self.lr_recipe, LR_RECIPES)

  @property
  def quantized(self) -> bool:
    return self.quantize is not None


@dataclasses.dataclass(frozen=True)
class ActivationQuantizer:
  """One activation granularity: `quantize(x, bits)` -> (codes, float32 scale)."""

  name: str
  quantize: Callable[[jax.Array, int], tuple[jax.Array, jax.Array]]


WEIGHT_QUANTIZERS: dict[str, WeightQuantizer] = {}
ACTIVATION_QUANTIZERS: dict[str, ActivationQuantizer] = {}


def _register(registry: dict, kind: str, record, record_type: type) -> None:
  if not isinstance(record, record_type):
    raise ValueError(f"record={record!r} is not a {record_type.__name__}")
  if record.name in registry:
    raise ValueError(f"{kind} quantizer name={record.name!r} is already registered; "
                     f"taken: {list(registry)}")
  registry[record.name] = record


def register_weight_quantizer(record: WeightQuantizer) -> None:
  """Make `record` available by name to presets, configs (`model.weight_quant`), layers
  and packing."""
  _register(WEIGHT_QUANTIZERS, "weight", record, WeightQuantizer)


def register_activation_quantizer(record: ActivationQuantizer) -> None:
  """Make `record` available by name as an activation granularity."""
  _register(ACTIVATION_QUANTIZERS, "activation", record, ActivationQuantizer)


def weight_quantizer(method: str, *, name: str = "method") -> WeightQuantizer:
  """The registered record called `method`; `name` is the argument an error names."""
  check_one_of(name, method, WEIGHT_QUANTIZERS)
  return WEIGHT_QUANTIZERS[method]


def activation_quantizer(granularity: str, *, name: str = "granularity") -> ActivationQuantizer:
  """The registered record for `granularity`; `name` is the argument an error names."""
  check_one_of(name, granularity, ACTIVATION_QUANTIZERS)
  return ACTIVATION_QUANTIZERS[granularity]


def packable_weight_quantizers() -> list[str]:
  """Names of the registered weight quantizers whose codes pack for serving."""
  return [name for name, record in WEIGHT_QUANTIZERS.items() if record.packing is not None]


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


def ternary_around(center: Callable[[jax.Array], jax.Array]):
  """A ternary quantizer {-1, 0, 1}: s = max(center(|w|), 1e-5), codes = clip(round(w / s)).

  `center` reduces |w| to the scale: jnp.mean gives BitNet b1.58's absmean; a
  reduction over axis 0 only gives one scale per output channel."""

  def quantize(w: jax.Array) -> tuple[jax.Array, jax.Array]:
    w32 = w.astype(jnp.float32)
    scale = jnp.maximum(center(jnp.abs(w32)), SCALE_EPS)
    codes = jnp.clip(jnp.round(w32 / scale), -1, 1)
    return codes.astype(jnp.int8), scale

  return quantize


def centred_sign(w: jax.Array) -> tuple[jax.Array, jax.Array]:
  """BitNet (2023): codes +1 where w - mean(w) > 0 else -1, scale mean|w|."""
  w32 = w.astype(jnp.float32)
  scale = jnp.mean(jnp.abs(w32))
  codes = jnp.where(w32 - jnp.mean(w32) > 0, 1, -1)
  return codes.astype(jnp.int8), scale


def absmax_quantizer(absmax: Callable[[jax.Array], jax.Array], *, full_range: bool = False):
  """Symmetric absmax quantization to signed `bits`-bit integers, the absmax taken by
  `absmax(|x|)`; codes are int8 up to 8 bits, int32 above. With Q = 2^(bits-1):

  * `full_range=False` (BitNet b1.58 Training Tips): s = max(absmax, 1e-5) / (Q - 1),
    codes = clip(round(x / s), -Q, Q - 1), so the largest value maps to Q - 1 (127);
  * `full_range=True` (BitNet 2023, eq. 4, as 2411.05882's BitLinear uses it): codes =
    clip(round(x * Q / max(absmax, 1e-5)), -Q, Q - 1), computed in that order, s = absmax / Q;
    the largest value maps to Q (128), which the clip brings to Q - 1 on the positive side.
  """

  def quantize(x: jax.Array, bits: int) -> tuple[jax.Array, jax.Array]:
    q = 2 ** (bits - 1)
    x32 = x.astype(jnp.float32)
    magnitude = jnp.maximum(absmax(jnp.abs(x32)), SCALE_EPS)
    if full_range:
      codes = jnp.round(x32 * (q / magnitude))
      scale = magnitude / q
    else:
      scale = magnitude / (q - 1)
      codes = jnp.round(x32 / scale)
    codes = jnp.clip(codes, -q, q - 1)
    return codes.astype(jnp.int8 if bits <= 8 else jnp.int32), scale

  return quantize


register_weight_quantizer(WeightQuantizer("none", None, 16.0, lr_recipe="full_precision"))
register_weight_quantizer(WeightQuantizer("absmean", ternary_around(jnp.mean), math.log2(3),
                                          "ternary"))
register_weight_quantizer(WeightQuantizer("absmedian", ternary_around(nonnegative_median),
                                          math.log2(3), "ternary"))
register_weight_quantizer(WeightQuantizer("sign", centred_sign, 1.0, "ternary"))  # {-1, 1} fit
register_activation_quantizer(ActivationQuantizer(
    "token", absmax_quantizer(lambda a: jnp.max(a, axis=-1, keepdims=True))))
register_activation_quantizer(ActivationQuantizer("tensor", absmax_quantizer(jnp.max)))
# Per token with the scale Q/absmax (128/absmax at 8 bits): the b1.58-ln preset (2411.05882).
register_activation_quantizer(ActivationQuantizer(
    "token_qb", absmax_quantizer(lambda a: jnp.max(a, axis=-1, keepdims=True), full_range=True)))


def quantize_weight(w: jax.Array, method: str = "absmean") -> tuple[jax.Array, jax.Array]:
  """Weight quantization by the registered quantizer `method`; returns (codes, scale).

  `absmean`/`absmedian` give ternary codes {-1, 0, 1} (BitNet b1.58 and its
  median variant); `sign` gives binary codes {-1, 1} after centring on the
  mean (BitNet 2023); these three scale per tensor. `none` returns the weights
  themselves with scale 1.
  """
  quantize = weight_quantizer(method).quantize
  if quantize is None:
    return w, jnp.ones((), jnp.float32)
  return quantize(w)


def quantize_activation(
    x: jax.Array, bits: int = 8, granularity: str = "token"
) -> tuple[jax.Array, jax.Array]:
  """Symmetric absmax quantization to signed `bits`-bit integers.

  The scale is taken over the last axis (`token`, `token_qb`: shape x.shape[:-1] + (1,))
  or the whole tensor (`tensor`, shape ()); `token_qb` scales by Q/absmax instead of
  (Q-1)/absmax (`absmax_quantizer`). Codes are int8 up to 8 bits, int32 above.
  """
  check_one_of("bits", bits, ACTIVATION_BITS)
  return activation_quantizer(granularity).quantize(x, bits)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def weight_quant(w: jax.Array, method: str = "absmean") -> jax.Array:
  """Fake-quantized weights `codes * scale` in w's dtype; gradient = identity."""
  if not weight_quantizer(method).quantized:
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
