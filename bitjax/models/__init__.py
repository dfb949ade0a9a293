"""Models: decoder-only LM, MLP, GNN (SGC, GCN), encoder (BERT), encoder-decoder (T5)."""

from bitjax.models.decoder import Decoder, DecoderConfig, count_params, train_flops_per_token
from bitjax.models.precision import ModelConfig, quantized_kernels, weight_memory_bits

__all__ = ["Decoder", "DecoderConfig", "ModelConfig", "count_params", "quantized_kernels",
           "train_flops_per_token", "weight_memory_bits"]
