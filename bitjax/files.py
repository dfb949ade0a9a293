"""Workdir file IO for local paths and object-store URLs (gs://; s3:// takes the same
epath code path, untested).

Every file a run or a sweep writes or reads in its workdir goes through here. Local
paths use `open` / `os` exactly as they always have; URLs go through `etils.epath`
(fsspec: gcsfs for gs://, from the `gcs` extra, or tf.io.gfile when TensorFlow is
installed). Object stores differ from a filesystem in three ways that matter here:

* no appends: `open_append` keeps the text and rewrites the whole object per flush;
* no rename: `write_atomic` writes the object in one upload, which an object store
  makes visible whole or not at all (instead of a temporary file and `os.replace`);
* no directories: `makedirs` is a no-op there, and a "directory" exists once an object
  lies under it, so callers never require an empty workdir to exist.

Orbax checkpoints take the URL itself (`absolute` leaves URLs alone).
"""

from __future__ import annotations

import io
import os
import tempfile

class WorkdirError(ValueError):
  """A workdir (or a file in it) cannot be used as asked; the message names it and why.
  The command line reports it in one line."""


class StorageError(WorkdirError):
  """The object store of a remote workdir failed mid-run (unreachable, or errors past the
  client's retries); the message names the workdir, the step and the cause. The command
  line reports it in one line; rerunning resumes from the newest committed checkpoint."""


# The schemes etils.epath routes to fsspec / tf.io.gfile; other "x://" strings are refused
# rather than taken for a relative local path named "x:".
REMOTE_SCHEMES = ("gs", "s3")


def is_remote(path) -> bool:
  """True for a URL ("gs://bucket/dir"); raises for a scheme epath cannot handle."""
  path = os.fspath(path)
  scheme, sep, _ = path.partition("://")
  if not sep:
    return False
  if scheme not in REMOTE_SCHEMES:
    raise ValueError(f"{path!r}: unsupported URL scheme {scheme}://; workdirs may be local "
                     f"paths or {', '.join(s + '://' for s in REMOTE_SCHEMES)} URLs")
  return True


def is_storage_error(error: BaseException) -> bool:
  """An error of the object store's client: an OSError (unreachable host, a missing object
  or bucket, a refused request), or an exception of gcsfs / its HTTP and auth libraries."""
  module = type(error).__module__.split(".")[0]
  return isinstance(error, OSError) or module in ("gcsfs", "aiohttp", "google", "requests")


def bucket_of(url: str) -> str:
  """"gs://bucket/a/b" -> "gs://bucket"."""
  scheme, _, rest = url.partition("://")
  return f"{scheme}://{rest.split('/', 1)[0]}"


def _epath(path):
  from etils import epath  # only for URLs: local IO needs no etils

  return epath.Path(path)


def _fsspec(path):
  """The fsspec filesystem (gcsfs for gs://) that etils.epath reads and writes `path`
  with when it does not go through tf.io.gfile: one client, so that its own writes keep
  its caches current."""
  from etils.epath import backend

  return backend.fsspec_backend.fs(path)


def _fresh(path):
  """epath.Path of a URL, for a read that must see what other processes wrote: gcsfs
  keeps every listing it made (and answers exists, isdir, listdir and a file's size from
  it) for the life of the process, and a workdir is written by other processes too (a
  shared sweep's claims and results; a resumed run's files), so the client's cached
  listings of the path and its parents are dropped first."""
  from etils.epath import backend

  epath = _epath(path)
  if epath._backend is backend.fsspec_backend:  # tf.io.gfile caches nothing
    _fsspec(path).invalidate_cache(os.fspath(path))
  return epath


def absolute(path: str) -> str:
  """os.path.abspath for local paths; URLs unchanged (abspath would mangle them)."""
  return path if is_remote(path) else os.path.abspath(path)


