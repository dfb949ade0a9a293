"""gs:// workdirs, offline: the real etils.epath -> fsspec code path, with fsspec's "gcs"
protocol bound to an in-memory store that behaves like an object store (objects appear
whole when their upload closes, no appends, no directories, rename = copy + delete) and
records every upload, so these tests can count and order the writes (one upload per atomic
write, config.json written once, no temporary objects, a failed TensorBoard upload).

Whole runs on gs:// (checkpoints through tensorstore's GCS client included, signals,
kill -9, an outage, sweep and plot) run against a real GCS emulator in
tests/test_gcs_emulator.py.
"""

import importlib
import io
import json
import os
import shutil

import fsspec
import pytest
from etils import epath
from etils.epath import backend as epath_backend
from etils.epath import gpath
from fsspec.utils import stringify_path

from bitjax import files
from bitjax.train.checkpoint import guard_config
from bitjax.train.config import check_workdir
from bitjax.train.metrics import MetricWriter, read_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LM_CONFIG = os.path.join(ROOT, "configs", "lm.py")


class _Upload(io.BytesIO):
  """An object being uploaded: it exists only once closed, then whole."""

  def __init__(self, fs, path):
    super().__init__()
    self.fs, self.path = fs, path

  def close(self):
    if not self.closed:
      self.fs.objects[self.path] = self.getvalue()
      self.fs.uploads.append(self.path)
    super().close()


class FakeGCS(fsspec.AbstractFileSystem):
  """A bucket namespace in a dict: object name -> bytes."""

  protocol = ("gs", "gcs")
  root_marker = ""
  cachable = False
  objects: dict = {}
  uploads: list = []

  def __init__(self, *args, finalize_on_close=None, **kwargs):  # epath passes the flag
    super().__init__(*args, **kwargs)

  @classmethod
  def _strip_protocol(cls, path):
    path = stringify_path(path)
    for prefix in ("gs://", "gcs://"):
      path = path.removeprefix(prefix)
    return path.rstrip("/")

  def _file(self, name):
    return {"name": name, "size": len(self.objects[name]), "type": "file"}

  def info(self, path, **kwargs):
    path = self._strip_protocol(path)
    if path in self.objects:
      return self._file(path)
    if "/" not in path or any(k.startswith(path + "/") for k in self.objects):
      return {"name": path, "size": 0, "type": "directory"}  # a bucket, or a prefix in use
    raise FileNotFoundError(path)

  def ls(self, path, detail=True, **kwargs):
    path = self._strip_protocol(path)
    if path in self.objects:
      entries = [self._file(path)]
    else:
      found = {}
      for key in self.objects:
        if key.startswith(path + "/"):
          head, *rest = key[len(path) + 1:].split("/", 1)
          name = f"{path}/{head}"
          found[name] = ({"name": name, "size": 0, "type": "directory"} if rest
                         else self._file(name))
      if not found and "/" in path:
        raise FileNotFoundError(path)
      entries = list(found.values())
    return entries if detail else sorted(e["name"] for e in entries)

  def mkdir(self, path, create_parents=True, **kwargs):
    pass  # no directories in an object store

  def makedirs(self, path, exist_ok=False):
    pass

  def rmdir(self, path):
    pass

  def _open(self, path, mode="rb", **kwargs):
    path = self._strip_protocol(path)
    # No append or update in place: an attempt must fail loudly, as fsspec signals a mode
    # its files do not support (NotImplementedError).
    if "a" in mode or "+" in mode:
      raise NotImplementedError(f"object stores cannot open {path} with mode {mode!r}")
    if "r" in mode:
      if path not in self.objects:
        raise FileNotFoundError(path)
      return io.BytesIO(self.objects[path])
    return _Upload(self, path)

  def cp_file(self, path1, path2, **kwargs):
    self.objects[self._strip_protocol(path2)] = self.objects[self._strip_protocol(path1)]

  def rm_file(self, path):
    del self.objects[self._strip_protocol(path)]

  def rm(self, path, recursive=False, maxdepth=None):
    path = self._strip_protocol(path)
    names = [k for k in self.objects if k == path or (recursive and k.startswith(path + "/"))]
    if not names:
      raise FileNotFoundError(path)
    for name in names:
      del self.objects[name]


