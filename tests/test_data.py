"""Tests for bitjax.data: corpora, split, fingerprints, tokenizer, pipelines."""

import hashlib
import json
import logging
import os
import secrets
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds

from bitjax import data
from bitjax.data import builders
from bitjax.data import config as config_lib
from bitjax.data import corpus

TOKENIZER = data.ByteTokenizer()
EOS = TOKENIZER.eos_id


def _config(data_dir, **overrides):
  cfg = data.default_data_config()
  cfg.data_dir = str(data_dir)
  cfg.update(overrides)
  return cfg


def _random_text(rng, n):
  """Random unicode: ASCII, accents, CJK, emoji, controls (no surrogates)."""
  ranges = [(0x20, 0x7F), (0x0, 0x20), (0xA0, 0x250), (0x4E00, 0x4F00),
            (0x1F600, 0x1F650), (0x300, 0x370), (0xE000, 0xE100)]
  picks = rng.integers(0, len(ranges), size=n)
  return "".join(chr(int(rng.integers(*ranges[i]))) for i in picks)


def _write_tree(root, rng, num_files, size):
  """Text files in nested directories plus a few that the glob must skip."""
  texts = {}
  for i in range(num_files):
    rel = f"d{i % 3}/sub{i % 2}/doc{i:03d}.txt" if i % 4 else f"doc{i:03d}.txt"
    texts[rel] = _random_text(rng, int(rng.integers(1, size)))
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(texts[rel], encoding="utf-8")
  (root / "notes.md").write_text("not matched")
  (root / ".hidden.txt").write_text("hidden files are skipped")
  return texts


@pytest.fixture(scope="session")
def stdlib_dir(tmp_path_factory):
  """A data_dir holding the stdlib corpus, built once per session."""
  data_dir = tmp_path_factory.mktemp("tfds")
  data.corpus_metadata(_config(data_dir))
  return data_dir


@pytest.fixture
def text_corpus(tmp_path):
  """(config, {relpath: text}) of a small built text_dir corpus."""
  rng = np.random.default_rng(0)
  root = tmp_path / "texts"
  texts = _write_tree(root, rng, num_files=24, size=400)
  cfg = _config(tmp_path / "tfds", name="text_dir", text_dir=str(root))
  return cfg, texts


def _train_docs(cfg):
  """{tokens as bytes: path} of the train split, for identifying segments."""
  source = data.data_source(cfg, "train")
  return {
      TOKENIZER.encode(source[i]["text"]).tobytes(): source[i]["path"]
      for i in range(len(source))
  }


def _stream(batches):
  """Concatenated windows (inputs plus the last target) of a batch list."""
  rows = [np.concatenate([b["inputs"], b["targets"][:, -1:]], axis=1)
          for b in batches]
  return np.concatenate(rows).reshape(-1)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    np.testing.assert_array_equal(a["targets"], b["targets"])


# Split and fingerprints.


def test_split_is_deterministic_disjoint_and_complete():
  files = corpus.list_files(
      corpus.stdlib_root(), corpus.STDLIB_GLOB, corpus.STDLIB_EXCLUDED_DIRS
  )
  assert len(files) > 500 and not any("site-packages" in f for f in files)
  splits = corpus.split_files(files)
  shuffled = corpus.split_files(list(reversed(files)))
  assert {k: sorted(v) for k, v in shuffled.items()} == splits
  train, val = set(splits["train"]), set(splits["validation"])
  assert not train & val and train | val == set(files)
  assert 0.5 * corpus.VALIDATION_FRACTION < len(val) / len(files) < 2 * (
      corpus.VALIDATION_FRACTION)
  # A file's split depends on its own path only.
  half = files[::2]
  assert set(corpus.split_files(half)["validation"]) == val & set(half)


def test_small_corpus_still_gets_a_validation_file():
  splits = corpus.split_files(["a.txt", "b.txt", "c.txt"])
  assert len(splits["validation"]) == 1 and len(splits["train"]) == 2


