"""The data sets the small-model tasks train on, by name, and their loaders.

Each loader takes a task's `config.data` section and is memoised on its values, so a
sweep builds each data set once per process. The loaders themselves live beside their
data (tabular, text_classification, text_tasks, graphs); importing this module needs
only numpy.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import ClassVar

from bitjax.data.config import CorpusData
from bitjax.data.graphs import PLANETOID_NAMES
from bitjax.data.tabular import TABULAR_DATASETS
from bitjax.schema import NON_NEGATIVE, POSITIVE_INT, Section, field

EVAL_SPLITS = ("validation", "test")
TEXT_SOURCES = ("stdlib_packages", "text_dir")  # classify_text
SEQUENCE_SOURCES = ("stdlib_packages",)  # classify_sequence
GRAPHS = ("csbm", "karate_club", *PLANETOID_NAMES)
SEQ2SEQ_OBJECTIVES = ("span_corruption", "docstrings")

__all__ = ["EVAL_SPLITS", "GRAPHS", "GraphData", "MaskedLMData", "SEQ2SEQ_OBJECTIVES",
           "SEQUENCE_SOURCES", "Seq2SeqData", "SequenceClassData", "TABULAR_DATASETS",
           "TEXT_SOURCES", "TabularData", "TextClassData", "cached_docstrings", "cached_graph",
           "cached_package_chunks", "cached_tabular", "cached_tfidf"]


# -- the data sections of the small-model tasks (bitjax.schema; docs/design.md §7) --------


@dataclasses.dataclass(frozen=True)
class TabularData(Section):
  """`config.data` of classify_tabular: a scikit-learn bundled set, split by `split_seed`."""

  section: ClassVar[str] = "data"

  name: str = field("digits", allowed=TABULAR_DATASETS)
  split_seed: int = 0
  eval_split: str = field("validation", allowed=EVAL_SPLITS)


@dataclasses.dataclass(frozen=True)
class TextClassData(Section):
  """`config.data` of classify_text: TF-IDF of stdlib package chunks or of a directory of
  class folders (`text_dir`, files matching `text_glob`)."""

  section: ClassVar[str] = "data"

  name: str = field("stdlib_packages", allowed=TEXT_SOURCES)
  text_dir: str | None = None
  text_glob: str = "**/*.txt"
  max_classes: int = field(10, rule=POSITIVE_INT)
  chunk_chars: int = field(2000, rule=POSITIVE_INT)
  max_chunks_per_file: int = field(4, rule=POSITIVE_INT)
  max_features: int = field(10000, rule=POSITIVE_INT)
  split_seed: int = 0
  eval_split: str = field("validation", allowed=EVAL_SPLITS)

  def __post_init__(self):
    super().__post_init__()
    if self.name == "text_dir" and not self.text_dir:
      raise self.error("text_dir", "must name a directory when config.data.name='text_dir'")


@dataclasses.dataclass(frozen=True)
class SequenceClassData(Section):
  """`config.data` of classify_sequence: which top-level stdlib package a chunk is from."""

  section: ClassVar[str] = "data"

  name: str = field("stdlib_packages", allowed=SEQUENCE_SOURCES)
  max_classes: int = field(10, rule=POSITIVE_INT)
  max_chunks_per_file: int = field(8, rule=POSITIVE_INT)
  split_seed: int = 0
  eval_split: str = field("validation", allowed=EVAL_SPLITS)


@dataclasses.dataclass(frozen=True)
class GraphData(Section):
  """`config.data` of node_classification. csbm's feature_signal 0.2 makes SGC about as
  accurate as on Cora (81%): at the generator's 0.5 the words alone nearly give the
  class away. Planetoid sets are read from `data_dir` (ind.<name>.* files)."""

  section: ClassVar[str] = "data"

  name: str = field("csbm", allowed=GRAPHS)
  data_dir: str | None = None
  graph_seed: int = 0
  feature_signal: float = field(0.2, rule=NON_NEGATIVE)
  eval_split: str = field("validation", allowed=EVAL_SPLITS)

  def __post_init__(self):
    super().__post_init__()
    if self.name in PLANETOID_NAMES and not self.data_dir:
      raise self.error("data_dir", f"must hold the Planetoid files ind.{self.name}.*")


@dataclasses.dataclass(frozen=True)
class MaskedLMData(CorpusData):
  """`config.data` of mlm: the corpus fields and the share of tokens masked."""

  mask_rate: float = field(0.15, rule=NON_NEGATIVE)


@dataclasses.dataclass(frozen=True)
class Seq2SeqData(CorpusData):
  """`config.data` of seq2seq: the corpus fields, the objective and its sizes."""

  objective: str = field("span_corruption", allowed=SEQ2SEQ_OBJECTIVES)
  target_len: int = field(32, rule=POSITIVE_INT)
  noise_density: float = field(0.15, rule=NON_NEGATIVE)
  mean_span: float = field(3.0, rule=NON_NEGATIVE)
  max_sentinels: int = field(16, rule=POSITIVE_INT)

  def __post_init__(self):
    super().__post_init__()
    if self.objective == "docstrings" and self.name == "tfds":
      raise self.error("objective", "reads Python files: config.data.name must be 'stdlib' "
                       "or 'text_dir'")


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