@pytest.fixture
def gcs(monkeypatch, tmp_path):
  """gs:// served by FakeGCS through epath's own fsspec backend; cwd is an empty tmp dir so
  a URL mistaken for a local path would show up as a local "gs:" directory."""
  registry = importlib.import_module("fsspec.registry")
  for protocol in ("gs", "gcs"):
    monkeypatch.setitem(registry._registry, protocol, FakeGCS)
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)  # fsspec, not tf.io.gfile
  monkeypatch.setattr(FakeGCS, "objects", {})
  monkeypatch.setattr(FakeGCS, "uploads", [])
  epath_backend._FileSystemSpecBackend._get_filesystem.cache_clear()
  monkeypatch.chdir(tmp_path)
  yield FakeGCS
  epath_backend._FileSystemSpecBackend._get_filesystem.cache_clear()
  assert not os.path.exists(tmp_path / "gs:")


def test_urls_reach_the_store_through_epaths_fsspec_backend(gcs):
  assert epath.Path("gs://bkt/w/x")._backend is epath_backend.fsspec_backend
  files.write_text("gs://bkt/w/x.json", '{"a": 1}\n')
  assert gcs.objects == {"bkt/w/x.json": b'{"a": 1}\n'}
  assert files.read_text("gs://bkt/w/x.json") == '{"a": 1}\n'
  assert files.exists("gs://bkt/w") and files.isdir("gs://bkt/w")
  assert not files.isdir("gs://bkt/w/x.json") and not files.exists("gs://bkt/v")
  files.write_bytes("gs://bkt/w/sub/y.png", b"\x89PNG")
  assert sorted(files.listdir("gs://bkt/w")) == ["sub", "x.json"]
  files.makedirs("gs://bkt/new/dir")  # nothing to create in an object store
  assert not files.exists("gs://bkt/new")
  files.write_atomic("gs://bkt/w/x.json", '{"a": 2}')
  assert gcs.objects["bkt/w/x.json"] == b'{"a": 2}'
  assert "bkt/w/x.json.tmp" not in gcs.objects and gcs.uploads[-1] == "bkt/w/x.json"
  assert files.absolute("gs://bkt/w/checkpoints") == "gs://bkt/w/checkpoints"
  assert files.absolute("rel") == os.path.join(os.getcwd(), "rel")


def test_claims_on_gcs_create_only_if_absent(gcs):
  """The fake's only-if-absent upload is not atomic (GCS's is: ifGenerationMatch=0); this
  checks the code path, and that a retried upload meeting its own object counts as made."""
  from bitjax.sweep import claims

  assert files.create_exclusive("gs://bkt/r/claims/0.json", "mine\n")
  assert not files.create_exclusive("gs://bkt/r/claims/0.json", "theirs\n")
  assert files.create_exclusive("gs://bkt/r/claims/0.json", "mine\n")  # our own retry
  assert gcs.objects["bkt/r/claims/0.json"] == b"mine\n"
  assert files.remove("gs://bkt/r/claims/0.json") and not files.remove("gs://bkt/r/claims/0.json")
  held = claims.acquire("gs://bkt/run", 60.0, print)
  assert isinstance(held, claims.HeldClaim) and held.claim.path == "gs://bkt/run/claims/0.json"
  assert claims.acquire("gs://bkt/run", 60.0, print).token == held.claim.token  # live: ours
  held.release()
  assert gcs.objects == {}


def test_workdir_checks(gcs):
  assert check_workdir("gs://bkt/runs/a") == "gs://bkt/runs/a"
  assert gcs.objects == {}  # no directory placeholders
  files.write_text("gs://bkt/runs/file", "x")
  with pytest.raises(ValueError, match="exists and is not a directory"):
    check_workdir("gs://bkt/runs/file")
  with pytest.raises(ValueError, match="unsupported URL scheme memory://"):
    check_workdir("memory://runs/a")


def test_config_guard_on_gcs(gcs):
  workdir = "gs://bkt/run"
  config = {"optim": {"lr": 1e-3, "b1": 0.9}, "task": "lm"}
  guard_config(workdir, config)
  saved = gcs.objects["bkt/run/config.json"]
  assert json.loads(saved) == config
  guard_config(workdir, config)  # the same config resumes
  with pytest.raises(ValueError, match=r"different config \(optim.lr: 0.001 -> 0.0001\)"):
    guard_config(workdir, {"optim": {"lr": 1e-4, "b1": 0.9}, "task": "lm"})
  assert gcs.objects["bkt/run/config.json"] == saved
  assert gcs.uploads == ["bkt/run/config.json"]  # written once, never overwritten
  guard_config("gs://bkt/other", config, write=False)  # another host: checks, writes nothing
  assert "bkt/other/config.json" not in gcs.objects


