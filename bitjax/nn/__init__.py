"""Flax NNX layers: BitDense, norms, attention, embeddings."""

from bitjax.nn.attention import Attention, rope
from bitjax.nn.dense import BitDense, PackedWeight
from bitjax.nn.embed import Embed
from bitjax.nn.norms import NORM_TYPES, LayerNormNoAffine, RMSNorm, make_norm
from bitjax.nn.params import DTYPES, logical_param, resolve_dtype

__all__ = [
    "Attention", "BitDense", "DTYPES", "Embed", "LayerNormNoAffine", "NORM_TYPES", "PackedWeight",
    "RMSNorm", "logical_param", "make_norm", "resolve_dtype", "rope",
]
