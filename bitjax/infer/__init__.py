"""Inference on packed ternary weights."""

from bitjax.infer.packed import PackedDense, PackedWeight, PackReport, pack_model

__all__ = ["PackReport", "PackedDense", "PackedWeight", "pack_model"]
