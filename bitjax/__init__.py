"""bitjax: 1-bit and ternary (BitNet b1.58) networks in JAX/Flax.

Subpackages import lazily so that `bitjax.quant`, `bitjax.nn`, `bitjax.kernels`
and `bitjax.models` work without the data stack (TFDS, grain, ml_collections).
"""

__version__ = "0.1.0"
