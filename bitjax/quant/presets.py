"""The one table of precision presets (DESIGN.md section 2)."""

from __future__ import annotations

import dataclasses
import math

from bitjax.quant.quantizers import ACTIVATION_BITS, GRANULARITIES, WEIGHT_METHODS


@dataclasses.dataclass(frozen=True)
class QuantSpec:
  """How a BitDense layer quantizes: weight method, activation bits and granularity.

  `act_bits=None` leaves activations in full precision. `compute_dtype` is the
  preset's own compute dtype (`bf16` means bfloat16 matmuls); None lets the
  platform choose (bfloat16 on accelerators, float32 on CPU).
  """

  weight: str = "none"
  act_bits: int | None = None
  act_granularity: str = "token"
  compute_dtype: str | None = None

  def __post_init__(self):
    if self.weight not in WEIGHT_METHODS:
      raise ValueError(f"weight_quant={self.weight!r} is not one of {list(WEIGHT_METHODS)}")
    if self.act_bits is not None and self.act_bits not in ACTIVATION_BITS:
      raise ValueError(
          f"act_bits={self.act_bits!r} is not None or an integer in "
          f"[{ACTIVATION_BITS[0]}, {ACTIVATION_BITS[-1]}]")
    if self.act_granularity not in GRANULARITIES:
      raise ValueError(
          f"act_granularity={self.act_granularity!r} is not one of {list(GRANULARITIES)}")

  @property
  def quantized(self) -> bool:
    return self.weight != "none" or self.act_bits is not None

  @property
  def lr_recipe(self) -> str:
    """Which learning-rate recipe of `config.optim.recipes` a model of this spec trains with."""
    return "low_bit" if self.quantized else "full_precision"

  @property
  def weight_bits(self) -> float:
    """Information per weight: log2(3) for ternary, 1 for sign, 16 otherwise."""
    return {"absmean": math.log2(3), "absmedian": math.log2(3), "sign": 1.0}.get(self.weight, 16.0)


PRECISIONS: dict[str, QuantSpec] = {
    "fp32": QuantSpec(compute_dtype="float32"),
    "bf16": QuantSpec(compute_dtype="bfloat16"),
    "fp16": QuantSpec(compute_dtype="float16"),
    "b1.58": QuantSpec("absmean", 8, "token"),
    "b1.58-median": QuantSpec("absmedian", 8, "token"),
    "1bit": QuantSpec("sign", 8, "tensor"),
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
  if precision not in PRECISIONS:
    raise ValueError(f"precision={precision!r} is not one of {list(PRECISIONS)}")
  overrides = {}
  if weight_quant is not None:
    overrides["weight"] = weight_quant
  if act_bits is not None:
    overrides["act_bits"] = act_bits or None
  if act_granularity is not None:
    overrides["act_granularity"] = act_granularity
  return dataclasses.replace(PRECISIONS[precision], **overrides)
