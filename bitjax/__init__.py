"""bitjax: 1-bit and ternary (BitNet b1.58) networks in JAX/Flax.

Subpackages import lazily so that `bitjax.quant`, `bitjax.nn`, `bitjax.kernels`
and `bitjax.models` work without the data stack (TFDS, grain, ml_collections);
`bitjax.load` (bitjax.train.loading) imports the trainer's modules on first use.
"""

__version__ = "0.1.0"
__all__ = ["load"]


def __getattr__(name):
  if name == "load":
    from bitjax.train.loading import load

    return load
  raise AttributeError(f"module 'bitjax' has no attribute {name!r}")
