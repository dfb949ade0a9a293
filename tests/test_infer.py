"""pack_model: BitDense serving packed weights gives the training-mode logits and stores 2 bits
a weight."""

import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bitjax._compat import iter_modules
from bitjax.infer import export_packed, import_packed, pack_model
from bitjax.kernels import unpack_ternary
from bitjax.models import Decoder, DecoderConfig, quantized_kernels
from bitjax.nn import BitDense
from bitjax.quant import resolve_precision
from multidevice import json_result, run_on_8_devices


def small_decoder(precision, seed, **overrides):
  cfg = DecoderConfig(precision=precision, vocab_size=96, hidden_size=64, num_layers=2,
                      num_heads=4, mlp_hidden_size=160, compute_dtype="float32", **overrides)
  return Decoder(cfg, rngs=nnx.Rngs(seed))


def serving_layers(model):
  return [m for _, m in iter_modules(model) if isinstance(m, BitDense) and m.mode == "serve"]


@pytest.mark.parametrize("precision,overrides", [
    ("b1.58", {}), ("b1.58-median", {}), ("1bit", {}), ("b1.58", {"act_bits": 0})])
@pytest.mark.parametrize("backend", ["xla", "interpret"])
def test_packed_logits_match_training_mode(rng, precision, overrides, backend):
  model = small_decoder(precision, int(rng.integers(1 << 16)), **overrides)
  tokens = jnp.asarray(rng.integers(0, 96, (2, 12)))
  packed, report = pack_model(model, backend=backend)
  want, got = np.asarray(model(tokens)), np.asarray(packed(tokens))
  # Float rounding differs between the paths, so an activation code can round the other way
  # and the flip carries through attention to every later position; layer by layer they agree
  # to 1e-5 (test below). Over 121 random models such a flip moved logits by at most 2.3% of
  # the largest logit; a wrong scale, sign or bit layout moves them by far more than 5%.
  assert np.abs(got - want).max() <= 5e-2 * np.abs(want).max()
  layers = serving_layers(packed)
  assert report.layers == len(layers) == 2 * 7  # q, k, v, o, gate, up, down per block
  assert not [m for _, m in iter_modules(packed) if isinstance(m, BitDense)
              and m.mode == "train" and m.spec.weight_quantizer.quantized]
  assert not serving_layers(model)  # the trained model still trains


@pytest.mark.parametrize("precision,act_bits", [
    ("b1.58", None), ("b1.58-median", None), ("1bit", None), ("b1.58", 0), ("b1.58", 4)])
def test_serving_bit_dense_matches_training_mode(rng, precision, act_bits):
  spec = resolve_precision(precision, act_bits=act_bits)
  layer = BitDense(200, 48, spec=spec, rngs=nnx.Rngs(int(rng.integers(1 << 16))))
  x = jnp.asarray(rng.standard_normal((3, 5, 200)), jnp.float32)
  served = nnx.clone(layer)
  served.serve("interpret")
  assert (layer.mode, served.mode) == ("train", "serve") and not hasattr(served, "kernel")
  want, got = np.asarray(layer(x)), np.asarray(served(x))
  # int8 activations: the same integers in both paths; weight-only: the kernel reads bf16.
  tolerance = 1e-5 if act_bits != 0 else 1e-2
  assert np.abs(got - want).max() <= tolerance * np.abs(want).max()


def test_serving_layers_use_exactly_the_training_weights(rng):
  model = small_decoder("b1.58-median", int(rng.integers(1 << 16)))
  packed, _ = pack_model(model, backend="xla")
  want, got = quantized_kernels(model), quantized_kernels(packed)
  assert sorted(got) == sorted(want) and len(got) == 2 * 7
  for path in want:
    np.testing.assert_array_equal(got[path], want[path])


