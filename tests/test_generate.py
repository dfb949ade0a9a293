"""infer.generate: cached decoding agrees with recomputing the whole sequence, sampling
stays inside its top-k / top-p set, EOS stops a row, and bad arguments get one line."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bitjax.infer import generate, pack_model
from bitjax.infer.generation import sample_tokens
from bitjax.models import Decoder, DecoderConfig

VOCAB = 64


def nano_decoder(seed, **overrides):
  fields = dict(vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, mlp_hidden_size=64,
                compute_dtype="float32")
  return Decoder(DecoderConfig(**{**fields, **overrides}), rngs=nnx.Rngs(seed))


def random_prompts(rng, lengths):
  return [rng.integers(0, VOCAB, n) for n in lengths]


@nnx.jit
def forward(model, tokens):
  return model(tokens)


def recompute_logits(model, rows, length=None):
  """Every row's logits after each of its prefixes from one training forward: rows are
  right-padded to `length` (causal attention never looks at the padding after them)."""
  tokens = np.zeros((len(rows), length or max(len(row) for row in rows)), np.int32)
  for i, row in enumerate(rows):
    tokens[i, :len(row)] = row
  return [logits[:len(row)] for logits, row in zip(np.asarray(forward(model, tokens)), rows)]


def recompute_greedy(model, prompts, new_tokens):
  """Greedy decoding without a cache: the whole sequences through model(tokens) per token."""
  rows = [list(prompt) for prompt in prompts]
  length = max(len(row) for row in rows) + new_tokens  # one shape: one compilation
  for _ in range(new_tokens):
    for row, logits in zip(rows, recompute_logits(model, rows, length)):
      row.append(int(np.argmax(logits[-1])))
  return [np.array(row) for row in rows]


@pytest.mark.parametrize("overrides", [
    {}, {"num_kv_heads": 2, "precision": "b1.58"}, {"num_kv_heads": 1, "scan_layers": True},
    {"precision": "b1.58", "scan_layers": True, "tie_embeddings": False},
], ids=["plain", "gqa-b1.58", "mqa-scanned", "b1.58-scanned-untied"])
def test_cached_greedy_matches_recompute(rng, overrides):
  model = nano_decoder(int(rng.integers(1 << 16)), **overrides)
  prompts = random_prompts(rng, [5, 1, 3])  # left padding: 0, 4 and 2 pad slots
  for got, want in zip(generate(model, prompts, 5), recompute_greedy(model, prompts, 5)):
    np.testing.assert_array_equal(got, want)


def allowed_tokens(logits, temperature, top_k, top_p):
  """The tokens sampling may emit after `logits`, by the definition in generate's docstring."""
  order = np.argsort(-logits / temperature, kind="stable")
  keep = order[:top_k or len(order)]
  if top_p is not None:
    scaled = logits[keep] / temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    keep = keep[(np.cumsum(probs) - probs) < top_p]
  return set(keep.tolist())


@pytest.mark.parametrize("top_k,top_p", [(3, None), (None, 0.3), (8, 0.5)])
def test_sampling_stays_in_top_k_top_p_set(rng, top_k, top_p):
  model = nano_decoder(int(rng.integers(1 << 16)))
  prompts = random_prompts(rng, [4, 2])
  temperature = 0.7
  rows = generate(model, prompts, 6, temperature=temperature, top_k=top_k, top_p=top_p,
                  seed=int(rng.integers(1 << 16)))
  for prompt, row, logits in zip(prompts, rows, recompute_logits(model, rows)):
    for position in range(len(prompt), len(row)):
      assert row[position] in allowed_tokens(logits[position - 1], temperature, top_k, top_p)


def test_sample_tokens_draws_exactly_the_allowed_set():
  logits = jnp.log(jnp.array([[0.05, 0.5, 0.15, 0.3]]))  # ranks: 1, 3, 2, 0
  keys = jax.random.split(jax.random.key(0), 400)

  def drawn(top_k=None, top_p=None):
    draw = lambda key: sample_tokens(logits, key, jnp.float32(1.0), top_k, top_p)[0]
    return set(np.asarray(jax.vmap(draw)(keys)).tolist())

  assert drawn() == {0, 1, 2, 3}
  assert drawn(top_k=jnp.int32(2)) == {1, 3}
  assert drawn(top_p=jnp.float32(0.75)) == {1, 3}
  assert drawn(top_p=jnp.float32(0.45)) == {1}
  # top-p over the top-k renormalised: 0.5 / 0.8 = 0.625 reaches 0.6 alone.
  assert drawn(top_k=jnp.int32(2), top_p=jnp.float32(0.6)) == {1}


def test_sampling_is_reproducible_per_seed(rng):
  model = nano_decoder(int(rng.integers(1 << 16)))
  prompts = rng.integers(0, VOCAB, (2, 3))  # a 2-D array: rows of one length
  sample = lambda seed: np.stack(generate(model, prompts, 8, temperature=1.0, seed=seed))
  first, again, other = sample(1), sample(1), sample(2)
  np.testing.assert_array_equal(first, again)
  np.testing.assert_array_equal(first[:, :3], prompts)
  assert not np.array_equal(first, other)


def test_eos_stops_each_row_after_emitting_it(rng):
  model = nano_decoder(int(rng.integers(1 << 16)))
  prompts = random_prompts(rng, [3, 6, 2])
  free = generate(model, prompts, 6)
  eos = int(free[0][len(prompts[0]) + 2])  # row 0's third new token
  stopped = generate(model, prompts, 6, eos_id=eos)
  for prompt, full, row in zip(prompts, free, stopped):
    new = full[len(prompt):]
    hits = np.flatnonzero(new == eos)
    end = len(new) if hits.size == 0 else hits[0] + 1
    np.testing.assert_array_equal(row, full[:len(prompt) + end])
  assert stopped[0][-1] == eos and len(stopped[0]) <= len(prompts[0]) + 3


