"""Text classification from directories of files, with bag-of-words / TF-IDF features.

A file's class is its top-level directory (the 20 Newsgroups layout:
root/<class>/<file>). On the Python standard library this gives an offline task
with real text: which top-level package (asyncio, email, ...) a piece of code
comes from. Files are split into train/validation/test stratified by class, and
a file's chunks all stay in its split, so no split sees text from another's files.
"""

from __future__ import annotations

import collections
import dataclasses
import os

import numpy as np

from bitjax.data import corpus
from bitjax.data.splits import stratified_split
from bitjax.data.tabular import SPLIT_FRACTIONS, Classification

# The stdlib's test suites are left out of the package task: a test file exercises
# other packages, and `test` alone would outnumber every real package.
STDLIB_TASK_EXCLUDED_DIRS = (*corpus.STDLIB_EXCLUDED_DIRS, "test", "tests", "idle_test")
# Identifiers and words of two or more characters.
TOKEN_PATTERN = r"(?u)\b[A-Za-z_][A-Za-z0-9_]+\b"


@dataclasses.dataclass(frozen=True)
class TextExamples:
  """Per split {'texts': list[str], 'labels': int32[n], 'paths': list[str]}."""

  name: str
  splits: dict[str, dict]
  class_names: tuple[str, ...]


def chunks(text: str, chunk_chars: int | None, max_chunks: int | None) -> list[str]:
  """Consecutive pieces of `chunk_chars` characters (the whole text when None); a last
  piece under a quarter of that is dropped, and at most `max_chunks` are kept."""
  if chunk_chars is None:
    pieces = [text]
  else:
    pieces = [text[i:i + chunk_chars] for i in range(0, len(text), chunk_chars)]
    if len(pieces) > 1 and len(pieces[-1]) < chunk_chars // 4:
      pieces.pop()
  return [p for p in pieces[:max_chunks] if p.strip()]


def directory_classification(root: str, pattern: str = "**/*", *, exclude_dirs=(),
                             max_classes: int | None = None, min_files: int = 5,
                             chunk_chars: int | None = None, max_chunks_per_file: int | None = None,
                             seed: int = 0, name: str | None = None) -> TextExamples:
  """Examples labelled by top-level directory; files directly under `root` are skipped.

  Classes with fewer than `min_files` files are dropped; of the rest, the
  `max_classes` with the most files are kept (ties by name). Class ids follow the
  sorted class names.
  """
  files = [f for f in corpus.list_files(root, pattern, exclude_dirs) if "/" in f]
  counts = collections.Counter(f.split("/", 1)[0] for f in files)
  ranked = sorted((c for c, n in counts.items() if n >= min_files), key=lambda c: (-counts[c], c))
  class_names = tuple(sorted(ranked[:max_classes]))
  if len(class_names) < 2:
    raise ValueError(f"{root}: {len(class_names)} top-level directories hold at least "
                     f"{min_files} files matching {pattern!r}; a classification needs 2")
  class_id = {c: i for i, c in enumerate(class_names)}
  files = [f for f in files if f.split("/", 1)[0] in class_id]
  file_labels = np.array([class_id[f.split("/", 1)[0]] for f in files], np.int32)
  splits = {}
  for split, indices in stratified_split(file_labels, SPLIT_FRACTIONS, seed).items():
    texts, labels, paths = [], [], []
    for i in indices:
      pieces = chunks(corpus.read_text(os.path.join(root, files[i])), chunk_chars,
                      max_chunks_per_file)
      texts += pieces
      labels += [file_labels[i]] * len(pieces)
      paths += [files[i]] * len(pieces)
    splits[split] = {"texts": texts, "labels": np.array(labels, np.int32), "paths": paths}
  return TextExamples(name or os.path.basename(os.path.normpath(root)), splits, class_names)


def stdlib_packages(max_classes: int = 10, chunk_chars: int = 2000,
                    max_chunks_per_file: int = 4, seed: int = 0) -> TextExamples:
  """The offline task: which top-level standard-library package a code chunk is from."""
  return directory_classification(
      corpus.stdlib_root(), corpus.STDLIB_GLOB, exclude_dirs=STDLIB_TASK_EXCLUDED_DIRS,
      max_classes=max_classes, chunk_chars=chunk_chars,
      max_chunks_per_file=max_chunks_per_file, seed=seed, name="stdlib_packages")


def tfidf(examples: TextExamples, max_features: int = 10000, *,
          binary: bool = False) -> Classification:
  """TF-IDF (or binary bag-of-words with `binary=True`) features as scipy CSR float32,
  vocabulary and document frequencies from the train split only (scikit-learn's
  TfidfVectorizer: smoothed idf, rows L2-normalised)."""
  import scipy.sparse as sp  # Deferred with scikit-learn.
  from sklearn.feature_extraction.text import TfidfVectorizer

  vectorizer = TfidfVectorizer(token_pattern=TOKEN_PATTERN, max_features=max_features,
                               lowercase=False, binary=binary, use_idf=not binary,
                               norm=None if binary else "l2", dtype=np.float32)
  vectorizer.fit(examples.splits["train"]["texts"])
  width = len(vectorizer.vocabulary_)

  def features(texts):
    # scikit-learn refuses an empty list; a tiny corpus can leave a split empty.
    return vectorizer.transform(texts) if texts else sp.csr_matrix((0, width), dtype=np.float32)

  splits = {name: {"features": features(split["texts"]), "labels": split["labels"]}
            for name, split in examples.splits.items()}
  return Classification(examples.name, splits, examples.class_names)
