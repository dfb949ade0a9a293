"""What every model shares about precision: the `config.model` fields that pick a
preset from the one table (`bitjax.quant.PRECISIONS`), and the forward-pass
weights and weight memory a preset implies.

Every model config (decoder, mlp, gnn, encoder, encdec) is a `ModelConfig`
subclass, a `bitjax.schema.Section`, so the precision fields and their validation
exist once; a model turns `cfg.spec` into BitDense layers the same way everywhere.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import jax
from flax import nnx

from bitjax._compat import iter_modules
from bitjax.nn import NORM_TYPES, BitDense, resolve_dtype
from bitjax.nn.params import DTYPES
from bitjax.quant import PRECISIONS, QuantSpec, resolve_precision
from bitjax.schema import NON_NEGATIVE, POSITIVE_INT, Section, field

COMPUTE_DTYPES = ("auto", *DTYPES)


@dataclasses.dataclass(frozen=True)
class ModelConfig(Section):
  """The precision fields of `config.model`; subclasses add the architecture."""

  section: ClassVar[str] = "model"

  # Whether this model's dense layers can take a bias (`use_bias`); a model family that
  # wires `use_bias` into its layers sets this.
  takes_bias: ClassVar[bool] = False

  precision: str = field("bf16", allowed=PRECISIONS)
  weight_quant: str | None = None  # None: the preset's; else a name in WEIGHT_QUANTIZERS
  act_bits: int | None = None  # None: the preset's; 0: no activation quantization
  # None: the preset's; a name in ACTIVATION_QUANTIZERS ("token", "tensor", "token_qb")
  act_granularity: str | None = None
  # the model's norms (pre-norms, final norm), and a quantized layer's unless dense_norm
  # or the preset names another
  norm: str = field("rms", allowed=NORM_TYPES)
  # the norm inside each quantized BitDense; None: the preset's (b1.58-ln: layernorm), else norm
  dense_norm: str | None = field(None, allowed=NORM_TYPES)
  # None: the preset's (1e-6; b1.58-ln 1e-5); a resolved config holds the number
  norm_eps: float | None = field(None, rule=NON_NEGATIVE)
  # None: the preset's where the model's layers take a bias (b1.58-ln: True), else False
  use_bias: bool | None = None
  # the longest context the model is meant for (generation refuses longer ones:
  # bitjax.infer.generation.check_context); None: no limit but memory
  max_seq_len: int | None = field(None, rule=POSITIVE_INT)
  # auto: the preset's dtype, else bf16 on accelerators / f32 on CPU
  compute_dtype: str = field("auto", allowed=COMPUTE_DTYPES)

  def __post_init__(self):
    super().__post_init__()
    try:
      spec = self.spec
    except ValueError as e:
      raise ValueError(f"config.model.{e}") from None
    if self.use_bias and not self.takes_bias:
      raise self.error("use_bias", f"is not possible: {type(self).__name__}'s layers take no "
                       "bias (the MLP, GNN, encoder and encoder-decoder wire one); set None or False")
    # Preset-dependent fields hold their value from here on, so every model reads numbers.
    if self.norm_eps is None:
      object.__setattr__(self, "norm_eps", spec.norm_eps)
    if self.use_bias is None:
      object.__setattr__(self, "use_bias", spec.bias and self.takes_bias)

  @property
  def spec(self) -> QuantSpec:
    return resolve_precision(self.precision, weight_quant=self.weight_quant,
                             act_bits=self.act_bits, act_granularity=self.act_granularity)

  @property
  def dtype(self):
    if self.compute_dtype == "auto" and self.spec.compute_dtype is not None:
      return resolve_dtype(self.spec.compute_dtype)
    return resolve_dtype(self.compute_dtype)

  @property
  def inner_norm(self) -> str | None:
    """The norm a BitDense carries when quantized (dense_norm, else the preset's, else
    norm); none in full precision, where models keep their usual pre-norms instead."""
    spec = self.spec
    if not spec.quantized:
      return None
    return self.dense_norm or spec.norm or self.norm

  def dense_kwargs(self) -> dict:
    """BitDense arguments shared by every projection of a model with this config."""
    return dict(spec=self.spec, norm=self.inner_norm, norm_eps=self.norm_eps, dtype=self.dtype,
                use_bias=self.use_bias)


def quantized_layers(model: nnx.Module) -> list[tuple[str, BitDense]]:
  """(path, layer) of every BitDense whose weights are quantized."""
  return [("/".join(map(str, path)), module) for path, module in iter_modules(model)
          if isinstance(module, BitDense) and module.spec.weight_quantizer.quantized]


def quantized_kernels(model: nnx.Module) -> dict[str, jax.Array]:
  """The forward-pass weights of every quantized BitDense, keyed by path."""
  return {path: module.quantized_kernel() for path, module in quantized_layers(model)}


def _scale_count(module: BitDense) -> int:
  """Scales per matrix: 1 for a per-tensor quantizer, one per column for a per-channel one."""
  kernel = jax.ShapeDtypeStruct(module.kernel.shape[-2:], module.kernel.dtype)
  return jax.eval_shape(module.spec.weight_quantizer.quantize, kernel)[1].size


def weight_memory_bits(model: nnx.Module) -> float:
  """Bits to store the weights: quantized kernels at their quantizer's bits per weight
  (log2(3) for ternary, 1 for sign) plus a float32 per scale (per matrix, and per layer
  when the blocks are stacked for a scan); everything else at 16."""
  quantized = {id(m.kernel): (m.spec.weight_bits, _scale_count(m))
               for _, m in quantized_layers(model)}
  bits = 0.0
  for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    size = math.prod(var.shape)  # var[...] would read the array, perhaps donated (flax 0.12.0)
    if id(var) in quantized:
      bits_per_weight, scales = quantized[id(var)]
      bits += size * bits_per_weight + 32 * math.prod(var.shape[:-2]) * scales
    else:
      bits += 16 * size
  return bits