def exists(path: str) -> bool:
  return _fresh(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
  return _fresh(path).is_dir() if is_remote(path) else os.path.isdir(path)


def makedirs(path: str) -> None:
  """Create the directory and its parents if missing. A no-op for URLs: an object's path
  is just its name, so there is nothing to create (and gcsfs's makedirs would create a
  missing *bucket*, turning a typo into a new bucket)."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def listdir(path: str) -> list[str]:
  """Names of the entries directly under `path` (files and directories)."""
  if is_remote(path):
    return [p.name for p in _fresh(path).iterdir()]
  return os.listdir(path)


def read_bytes(path: str) -> bytes:
  if is_remote(path):
    return _fresh(path).read_bytes()
  with open(path, "rb") as f:
    return f.read()


def read_text(path: str) -> str:
  if is_remote(path):
    return _fresh(path).read_bytes().decode("utf-8")
  with open(path, encoding="utf-8") as f:
    return f.read()


def write_bytes(path: str, data: bytes) -> None:
  """Write `data` to `path`. Remote, an upload that finds nothing (a 404) means the bucket
  does not exist: bitjax creates no buckets (a typo must not make one), so that is a
  WorkdirError naming the bucket. (A check before writing could not tell: without
  storage.buckets.get permission an empty bucket looks like a missing one.)"""
  if is_remote(path):
    try:
      _epath(path).write_bytes(data)
    except FileNotFoundError:
      raise WorkdirError(f"{path}: bucket {bucket_of(path)} does not exist; create it "
                         "first (bitjax creates no buckets)") from None
  else:
    with open(path, "wb") as f:
      f.write(data)


def write_text(path: str, text: str) -> None:
  """Write `text` (UTF-8, newlines as given) in one call, so a remote object is uploaded
  whole: a failure cannot leave a partial object behind."""
  write_bytes(path, text.encode("utf-8"))


def write_atomic(path: str, text: str) -> None:
  """Replace `path` by `text` so that readers see the old file or the whole new one.

  Local: a temporary file beside it (flushed to disk), then os.replace (atomic on POSIX
  filesystems). Remote: one
  upload of the object; an object store makes an object visible only once its upload
  completes (a rename there would be copy + delete, no more atomic). The text is built
  before anything is written, so a serialization error writes nothing.
  """
  if is_remote(path):
    write_text(path, text)
    return
  tmp = _temporary_copy_beside(path, text)
  try:
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)  # only this call's own temporary file
    raise


def _temporary_copy_beside(path: str, text: str) -> str:
  """A new temporary file in `path`'s directory holding `text`, flushed to disk (so the
  bytes are there before a name points at them); returns its name."""
  directory, name = os.path.split(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(text.encode("utf-8"))
      f.flush()
      os.fsync(f.fileno())
  except BaseException:
    os.unlink(tmp)
    raise
  return tmp


def create_exclusive(path: str, text: str) -> bool:
  """Create `path` holding `text` only if nothing is there yet; True if this call created
  it, False if it existed. The file appears whole or not at all, and of several callers
  racing for one path exactly one gets True: the primitive that sweep claims rest on.

  Local: the text goes to a temporary file beside it, then os.link to `path`, which fails
  if `path` exists (atomic on POSIX filesystems, NFS included; O_CREAT|O_EXCL would leave
  an empty file visible before the text is written). gs://: one upload with the
  precondition ifGenerationMatch=0 (gcsfs's mode="create"), which GCS refuses with 412 if
  the object exists. gcsfs retries an upload whose answer was lost; the retry then meets
  its own object, so an existing object holding exactly `text` counts as created: give
  each caller a text of its own (sweep claims hold a random token).
  """
  if is_remote(path):
    if not path.startswith("gs://"):
      raise WorkdirError(f"{path!r}: creating a file only if absent works on local paths "
                         "and gs:// URLs")
    fs = _fsspec(path)
    try:
      fs.pipe_file(path, text.encode("utf-8"), mode="create")
    except FileExistsError:
      try:
        return fs.cat_file(path) == text.encode("utf-8")
      except FileNotFoundError:  # removed since (a claim released): not made by this call
        return False
    return True
  tmp = _temporary_copy_beside(path, text)
  try:
    os.link(tmp, path)
  except FileExistsError:
    return False
  except OSError as e:  # no hard links: a FUSE mount such as gcsfuse
    raise WorkdirError(f"{path!r} cannot be created only-if-absent here (no hard links: "
                       f"{e.strerror or e}); give the bucket's gs:// URL instead of a "
                       "mount, or a local or NFS directory") from None
  finally:
    os.unlink(tmp)  # only this call's own temporary file; `path` keeps the text
  return True


def remove(path: str) -> bool:
  """Delete the file `path`; False if it was not there (another process removed it)."""
  try:
    if is_remote(path):
      _epath(path).unlink()
    else:
      os.remove(path)
  except FileNotFoundError:
    return False
  return True


def move(source: str, target: str) -> None:
  """Move a file or folder (local: one rename; remote: fsspec's copy, then removal of the
  source objects, as object stores cannot rename)."""
  if is_remote(source):
    _epath(source).rename(target)
  else:
    os.rename(source, target)


def open_append(path: str):
  """A text file to append lines to: local, the file opened with "a"; remote, a
  RewrittenObject."""
  return RewrittenObject(path) if is_remote(path) else open(path, "a")


class RewrittenObject:
  """Append-only text for an object store, which cannot append: the object's text so far
  (read once, when opened, so a resumed run keeps every earlier record) plus what was
  written since is uploaded whole on every flush.

  One object rewritten per flush, rather than one object per session, keeps the file one
  plain JSON-lines object that every reader (read_metrics, `gsutil cat`, pandas) reads
  as before, and loses nothing that was flushed. The price is O(file) bytes per flush:
  metrics files stay kilobytes to a few MB, and GCS's limit of about one update per second
  per object is far above one flush per log step (gcsfs retries the rare 429).
  """

  def __init__(self, path: str):
    self.path = path
    self._epath = _fresh(path)
    # Anything but "not there yet" (a permission or network error) propagates: starting
    # empty would overwrite the records already there at the first flush.
    self._text = io.StringIO()
    if self._epath.exists():
      self._text.write(self._epath.read_bytes().decode("utf-8"))
    self._dirty = False
    self.closed = False

  def write(self, text: str) -> int:
    if self.closed:
      raise ValueError(f"write to closed {self.path}")
    self._dirty = True
    return self._text.write(text)

  def flush(self) -> None:
    if self._dirty:
      write_text(self.path, self._text.getvalue())
      self._dirty = False

  def close(self) -> None:
    if not self.closed:
      self.flush()
      self.closed = True


def upload_tree(local_dir: str, remote_dir: str) -> list[str]:
  """Copy every file under `local_dir` to the same relative path under `remote_dir`
  (replacing those objects); returns the remote paths."""
  out = []
  for root, _, names in os.walk(local_dir):
    for name in sorted(names):
      rel = os.path.relpath(os.path.join(root, name), local_dir).replace(os.sep, "/")
      with open(os.path.join(root, name), "rb") as f:
        data = f.read()
      target = f"{remote_dir.rstrip('/')}/{rel}"
      write_bytes(target, data)
      out.append(target)
  return out