def test_fingerprint_and_config_name_track_changes(tmp_path):
  rng = np.random.default_rng(1)
  _write_tree(tmp_path, rng, num_files=6, size=50)
  files = corpus.list_files(str(tmp_path), "**/*.txt")
  assert len(files) == 6 and "notes.md" not in files
  before = corpus.corpus_fingerprint(str(tmp_path), files)
  name = builders.text_dir_config(str(tmp_path), "**/*.txt").name
  assert before == corpus.corpus_fingerprint(str(tmp_path), files)
  assert name == builders.text_dir_config(str(tmp_path), "**/*.txt").name
  assert before["num_bytes"] == sum(
      (tmp_path / f).stat().st_size for f in files)

  path = tmp_path / files[0]
  path.write_bytes(path.read_bytes() + b"!")
  after = corpus.corpus_fingerprint(str(tmp_path), files)
  assert after["sha256"] != before["sha256"]
  assert builders.text_dir_config(str(tmp_path), "**/*.txt").name != name
  # Same bytes under another name also changes the hash.
  path.rename(tmp_path / "renamed.txt")
  renamed = corpus.list_files(str(tmp_path), "**/*.txt")
  assert corpus.corpus_fingerprint(str(tmp_path), renamed)["sha256"] not in (
      before["sha256"], after["sha256"])


def test_stdlib_build_records_fingerprint(stdlib_dir):
  cfg = _config(stdlib_dir)
  meta = data.corpus_metadata(cfg)
  files = corpus.list_files(
      corpus.stdlib_root(), corpus.STDLIB_GLOB, corpus.STDLIB_EXCLUDED_DIRS
  )
  assert meta == {**corpus.corpus_fingerprint(corpus.stdlib_root(), files),
                  "root": corpus.stdlib_root(), "pattern": corpus.STDLIB_GLOB}
  assert len(data.data_source(cfg, "train")) == meta["train_files"]
  assert len(data.data_source(cfg, "validation")) == meta["validation_files"]
  builder = builders.corpus_builder(cfg)
  v = sys.version_info
  assert builder.builder_config.name == f"py{v.major}_{v.minor}_{v.micro}"
  info = os.path.join(builder.data_dir, "dataset_info.json")
  mtime = os.path.getmtime(info)
  builders.prepare(builder)  # Reuses the finished build.
  assert os.path.getmtime(info) == mtime


def test_processes_building_one_corpus_together_share_the_first_build(text_corpus):
  """Two sweep shares on a fresh data_dir both start a build; the one that renames its
  build second uses the first one's instead of failing."""
  cfg, _ = text_corpus
  first, second = builders.corpus_builder(cfg), builders.corpus_builder(cfg)
  generate = second._download_and_prepare

  def other_process_finishes_first(*args, **kwargs):
    builders.prepare(first)  # while `second` is building into its own temporary dir
    return generate(*args, **kwargs)

  second._download_and_prepare = other_process_finishes_first
  info = os.path.join(first.data_dir, "dataset_info.json")
  used = builders.prepare(second)
  assert used.is_prepared() and os.path.getmtime(info) == os.path.getmtime(
      os.path.join(used.data_dir, "dataset_info.json"))
  assert len(data.data_source(cfg, "train")) > 0


def test_text_dir_round_trips_files(text_corpus, tmp_path):
  cfg, texts = text_corpus
  (tmp_path / "texts" / "latin1.txt").write_bytes("caf\xe9 ok".encode("latin-1"))
  texts["latin1.txt"] = "caf\ufffd ok"
  seen = {}
  for split in corpus.SPLITS:
    source = data.data_source(cfg, split)
    for i in range(len(source)):
      example = source[i]
      seen[example["path"].decode()] = example["text"].decode("utf-8")
  assert seen == texts
  meta = data.corpus_metadata(cfg)
  assert meta["num_files"] == len(texts)
  assert meta["validation_files"] >= 1


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_text_dir_without_files_names_the_field(tmp_path, make):
  root = tmp_path / "corpus"
  if make == "empty":
    root.mkdir()
    (root / "a.md").write_text("wrong extension")
  cfg = _config(tmp_path / "tfds", name="text_dir", text_dir=str(root))
  with pytest.raises(ValueError, match="config.data.text_dir") as e:
    data.make_eval_batches(cfg, seq_len=8, batch_size=1, num_batches=1)
  assert str(root) in str(e.value)


# Tokenizer.


def test_byte_tokenizer_round_trips_random_unicode():
  seed = secrets.randbits(32)
  rng = np.random.default_rng(seed)
  for _ in range(50):
    text = _random_text(rng, int(rng.integers(0, 300)))
    ids = TOKENIZER.encode(text)
    assert ids.dtype == np.int32, seed
    assert TOKENIZER.decode(ids) == text, seed
    nbytes = len(text.encode("utf-8"))
    assert TOKENIZER.bytes_per_token[ids].sum() == nbytes == len(ids), seed
    assert TOKENIZER.decode(np.concatenate([[1], ids, [2, 0, 0]])) == text


