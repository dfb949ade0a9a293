"""TFDS builders for file corpora, and random-access sources for every dataset.

The corpora are written as ArrayRecord and read back with `as_data_source`, so
no TensorFlow is needed. Each example is {'text': str, 'path': str}; the path
is relative to the corpus root. The builders are not added to the TFDS registry
(a later TFDS release could ship a dataset with the same name); a finished
build still opens without this module, e.g.
`tfds.data_source('stdlib/py3_11_7', split='train', data_dir=...)`.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from absl import logging
import tensorflow_datasets as tfds

from bitjax.data import config as config_lib
from bitjax.data import corpus


@dataclasses.dataclass(eq=False)
class CorpusConfig(tfds.core.BuilderConfig):
  """A corpus of files: `root`, a recursive glob, directories to leave out."""

  root: str = ""
  pattern: str = ""
  exclude_dirs: tuple[str, ...] = ()


class _CorpusBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """One example per file, split by `corpus.split_files`.

  `info.metadata` holds `corpus.corpus_fingerprint` of the files as built.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  # No code directory holding checksums or config files: nothing is
  # downloaded. Setting it also skips a TFDS 4.9 lookup that imports
  # `importlib_resources`, which TFDS only declares for Python < 3.9.
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=tfds.features.FeaturesDict({
            "text": tfds.features.Text(),
            "path": tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is local.
    cfg = self.builder_config
    files = corpus.list_files(cfg.root, cfg.pattern, cfg.exclude_dirs)
    self.info.metadata.update(corpus.corpus_fingerprint(cfg.root, files))
    self.info.metadata.update(root=cfg.root, pattern=cfg.pattern)
    return {
        split: self._generate_examples(cfg.root, split_files)
        for split, split_files in corpus.split_files(files).items()
    }

  def _generate_examples(self, root, files):
    for rel in files:
      yield rel, {"text": corpus.read_text(os.path.join(root, rel)), "path": rel}


def stdlib_config() -> CorpusConfig:
  """Config named after the interpreter version, e.g. 'py3_11_7'.

  One config per version keeps corpora of different interpreters apart in a
  shared data_dir.
  """
  v = sys.version_info
  return CorpusConfig(
      name=f"py{v.major}_{v.minor}_{v.micro}",
      description=f"Python {v.major}.{v.minor}.{v.micro} standard library",
      root=corpus.stdlib_root(),
      pattern=corpus.STDLIB_GLOB,
      exclude_dirs=corpus.STDLIB_EXCLUDED_DIRS,
  )


class Stdlib(_CorpusBuilder, skip_registration=True):
  """Python standard library sources of one interpreter version (*.py files)."""

  BUILDER_CONFIGS = [stdlib_config()]


class TextDir(_CorpusBuilder, skip_registration=True):
  """Text files from a local directory (one example per file)."""


def text_dir_config(text_dir: str, pattern: str) -> CorpusConfig:
  """Config whose name changes with the directory and its listing.

  The name is the directory's base name plus `corpus.listing_digest`, so a
  build is reused only while no file was added, removed, resized or touched.
  """
  root = os.path.abspath(text_dir)
  files = config_lib.text_dir_files(root, pattern)
  slug = "".join(c if c.isalnum() else "_" for c in os.path.basename(root))
  digest = corpus.listing_digest(root, files)[:16]
  return CorpusConfig(
      name=f"{slug.lower()[:40]}_{digest}".lstrip("_"),
      description=f"Files matching {pattern!r} under {root}",
      root=root,
      pattern=pattern,
  )


def corpus_builder(data_config) -> _CorpusBuilder:
  """The (possibly not yet built) builder for name='stdlib' or 'text_dir'."""
  data_dir = config_lib.resolve_data_dir(data_config)
  if data_config.name == "stdlib":
    return Stdlib(data_dir=data_dir, file_format="array_record")
  if data_config.name == "text_dir":
    cfg = text_dir_config(data_config.text_dir, data_config.text_glob)
    return TextDir(config=cfg, data_dir=data_dir, file_format="array_record")
  raise ValueError(
      f"config.data.name={data_config.name!r} is not one of"
      " ['stdlib', 'text_dir']"
  )


def prepare(builder: _CorpusBuilder) -> _CorpusBuilder:
  """Builds the corpus unless a finished build exists; returns the builder.

  TFDS writes into a temporary directory and renames it when done, so an
  interrupted build is redone rather than half-read. Processes that start on
  one fresh data_dir together (a sweep's shares) may all build; the first
  rename wins and the others use its build.
  """
  if not builder.is_prepared():
    cfg = builder.builder_config
    files = corpus.list_files(cfg.root, cfg.pattern, cfg.exclude_dirs)
    nbytes = sum(os.path.getsize(os.path.join(cfg.root, f)) for f in files)
    logging.warning(
        "bitjax.data: building %s/%s from %s (%d files, %d bytes) into %s",
        builder.name, cfg.name, cfg.root, len(files), nbytes, builder.data_dir,
    )
    try:
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False)
      )
    except FileExistsError:
      rebuilt = type(builder)(
          config=builder.builder_config, data_dir=builder.data_dir_root,
          file_format=builder.info.file_format,
      )
      if not rebuilt.is_prepared():
        raise
      logging.warning("bitjax.data: another process built %s first; using its build",
                      builder.name)
      return rebuilt
  return builder


def corpus_metadata(data_config) -> dict:
  """Fingerprint of the built corpus: sha256, file and byte counts per split."""
  return dict(prepare(corpus_builder(data_config)).info.metadata)


def _tfds_source(name: str, split: str, data_dir: str):
  """Random-access source of a TFDS dataset already prepared under data_dir."""
  try:
    builder = tfds.core.read_only_builder.builder_from_files(
        name, data_dir=data_dir
    )
  except tfds.core.registered.DatasetNotFoundError as e:
    raise FileNotFoundError(
        f"config.data.tfds_name={name!r}: no prepared TFDS dataset found in"
        f" config.data.data_dir={data_dir!r} (looked for"
        f" {os.path.join(data_dir, name)}/<version>/dataset_info.json)."
        " bitjax never downloads datasets (there is no internet at run time):"
        " prepare it with file_format='array_record' on a machine that has"
        " access and copy it there, or point config.data.data_dir at it."
    ) from e
  try:
    return builder.as_data_source(split=split)
  except NotImplementedError as e:
    raise ValueError(
        f"config.data.tfds_name={name!r} in {builder.data_dir} is stored as"
        f" {builder.info.file_format}; random access without TensorFlow needs"
        " array_record (re-prepare it with file_format='array_record')."
    ) from e


def data_source(data_config, split: str):
  """Random-access sequence of example dicts for `split` of the configured data.

  Builds the stdlib or text_dir corpus on first use.
  """
  if data_config.name == "tfds":
    return _tfds_source(
        data_config.tfds_name, split, config_lib.resolve_data_dir(data_config)
    )
  return prepare(corpus_builder(data_config)).as_data_source(split=split)
