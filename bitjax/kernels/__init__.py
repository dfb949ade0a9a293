"""Packed ternary weights and the kernels that multiply by them (DESIGN.md section 4)."""

from bitjax.kernels.format import (FORMAT_NAME, FORMAT_VERSION, K_BLOCK,
                                   pack_base3, pack_ternary, padded_k, ternary_to_codes,
                                   unpack_base3, unpack_ternary)
from bitjax.kernels.ops import ACTIVATIONS, BACKENDS, reference_sums, ternary_matmul

__all__ = [
    "ACTIVATIONS", "BACKENDS", "FORMAT_NAME", "FORMAT_VERSION", "K_BLOCK",
    "pack_base3", "pack_ternary", "padded_k", "reference_sums", "ternary_matmul",
    "ternary_to_codes", "unpack_base3", "unpack_ternary",
]