def test_byte_tokenizer_layout():
  assert TOKENIZER.vocab_size == 259
  assert (TOKENIZER.pad_id, TOKENIZER.bos_id, TOKENIZER.eos_id) == (0, 1, 2)
  np.testing.assert_array_equal(TOKENIZER.encode(b"\x00\xff"), [3, 258])
  bpt = TOKENIZER.bytes_per_token
  assert bpt.dtype == np.float32 and bpt.shape == (259,)
  assert bpt[:3].sum() == 0 and bpt[3:].min() == 1
  assert TOKENIZER.decode([3 + 0xFF]) == "\ufffd"
  cfg = types.SimpleNamespace(tokenizer="byte")
  assert isinstance(data.get_tokenizer(cfg), data.ByteTokenizer)
  with pytest.raises(ValueError, match=r"config.data.tokenizer='spm' is not"
                     r" one of \['byte', 'bpe', 'sentencepiece'\]"):
    data.get_tokenizer(types.SimpleNamespace(tokenizer="spm"))


# Pipelines.


def test_eval_batches_match_numpy_packing(text_corpus, caplog):
  cfg, _ = text_corpus
  cfg.eval_split = "train"  # Many documents, in stored order.
  seq_len, batch = 31, 4
  source = data.data_source(cfg, "train")
  stream = np.concatenate([
      np.append(TOKENIZER.encode(source[i]["text"]), EOS)
      for i in range(len(source))
  ])
  windows = stream[: len(stream) // (seq_len + 1) * (seq_len + 1)]
  windows = windows.reshape(-1, seq_len + 1)
  batches = data.make_eval_batches(
      cfg, seq_len=seq_len, batch_size=batch, num_batches=3)
  assert len(batches) == 3
  keep = np.linspace(0, len(windows) - 1, 12).round().astype(int)
  np.testing.assert_array_equal(_stream(batches), windows[keep].reshape(-1))
  for b in batches:
    assert b["inputs"].dtype == np.int32 and b["inputs"].shape == (4, 31)
    np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])

  with caplog.at_level(logging.WARNING):
    everything = data.make_eval_batches(
        cfg, seq_len=seq_len, batch_size=batch, num_batches=10**6)
  assert len(everything) == len(windows) // batch
  assert "full batches" in caplog.text
  with pytest.raises(ValueError, match="batch_size=1000000"):
    data.make_eval_batches(cfg, seq_len=seq_len, batch_size=10**6,
                           num_batches=1)


