"""Inference on packed ternary weights, and generation with a key-value cache."""

from bitjax.infer.generate import generate
from bitjax.infer.packed import (PackedDense, PackedWeight, PackReport, export_packed,
                                  import_packed, pack_model)

__all__ = ["PackReport", "PackedDense", "PackedWeight", "export_packed", "generate",
           "import_packed", "pack_model"]
