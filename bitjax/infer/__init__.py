"""Inference on packed ternary weights."""

from bitjax.infer.packed import (PackedDense, PackedWeight, PackReport, export_packed,
                                  import_packed, pack_model)

__all__ = ["PackReport", "PackedDense", "PackedWeight", "export_packed", "import_packed",
           "pack_model"]
