"""The decoder LM: structure per precision, causality, parameter counts, axis names, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bitjax._compat import iter_modules
from bitjax.models import (Decoder, DecoderConfig, count_params, quantized_kernels,
                           train_flops_per_token, weight_memory_bits)
from bitjax.nn import BitDense

SMALL = dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, mlp_hidden_size=48)


def make(precision="bf16", **overrides):
  cfg = DecoderConfig(**{**SMALL, "precision": precision, "compute_dtype": "float32", **overrides})
  return Decoder(cfg, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("precision", ["bf16", "b1.58", "b1.58-median", "1bit"])
def test_structure_follows_the_precision(precision):
  model = make(precision)
  quantized = precision != "bf16"
  denses = [m for _, m in iter_modules(model) if isinstance(m, BitDense)]
  assert len(denses) == 2 * 7
  for dense in denses:
    assert (dense.norm is not None) == quantized
    assert dense.spec.quantized == quantized
  for layer in model.layers:
    assert (layer.attn_norm is None) == quantized and (layer.mlp_norm is None) == quantized
  # Embeddings (tied head) and the final norm stay full precision.
  assert model.lm_head is None and model.final_norm is not None


@pytest.mark.parametrize("precision, values", [("b1.58", 3), ("1bit", 2)])
def test_forward_weights_take_the_preset_values(precision, values):
  for kernel in quantized_kernels(make(precision)).values():
    distinct = np.unique(np.asarray(kernel))
    assert len(distinct) <= values
    np.testing.assert_allclose(np.abs(distinct[distinct != 0]), np.abs(distinct).max())


@pytest.mark.parametrize("precision", ["bf16", "b1.58"])
def test_decoder_is_causal_and_gradients_reach_every_parameter(rng, precision):
  model = make(precision, num_kv_heads=2, tie_embeddings=False, mlp_type="relu2_glu")
  tokens = jnp.asarray(rng.integers(0, 64, (2, 12)), jnp.int32)
  logits = model(tokens)
  assert logits.shape == (2, 12, 64) and logits.dtype == jnp.float32
  changed = tokens.at[:, 7:].set((tokens[:, 7:] + 1) % 64)
  np.testing.assert_allclose(model(changed)[:, :7], logits[:, :7], rtol=1e-5, atol=1e-5)
  assert not np.allclose(model(changed)[:, 7:], logits[:, 7:])

  graphdef, params = nnx.split(model)
  grads = jax.grad(lambda p: nnx.merge(graphdef, p)(tokens).mean())(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.abs(np.asarray(g)).max() > 0, jax.tree_util.keystr(path)


def test_every_parameter_has_logical_axes():
  model = make("b1.58", tie_embeddings=False)
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    axes = var.get_metadata().get("out_sharding")
    assert axes is not None and len(axes) == var[...].ndim, path


def test_parameter_count_matches_hand_count():
  h, f, v, layers = 32, 48, 64, 2
  per_layer = 4 * h * h + 3 * h * f
  fp = count_params(make("bf16"))
  assert fp["non_embedding"] == layers * (per_layer + 2 * h) + h
  assert fp["total"] == fp["non_embedding"] + v * h
  b158 = count_params(make("b1.58"))  # a norm inside each projection: q k v o up gate down
  assert b158["non_embedding"] == layers * (per_layer + 4 * h + 2 * h + f) + h
  gqa = count_params(make("bf16", num_kv_heads=1))
  assert gqa["non_embedding"] == layers * (2 * h * h + 2 * h * (h // 4) + 3 * h * f + 2 * h) + h


@pytest.mark.parametrize("fields, message", [
    (dict(hidden_size=30, num_heads=4), "config.model.hidden_size=30 is not divisible by "
                                        "config.model.num_heads=4"),
    (dict(num_kv_heads=3), "config.model.num_kv_heads=3 must divide config.model.num_heads=4"),
    (dict(precision="b2"), "config.model.precision='b2' is not one of"),
    (dict(mlp_type="gelu"), "config.model.mlp_type='gelu' is not one of"),
    (dict(norm="batch"), "config.model.norm='batch' is not one of"),
    (dict(compute_dtype="float8"), "config.model.compute_dtype='float8' is not one of"),
    (dict(num_layers=0), "config.model.num_layers=0 must be a positive integer"),
    (dict(precision="b1.58", act_bits=12.5), "config.model.act_bits=12.5"),
    (dict(hidden_size=36, num_heads=4), "config.model.head_dim=9 must be even"),
])
def test_bad_model_config_names_the_field(fields, message):
  with pytest.raises(ValueError) as info:
    DecoderConfig(**{**SMALL, **fields})
  assert message in str(info.value)


def test_unknown_model_field_is_refused():
  with pytest.raises(ValueError, match="config.model has unknown fields \\['hiden_size'\\]"):
    DecoderConfig.from_mapping({**SMALL, "hiden_size": 3})


def test_train_flops_per_token_matches_hand_count():
  h, f, v, layers, seq = 32, 48, 64, 2, 16
  cfg = DecoderConfig(**SMALL)
  forward_matmul = 2 * (layers * (4 * h * h + 3 * h * f) + h * v)
  forward_attention = layers * 2 * (2 * seq * h)  # scores and weighted sum, 4 heads x 8
  assert train_flops_per_token(cfg, seq) == 3 * (forward_matmul + forward_attention)
  gqa = DecoderConfig(**{**SMALL, "num_kv_heads": 1, "mlp_type": "relu2"})
  assert train_flops_per_token(gqa, seq) == 3 * (
      2 * (layers * (2 * h * h + 2 * h * 8 + 2 * h * f) + h * v) + forward_attention)


def test_weight_memory_counts_quantized_kernels_at_their_bits():
  fp, ternary, binary = make("bf16"), make("b1.58"), make("1bit")
  assert weight_memory_bits(fp) == 16 * count_params(fp)["total"]
  kernels = 2 * (4 * 32 * 32 + 3 * 32 * 48)
  other = count_params(ternary)["total"] - kernels
  assert weight_memory_bits(ternary) == pytest.approx(kernels * np.log2(3) + 14 * 32 + 16 * other)
  assert weight_memory_bits(binary) == pytest.approx(kernels + 14 * 32 + 16 * other)


def test_model_packages_do_not_import_the_data_stack():
  """The GPU machine has no TFDS, grain or ml_collections: quant, nn, models must not need them."""
  import subprocess
  import sys
  code = ("import sys, bitjax.quant, bitjax.nn, bitjax.models, bitjax.models.mlp, "
          "bitjax.models.gnn, bitjax.models.encoder, bitjax.models.encdec; "
          "print(sorted(m for m in sys.modules "
          "if m.split('.')[0] in ('tensorflow_datasets', 'grain', 'ml_collections', 'sklearn')))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"
