"""Corpora as sorted lists of files: listing, train/validation split, fingerprints.

Plain filesystem code (no TFDS), so the split rule and the hashes can be tested
and reused on their own. Paths are POSIX paths relative to the corpus root.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sysconfig

# The one place that sets the share of files held out for validation. A file's
# split depends only on its relative path, so adding or removing other files
# never moves it between splits.
VALIDATION_FRACTION = 0.025
SPLITS = ("train", "validation")

STDLIB_GLOB = "**/*.py"
# Third-party packages live under the stdlib directory but are not part of it.
STDLIB_EXCLUDED_DIRS = ("site-packages", "dist-packages")


def stdlib_root() -> str:
  """Directory holding the running interpreter's standard library sources."""
  return sysconfig.get_paths()["stdlib"]


def list_files(root: str, pattern: str, exclude_dirs=()) -> list[str]:
  """Sorted relative paths of the regular files under `root` matching `pattern`.

  `pattern` is a recursive glob (`**` spans directories); hidden files and
  directories are skipped, as are files under any directory named in
  `exclude_dirs`.
  """
  excluded = set(exclude_dirs)
  found = []
  for rel in glob.glob(pattern, root_dir=root, recursive=True):
    parts = rel.split(os.sep)
    if excluded.isdisjoint(parts[:-1]) and os.path.isfile(os.path.join(root, rel)):
      found.append("/".join(parts))
  return sorted(found)


def validation_score(relpath: str) -> float:
  """A uniform number in [0, 1) fixed by the path; below the fraction -> validation."""
  digest = hashlib.sha256(relpath.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64


def split_files(relpaths) -> dict[str, list[str]]:
  """Deterministic file-level split, keeping the input order within each split.

  Files scoring below VALIDATION_FRACTION go to validation. A small corpus (two
  or more files) where none does still gets one: its lowest-scoring file.
  """
  relpaths = list(relpaths)
  held_out = {p for p in relpaths if validation_score(p) < VALIDATION_FRACTION}
  if not held_out and len(relpaths) > 1:
    held_out = {min(relpaths, key=validation_score)}
  return {
      "train": [p for p in relpaths if p not in held_out],
      "validation": [p for p in relpaths if p in held_out],
  }


def corpus_fingerprint(root: str, relpaths) -> dict:
  """Content hash and file/byte counts of a corpus, overall and per split.

  `sha256` covers the sorted relative paths and the raw bytes of every file,
  each length-prefixed so that no two different corpora hash the same way.
  """
  relpaths = sorted(relpaths)
  split_of = {
      rel: split for split, files in split_files(relpaths).items() for rel in files
  }
  digest = hashlib.sha256()
  stats = {f"{split}_{n}": 0 for split in SPLITS for n in ("files", "bytes")}
  for rel in relpaths:
    name = rel.encode("utf-8")
    with open(os.path.join(root, rel), "rb") as f:
      data = f.read()
    for chunk in (name, data):
      digest.update(len(chunk).to_bytes(8, "big"))
      digest.update(chunk)
    stats[f"{split_of[rel]}_files"] += 1
    stats[f"{split_of[rel]}_bytes"] += len(data)
  stats["num_files"] = len(relpaths)
  stats["num_bytes"] = sum(stats[f"{split}_bytes"] for split in SPLITS)
  stats["sha256"] = digest.hexdigest()
  stats["validation_fraction"] = VALIDATION_FRACTION
  return stats


def listing_digest(root: str, relpaths) -> str:
  """Hash of the absolute root and every file's name, size and mtime.

  Cheap (no file contents are read) and changes whenever a file is added,
  removed, renamed or rewritten, so it can name a build of that directory.
  """
  root = os.path.abspath(root)
  digest = hashlib.sha256(root.encode("utf-8"))
  for rel in sorted(relpaths):
    st = os.stat(os.path.join(root, rel))
    digest.update(f"\0{rel}\0{st.st_size}\0{st.st_mtime_ns}".encode("utf-8"))
  return digest.hexdigest()


def read_text(path: str) -> str:
  """File contents as text: UTF-8, undecodable bytes replaced with U+FFFD.

  Replacing keeps every file (a few stdlib test files are deliberately not
  UTF-8) while the fingerprint still covers the raw bytes.
  """
  with open(path, "rb") as f:
    return f.read().decode("utf-8", errors="replace")