def test_serve_refuses_unpackable_or_serving_layers():
  layer = BitDense(16, 8, spec=resolve_precision("bf16"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"weight_quant='none' has no packed format; packable: "
                                       r"\['absmean', 'absmedian', 'sign'\]"):
    layer.serve()
  layer = BitDense(16, 8, spec=resolve_precision("1bit"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"backend='cuda' is not one of \['auto', 'xla'"):
    layer.serve("cuda")
  layer.serve()
  with pytest.raises(ValueError, match="mode='serve'"):
    layer.serve()


def test_pack_model_leaves_the_trained_model_alone_and_reports_bytes(rng):
  model = small_decoder("b1.58", 0)
  before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
  _, report = pack_model(model)
  after = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
  jax.tree.map(np.testing.assert_array_equal, before, after)
  kernels = [m.kernel[...] for _, m in iter_modules(model) if isinstance(m, BitDense)
             and m.spec.weight != "none"]
  assert report.weights == sum(k.size for k in kernels)
  assert report.bf16_bytes == 2 * report.weights
  # K=64 or 160 pads to 256 rows: 16 int32 words per column, plus one f32 scale per layer.
  assert report.packed_bytes == sum(4 * 16 * k.shape[1] + 4 for k in kernels)
  assert "bitjax-ternary-v1" in report.format_table()
  # On CPU the serving layers also hold their ternary values as int8, and say so.
  assert (report.platform, report.unpacked_bytes) == ("cpu", report.weights)
  assert report.held_bytes == report.packed_bytes + report.weights
  assert "held on cpu" in report.format_table() and "int8 unpacked" in report.format_table()


def test_unpacked_copies_are_the_packed_weights_and_can_be_left_out(rng):
  model = small_decoder("b1.58", int(rng.integers(1 << 16)))
  tokens = jnp.asarray(rng.integers(0, 96, (2, 12)))
  kept, kept_report = pack_model(model)
  words_only, report = pack_model(model, unpacked=False)
  assert report.unpacked_bytes == 0 and "packed only" in report.format_table()
  assert all(layer.unpacked is None for layer in serving_layers(words_only))
  for layer in serving_layers(kept):
    np.testing.assert_array_equal(
        layer.unpacked[...],
        np.asarray(unpack_ternary(layer.packed[...], layer.in_features)) - 1)
  # int8 sums are exact on both paths, so the logits are the same bits.
  np.testing.assert_array_equal(kept(tokens), words_only(tokens))
  assert kept_report.packed_bytes == report.packed_bytes
  layer = BitDense(16, 8, spec=resolve_precision("b1.58"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="unpacked=True needs backend 'auto' or 'xla'"):
    layer.serve("interpret", unpacked=True)
  with pytest.raises(ValueError, match=r"unpacked='yes' is not one of \[None, True, False\]"):
    layer.serve(unpacked="yes")


def test_pack_model_refuses_a_full_precision_model():
  with pytest.raises(ValueError, match="b1.58"):
    pack_model(small_decoder("bf16", 0))


def test_export_import_round_trip_at_1_6_bits_and_never_overwrites(rng, tmp_path):
  tokens = jnp.asarray(rng.integers(0, 96, (2, 8)))
  packed, report = pack_model(small_decoder("b1.58", int(rng.integers(1 << 16))), backend="xla")
  path = tmp_path / "model.npz"
  written = export_packed(packed, str(path))
  assert written < report.weights * 1.6 / 8 * 1.1 + 64 * 1024  # 1.6 bits plus npz headers
  with pytest.raises(FileExistsError):
    export_packed(packed, str(path))
  fresh, _ = pack_model(small_decoder("b1.58", 12345), backend="xla")
  assert not np.allclose(fresh(tokens), packed(tokens))
  import_packed(fresh, str(path))
  for layer in serving_layers(fresh):  # the int8 copies follow the imported words
    np.testing.assert_array_equal(
        layer.unpacked[...],
        np.asarray(unpack_ternary(layer.packed[...], layer.in_features)) - 1)
  # Only the packed layers travel; embeddings and norms come from the fresh model's
  # own init, so compare the packed weights themselves.
  for (_, a), (_, b) in zip(iter_modules(packed), iter_modules(fresh)):
    if isinstance(a, BitDense) and a.mode == "serve":
      np.testing.assert_array_equal(a.packed[...], b.packed[...])
      np.testing.assert_array_equal(a.scale[...], b.scale[...])


def test_import_refuses_another_format_or_architecture(rng, tmp_path):
  packed, _ = pack_model(small_decoder("b1.58", 0), backend="xla")
  bad = tmp_path / "bad.npz"
  np.savez(bad, format=np.array("bitjax-ternary-v0"))
  with pytest.raises(ValueError, match="bitjax-ternary-v0"):
    import_packed(packed, str(bad))
  path = tmp_path / "model.npz"
  export_packed(packed, str(path))
  wider = DecoderConfig(precision="b1.58", vocab_size=96, hidden_size=64, num_layers=2,
                        num_heads=4, mlp_hidden_size=192, compute_dtype="float32")
  other, _ = pack_model(Decoder(wider, rngs=nnx.Rngs(0)), backend="xla")
  with pytest.raises(ValueError, match="has shape"):
    import_packed(other, str(path))


SHARDED_PACKED_SCRIPT = textwrap.dedent("""
    import json, numpy as np, jax, jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P
    from bitjax.kernels import ternary_matmul
    from bitjax.nn import BitDense
    from bitjax.quant import resolve_precision
    from bitjax.parallel import make_mesh, state_shardings
    from bitjax.parallel.sharding import sharded_jit
    rng = np.random.default_rng(int(__import__("sys").argv[1]))
    results = {}
    # Column-parallel (K=512 stays whole) and row-parallel (K=2048 splits in whole blocks).
    for din, dout, axes in [(512, 1024, ("embed", "mlp")), (2048, 512, ("mlp", "embed"))]:
      bit = BitDense(din, dout, spec=resolve_precision("b1.58"), norm=None, kernel_axes=axes,
                     rngs=nnx.Rngs(int(rng.integers(1 << 16))))
      bit.serve("interpret")
      graphdef, state = nnx.split(bit)
      # Activations on the int8 grid (each token's absmax is 127/8, so its scale is 1/8 and
      # every code is exact): any difference would be the sharded path's, not a rounding tie.
      codes = rng.integers(-127, 128, (8, 4, din))
      codes[..., int(rng.integers(din))] = 127
      x = jnp.asarray(codes / 8, jnp.float32)
      x8 = jnp.asarray(rng.integers(-128, 128, (8, 4, din)), jnp.int8)
      layer = lambda s, x: nnx.merge(graphdef, s)(x)
      matmul = lambda s, x8: ternary_matmul(x8, s["packed"][...], s["scale"][...],
                                            backend="interpret", weight_axes=axes)
      want_layer, want_matmul = jax.jit(layer)(state, x), jax.jit(matmul)(state, x8)
      for sizes in [(2, 2, 2), (1, 8, 1), (1, 1, 8), (8, 1, 1)]:
        mesh = make_mesh(*sizes)
        shardings = state_shardings(state, mesh)
        replicated = NamedSharding(mesh, P())
        sharded = jax.device_put(state, shardings)
        run = lambda f, x: sharded_jit(f, mesh, in_shardings=(shardings, replicated),
                                       out_shardings=replicated)
        lowered = run(matmul, x8).lower(sharded, x8)
        results[f"{din}x{dout} {sizes}"] = [
            float(jnp.abs(run(matmul, x8)(sharded, x8) - want_matmul).max()),
            float(jnp.abs(run(layer, x)(sharded, x) - want_layer).max()
                  / jnp.abs(want_layer).max()),
            "manual_computation" in lowered.as_text()]
    print(json.dumps(results))
""")


def test_packed_layers_run_per_device_under_a_mesh(rng):
  """Kernels inside shard_map: int8 inputs give exactly the one-device sums, and a whole
  serving BitDense fed activations whose int8 codes are exact gives the one-device output.
  (Random float activations are not used here: XLA may partition the quantizer's arithmetic
  differently, so a code near a rounding tie can land the other way; seen at 2e-4.)"""
  results = json_result(run_on_8_devices(SHARDED_PACKED_SCRIPT, str(rng.integers(1 << 30))))
  assert len(results) == 8
  for name, (matmul_diff, layer_rel_diff, in_shard_map) in results.items():
    assert in_shard_map, name
    assert matmul_diff == 0.0, name
    assert layer_rel_diff < 1e-6, name


def test_logit_agreement_and_weight_code_stats(rng):
  from bitjax.infer import logit_agreement, weight_code_stats
  from bitjax.quant import quantize_weight

  model = small_decoder("b1.58", 0)
  stats = weight_code_stats(model)
  layers = [(p, m) for p, m in iter_modules(model) if isinstance(m, BitDense)
            and m.spec.weight != "none"]
  assert [s["layer"] for s in stats] == ["/".join(map(str, p)) for p, _ in layers]
  codes, scale = quantize_weight(layers[0][1].kernel[...], "absmean")
  assert stats[0]["scale"] == pytest.approx(float(scale))
  assert stats[0]["share_zero"] == pytest.approx(float((np.asarray(codes) == 0).mean()))
  assert all(s["share_minus"] + s["share_zero"] + s["share_plus"] == pytest.approx(1) for s in stats)
  assert weight_code_stats(small_decoder("bf16", 0)) == []
  a = rng.normal(size=(2, 3, 5)).astype(np.float32)
  b = a.copy()
  b[0, 0] += np.array([0, 0, 0, 0, 10], np.float32)  # one position's argmax flips
  agree = logit_agreement(a, b)
  assert agree["max_abs"] == pytest.approx(10)
  assert agree["max_rel"] == pytest.approx(10 / np.abs(a).max())
  assert agree["argmax_agree"] == pytest.approx(5 / 6 if a[0, 0].argmax() != 4 else 1)