def _write_records(writer, records):
  for step, split, scalars in records:
    writer.write(step, split, scalars)


def test_metric_writer_rewrites_keeps_earlier_sessions_and_mirrors_tensorboard(gcs, tmp_path):
  first = [(10, "train", {"loss": 2.5, "lr": 1e-3}), (10, "eval", {"loss": 2.75})]
  second = [(20, "train", {"loss": 2.0, "lr": 5e-4})]
  writer = MetricWriter("gs://bkt/run")
  tb_dir = writer.tb_dir
  assert not tb_dir.startswith("gs:") and os.path.isdir(tb_dir)
  _write_records(writer, first)
  # Readable while training: every record is in the object once written.
  assert [r["step"] for r in read_metrics("gs://bkt/run")] == [10, 10]
  writer.close()
  assert not os.path.exists(tb_dir)  # uploaded, then the local copy removed
  events = sorted(k for k in gcs.objects if k.startswith("bkt/run/tensorboard/"))
  assert len(events) == 1 and "events.out.tfevents" in events[0]
  assert b"train/loss" in gcs.objects[events[0]] and b"eval/loss" in gcs.objects[events[0]]

  resumed = MetricWriter("gs://bkt/run")  # a resumed session keeps what is there
  _write_records(resumed, second)
  resumed.close()
  records = read_metrics("gs://bkt/run")
  assert [(r["step"], r["split"], r["loss"]) for r in records] == [
      (10, "train", 2.5), (10, "eval", 2.75), (20, "train", 2.0)]
  new_events = sorted(k for k in gcs.objects if k.startswith("bkt/run/tensorboard/"))
  assert len(new_events) == 2 and events[0] in new_events  # the first session's file kept

  local = str(tmp_path / "local")
  os.makedirs(local)
  for session in (first, second):
    writer = MetricWriter(local)
    _write_records(writer, session)
    writer.close()
  with open(os.path.join(local, "metrics.jsonl"), "rb") as f:
    assert gcs.objects["bkt/run/metrics.jsonl"] == f.read()  # byte for byte the local file


def test_failed_tensorboard_upload_warns_and_loses_no_metrics(gcs, monkeypatch):
  monkeypatch.setattr(MetricWriter, "TB_UPLOAD_S", 0.0)  # upload on every write
  def broken_upload(local_dir, remote_dir):
    raise OSError("503 backend error")
  monkeypatch.setattr(files, "upload_tree", broken_upload)
  warnings = []
  monkeypatch.setattr("bitjax.train.metrics.logging.warning",
                      lambda msg, *args: warnings.append(msg % args))
  writer = MetricWriter("gs://bkt/run")
  _write_records(writer, [(1, "train", {"loss": 1.0}), (2, "train", {"loss": 0.5})])
  writer.close()
  assert [r["loss"] for r in read_metrics("gs://bkt/run")] == [1.0, 0.5]
  assert len(warnings) == 3 and "503 backend error" in warnings[-1]
  assert writer.tb_dir in warnings[-1] and os.listdir(writer.tb_dir)  # kept locally
  assert not any(k.startswith("bkt/run/tensorboard") for k in gcs.objects)
  shutil.rmtree(writer.tb_dir)


def test_compare_passes_url_workdirs_through(gcs, monkeypatch):
  import bitjax.train as train_lib
  from bitjax.sweep.compare import compare_precisions

  seen = []

  def train(config, workdir):
    seen.append((config.model.precision, workdir))
    return {"precision": config.model.precision}

  monkeypatch.setattr(train_lib, "train_and_evaluate", train)
  compare_precisions(f"{LM_CONFIG}:nano", "gs://bkt/cmp", ["bf16", "b1.58"], log=lambda line: None)
  assert seen == [("bf16", "gs://bkt/cmp/bf16"), ("b1.58", "gs://bkt/cmp/b1.58")]
  assert json.loads(gcs.objects["bkt/cmp/b1.58/result.json"])["group"] == "nano"
