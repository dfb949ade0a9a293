"""The language-model corpus fields of `config.data`: schema, defaults, validation.

`CorpusData` is the schema (a `bitjax.schema.Section`); tasks made from the corpus
subclass it with their own fields. The pipelines read fields by attribute access,
so an `ml_collections.ConfigDict` and a `types.SimpleNamespace` both work.
"""

from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

from bitjax.data import corpus
from bitjax.data import tokenizers
from bitjax.schema import NON_EMPTY_STR, NON_NEGATIVE_INT, Section, check_one_of, field

DATASETS = ("stdlib", "text_dir", "tfds")
# Features of the examples that the stdlib and text_dir builders write.
CORPUS_FEATURES = ("path", "text")


@dataclasses.dataclass(frozen=True)
class CorpusData(Section):
  """Schema of the corpus fields of `config.data`: the offline stdlib corpus, bytes."""

  section: ClassVar[str] = "data"

  name: str = field("stdlib", allowed=DATASETS)
  # Where TFDS datasets are built and read; None: $TFDS_DATA_DIR or
  # ~/tensorflow_datasets. May be a gs:// path.
  data_dir: str | None = field(None, rule=NON_EMPTY_STR)
  # For name='text_dir': the directory and a recursive glob inside it.
  text_dir: str | None = field(None, rule=NON_EMPTY_STR)
  text_glob: str = field("**/*.txt", rule=NON_EMPTY_STR)
  # For name='tfds': e.g. 'lm1b' or 'c4/en', prepared as array_record.
  tfds_name: str | None = field(None, rule=NON_EMPTY_STR)
  text_key: str = field("text", rule=NON_EMPTY_STR)
  train_split: str = field("train", rule=NON_EMPTY_STR)
  eval_split: str = field("validation", rule=NON_EMPTY_STR)
  tokenizer: str = field("byte", allowed=tokenizers.TOKENIZERS)
  # For a subword tokenizer: a tokenizer.json (bpe) or .model file (sentencepiece), or a
  # directory holding one (`python -m bitjax tokenizer --out DIR`, a model folder).
  tokenizer_path: str | None = field(None, rule=NON_EMPTY_STR)
  # Training windows are shuffled within blocks of this many windows, so a
  # batch mixes many documents instead of consecutive pieces of one; 0: off.
  shuffle_window: int = field(2048, rule=NON_NEGATIVE_INT)

  def __post_init__(self):
    super().__post_init__()
    if self.data_dir is not None:
      local = os.path.expanduser(self.data_dir)
      if "://" not in self.data_dir and os.path.exists(local) and not os.path.isdir(local):
        raise self.error("data_dir", "exists but is not a directory")
    if (self.tokenizer == "byte") != (self.tokenizer_path is None):
      raise self.error("tokenizer_path", "must name the tokenizer's file or directory when "
                       "config.data.tokenizer is 'bpe' or 'sentencepiece', and be None for "
                       "'byte'")
    if self.name == "tfds":
      if self.tfds_name is None:
        raise self.error("tfds_name", "must be a non-empty string when config.data.name='tfds'")
      return
    check_one_of("config.data.text_key", self.text_key, CORPUS_FEATURES)
    for name in ("train_split", "eval_split"):
      # TFDS slicing such as 'train[:10%]' is allowed after a valid split name.
      check_one_of(f"config.data.{name}", getattr(self, name).split("[")[0], corpus.SPLITS)
    if self.name == "text_dir":
      if self.text_dir is None:
        raise self.error("text_dir", "must name a directory when config.data.name='text_dir'")
      text_dir_files(self.text_dir, self.text_glob)


def default_data_config():
  """The corpus fields with their defaults, as a ConfigDict section."""
  return CorpusData.config_dict()


def validate_data_config(data_config) -> CorpusData:
  """Checks the corpus fields of a data section (a task's own fields are its schema's
  to check); ValueError naming the first bad one. The pipelines read every field, so a
  missing one is an error here rather than a default."""
  names = CorpusData.field_names()
  missing = [name for name in names if not hasattr(data_config, name)]
  if missing:
    raise ValueError(f"config.data is missing field(s) {missing}; expected {list(names)}")
  return CorpusData(**{name: getattr(data_config, name) for name in names})


def resolve_data_dir(data_config) -> str:
  """`data_config.data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  data_dir = data_config.data_dir or os.environ.get("TFDS_DATA_DIR")
  return os.path.expanduser(data_dir or "~/tensorflow_datasets")


def text_dir_files(text_dir: str, pattern: str) -> list[str]:
  """Files of a text_dir corpus; ValueError naming the field when unusable."""
  if not os.path.isdir(text_dir):
    raise ValueError(
        f"config.data.text_dir={text_dir!r} is not an existing directory"
    )
  files = corpus.list_files(text_dir, pattern)
  if len(files) < 2:
    raise ValueError(
        f"config.data.text_dir={text_dir!r} has {len(files)} file(s) matching"
        f" config.data.text_glob={pattern!r}; at least 2 are needed (one for"
        " train, one for validation)"
    )
  return files
