"""Subword tokenizers: training, saving and loading, exact round trips, bytes per token
against the text's own UTF-8 length, a model folder's tokenizer.json as it is, and the
config fields that name them (the model's vocabulary follows the tokenizer)."""

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from bitjax.data import tokenizers
from bitjax.train.config import ConfigError, load_config, resolve_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LM_CONFIG = os.path.join(ROOT, "configs", "lm.py")
# Code, prose, accents, CJK, emoji, tabs and runs of spaces: what a corpus may hold.
SAMPLES = [
    "def add(a, b):\n    \"\"\"Return a + b.\"\"\"\n    return a + b\n",
    "Ünïcödé façade — naïve café, 日本語のテキスト, emoji 🙂🚀 and\ttabs   spaces\n\n",
    "for i in range(10):\n\tprint(i ** 2, end='; ')\n",
]


VOCAB = 400


def corpus_texts(repeat=30):
  return [f"{text} # line {i}\n" for i in range(repeat) for text in SAMPLES]


@pytest.fixture(scope="module", params=["bpe", "sentencepiece"])
def trained(request, tmp_path_factory):
  out = str(tmp_path_factory.mktemp(request.param) / "tok")
  return tokenizers.train_tokenizer(corpus_texts(), request.param, VOCAB, out), out


def random_text(rng, n):
  """Characters from ASCII, Latin-1, CJK and emoji, so every UTF-8 length occurs."""
  ranges = [(32, 127), (160, 400), (0x4E00, 0x4FFF), (0x1F600, 0x1F64F)]
  picks = rng.integers(0, len(ranges), n)
  return "".join(chr(int(rng.integers(*ranges[p]))) for p in picks) + "\n"


def test_round_trip_and_bytes_per_token_add_up_to_the_utf8_length(trained):
  tokenizer, _ = trained
  rng = np.random.default_rng(0)
  for text in [*SAMPLES, *(random_text(rng, int(rng.integers(1, 80))) for _ in range(20))]:
    ids = tokenizer.encode(text)
    assert ids.dtype == np.int32 and len(ids) > 0
    assert tokenizer.decode(ids) == text
    assert tokenizer.bytes_per_token[ids].sum() == len(text.encode("utf-8"))
  # Subword tokens of the training text span several bytes each.
  ids = tokenizer.encode(SAMPLES[0])
  assert len(ids) < 0.7 * len(SAMPLES[0].encode("utf-8"))


def test_layout_save_load_and_special_ids(trained):
  tokenizer, out = trained
  assert tokenizer.vocab_size == VOCAB
  assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2)
  counts = tokenizer.bytes_per_token
  assert counts.shape == (VOCAB,) and counts.dtype == np.float32 and not counts[:3].any()
  # Special ids and ids past the vocabulary (a padded model vocabulary) decode to nothing.
  ids = tokenizer.encode(SAMPLES[1])
  assert tokenizer.decode([1, *ids, 2, 0, VOCAB, VOCAB + 9]) == SAMPLES[1]
  loaded = tokenizers.load_tokenizer(out)
  assert type(loaded) is type(tokenizer) and loaded.eos_id == 2
  np.testing.assert_array_equal(loaded.encode(SAMPLES[2]), tokenizer.encode(SAMPLES[2]))
  config = types.SimpleNamespace(tokenizer=tokenizer.kind, tokenizer_path=out)
  assert tokenizers.get_tokenizer(config).vocab_size == VOCAB
  with pytest.raises(ValueError, match="already holds"):
    tokenizers.train_tokenizer(corpus_texts(), tokenizer.kind, VOCAB, out)
  other = "sentencepiece" if tokenizer.kind == "bpe" else "bpe"
  with pytest.raises(ValueError, match="config.data.tokenizer_path="):
    tokenizers.get_tokenizer(types.SimpleNamespace(tokenizer=other, tokenizer_path=out + "x"))


def test_a_model_folders_tokenizer_json_loads_as_it_is(tmp_path):
  """A SentencePiece-style tokenizer.json (Metaspace "▁" for spaces), its special tokens
  named by tokenizer_config.json, as Hugging Face model folders have them."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

  hf = Tokenizer(models.BPE(unk_token="<unk>"))
  hf.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
  hf.decoder = decoders.Metaspace(prepend_scheme="never")
  hf.train_from_iterator(corpus_texts(), trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
  hf.save(str(tmp_path / "tokenizer.json"))
  (tmp_path / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": "<s>", "eos_token": {"content": "</s>"}, "pad_token": None}))
  tokenizer = tokenizers.open_tokenizer("bpe", str(tmp_path))
  assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (1, 2, 2)
  text = "def add(a, b):  return a + b"
  ids = tokenizer.encode(text)
  assert tokenizer.decode(ids) == text
  assert tokenizer.bytes_per_token[ids].sum() == len(text.encode("utf-8"))
  assert tokenizer.bytes_per_token[hf.token_to_id("▁return")] == len(" return")


def test_model_vocabulary_follows_the_tokenizer(trained):
  tokenizer, out = trained
  subword = {"data.tokenizer": tokenizer.kind, "data.tokenizer_path": out}
  assert resolve_config(load_config(f"{LM_CONFIG}:nano")).model.vocab_size == 264  # bytes
  config = resolve_config(load_config(f"{LM_CONFIG}:nano", subword))
  assert config.model.vocab_size == VOCAB
  with pytest.raises(ConfigError, match=r"config.model.vocab_size=300 is smaller than the "
                                        rf"'{tokenizer.kind}' tokenizer's vocabulary \({VOCAB}\)"):
    resolve_config(load_config(f"{LM_CONFIG}:nano", {**subword, "model.vocab_size": 300}))
  with pytest.raises(ConfigError, match="config.data.tokenizer_path=None must name"):
    resolve_config(load_config(f"{LM_CONFIG}:nano", {"data.tokenizer": tokenizer.kind}))
  with pytest.raises(ConfigError, match=r"config.data.tokenizer_path='x' must name .* None "
                                        r"for 'byte'"):
    resolve_config(load_config(f"{LM_CONFIG}:nano", {"data.tokenizer_path": "x"}))


def test_tokenizer_cli_trains_on_the_corpus_and_never_overwrites(tmp_path):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  for i, text in enumerate(corpus_texts(6)):
    (corpus / f"doc_{i}.txt").write_text(text)
  out = tmp_path / "bpe"
  command = [sys.executable, "-m", "bitjax", "tokenizer", f"--config={LM_CONFIG}:nano",
             "--config.data.name=text_dir", f"--config.data.text_dir={corpus}",
             f"--config.data.data_dir={tmp_path / 'tfds'}", "--vocab_size=300", f"--out={out}"]
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "bpe tokenizer of 300 ids" in done.stdout
  assert tokenizers.load_tokenizer(str(out)).vocab_size == 300
  again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
  assert again.returncode != 0
  assert again.stderr.strip().splitlines()[-1].startswith(
      f"bitjax tokenizer: out={str(out)!r} already holds")
