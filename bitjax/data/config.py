"""The `config.data` section: defaults and up-front validation.

Fields are read by attribute access, so an `ml_collections.ConfigDict` and a
`types.SimpleNamespace` both work.
"""

from __future__ import annotations

import os

from bitjax.data import corpus
from bitjax.data import tokenizers

DATASETS = ("stdlib", "text_dir", "tfds")
FIELDS = (
    "name",
    "data_dir",
    "text_dir",
    "text_glob",
    "tfds_name",
    "text_key",
    "train_split",
    "eval_split",
    "tokenizer",
    "shuffle_window",
)
# Features of the examples that the stdlib and text_dir builders write.
CORPUS_FEATURES = ("path", "text")


def optional(field_type: type):
  """A None config default that keeps a type, so `--config.x=...` can still set it."""
  import ml_collections

  return ml_collections.FieldReference(None, field_type=field_type)


def default_data_config():
  """The data section with its defaults: the offline stdlib corpus, bytes."""
  import ml_collections  # Deferred: only configs need it, not the pipelines.

  return ml_collections.ConfigDict({
      "name": "stdlib",
      # Where TFDS datasets are built and read; None: $TFDS_DATA_DIR or
      # ~/tensorflow_datasets. May be a gs:// path.
      "data_dir": optional(str),
      # For name='text_dir': the directory and a recursive glob inside it.
      "text_dir": optional(str),
      "text_glob": "**/*.txt",
      # For name='tfds': e.g. 'lm1b' or 'c4/en', prepared as array_record.
      "tfds_name": optional(str),
      "text_key": "text",
      "train_split": "train",
      "eval_split": "validation",
      "tokenizer": "byte",
      # Training windows are shuffled within blocks of this many windows, so a
      # batch mixes many documents instead of consecutive pieces of one; 0: off.
      "shuffle_window": 2048,
  })


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


def _nonempty_str(data_config, field: str) -> str:
  value = getattr(data_config, field)
  if not isinstance(value, str) or not value:
    raise ValueError(
        f"config.data.{field}={value!r} must be a non-empty string"
    )
  return value


def _one_of(field: str, value, allowed) -> None:
  if value not in allowed:
    raise ValueError(
        f"config.data.{field}={value!r} is not one of {sorted(allowed)}"
    )


def validate_data_config(data_config) -> None:
  """Checks every field of the data section; ValueError naming the first bad one."""
  missing = [f for f in FIELDS if not hasattr(data_config, f)]
  if missing:
    raise ValueError(
        f"config.data is missing field(s) {missing}; expected {list(FIELDS)}"
    )
  _one_of("name", data_config.name, DATASETS)
  _one_of("tokenizer", data_config.tokenizer, tokenizers.TOKENIZERS)
  window = data_config.shuffle_window
  if not isinstance(window, int) or isinstance(window, bool) or window < 0:
    raise ValueError(
        f"config.data.shuffle_window={window!r} must be an integer >= 0"
    )
  if data_config.data_dir is not None:
    data_dir = _nonempty_str(data_config, "data_dir")
    local = os.path.expanduser(data_dir)
    if "://" not in data_dir and os.path.exists(local) and not os.path.isdir(local):
      raise ValueError(
          f"config.data.data_dir={data_dir!r} exists but is not a directory"
      )
  text_key = _nonempty_str(data_config, "text_key")
  splits = [_nonempty_str(data_config, f) for f in ("train_split", "eval_split")]
  if data_config.name == "tfds":
    _nonempty_str(data_config, "tfds_name")
    return
  _one_of("text_key", text_key, CORPUS_FEATURES)
  for field, split in zip(("train_split", "eval_split"), splits):
    # TFDS slicing such as 'train[:10%]' is allowed after a valid split name.
    _one_of(field, split.split("[")[0], corpus.SPLITS)
  if data_config.name == "text_dir":
    text_dir_files(
        _nonempty_str(data_config, "text_dir"),
        _nonempty_str(data_config, "text_glob"),
    )
