"""Inference on packed ternary weights."""

from bitjax.infer.packed import PackReport, export_packed, import_packed, pack_model

__all__ = ["PackReport", "export_packed", "import_packed", "pack_model"]
