"""Data for bitjax: corpora as TFDS datasets, tokenizers, grain pipelines.

Names load on first access, so `from bitjax.data import ByteTokenizer` needs
only numpy; TFDS and grain are imported when a builder or pipeline is used.
"""

import importlib

_EXPORTS = {
    "ByteTokenizer": "tokenizers",
    "TOKENIZERS": "tokenizers",
    "get_tokenizer": "tokenizers",
    "DATASETS": "config",
    "default_data_config": "config",
    "resolve_data_dir": "config",
    "validate_data_config": "config",
    "VALIDATION_FRACTION": "corpus",
    "corpus_fingerprint": "corpus",
    "split_files": "corpus",
    "corpus_metadata": "builders",
    "data_source": "builders",
    "make_train_iterator": "pipeline",
    "make_eval_batches": "pipeline",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'bitjax.data' has no attribute {name!r}")
  return getattr(importlib.import_module(f"bitjax.data.{_EXPORTS[name]}"), name)