def test_train_windows_pack_shuffled_documents_exactly(text_corpus):
  cfg, _ = text_corpus
  cfg.shuffle_window = 0
  docs = _train_docs(cfg)
  it = data.make_train_iterator(cfg, seq_len=63, global_batch_size=4, seed=3)
  epoch_tokens = sum(len(d) // 4 + 1 for d in docs)
  batches = _take(it, 3 * epoch_tokens // (4 * 64))
  for b in batches:
    assert b["inputs"].shape == b["targets"].shape == (4, 63)
    np.testing.assert_array_equal(b["inputs"][:, 1:], b["targets"][:, :-1])
  stream = _stream(batches)
  ends = np.flatnonzero(stream == EOS)
  segments = np.split(stream, ends + 1)[:-1]  # Drop the unfinished tail.
  order = [docs[np.asarray(s[:-1], np.int32).tobytes()] for s in segments]
  n = len(docs)
  assert len(order) >= 2 * n
  epochs = [order[:n], order[n : 2 * n]]
  assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(docs.values())
  assert epochs[0] != epochs[1]  # Reshuffled every epoch.
  assert epochs[0] != sorted(epochs[0])


def test_window_shuffle_permutes_windows_within_blocks(text_corpus):
  cfg, _ = text_corpus
  def make(window):
    cfg.shuffle_window = window
    return data.make_train_iterator(cfg, seq_len=15, global_batch_size=2, seed=4)

  rows = lambda it, n: np.concatenate([
      np.concatenate([b["inputs"], b["targets"][:, -1:]], 1) for b in _take(it, n)])
  plain, shuffled = rows(make(0), 24), rows(make(8), 24)  # Six blocks of 8 windows.
  assert not np.array_equal(plain, shuffled)
  for block in range(6):
    sl = slice(8 * block, 8 * block + 8)
    assert sorted(map(bytes, plain[sl])) == sorted(map(bytes, shuffled[sl]))


def test_same_seed_same_batches_different_seed_differs(text_corpus):
  cfg, _ = text_corpus
  make = lambda seed: data.make_train_iterator(
      cfg, seq_len=15, global_batch_size=2, seed=seed)
  first = _take(make(5), 5)
  _assert_same(first, _take(make(5), 5))
  assert not np.array_equal(_stream(first), _stream(_take(make(6), 5)))


def test_iterator_state_resumes_exactly(text_corpus):
  cfg, _ = text_corpus
  make = lambda: data.make_train_iterator(
      cfg, seq_len=23, global_batch_size=3, seed=0)
  it = make()
  states, batches = [], []
  for _ in range(30):
    states.append(it.get_state())
    batches.append(next(it))
  for k in (0, 7, 19):
    resumed = make()
    # Through JSON, as grain's checkpoint handler stores it.
    resumed.set_state(json.loads(json.dumps(states[k])))
    _assert_same(_take(resumed, 30 - k), batches[k:])
  it.set_state(states[3])
  _assert_same(_take(it, 4), batches[3:7])


def test_documents_ending_on_window_edges_resume_exactly(tmp_path):
  # Every document plus EOS fills exactly one window: no split remainder.
  root = tmp_path / "even"
  root.mkdir()
  for i in range(12):
    (root / f"{i:02d}.txt").write_text(chr(97 + i) * 15)
  cfg = _config(tmp_path / "tfds", name="text_dir", text_dir=str(root))
  make = lambda: data.make_train_iterator(
      cfg, seq_len=15, global_batch_size=2, seed=1)
  it = make()
  _take(it, 3)
  state = json.loads(json.dumps(it.get_state()))
  expected = _take(it, 8)
  resumed = make()
  resumed.set_state(state)
  _assert_same(_take(resumed, 8), expected)


def test_process_slices_partition_the_global_batch(text_corpus):
  cfg, _ = text_corpus
  kwargs = dict(seq_len=15, global_batch_size=6, seed=2)
  whole = _take(data.make_train_iterator(cfg, **kwargs), 4)
  parts = [
      _take(data.make_train_iterator(cfg, **kwargs, process_index=i,
                                     process_count=3), 4)
      for i in range(3)
  ]
  for step, batch in enumerate(whole):
    rows = [p[step]["inputs"] for p in parts]
    assert all(r.shape == (2, 15) for r in rows)
    np.testing.assert_array_equal(np.concatenate(rows), batch["inputs"])
    np.testing.assert_array_equal(
        np.concatenate([p[step]["targets"] for p in parts]), batch["targets"])
  with pytest.raises(ValueError, match="global_batch_size=6 is not divisible"
                     " by process_count=4"):
    data.make_train_iterator(cfg, **kwargs, process_index=0, process_count=4)


def test_stdlib_batches_are_identical_in_a_fresh_process(stdlib_dir):
  code = """
import hashlib, json, sys
from bitjax import data
data.ByteTokenizer
lazy = not {'grain', 'tensorflow_datasets'} & set(sys.modules)
cfg = data.default_data_config()
cfg.data_dir = sys.argv[1]
it = data.make_train_iterator(cfg, seq_len=64, global_batch_size=4, seed=7)
digest = hashlib.sha256()
for _ in range(5):
  digest.update(next(it)["inputs"].tobytes())
print(json.dumps({"lazy": lazy, "digest": digest.hexdigest(),
                  "tensorflow": "tensorflow" in sys.modules}))
"""
  env = {**os.environ, "PYTHONHASHSEED": str(secrets.randbits(16))}
  out = subprocess.run(
      [sys.executable, "-c", code, str(stdlib_dir)], env=env, check=True,
      capture_output=True, text=True,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
  )
  result = json.loads(out.stdout.strip().splitlines()[-1])
  it = data.make_train_iterator(
      _config(stdlib_dir), seq_len=64, global_batch_size=4, seed=7)
  digest = hashlib.sha256()
  for _ in range(5):
    digest.update(next(it)["inputs"].tobytes())
  assert result == {"lazy": True, "digest": digest.hexdigest(),
                    "tensorflow": False}


def test_stdlib_eval_batches(stdlib_dir):
  batches = data.make_eval_batches(
      _config(stdlib_dir), seq_len=128, batch_size=8, num_batches=2)
  assert len(batches) == 2
  text = TOKENIZER.decode(batches[0]["inputs"][0])
  assert text and batches[0]["inputs"].min() >= 2


# Config validation and errors.


@pytest.mark.parametrize("field, value, message", [
    ("name", "foo",
     "config.data.name='foo' is not one of ['stdlib', 'text_dir', 'tfds']"),
    ("tokenizer", "wordpiece",
     "config.data.tokenizer='wordpiece' is not one of ['byte', 'bpe', 'sentencepiece']"),
    ("text_key", "content", "config.data.text_key='content' is not one of"),
    ("train_split", "test", "config.data.train_split='test' is not one of"),
    ("eval_split", "", "config.data.eval_split='' must be a non-empty string"),
    ("text_glob", None, "config.data.text_glob=None"),
])
def test_bad_fields_raise_naming_the_field(tmp_path, field, value, message):
  root = tmp_path / "t"
  root.mkdir()
  for i in range(3):
    (root / f"{i}.txt").write_text("x")
  cfg = _config(tmp_path / "tfds", name="text_dir", text_dir=str(root))
  cfg[field] = value
  with pytest.raises(ValueError) as e:
    data.validate_data_config(cfg)
  assert message in str(e.value)


def test_validation_accepts_namespaces_and_reports_missing_fields(tmp_path):
  fields = data.default_data_config().to_dict()
  data.validate_data_config(types.SimpleNamespace(**fields))
  del fields["text_key"]
  with pytest.raises(ValueError, match="missing field.*text_key"):
    data.validate_data_config(types.SimpleNamespace(**fields))
  with pytest.raises(ValueError, match="config.data.tfds_name=None"):
    data.validate_data_config(_config(tmp_path, name="tfds"))
  afile = tmp_path / "file"
  afile.write_text("")
  with pytest.raises(ValueError, match="config.data.data_dir=.*not a directory"):
    data.validate_data_config(_config(afile))


@pytest.mark.parametrize("kwargs, message", [
    (dict(seq_len=0), "seq_len=0"),
    (dict(global_batch_size=-2), "global_batch_size=-2"),
    (dict(seed=2**32), "seed=4294967296"),
    (dict(process_index=1), r"process_index=1 is not in \[0, 1\)"),
])
def test_bad_pipeline_arguments(kwargs, message):
  args = {**dict(seq_len=8, global_batch_size=2, seed=0), **kwargs}
  with pytest.raises(ValueError, match=message):
    data.make_train_iterator(data.default_data_config(), **args)


def test_missing_tfds_dataset_says_where_it_looked(tmp_path):
  cfg = _config(tmp_path, name="tfds", tfds_name="lm1b")
  with pytest.raises(FileNotFoundError) as e:
    data.make_eval_batches(cfg, seq_len=8, batch_size=1, num_batches=1)
  message = str(e.value)
  assert "config.data.tfds_name='lm1b'" in message
  assert str(tmp_path) in message and "never downloads" in message


class FakeLm(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A stand-in for a prepared TFDS dataset such as lm1b."""

  VERSION = tfds.core.Version("1.0.0")
  code_path = None  # See bitjax.data.builders._CorpusBuilder.

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({"sentence": tfds.features.Text()}),
    )

  def _split_generators(self, dl_manager):
    return {"test": self._generate_examples()}

  def _generate_examples(self):
    for i in range(40):
      yield i, {"sentence": f"sentence number {i}"}


def test_prepared_tfds_dataset_is_read_by_name(tmp_path):
  FakeLm(data_dir=str(tmp_path), file_format="array_record").download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  cfg = _config(tmp_path, name="tfds", tfds_name="fake_lm",
                text_key="sentence", eval_split="test")
  batches = data.make_eval_batches(cfg, seq_len=15, batch_size=2, num_batches=2)
  assert len(batches) == 2
  assert TOKENIZER.decode(batches[0]["inputs"][0]).startswith("sentence")
  cfg.text_key = "text"
  with pytest.raises(ValueError, match="config.data.text_key='text' is not one"
                     r" of the features \['sentence'\]"):
    data.make_eval_batches(cfg, seq_len=15, batch_size=2, num_batches=2)


def test_data_dir_defaults(monkeypatch, tmp_path):
  cfg = _config(tmp_path)
  cfg.data_dir = None
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "env"))
  assert config_lib.resolve_data_dir(cfg) == str(tmp_path / "env")
  monkeypatch.delenv("TFDS_DATA_DIR")
  assert config_lib.resolve_data_dir(cfg) == os.path.expanduser(
      "~/tensorflow_datasets")
