"""config.model.scan_layers: blocks stacked on a `layers` axis and run by a scan compute what
the list of blocks computes (outputs and gradients), for every Transformer model."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bitjax.infer import pack_model
from bitjax.models import (Decoder, DecoderConfig, EncDecConfig, Encoder, EncoderConfig,
                           EncoderDecoder, count_params, quantized_kernels, weight_memory_bits)
from bitjax.models.transformer import convert_layers

SMALL = dict(vocab_size=64, hidden_size=32, num_heads=4, mlp_hidden_size=48,
             compute_dtype="float32")


def decoder(precision, **overrides):
  return Decoder(DecoderConfig(**SMALL, precision=precision, num_layers=3, **overrides),
                 rngs=nnx.Rngs(0))


def layer_stacks(model):
  return [name for name in ("layers", "encoder_layers", "decoder_layers") if hasattr(model, name)]


def assert_same_weights(listed, scanned):
  """Every array of block i of the list equals slice i of the stacked block."""
  for name in layer_stacks(listed):
    stacked = dict(nnx.to_flat_state(nnx.state(getattr(scanned, name))))
    blocks = getattr(listed, name)
    for i, block in enumerate(blocks):
      for path, var in nnx.to_flat_state(nnx.state(block)):
        np.testing.assert_array_equal(stacked[path][...][i], var[...])
      assert all(var.shape[0] == len(blocks) for var in stacked.values())


def stacked_grads(grads, model):
  """The gradient state of a list model with each stack's blocks stacked like a scan's."""
  flat = {}
  for path, var in nnx.to_flat_state(grads):
    if path[0] in layer_stacks(model):
      flat.setdefault((path[0], *path[2:]), {})[path[1]] = var[...]
    else:
      flat[path] = var[...]
  return {path: (jnp.stack([v[i] for i in sorted(v)]) if isinstance(v, dict) else v)
          for path, v in flat.items()}


def jit_forward(model, *inputs):
  graphdef, state = nnx.split(model)
  return jax.jit(lambda state: nnx.merge(graphdef, state)(*inputs))(state)


def model_cases(rng):
  tokens = lambda *shape: jnp.asarray(rng.integers(3, 64, shape), jnp.int32)
  pad_tail = lambda x: x.at[0, -3:].set(0)  # pad id 0: masks reach the scanned blocks
  return {
      "decoder bf16": (decoder("bf16", num_kv_heads=2), (tokens(2, 12),)),
      "decoder b1.58 remat": (decoder("b1.58", remat=True, tie_embeddings=False),
                              (tokens(2, 12),)),
      "encoder b1.58": (Encoder(EncoderConfig(**SMALL, precision="b1.58", num_layers=2,
                                              num_classes=3), rngs=nnx.Rngs(1)),
                        (pad_tail(tokens(2, 10)),)),
      "encoder-decoder 1bit": (EncoderDecoder(EncDecConfig(**SMALL, precision="1bit",
                                                           num_layers=2, num_decoder_layers=3),
                                              rngs=nnx.Rngs(2)),
                               (pad_tail(tokens(2, 10)), tokens(2, 7))),
  }


@pytest.mark.parametrize("case", ["decoder bf16", "decoder b1.58 remat", "encoder b1.58",
                                  "encoder-decoder 1bit"])
def test_scanned_blocks_give_the_outputs_and_gradients_of_the_list(rng, case):
  listed, inputs = model_cases(rng)[case]
  scanned = convert_layers(listed, scan=True)
  assert scanned.cfg.scan_layers and not listed.cfg.scan_layers
  assert_same_weights(listed, scanned)

  # Both compiled: op-by-op execution rounds differently from the scan's compiled body, and
  # in a quantized model that can move an int8 code.
  want_out, out = jit_forward(listed, *inputs), jit_forward(scanned, *inputs)
  np.testing.assert_allclose(out, want_out, atol=1e-5 * np.abs(want_out).max())
  # A random linear read-out of the outputs (a squared norm would be flat behind the
  # encoder's final RMSNorm, leaving gradients of rounding noise).
  probe = jnp.asarray(rng.standard_normal(want_out.shape), jnp.float32)

  def grads_of(model):
    graphdef, state = nnx.split(model)
    loss = lambda s: jnp.mean(nnx.merge(graphdef, s)(*inputs) * probe)
    return jax.jit(jax.grad(loss))(state)

  want_grads, grads = grads_of(listed), grads_of(scanned)
  want = stacked_grads(want_grads, listed)
  got = {path: var[...] for path, var in nnx.to_flat_state(grads)}
  assert got.keys() == want.keys()
  for path in want:
    scale = np.abs(want[path]).max()
    np.testing.assert_allclose(got[path], want[path], atol=1e-4 * scale + 1e-9, err_msg=str(path))


def test_a_scanned_model_converts_back_to_the_same_list(rng):
  built = decoder("b1.58", scan_layers=True)  # stacked from the start (vmapped init)
  assert built.layers.attn.q_proj.kernel.shape == (3, 32, 32)
  assert built.layers.attn.q_proj.kernel.get_metadata()["out_sharding"] == (
      "layers", "embed", "heads")
  listed = convert_layers(built, scan=False)
  assert len(listed.layers) == 3 and not listed.cfg.scan_layers
  assert_same_weights(listed, built)
  again = convert_layers(listed, scan=True)
  for (path, a), (_, b) in zip(nnx.to_flat_state(nnx.state(again)),
                               nnx.to_flat_state(nnx.state(built))):
    np.testing.assert_array_equal(a[...], b[...], err_msg=str(path))
  tokens = jnp.asarray(rng.integers(0, 64, (2, 9)), jnp.int32)
  want = jit_forward(listed, tokens)
  np.testing.assert_allclose(jit_forward(built, tokens), want, atol=1e-5 * np.abs(want).max())


def test_counts_memory_and_forward_weights_are_per_layer():
  listed = decoder("b1.58")
  scanned = convert_layers(listed, scan=True)
  assert count_params(scanned) == count_params(listed)
  # One float32 scale per layer's matrix, not one per stacked kernel.
  assert weight_memory_bits(scanned) == pytest.approx(weight_memory_bits(listed))
  stacked = quantized_kernels(scanned)["layers/mlp/up_proj"]
  per_layer = quantized_kernels(listed)
  for i in range(3):
    # vmap's mean may sum in another order: the scale can differ in its last bit.
    np.testing.assert_allclose(stacked[i], per_layer[f"layers/{i}/mlp/up_proj"], rtol=1e-6)
  assert len(np.unique(np.asarray(stacked))) > 3  # three layers, three different scales


def test_a_scanned_model_packs_layer_by_layer(rng):
  listed = decoder("b1.58")
  scanned = convert_layers(listed, scan=True)
  packed_list, report_list = pack_model(listed, backend="xla")
  packed_scan, report_scan = pack_model(scanned, backend="xla")
  assert report_scan == report_list and report_scan.layers == 3 * 7
  assert scanned.cfg.scan_layers  # the trained model is left as it was
  tokens = jnp.asarray(rng.integers(0, 64, (2, 9)), jnp.int32)
  np.testing.assert_array_equal(packed_scan(tokens), packed_list(tokens))


def test_scan_layers_is_a_config_field():
  cfg = DecoderConfig.from_mapping({"scan_layers": True, "num_layers": 2})
  assert dataclasses.replace(cfg, scan_layers=False).num_layers == 2 and cfg.scan_layers
