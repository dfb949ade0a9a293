"""The data sets the small-model tasks train on, by name, and their loaders.

Each loader takes a task's `config.data` section and is memoised on its values, so a
sweep builds each data set once per process. The loaders themselves live beside their
data (tabular, text_classification, text_tasks, graphs); importing this module needs
only numpy.
"""

from __future__ import annotations

import functools
import json
import os

from bitjax.data.graphs import PLANETOID_NAMES
from bitjax.data.tabular import TABULAR_DATASETS

EVAL_SPLITS = ("validation", "test")
TEXT_SOURCES = ("stdlib_packages", "text_dir")  # classify_text
SEQUENCE_SOURCES = ("stdlib_packages",)  # classify_sequence
GRAPHS = ("csbm", "karate_club", *PLANETOID_NAMES)

__all__ = ["EVAL_SPLITS", "GRAPHS", "SEQUENCE_SOURCES", "TABULAR_DATASETS", "TEXT_SOURCES",
           "cached_docstrings", "cached_graph", "cached_package_chunks", "cached_tabular",
           "cached_tfidf"]


def cached_by_fields(fn):
  """Memoise a loader on its data section's values: a sweep builds each data set once."""
  @functools.cache
  def by_key(key: str):
    return fn(json.loads(key))

  def load(data):
    fields = data.to_dict() if hasattr(data, "to_dict") else dict(data)
    return by_key(json.dumps(fields, sort_keys=True, default=str))

  return load


@cached_by_fields
def cached_tabular(data):
  """A scikit-learn bundled set (tabular.Classification)."""
  from bitjax.data.tabular import load_tabular

  return load_tabular(data["name"], seed=data["split_seed"])


@cached_by_fields
def cached_tfidf(data):
  """TF-IDF features of stdlib package chunks or of a directory of text files."""
  from bitjax.data import text_classification as tc

  chunking = dict(chunk_chars=data["chunk_chars"], max_chunks_per_file=data["max_chunks_per_file"],
                  seed=data["split_seed"])
  if data["name"] == "stdlib_packages":
    examples = tc.stdlib_packages(max_classes=data["max_classes"], **chunking)
  else:
    examples = tc.directory_classification(data["text_dir"], data["text_glob"],
                                           max_classes=data["max_classes"], **chunking)
  return tc.tfidf(examples, data["max_features"])


@cached_by_fields
def cached_graph(data):
  """One graph (graphs.Graph) with row-normalised features."""
  from bitjax.data import graphs

  if data["name"] == "csbm":
    graph = graphs.contextual_sbm(feature_signal=data["feature_signal"], seed=data["graph_seed"])
  elif data["name"] == "karate_club":
    graph = graphs.karate_club(seed=data["graph_seed"])
  else:
    graph = graphs.load_planetoid(data["name"], os.path.expanduser(data["data_dir"]))
  return graphs.row_normalized(graph)


@cached_by_fields
def cached_docstrings(data):
  """(code, docstring summary) pairs per corpus split of the stdlib or a text_dir."""
  from bitjax.data import corpus
  from bitjax.data.text_tasks import corpus_docstrings

  root = None if data["name"] == "stdlib" else data["text_dir"]
  pattern = corpus.STDLIB_GLOB if data["name"] == "stdlib" else data["text_glob"]
  return corpus_docstrings(root, pattern)


@cached_by_fields
def cached_package_chunks(data):
  """({split: {'tokens', 'mask', 'labels'}}, class count): byte-tokenized stdlib chunks
  of data['seq_len'] bytes labelled with their top-level package."""
  from bitjax.data.text_classification import stdlib_packages
  from bitjax.data.text_tasks import encode_padded
  from bitjax.data.tokenizers import ByteTokenizer

  examples = stdlib_packages(max_classes=data["max_classes"], chunk_chars=data["seq_len"],
                             max_chunks_per_file=data["max_chunks_per_file"],
                             seed=data["split_seed"])
  splits = {}
  for name, split in examples.splits.items():
    tokens, mask = encode_padded(ByteTokenizer(), split["texts"], data["seq_len"])
    splits[name] = {"tokens": tokens, "mask": mask, "labels": split["labels"]}
  return splits, len(examples.class_names)
