"""Quantizer records and their registries, straight-through estimators and precision presets."""

from bitjax.quant.presets import PRECISIONS, QuantSpec, resolve_precision
from bitjax.quant.quantizers import (
    ACTIVATION_BITS,
    ACTIVATION_QUANTIZERS,
    LR_RECIPES,
    PACKINGS,
    WEIGHT_QUANTIZERS,
    ActivationQuantizer,
    WeightQuantizer,
    absmax_quantizer,
    activation_quant,
    quantize_activation,
    quantize_weight,
    register_activation_quantizer,
    register_weight_quantizer,
    ternary_around,
    weight_quant,
)

__all__ = [
    "ACTIVATION_BITS", "ACTIVATION_QUANTIZERS", "ActivationQuantizer", "LR_RECIPES", "PACKINGS",
    "PRECISIONS", "QuantSpec", "WEIGHT_QUANTIZERS", "WeightQuantizer", "absmax_quantizer",
    "activation_quant", "quantize_activation", "quantize_weight", "register_activation_quantizer",
    "register_weight_quantizer", "resolve_precision", "ternary_around", "weight_quant",
]
