"""Tokenizers: map text to int32 token ids and back.

Three kinds share one small interface (`Tokenizer`): `byte` (UTF-8 bytes, the offline
default), `bpe` (a Hugging Face `tokenizers` tokenizer.json: one trained here, or one
from a model folder as it is) and `sentencepiece` (a .model file). Each reports
`bytes_per_token`, the UTF-8 bytes of every token's text (0 for special tokens), so bits
per byte is the same formula for all of them and runs with different tokenizers compare.

A tokenizer is saved as a directory: its own file (tokenizer.json or tokenizer.model)
and MARKER, a small JSON file naming the kind and the special ids. Only JSON and
SentencePiece's protobuf are read, so loading one never runs code; files go through
bitjax.files, so a directory may be a gs:// URL. Only numpy is imported at module
level: inference decodes without TFDS or grain, and `tokenizers` / `sentencepiece`
are imported when a subword tokenizer is used.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Iterable
from typing import ClassVar, Protocol

import numpy as np

from bitjax import files

TOKENIZERS = ("byte", "bpe", "sentencepiece")
MARKER = "bitjax_tokenizer.json"  # kind and special ids of a saved tokenizer directory
MARKER_FORMAT = 1
BPE_FILE = "tokenizer.json"
SENTENCEPIECE_FILE = "tokenizer.model"
# Special tokens of the tokenizers trained here: the byte tokenizer's ids 0, 1, 2.
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")
# Names a tokenizer.json from a model folder may give its special tokens, when no
# tokenizer_config.json beside it says which they are.
KNOWN_SPECIALS = {
    "eos": ("<eos>", "</s>", "<|endoftext|>", "<|end_of_text|>", "[SEP]"),
    "bos": ("<bos>", "<s>", "<|begin_of_text|>", "[CLS]"),
    "pad": ("<pad>", "[PAD]", "<|padding|>"),
}


class Tokenizer(Protocol):
  """What the pipelines, the trainer, evaluation and generation use of a tokenizer."""

  kind: str  # one of TOKENIZERS
  pad_id: int
  bos_id: int
  eos_id: int

  @property
  def vocab_size(self) -> int: ...

  @property
  def bytes_per_token(self) -> np.ndarray:
    """float32[vocab_size]: UTF-8 bytes of each token's text; 0 for special tokens."""

  def encode(self, text: str | bytes) -> np.ndarray:
    """int32 ids of `text`, no BOS or EOS added."""

  def decode(self, ids) -> str:
    """Text of `ids`; special ids and ids past the vocabulary are skipped."""

  def save(self, directory: str) -> None:
    """Write the tokenizer into `directory` (created if missing), so load_tokenizer reads it."""


def _as_text(text: str | bytes) -> str:
  return text if isinstance(text, str) else bytes(text).decode("utf-8", errors="replace")


def _known_ids(ids, vocab_size: int) -> list[int]:
  """Ids as ints, without those outside [0, vocab_size) (a model may pad its vocabulary
  for sharding, and a sampled id there has no text)."""
  ids = np.asarray(ids, np.int64).reshape(-1)
  return ids[(ids >= 0) & (ids < vocab_size)].tolist()


