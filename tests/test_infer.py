"""pack_model: packed inference gives the training-mode logits and stores 2 bits a weight."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bitjax.infer import PackedDense, pack_model
from bitjax.models import Decoder, DecoderConfig
from bitjax.nn import BitDense


def small_decoder(precision, seed, **overrides):
  cfg = DecoderConfig(precision=precision, vocab_size=96, hidden_size=64, num_layers=2,
                      num_heads=4, mlp_hidden_size=160, compute_dtype="float32", **overrides)
  return Decoder(cfg, rngs=nnx.Rngs(seed))


@pytest.mark.parametrize("precision,overrides", [
    ("b1.58", {}), ("b1.58-median", {}), ("1bit", {}), ("b1.58", {"act_bits": 0})])
@pytest.mark.parametrize("backend", ["xla", "interpret"])
def test_packed_logits_match_training_mode(rng, precision, overrides, backend):
  model = small_decoder(precision, int(rng.integers(1 << 16)), **overrides)
  tokens = jnp.asarray(rng.integers(0, 96, (2, 12)))
  packed, report = pack_model(model, backend=backend)
  want, got = np.asarray(model(tokens)), np.asarray(packed(tokens))
  # int8 activations are exact in both paths; weight-only models feed the kernel bf16.
  tolerance = 1e-4 if overrides.get("act_bits") != 0 else 2e-2
  assert np.abs(got - want).max() <= tolerance * np.abs(want).max()
  layers = [m for _, m in nnx.iter_modules(packed) if isinstance(m, PackedDense)]
  assert report.layers == len(layers) == 2 * 7  # q, k, v, o, gate, up, down per block
  assert not [m for _, m in nnx.iter_modules(packed) if isinstance(m, BitDense)
              and m.spec.weight != "none"]


def test_pack_model_leaves_the_trained_model_alone_and_reports_bytes(rng):
  model = small_decoder("b1.58", 0)
  before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
  _, report = pack_model(model)
  after = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
  jax.tree.map(np.testing.assert_array_equal, before, after)
  kernels = [m.kernel.get_value() for _, m in nnx.iter_modules(model) if isinstance(m, BitDense)
             and m.spec.weight != "none"]
  assert report.weights == sum(k.size for k in kernels)
  assert report.bf16_bytes == 2 * report.weights
  # K=64 or 160 pads to 256 rows: 16 int32 words per column, plus one f32 scale per layer.
  assert report.packed_bytes == sum(4 * 16 * k.shape[1] + 4 for k in kernels)
  assert "bitjax-ternary-v1" in report.format_table()


def test_pack_model_refuses_a_full_precision_model():
  with pytest.raises(ValueError, match="b1.58"):
    pack_model(small_decoder("bf16", 0))
