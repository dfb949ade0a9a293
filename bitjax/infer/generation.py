"""Autoregressive generation from a Decoder with a key-value cache.

One prefill runs the padded prompts through `Decoder.extend` and fills a fixed-size
cache; a `jax.lax.while_loop` then runs one compiled decode step per new token over
that cache, so the whole generation is a single jitted program. It runs the model's
own layers (`layer(x)`), so training-mode and packed (serving) models both work.

Prompts are LEFT-padded inside: the last prompt token of every row sits in the same
cache slot, so every row's next token is written at one shared slot each step (a
dynamic slice update, no per-row scatter) and the prefill's next-token logits are one
column. Each row's RoPE positions are its true positions (slot minus its padding) and
its pad slots are masked out of every attention, so a row's tokens do not depend on
the other rows' lengths (up to per-tensor activation scales, which span the batch).
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def generate(model: nnx.Module, prompt_ids: Sequence, max_new_tokens: int,
             temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
             seed: int = 0, eos_id: int | None = None,
             max_context: int | None = None) -> list[np.ndarray]:
  """Continue each prompt by up to `max_new_tokens` tokens.

  prompt_ids: a sequence of rows, each a list or 1-D array of token ids; rows may differ
    in length (a 2-D array is a batch of equal-length rows). One prompt is `[ids]`.
  temperature: 0 is greedy (argmax); otherwise tokens are drawn from
    softmax(logits / temperature), restricted to the `top_k` most likely tokens and then
    to the smallest set of those whose (renormalised) probability reaches `top_p`.
    Draws are reproducible per `seed`.
  eos_id: a row stops after emitting it (the EOS is kept); rows stop independently.
  max_context: the most positions a row may use, prompt plus new tokens; default the
    model config's `max_seq_len` when it has one, else no limit but memory.

  Returns one int32 array per row: its prompt followed by its new tokens.
  """
  vocab_size = _check_model(model)
  rows = _prompt_rows(prompt_ids, vocab_size)
  _check_int("max_new_tokens", max_new_tokens, low=1)
  check_context(model, max(len(row) for row in rows), max_new_tokens, max_context)
  if not isinstance(temperature, numbers.Real) or not math.isfinite(temperature) or temperature < 0:
    raise ValueError(f"temperature={temperature!r} is not allowed; use a finite number >= 0 "
                     "(0 is greedy)")
  if top_k is not None:
    _check_int("top_k", top_k, low=1)
  if top_p is not None and (not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1):
    raise ValueError(f"top_p={top_p!r} is outside the allowed range (0, 1]")
  _check_int("seed", seed, low=None)
  if eos_id is not None:
    _check_int("eos_id", eos_id, low=0, high=vocab_size)

  longest = max(len(row) for row in rows)
  tokens = np.zeros((len(rows), longest), np.int32)
  for i, row in enumerate(rows):
    tokens[i, longest - len(row):] = row
  pad = np.array([longest - len(row) for row in rows], np.int32)
  graphdef, state = nnx.split(model)
  # Sampling values are traced (changing them does not recompile); greedy decoding and
  # which filters apply shape the program. A greedy run never reads the temperature.
  new, steps = _generate(
      graphdef, state, jnp.asarray(tokens), jnp.asarray(pad), jax.random.key(seed),
      jnp.float32(temperature if temperature else 1.0),
      None if top_k is None else jnp.int32(min(top_k, vocab_size)),
      None if top_p is None else jnp.float32(top_p), jnp.int32(-1 if eos_id is None else eos_id),
      max_new_tokens=int(max_new_tokens), greedy=temperature == 0)
  new = np.asarray(new)[:, :int(steps)]
  return [np.concatenate([row.astype(np.int32), _until_eos(generated, eos_id)])
          for row, generated in zip(rows, new)]


def generate_text(model: nnx.Module, tokenizer, prompts: str | Sequence[str],
                  max_new_tokens: int, **sampling) -> str | list[str]:
  """Continue text prompts: each is encoded with `tokenizer` after its EOS id (the
  separator the training stream puts before every document, so a prompt reads as the
  start of one), decoded until the row emits EOS. `sampling` takes generate's
  temperature, top_k, top_p, seed and max_context.

  Returns the continuation (the new text only) of each prompt; one string for one
  string prompt.
  """
  single = isinstance(prompts, str)
  texts = [prompts] if single else list(prompts)
  if not texts or not all(isinstance(text, str) for text in texts):
    raise ValueError(f"prompts: expected a string or a list of strings; got {prompts!r:.80}")
  for i, text in enumerate(texts):
    if not text:
      raise ValueError(f"prompts[{i}] is empty; give the text to continue")
  rows = [np.concatenate([[tokenizer.eos_id], tokenizer.encode(text)]).astype(np.int32)
          for text in texts]
  outputs = generate(model, rows, max_new_tokens, eos_id=tokenizer.eos_id, **sampling)
  continuations = [tokenizer.decode(out[len(row):]) for row, out in zip(rows, outputs)]
  return continuations[0] if single else continuations


def check_context(model: nnx.Module, prompt_len: int, max_new_tokens: int,
                  max_context: int | None = None) -> None:
  """ValueError unless the longest prompt plus `max_new_tokens` fits the context:
  `max_context`, else the config's `max_seq_len` when it has one, else unlimited."""
  if max_context is None:
    max_context = getattr(model.cfg, "max_seq_len", None)
    if max_context is None:
      return
  else:
    _check_int("max_context", max_context, low=1)
  room = max_context - prompt_len
  if room < 1:
    raise ValueError(f"prompt_ids: the longest prompt has {prompt_len} tokens, which leaves no "
                     f"room for new tokens in max_context={max_context}")
  if max_new_tokens > room:
    raise ValueError(f"max_new_tokens={max_new_tokens} goes past max_context={max_context} after "
                     f"a {prompt_len}-token prompt; allowed: 1 to {room}")


