"""The one table of precision presets (DESIGN.md section 2); what a preset's quantizers
are and imply (bits, packing, learning-rate recipe) comes from their records."""

from __future__ import annotations

import dataclasses

from bitjax.quant import quantizers
from bitjax.quant.quantizers import ACTIVATION_BITS, WeightQuantizer
from bitjax.schema import check_one_of


@dataclasses.dataclass(frozen=True)
class QuantSpec:
  """How a BitDense layer quantizes: weight method, activation bits and granularity,
  and the layer around them as the preset's paper defines it.

  `act_bits=None` leaves activations in full precision. `compute_dtype` is the
  preset's own compute dtype (`bf16` means bfloat16 matmuls); None lets the
  platform choose (bfloat16 on accelerators, float32 on CPU). `norm` is the norm a
  quantized layer carries (a name in `bitjax.nn.NORM_TYPES`; None: the model's
  `config.model.norm`), `norm_eps` the model's norm eps unless the config sets one, and
  `bias` whether the model's dense layers take a bias unless the config says.
  """

  weight: str = "none"
  act_bits: int | None = None
  act_granularity: str = "token"
  compute_dtype: str | None = None
  norm: str | None = None
  norm_eps: float = 1e-6
  bias: bool = False

  def __post_init__(self):
    self.weight_quantizer  # validated against the registries as they are now
    if self.act_bits is not None and self.act_bits not in ACTIVATION_BITS:
      raise ValueError(
          f"act_bits={self.act_bits!r} is not None or an integer in "
          f"[{ACTIVATION_BITS[0]}, {ACTIVATION_BITS[-1]}]")
    quantizers.activation_quantizer(self.act_granularity, name="act_granularity")

  @property
  def weight_quantizer(self) -> WeightQuantizer:
    return quantizers.weight_quantizer(self.weight, name="weight_quant")

  @property
  def quantized(self) -> bool:
    return self.weight_quantizer.quantized or self.act_bits is not None

  @property
  def weight_bits(self) -> float:
    """Information per weight: the weight quantizer's bits (log2(3) for ternary, 1 for
    sign, 16 for none)."""
    return self.weight_quantizer.bits

  @property
  def lr_recipe(self) -> str:
    """The default learning-rate recipe: "low_bit" (BitNet's two-stage schedule) once
    activations are quantized, else the weight quantizer's own."""
    return "low_bit" if self.act_bits is not None else self.weight_quantizer.lr_recipe


PRECISIONS: dict[str, QuantSpec] = {
    "fp32": QuantSpec(compute_dtype="float32"),
    "bf16": QuantSpec(compute_dtype="bfloat16"),
    "fp16": QuantSpec(compute_dtype="float16"),
    "b1.58": QuantSpec("absmean", 8, "token"),
    "b1.58-median": QuantSpec("absmedian", 8, "token"),
    "1bit": QuantSpec("sign", 8, "tensor"),
    # "When are 1.58 bits enough?" (arXiv 2411.05882) and its authors' BitLinear
    # (schneiderkamplab/bitlinear, bitlinear/bitlinear.py): LayerNorm without affine
    # parameters (torch.layer_norm, eps 1e-5) before quantization, activations scaled by
    # 128/absmax per token, absmean ternary weights, with bias (docs/design.md section 3).
    "b1.58-ln": QuantSpec("absmean", 8, "token_qb", norm="layernorm", norm_eps=1e-5, bias=True),
}


def resolve_precision(
    precision: str,
    *,
    weight_quant: str | None = None,
    act_bits: int | None = None,
    act_granularity: str | None = None,
) -> QuantSpec:
  """The preset named `precision`, with any explicitly given field replaced.

  None keeps the preset's value; `act_bits=0` turns activation quantization
  off (e.g. a weight-only ternary model).
  """
  check_one_of("precision", precision, PRECISIONS)
  overrides = {}
  if weight_quant is not None:
    overrides["weight"] = weight_quant
  if act_bits is not None:
    overrides["act_bits"] = act_bits or None
  if act_granularity is not None:
    overrides["act_granularity"] = act_granularity
  return dataclasses.replace(PRECISIONS[precision], **overrides)
