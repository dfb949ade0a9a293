"""Encoder and encoder-decoder tasks from the corpus, as fixed-length int32 arrays.

- Masked LM (BERT): `mask_tokens` corrupts 15% of the real tokens, 80/10/10.
- Byte tokens of padded texts (`encode_padded`), e.g. the package classification's
  stdlib chunks (`bitjax.data.loaders.cached_package_chunks`).
- Span corruption (T5): `span_corrupt` swaps noise spans for sentinels; the
  target lists each sentinel followed by the span it replaced.
- Docstring summary: a function's code (docstring removed, via `ast`) -> the
  first line of its docstring.

Token ids past the byte tokenizer's vocabulary are extra ids: `extra_id(tokenizer, 0)`
is the [MASK] token and the span sentinels count from it, so a model for these
tasks needs vocab_size >= tokenizer.vocab_size + the extra ids it uses.
"""

from __future__ import annotations

import ast
import os

import numpy as np

from bitjax.data import corpus
from bitjax.data.tokenizers import ByteTokenizer

IGNORE_LABEL = -1  # targets at positions that carry no loss


def extra_id(tokenizer: ByteTokenizer, index: int) -> int:
  """The index-th id past the tokenizer's vocabulary ([MASK], span sentinels)."""
  return tokenizer.vocab_size + index