def _write_marker(directory: str, kind: str, tokenizer, file: str | None) -> None:
  record = {"format": MARKER_FORMAT, "kind": kind, "file": file, "pad_id": tokenizer.pad_id,
            "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id}
  files.write_text(os.path.join(directory, MARKER), json.dumps(record, indent=2) + "\n")


@dataclasses.dataclass(frozen=True)
class ByteTokenizer:
  """UTF-8 bytes as tokens: pad=0, bos=1, eos=2, byte b -> b + 3.

  Needs no training and no files, and every string round-trips exactly, so it
  is the offline default.
  """

  kind: ClassVar[str] = "byte"
  pad_id: int = 0
  bos_id: int = 1
  eos_id: int = 2
  offset: int = 3

  @property
  def vocab_size(self) -> int:
    return self.offset + 256

  @property
  def bytes_per_token(self) -> np.ndarray:
    """float32[vocab_size]: 0 for the special ids, 1 for every byte id."""
    counts = np.ones((self.vocab_size,), np.float32)
    counts[: self.offset] = 0.0
    return counts

  def encode(self, text: str | bytes) -> np.ndarray:
    """Token ids of `text` (no BOS/EOS added), int32[len(utf8 bytes)]."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return np.frombuffer(data, np.uint8).astype(np.int32) + self.offset

  def decode(self, ids) -> str:
    """Text of `ids`.

    Special ids, and ids past the vocabulary (a model may pad its vocabulary
    for sharding), are skipped; invalid UTF-8 is replaced with U+FFFD.
    """
    ids = np.asarray(ids, np.int64).reshape(-1)
    data = ids[(ids >= self.offset) & (ids < self.vocab_size)] - self.offset
    return data.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

  def save(self, directory: str) -> None:
    files.makedirs(directory)
    _write_marker(directory, self.kind, self, None)


def _byte_level_alphabet() -> dict[str, int]:
  """GPT-2's byte-level alphabet: the printable character that stands for each byte."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)]
  chars, extra = {}, 0
  for byte in range(256):
    if byte in printable:
      chars[chr(byte)] = byte
    else:
      chars[chr(256 + extra)] = byte
      extra += 1
  return chars


def _has_component(spec, type_name: str) -> bool:
  """Whether a tokenizer.json section (nested dicts and lists) holds {"type": type_name}."""
  if isinstance(spec, dict):
    return spec.get("type") == type_name or any(_has_component(v, type_name)
                                                 for v in spec.values())
  if isinstance(spec, list):
    return any(_has_component(v, type_name) for v in spec)
  return False


_BYTE_FALLBACK = re.compile(r"<0x[0-9A-Fa-f]{2}>")


def piece_bytes(piece: str) -> int:
  """UTF-8 bytes of a SentencePiece-style piece: "▁" stands for a space, a byte-fallback
  piece <0xAB> for one byte."""
  if _BYTE_FALLBACK.fullmatch(piece):
    return 1
  return len(piece.replace("\u2581", " ").encode("utf-8"))


class HuggingFaceTokenizer:
  """A Hugging Face `tokenizers` tokenizer (tokenizer.json): the BPE that `python -m bitjax
  tokenizer` trains, or a model folder's as it is.

  Special ids come from the saved MARKER, else from a model folder's
  tokenizer_config.json (eos_token, bos_token, pad_token), else from KNOWN_SPECIALS;
  without a BOS or padding token the EOS stands in for it.
  """

  kind: ClassVar[str] = "bpe"

  def __init__(self, spec_json: str, *, special_names: dict[str, str | None] | None = None,
               special_ids: dict[str, int] | None = None, source: str = "tokenizer.json"):
    from tokenizers import Tokenizer as RustTokenizer

    self._spec = json.loads(spec_json)
    self._tokenizer = RustTokenizer.from_str(spec_json)
    self._vocab = self._tokenizer.get_vocab(with_added_tokens=True)
    self._added = self._tokenizer.get_added_tokens_decoder()
    ids = dict(special_ids or {})
    for role in ("eos", "bos", "pad"):
      if role not in ids:
        names = [special_names[role]] if (special_names or {}).get(role) else KNOWN_SPECIALS[role]
        ids[role] = next((self._vocab[n] for n in names if n in self._vocab), None)
    if ids["eos"] is None:
      raise ValueError(f"{source}: no end-of-text token among {list(KNOWN_SPECIALS['eos'])}; "
                       "put a tokenizer_config.json with eos_token beside it")
    self.eos_id = ids["eos"]
    self.bos_id = self.eos_id if ids["bos"] is None else ids["bos"]
    self.pad_id = self.eos_id if ids["pad"] is None else ids["pad"]

  @property
  def vocab_size(self) -> int:
    return max(self._vocab.values()) + 1

  @functools.cached_property
  def bytes_per_token(self) -> np.ndarray:
    """Byte-level tokenizers spell each byte as one character of GPT-2's alphabet;
    others spell text as it is, with SentencePiece's "▁" and <0xAB> pieces."""
    byte_level = _has_component(self._spec.get("pre_tokenizer"), "ByteLevel") or \
        _has_component(self._spec.get("decoder"), "ByteLevel")
    alphabet = _byte_level_alphabet()
    counts = np.zeros((self.vocab_size,), np.float32)
    for token, index in self._vocab.items():
      added = self._added.get(index)
      if added is not None:
        counts[index] = 0.0 if added.special else len(added.content.encode("utf-8"))
      elif byte_level and all(c in alphabet for c in token):
        counts[index] = len(token)
      else:
        counts[index] = piece_bytes(token)
    return counts

  def encode(self, text: str | bytes) -> np.ndarray:
    ids = self._tokenizer.encode(_as_text(text), add_special_tokens=False).ids
    return np.asarray(ids, np.int32)

  def decode(self, ids) -> str:
    return self._tokenizer.decode(_known_ids(ids, self.vocab_size), skip_special_tokens=True)

  def save(self, directory: str) -> None:
    files.makedirs(directory)
    files.write_text(os.path.join(directory, BPE_FILE), self._tokenizer.to_str())
    _write_marker(directory, self.kind, self, BPE_FILE)


class SentencePieceTokenizer:
  """A SentencePiece model (.model protobuf). Control and unknown pieces count 0 bytes;
  a model without a padding or BOS id uses its EOS for them."""

  kind: ClassVar[str] = "sentencepiece"

  def __init__(self, model_proto: bytes, source: str = "tokenizer.model"):
    import sentencepiece

    self._processor = sentencepiece.SentencePieceProcessor(model_proto=model_proto)
    self.eos_id = self._processor.eos_id()
    if self.eos_id < 0:
      raise ValueError(f"{source}: the SentencePiece model has no EOS id (eos_id=-1)")
    self.bos_id = self._processor.bos_id() if self._processor.bos_id() >= 0 else self.eos_id
    self.pad_id = self._processor.pad_id() if self._processor.pad_id() >= 0 else self.eos_id

  @property
  def vocab_size(self) -> int:
    return self._processor.get_piece_size()

  @functools.cached_property
  def bytes_per_token(self) -> np.ndarray:
    sp = self._processor
    return np.array([0 if sp.is_control(i) or sp.is_unknown(i) else
                     1 if sp.is_byte(i) else piece_bytes(sp.id_to_piece(i))
                     for i in range(self.vocab_size)], np.float32)

  def encode(self, text: str | bytes) -> np.ndarray:
    return np.asarray(self._processor.encode(_as_text(text), out_type=int), np.int32)

  def decode(self, ids) -> str:
    return self._processor.decode(_known_ids(ids, self.vocab_size))

  def save(self, directory: str) -> None:
    files.makedirs(directory)
    files.write_bytes(os.path.join(directory, SENTENCEPIECE_FILE),
                      self._processor.serialized_model_proto())
    _write_marker(directory, self.kind, self, SENTENCEPIECE_FILE)


def _read_marker(directory: str) -> dict | None:
  path = os.path.join(directory, MARKER)
  if not files.exists(path):
    return None
  marker = json.loads(files.read_text(path))
  if marker.get("format", 0) > MARKER_FORMAT:
    raise ValueError(f"{path} has format {marker['format']}, newer than this bitjax reads "
                     f"({MARKER_FORMAT}); upgrade bitjax")
  return marker


def _special_names(directory: str) -> dict[str, str | None]:
  """eos/bos/pad token names from a model folder's tokenizer_config.json, if it has one."""
  path = os.path.join(directory, "tokenizer_config.json")
  if not files.exists(path):
    return {}
  config = json.loads(files.read_text(path))
  names = {}
  for role in ("eos", "bos", "pad"):
    token = config.get(f"{role}_token")
    names[role] = token.get("content") if isinstance(token, dict) else token
  return names


def _subword_file(kind: str, path: str, name: str) -> tuple[str, str]:
  """(the directory, the tokenizer file) that `path`, a file or a directory, names."""
  if files.isdir(path):
    directory = path
    file = os.path.join(path, BPE_FILE if kind == "bpe" else SENTENCEPIECE_FILE)
    if kind == "sentencepiece" and not files.exists(file):
      models = sorted(n for n in files.listdir(path) if n.endswith(".model"))
      file = os.path.join(path, models[0]) if len(models) == 1 else file
  else:
    directory, file = os.path.dirname(path), path
  if not files.exists(file):
    wanted = "a tokenizer.json" if kind == "bpe" else "a SentencePiece .model file"
    raise ValueError(f"{name}={path!r} is not {wanted} nor a directory holding one")
  return directory, file


def open_tokenizer(kind: str, path: str, name: str = "path") -> Tokenizer:
  """The `kind` tokenizer (TOKENIZERS) at `path`: a tokenizer file, or a directory holding
  one (a saved tokenizer, a model folder). `name` is what error messages call `path`."""
  if kind == "byte":
    return ByteTokenizer()
  directory, file = _subword_file(kind, path, name)
  marker = _read_marker(directory) or {}
  if marker and marker["kind"] != kind:
    raise ValueError(f"{name}={path!r} holds a {marker['kind']!r} tokenizer, not {kind!r}")
  if kind == "bpe":
    ids = {role: marker[f"{role}_id"] for role in ("eos", "bos", "pad")} if marker else None
    return HuggingFaceTokenizer(files.read_text(file), special_ids=ids,
                                special_names=_special_names(directory), source=file)
  return SentencePieceTokenizer(files.read_bytes(file), source=file)


def load_tokenizer(directory: str) -> Tokenizer:
  """The tokenizer a `save` wrote into `directory`."""
  marker = _read_marker(directory)
  if marker is None:
    raise ValueError(f"{directory!r} holds no saved tokenizer ({MARKER} is missing)")
  return open_tokenizer(marker["kind"], directory, "directory")


@functools.lru_cache(maxsize=8)
def _cached_tokenizer(kind: str, path: str | None) -> Tokenizer:
  return open_tokenizer(kind, path, "config.data.tokenizer_path")


def get_tokenizer(data_config) -> Tokenizer:
  """The tokenizer named by `data_config.tokenizer` (and `tokenizer_path` for subword
  tokenizers); loaded once per path, since the pipelines and evaluation all ask."""
  name = data_config.tokenizer
  if name not in TOKENIZERS:
    raise ValueError(f"config.data.tokenizer={name!r} is not one of {list(TOKENIZERS)}")
  path = getattr(data_config, "tokenizer_path", None)
  if name != "byte" and not path:
    raise ValueError(f"config.data.tokenizer={name!r} needs config.data.tokenizer_path (a "
                     "tokenizer file or a directory holding one)")
  return _cached_tokenizer(name, None if name == "byte" else path)


def train_tokenizer(texts: Iterable[str], kind: str, vocab_size: int,
                    out_dir: str) -> Tokenizer:
  """Train a `kind` ("bpe" or "sentencepiece") tokenizer of `vocab_size` ids on `texts`
  and save it into `out_dir`, which must not hold a tokenizer yet.

  bpe: byte-level BPE (GPT-2's pre-tokenizer), so any text round-trips exactly.
  sentencepiece: BPE pieces with byte fallback, no normalization and no dummy prefix,
  so it round-trips too and its bytes per token add up to the text's. Both put
  <pad>, <bos>, <eos> at ids 0, 1, 2, as the byte tokenizer does.
  """
  if kind not in ("bpe", "sentencepiece"):
    raise ValueError(f"kind={kind!r} is not one of ['bpe', 'sentencepiece']")
  taken = [name for name in (MARKER, BPE_FILE, SENTENCEPIECE_FILE)
           if files.exists(os.path.join(out_dir, name))]
  if taken:
    raise ValueError(f"out={out_dir!r} already holds {taken}; choose a new directory")
  smallest = 256 + len(SPECIAL_TOKENS) + (1 if kind == "sentencepiece" else 0) + 1
  if vocab_size < smallest:
    raise ValueError(f"vocab_size={vocab_size} is too small for a {kind} tokenizer over bytes; "
                     f"use at least {smallest}")
  tokenizer = _train_bpe(texts, vocab_size) if kind == "bpe" else \
      _train_sentencepiece(texts, vocab_size)
  tokenizer.save(out_dir)
  return tokenizer


def _train_bpe(texts: Iterable[str], vocab_size: int) -> HuggingFaceTokenizer:
  from tokenizers import Tokenizer as RustTokenizer
  from tokenizers import decoders, models, pre_tokenizers, trainers

  tokenizer = RustTokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tokenizer.train_from_iterator(texts, trainer=trainer)
  return HuggingFaceTokenizer(tokenizer.to_str(), special_names=dict(
      zip(("pad", "bos", "eos"), SPECIAL_TOKENS)))


def _train_sentencepiece(texts: Iterable[str], vocab_size: int) -> SentencePieceTokenizer:
  import io

  import sentencepiece

  lines = (line for text in texts for line in text.split("\n") if line.strip())
  model = io.BytesIO()
  try:
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=lines, model_writer=model, vocab_size=vocab_size, model_type="bpe",
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, byte_fallback=True, add_dummy_prefix=False,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        character_coverage=1.0, input_sentence_size=2_000_000, shuffle_input_sentence=True,
        minloglevel=2)
  except RuntimeError as e:  # e.g. a vocabulary too small for the corpus's characters
    raise ValueError(f"vocab_size={vocab_size}: SentencePiece could not train: "
                     f"{str(e).splitlines()[-1]}") from None
  return SentencePieceTokenizer(model.getvalue())
