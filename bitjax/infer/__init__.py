"""Inference: serving BitDense layers on packed ternary weights, and generation with a
key-value cache."""

from bitjax.infer.generation import generate, generate_text
from bitjax.infer.packed import (PackReport, export_packed, import_packed, logit_agreement,
                                 pack_model, weight_code_stats)

__all__ = ["PackReport", "export_packed", "generate", "generate_text", "import_packed",
           "logit_agreement", "pack_model", "weight_code_stats"]
