"""Models: decoder-only LM (more in later issues: mlp, gnn, encoder, encdec)."""

from bitjax.models.decoder import (Decoder, DecoderConfig, count_params, quantized_kernels,
                                   train_flops_per_token, weight_memory_bits)

__all__ = ["Decoder", "DecoderConfig", "count_params", "quantized_kernels",
           "train_flops_per_token", "weight_memory_bits"]
