"""Models: decoder-only LM, MLP, GNN (SGC, GCN), encoder (BERT), encoder-decoder (T5).

Each has a config dataclass (the schema of `config.model`) built on `ModelConfig`,
whose precision fields pick a preset from the one table in `bitjax.quant`.
"""

from bitjax.models.decoder import Decoder, DecoderConfig, count_params, train_flops_per_token
from bitjax.models.encdec import EncDecConfig, EncoderDecoder
from bitjax.models.encoder import Encoder, EncoderConfig
from bitjax.models.gnn import GNN, GNNConfig
from bitjax.models.mlp import MLPClassifier, MLPConfig
from bitjax.models.precision import ModelConfig, quantized_kernels, weight_memory_bits

__all__ = ["Decoder", "DecoderConfig", "EncDecConfig", "Encoder", "EncoderConfig",
           "EncoderDecoder", "GNN", "GNNConfig", "MLPClassifier", "MLPConfig", "ModelConfig",
           "count_params", "quantized_kernels", "train_flops_per_token", "weight_memory_bits"]
