"""Quantizers, straight-through estimators and precision presets."""

from bitjax.quant.presets import PRECISIONS, QuantSpec, resolve_precision
from bitjax.quant.quantizers import (
    ACTIVATION_BITS,
    GRANULARITIES,
    WEIGHT_METHODS,
    activation_quant,
    quantize_activation,
    quantize_weight,
    weight_quant,
)

__all__ = [
    "ACTIVATION_BITS", "GRANULARITIES", "PRECISIONS", "QuantSpec", "WEIGHT_METHODS",
    "activation_quant", "quantize_activation", "quantize_weight", "resolve_precision",
    "weight_quant",
]