def test_packed_model_gives_the_training_model_tokens_where_logits_agree(rng):
  model = nano_decoder(int(rng.integers(1 << 16)), precision="b1.58")
  packed, _ = pack_model(model, backend="xla")
  prompts = random_prompts(rng, [4, 2])
  trained, served = generate(model, prompts, 8), generate(packed, prompts, 8)
  compared = 0
  logits = zip(recompute_logits(model, trained), recompute_logits(packed, trained))
  for prompt, want, got, (want_logits, got_logits) in zip(prompts, trained, served, logits):
    for position in range(len(prompt), len(want)):
      top2 = np.sort(want_logits[position - 1])[-2:]
      gap = np.abs(want_logits[position - 1] - got_logits[position - 1]).max()
      if top2[1] - top2[0] <= 2 * gap + 1e-4:
        break  # the two models may rightly pick different tokens from here on
      assert got[position] == want[position]
      compared += 1
  assert compared >= 4


@dataclasses.dataclass(frozen=True)
class ContextConfig(DecoderConfig):
  """A config with the context-length field generate reads its default limit from."""

  max_seq_len: int = 8


@pytest.mark.parametrize("call,argument", [
    (lambda m: generate(m, [[1, 2], []], 4), r"prompt_ids\[1\] is empty"),
    (lambda m: generate(m, [], 4), "prompt_ids: no rows"),
    (lambda m: generate(m, [1, 2, 3], 4), r"prompt_ids\[0\] has shape"),
    (lambda m: generate(m, [[1, VOCAB]], 4), rf"prompt_ids\[0\] holds token id {VOCAB}"),
    (lambda m: generate(m, [[-1, 2]], 4), r"prompt_ids\[0\] holds token id -1"),
    (lambda m: generate(m, [[1.5, 2.0]], 4), r"prompt_ids\[0\] has dtype float"),
    (lambda m: generate(m, [[1, 2]], 0), "max_new_tokens=0"),
    (lambda m: generate(m, [[1, 2, 3]], 6, max_context=8), "max_new_tokens=6 .* 1 to 5"),
    (lambda m: generate(m, [[1] * 8], 1, max_context=8), "prompt_ids: the longest prompt"),
    (lambda m: generate(m, [[1]], 2, top_p=0.0), r"top_p=0.0 .* \(0, 1\]"),
    (lambda m: generate(m, [[1]], 2, top_p=1.5), r"top_p=1.5 .* \(0, 1\]"),
    (lambda m: generate(m, [[1]], 2, top_k=0), "top_k=0"),
    (lambda m: generate(m, [[1]], 2, temperature=-0.5), "temperature=-0.5"),
    (lambda m: generate(m, [[1]], 2, eos_id=VOCAB), f"eos_id={VOCAB}"),
])
def test_bad_arguments_get_one_line_naming_them(call, argument):
  model = nano_decoder(0)
  with pytest.raises(ValueError, match=argument) as error:
    call(model)
  assert "\n" not in str(error.value)


def test_context_limit_defaults_to_the_config_max_seq_len():
  cfg = ContextConfig(vocab_size=VOCAB, hidden_size=32, num_layers=1, num_heads=4,
                      mlp_hidden_size=64)
  with pytest.raises(ValueError, match="max_new_tokens=7 goes past max_context=8"):
    generate(Decoder(cfg, rngs=nnx.Rngs(0)), [[1, 2]], 7)


SHARDED_GENERATE_SCRIPT = """
import json, sys
import jax, numpy as np
from flax import nnx
from bitjax.infer import generate, pack_model
from bitjax.models import Decoder, DecoderConfig
from bitjax.parallel import make_mesh, state_shardings

seed = int(sys.argv[1])
rng = np.random.default_rng(seed)
prompts = [rng.integers(0, 64, n) for n in (5, 2, 7, 3)]
results = {}
for precision in ("fp32", "b1.58"):
  cfg = DecoderConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      mlp_hidden_size=64, precision=precision, compute_dtype="float32")
  model = Decoder(cfg, rngs=nnx.Rngs(seed))
  models = {"training": model}
  if precision == "b1.58":
    models["packed"] = pack_model(model, backend="xla")[0]
  for name, m in models.items():
    want = generate(m, prompts, 6)
    for sizes in [(2, 2, 2), (1, 1, 8)]:
      mesh = make_mesh(*sizes)
      graphdef, state = nnx.split(m)
      sharded = nnx.merge(graphdef, jax.device_put(state, state_shardings(state, mesh)))
      with jax.set_mesh(mesh):
        got = generate(sharded, prompts, 6)
      results[f"{precision} {name} {sizes}"] = all(
          np.array_equal(a, b) for a, b in zip(got, want))
print(json.dumps(results))
"""


def test_generation_on_a_mesh_gives_the_one_device_tokens(rng):
  """Parameters sharded by the rules table over 8 virtual devices (kernels of packed layers
  inside shard_map): the same greedy tokens as on one device, training-mode and packed."""
  from multidevice import json_result, run_on_8_devices

  results = json_result(run_on_8_devices(SHARDED_GENERATE_SCRIPT, str(rng.integers(1 << 30))))
  assert len(results) == 6
  assert all(results.values()), results