def encode_padded(tokenizer: ByteTokenizer, texts, length: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens int32[n, length], mask bool[n, length]): truncated, or padded with pad_id."""
  tokens = np.full((len(texts), length), tokenizer.pad_id, np.int32)
  lengths = np.zeros((len(texts), 1), np.int64)
  for row, text in enumerate(texts):
    ids = tokenizer.encode(text)[:length]
    tokens[row, :len(ids)] = ids
    lengths[row] = len(ids)
  return tokens, np.arange(length) < lengths


def mask_tokens(tokens: np.ndarray, mask: np.ndarray, tokenizer: ByteTokenizer,
                rng: np.random.Generator, rate: float = 0.15) -> dict[str, np.ndarray]:
  """BERT masking: of the real tokens, `rate` are chosen (at least one per row); those
  become [MASK] 80%, a random byte 10%, unchanged 10%. Targets are the original
  tokens at chosen positions and IGNORE_LABEL elsewhere."""
  chosen = (rng.random(tokens.shape) < rate) & mask
  first_real = np.argmax(mask, axis=1)
  rows = np.flatnonzero(~chosen.any(1) & mask.any(1))
  chosen[rows, first_real[rows]] = True
  action = rng.random(tokens.shape)
  random_bytes = rng.integers(tokenizer.offset, tokenizer.vocab_size, tokens.shape)
  inputs = np.where(chosen & (action < 0.8), extra_id(tokenizer, 0), tokens)
  inputs = np.where(chosen & (action >= 0.8) & (action < 0.9), random_bytes, inputs)
  return {"tokens": inputs.astype(np.int32), "mask": mask,
          "targets": np.where(chosen, tokens, IGNORE_LABEL).astype(np.int32)}


def span_corrupt(ids: np.ndarray, tokenizer: ByteTokenizer, rng: np.random.Generator, *,
                 noise_density: float = 0.15, mean_span: float = 3.0,
                 max_sentinels: int = 32) -> tuple[np.ndarray, np.ndarray]:
  """T5 span corruption of one unpadded sequence: (inputs, targets), both ending in EOS.

  round(len * noise_density) tokens in round(noise / mean_span) spans (at least one,
  at most max_sentinels) are replaced in the inputs by sentinels extra_id(k + 1);
  the targets are each sentinel followed by the tokens it hides.
  """
  ids = np.asarray(ids, np.int32)
  length = len(ids)
  num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
  num_spans = min(max(int(round(num_noise / mean_span)), 1), max_sentinels, num_noise,
                  length - num_noise)

  def split(total, parts):
    """`total` as `parts` positive integers in random proportions."""
    cuts = np.sort(rng.choice(np.arange(1, total), parts - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [total]]))

  noise_lengths = split(num_noise, num_spans)
  keep_lengths = split(length - num_noise, num_spans)
  inputs, targets, start = [], [], 0
  for k, (keep, noise) in enumerate(zip(keep_lengths, noise_lengths)):
    sentinel = extra_id(tokenizer, k + 1)
    inputs += [*ids[start:start + keep], sentinel]
    targets += [sentinel, *ids[start + keep:start + keep + noise]]
    start += keep + noise
  eos = tokenizer.eos_id
  return np.array(inputs + [eos], np.int32), np.array(targets + [eos], np.int32)


def seq2seq_arrays(pairs, tokenizer: ByteTokenizer, input_len: int, target_len: int,
                   decoder_start_id: int | None = None) -> dict[str, np.ndarray]:
  """Teacher-forcing arrays from (input ids, target ids) pairs, truncated and padded:
  inputs/input_mask, decoder_inputs (start id, then the targets shifted right),
  targets/target_mask."""
  start = tokenizer.bos_id if decoder_start_id is None else decoder_start_id
  n = len(pairs)
  out = {"inputs": np.full((n, input_len), tokenizer.pad_id, np.int32),
         "targets": np.full((n, target_len), tokenizer.pad_id, np.int32)}
  for row, (source, target) in enumerate(pairs):
    out["inputs"][row, :min(len(source), input_len)] = source[:input_len]
    out["targets"][row, :min(len(target), target_len)] = target[:target_len]
  lengths = {key: np.array([min(len(p[i]), size) for p in pairs]).reshape(-1, 1)
             for i, (key, size) in enumerate((("inputs", input_len), ("targets", target_len)))}
  out["input_mask"] = np.arange(input_len) < lengths["inputs"]
  out["target_mask"] = np.arange(target_len) < lengths["targets"]
  out["decoder_inputs"] = np.concatenate(
      [np.full((n, 1), start, np.int32), out["targets"][:, :-1]], axis=1)
  return out


def text_pairs(pairs, tokenizer: ByteTokenizer, input_len: int,
               target_len: int) -> dict[str, np.ndarray]:
  """seq2seq_arrays of (source text, target text) pairs; both get EOS."""
  eos = [tokenizer.eos_id]
  return seq2seq_arrays([(np.append(tokenizer.encode(s), eos), np.append(tokenizer.encode(t), eos))
                         for s, t in pairs], tokenizer, input_len, target_len)


def docstring_pairs(source: str) -> list[tuple[str, str]]:
  """(code without its docstring, first docstring line) for every documented function
  in `source`; [] when the file does not parse."""
  try:
    tree = ast.parse(source)
  except (SyntaxError, ValueError):
    return []
  pairs = []
  for node in ast.walk(tree):
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      continue
    docstring = ast.get_docstring(node)
    summary = docstring.strip().split("\n", 1)[0].strip() if docstring else ""
    if not summary or len(node.body) < 2:
      continue
    body = node.body
    node.body = body[1:]  # Drop the docstring expression.
    try:
      code = ast.unparse(node)
    finally:
      node.body = body
    pairs.append((code, summary))
  return pairs


def corpus_docstrings(root: str | None = None, pattern: str = corpus.STDLIB_GLOB,
                      exclude_dirs=corpus.STDLIB_EXCLUDED_DIRS) -> dict[str, list]:
  """Docstring pairs of every file under root (default: the stdlib), per corpus split
  (train/validation by file, as for the LM corpus)."""
  root = corpus.stdlib_root() if root is None else root
  files = corpus.list_files(root, pattern, exclude_dirs)
  return {split: [pair for f in split_files
                  for pair in docstring_pairs(corpus.read_text(os.path.join(root, f)))]
          for split, split_files in corpus.split_files(files).items()}

