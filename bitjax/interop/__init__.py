"""Exchanging weights with the BitNet ecosystem: Hugging Face checkpoints (BitNet packed,
latent and unquantized; LLaMA) in and out, and GGUF for llama.cpp / bitnet.cpp out."""

from bitjax.interop.errors import InteropError
from bitjax.interop.gguf import export_gguf
from bitjax.interop.hf import export_hf, import_hf, load_hf

__all__ = ["InteropError", "export_gguf", "export_hf", "import_hf", "load_hf"]