def sample_tokens(logits: jax.Array, key: jax.Array, temperature: jax.Array,
                  top_k: jax.Array | None = None, top_p: jax.Array | None = None) -> jax.Array:
  """Draw one token per row from logits [batch, vocab] (temperature > 0): softmax of
  logits / temperature over the `top_k` best tokens, then over the smallest prefix of
  them whose renormalised probability reaches `top_p`. Returns int32 [batch]."""
  logits = logits.astype(jnp.float32) / temperature
  if top_k is None and top_p is None:
    return jax.random.categorical(key, logits).astype(jnp.int32)
  order = jnp.argsort(-logits, axis=-1)  # best first; stable, so ties go to the lower id
  ranked = jnp.take_along_axis(logits, order, axis=-1)
  keep = jnp.ones(ranked.shape, bool)
  if top_k is not None:
    keep = jnp.arange(ranked.shape[-1]) < top_k
    ranked = jnp.where(keep, ranked, -jnp.inf)
  if top_p is not None:
    probs = jax.nn.softmax(ranked, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # of the better-ranked tokens
    keep = keep & ((mass_before < top_p) | (top_p >= 1))  # the best token always stays
  choice = jax.random.categorical(key, jnp.where(keep, ranked, -jnp.inf))
  return jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "greedy"))
def _generate(graphdef, state, tokens, pad, key, temperature, top_k, top_p, eos_id, *,
              max_new_tokens: int, greedy: bool):
  """Prefill then a while loop of decode steps; returns the new tokens [batch,
  max_new_tokens] (valid up to the returned step count) and that count."""
  model = nnx.merge(graphdef, state)
  batch, prompt_len = tokens.shape
  slots = prompt_len + max_new_tokens - 1  # the last new token is never fed back
  key_mask = jnp.arange(slots)[None, :] >= pad[:, None]

  def sample(logits, step):
    if greedy:
      return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return sample_tokens(logits, jax.random.fold_in(key, step), temperature, top_k, top_p)

  positions = jnp.maximum(jnp.arange(prompt_len)[None, :] - pad[:, None], 0)
  logits, cache = model.extend(tokens, positions, model.init_cache(batch, slots),
                               cache_index=0, key_mask=key_mask)
  first = sample(logits[:, -1], 0)
  new = jnp.zeros((batch, max_new_tokens), jnp.int32).at[:, 0].set(first)

  def unfinished(carry):
    step, _, _, done, _ = carry
    return (step < max_new_tokens) & ~jnp.all(done)

  def decode(carry):
    step, new, cache, done, weights = carry
    slot = prompt_len + step - 1  # where the previous token goes
    previous = jax.lax.dynamic_slice_in_dim(new, step - 1, 1, axis=1)
    # The weights ride in the carry and the model is rebuilt here: NNX transforms (the
    # scan over stacked blocks) refuse variables traced outside the loop body.
    logits, cache = nnx.merge(graphdef, weights).extend(
        previous, (slot - pad)[:, None], cache, cache_index=slot, key_mask=key_mask)
    token = sample(logits[:, 0], step)
    new = jax.lax.dynamic_update_slice_in_dim(new, token[:, None], step, axis=1)
    return step + 1, new, cache, done | (token == eos_id), weights

  steps, new, *_ = jax.lax.while_loop(unfinished, decode,
                                      (jnp.int32(1), new, cache, first == eos_id, state))
  return new, steps


def _until_eos(generated: np.ndarray, eos_id: int | None) -> np.ndarray:
  if eos_id is not None:
    hits = np.flatnonzero(generated == eos_id)
    if hits.size:
      return generated[:hits[0] + 1]
  return generated


def _check_model(model) -> int:
  if not (hasattr(model, "extend") and hasattr(model, "init_cache")):
    raise ValueError(f"model: generate needs a Decoder (with init_cache and extend); got "
                     f"{type(model).__name__}")
  return model.cfg.vocab_size


def _check_int(name: str, value, *, low: int | None, high: int | None = None) -> None:
  is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
  if not is_int or (low is not None and value < low) or (high is not None and value >= high):
    allowed = ("an integer" if low is None else
               f"an integer >= {low}" if high is None else f"an integer in [{low}, {high})")
    raise ValueError(f"{name}={value!r} is not allowed; use {allowed}")


def _prompt_rows(prompt_ids, vocab_size: int) -> list[np.ndarray]:
  if isinstance(prompt_ids, (str, bytes)) or not isinstance(prompt_ids, (Sequence, np.ndarray,
                                                                         jax.Array)):
    raise ValueError(f"prompt_ids: expected a sequence of token-id rows; got "
                     f"{type(prompt_ids).__name__}")
  rows = [np.asarray(row) for row in prompt_ids]
  if not rows:
    raise ValueError("prompt_ids: no rows; pass one or more prompts, e.g. [[1, 2, 3]]")
  for i, row in enumerate(rows):
    if row.ndim != 1:
      raise ValueError(f"prompt_ids[{i}] has shape {row.shape}; each row must be a 1-D sequence "
                       "of token ids (one prompt is [ids])")
    if row.size == 0:
      raise ValueError(f"prompt_ids[{i}] is empty; every prompt needs at least one token")
    if not np.issubdtype(row.dtype, np.integer):
      raise ValueError(f"prompt_ids[{i}] has dtype {row.dtype}; token ids must be integers")
    bad = row[(row < 0) | (row >= vocab_size)]
    if bad.size:
      raise ValueError(f"prompt_ids[{i}] holds token id {int(bad[0])}; ids must be in "
                       f"[0, {vocab_size})")
  return rows
