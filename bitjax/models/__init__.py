"""Models: decoder-only LM (more in later issues: mlp, gnn, encoder, encdec)."""

from bitjax.models.decoder import (Decoder, DecoderConfig, count_params, quantized_kernels)

__all__ = ["Decoder", "DecoderConfig", "count_params", "quantized_kernels"]
